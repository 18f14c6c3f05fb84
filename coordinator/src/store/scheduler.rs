//! The scheduler: hands unsent results to a host as signed manifests.
//!
//! A host never receives two live results of one unit, and an account
//! never two results of one unit (invariant 1), so a volunteer cannot
//! validate their own answer. Replicas are never told about each other.

use super::{HostIdentity, Store};
use crate::error::{Error, Result};
use cobble_proto::v1 as pb;
use prost::Message;
use sqlx::Row;

/// Units one request may take, whatever the host asks for.
const MAX_SLOTS_PER_REQUEST: u32 = 16;

impl Store {
    pub async fn request_work(
        &self,
        host: HostIdentity,
        slots: u32,
    ) -> Result<Vec<pb::Assignment>> {
        let slots = slots.clamp(1, MAX_SLOTS_PER_REQUEST);
        let now = cobble_core::now_ms();
        let mut tx = self.db.begin_write().await?;
        self.expire_overdue_in(&mut tx, now).await?;
        sqlx::query("UPDATE hosts SET last_contact_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(host.host_id)
            .execute(&mut *tx)
            .await?;

        let mut assignments = Vec::new();
        while assignments.len() < slots as usize {
            let candidate = sqlx::query(
                "SELECT r.id, r.unit_id, u.payload, j.id AS job_id, j.spec, j.deadline_s
                 FROM results r
                 JOIN units u ON u.id = r.unit_id
                 JOIN jobs j ON j.id = u.job_id
                 WHERE r.state = 'unsent' AND u.state = 'pending' AND j.state = 'running'
                   AND NOT EXISTS (
                       SELECT 1 FROM results o
                       WHERE o.unit_id = r.unit_id AND o.state <> 'timed_out'
                         AND (o.host_id = $1 OR o.account_id = $2))
                 ORDER BY r.id LIMIT 1",
            )
            .bind(host.host_id)
            .bind(host.account_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = candidate else {
                break;
            };
            let result_id: i64 = row.try_get("id")?;
            let deadline_s: i64 = row.try_get("deadline_s")?;
            let lease_id = cobble_core::random_token();
            let deadline_ms = now + deadline_s * 1000;
            let claimed = sqlx::query(
                "UPDATE results SET state = 'in_progress', host_id = $1, account_id = $2,
                        lease_id = $3, sent_ms = $4, deadline_ms = $5
                 WHERE id = $6 AND state = 'unsent'",
            )
            .bind(host.host_id)
            .bind(host.account_id)
            .bind(&lease_id)
            .bind(now)
            .bind(deadline_ms)
            .bind(result_id)
            .execute(&mut *tx)
            .await?;
            if claimed.rows_affected() != 1 {
                // Another coordinator took it (PostgreSQL); look again.
                continue;
            }
            let manifest = build_manifest(&row, lease_id, now, deadline_ms)?;
            assignments.push(cobble_core::manifest::sign(&manifest, self.signing_key()));
        }
        tx.commit().await?;
        if !assignments.is_empty() {
            tracing::debug!(
                host_id = host.host_id,
                count = assignments.len(),
                "work issued"
            );
        }
        Ok(assignments)
    }
}

fn build_manifest(
    row: &sqlx::any::AnyRow,
    lease_id: String,
    now: i64,
    deadline_ms: i64,
) -> Result<pb::Manifest> {
    let spec: Vec<u8> = row.try_get("spec")?;
    let spec = pb::JobSpec::decode(spec.as_slice())
        .map_err(|e| Error::Corrupt(format!("job spec: {e}")))?;
    let payload: Vec<u8> = row.try_get("payload")?;
    let payload = pb::Manifest::decode(payload.as_slice())
        .map_err(|e| Error::Corrupt(format!("unit payload: {e}")))?;
    Ok(pb::Manifest {
        unit_id: row.try_get("unit_id")?,
        job_id: row.try_get("job_id")?,
        lease_id,
        module: spec.module,
        inputs: payload.inputs,
        args: payload.args,
        limits: spec.limits,
        deadline_ms,
        issued_ms: now,
        nan_canonicalization_off: spec.nan_canonicalization_off,
    })
}
