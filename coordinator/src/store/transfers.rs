//! Peer-to-peer bookkeeping in the database: the bytes each host reports
//! moving, the project's totals, and which hosts hold results of a unit
//! (so the tracker never introduces replicas to each other).

use super::{HostIdentity, Store};
use crate::error::Result;
use cobble_proto::v1 as pb;
use prost::Message;
use sqlx::Row;
use std::collections::HashSet;

/// Hosts listed by `transfer_stats`, biggest sharers first.
const TOP_SHARERS: i64 = 20;

impl Store {
    /// Adds what a host moved since its previous heartbeat.
    pub async fn add_transfers(&self, host: HostIdentity, delta: &pb::TransferDelta) -> Result<()> {
        // Bounded so that a buggy or hostile host cannot overflow the sums.
        let clamp = |bytes: u64| bytes.min(1 << 50) as i64;
        sqlx::query(
            "UPDATE hosts SET bytes_from_coordinator = bytes_from_coordinator + $1,
                    bytes_from_peers = bytes_from_peers + $2, bytes_served = bytes_served + $3
             WHERE id = $4",
        )
        .bind(clamp(delta.from_coordinator))
        .bind(clamp(delta.from_peers))
        .bind(clamp(delta.served_to_peers))
        .bind(host.host_id)
        .execute(self.db.writes())
        .await?;
        Ok(())
    }

    /// Hosts holding any result of the unit that `lease_id` belongs to.
    pub async fn hosts_sharing_unit(&self, lease_id: &str) -> Result<HashSet<i64>> {
        let rows = sqlx::query(
            "SELECT o.host_id FROM results r JOIN results o ON o.unit_id = r.unit_id
             WHERE r.lease_id = $1 AND o.host_id IS NOT NULL",
        )
        .bind(lease_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| Ok(row.try_get::<i64, _>("host_id")?))
            .collect()
    }

    /// Whether `hash` is the module or an input of the unit `host_id`
    /// holds under `lease_id`: the tracker vouches for fetching only those,
    /// so a host cannot use peers to read another job's data.
    pub async fn lease_needs_blob(
        &self,
        host_id: i64,
        lease_id: &str,
        hash: &cobble_core::BlobHash,
    ) -> Result<bool> {
        let rows = sqlx::query(
            "SELECT u.payload, j.module_hash FROM results r
             JOIN units u ON u.id = r.unit_id JOIN jobs j ON j.id = u.job_id
             WHERE r.lease_id = $1 AND r.host_id = $2 AND r.state = 'in_progress'",
        )
        .bind(lease_id)
        .bind(host_id)
        .fetch_all(self.db.pool())
        .await?;
        any_needs(&rows, hash)
    }

    /// Whether any unit `host_id` holds needs `hash` (its module or an
    /// input): what a host may read from the coordinator, so an attached
    /// host cannot read other jobs' data by hash.
    pub async fn host_needs_blob(
        &self,
        host_id: i64,
        hash: &cobble_core::BlobHash,
    ) -> Result<bool> {
        let rows = sqlx::query(
            "SELECT u.payload, j.module_hash FROM results r
             JOIN units u ON u.id = r.unit_id JOIN jobs j ON j.id = u.job_id
             WHERE r.host_id = $1 AND r.state = 'in_progress'",
        )
        .bind(host_id)
        .fetch_all(self.db.pool())
        .await?;
        any_needs(&rows, hash)
    }

    /// The project's input delivery: how much came from the coordinator and
    /// how much from peers, and who shared most.
    pub async fn transfer_stats(&self) -> Result<pb::TransferStats> {
        let totals = sqlx::query(
            // PostgreSQL sums BIGINT into NUMERIC; cast back for both backends.
            "SELECT CAST(COALESCE(SUM(bytes_from_coordinator), 0) AS BIGINT) AS coordinator,
                    CAST(COALESCE(SUM(bytes_from_peers), 0) AS BIGINT) AS peers,
                    CAST(COALESCE(SUM(bytes_served), 0) AS BIGINT) AS served
             FROM hosts",
        )
        .fetch_one(self.db.pool())
        .await?;
        // Names as the public site shows them: only with consent.
        let rows = sqlx::query(&format!(
            "SELECT x.id, {} AS name, {} AS account, x.bytes_from_coordinator,
                    x.bytes_from_peers, x.bytes_served
             FROM hosts x JOIN accounts a ON a.id = x.account_id
             WHERE x.bytes_served > 0 OR x.bytes_from_peers > 0 OR x.bytes_from_coordinator > 0
             ORDER BY x.bytes_served DESC, x.id LIMIT $1",
            super::site::Board::Hosts.shown_name(),
            super::site::OWNER_NAME
        ))
        .bind(TOP_SHARERS)
        .fetch_all(self.db.pool())
        .await?;
        let unsigned = |value: i64| value.max(0) as u64;
        let hosts = rows
            .iter()
            .map(|row| {
                Ok(pb::HostTransfers {
                    host_id: row.try_get("id")?,
                    host_name: row.try_get("name")?,
                    account: row.try_get("account")?,
                    from_coordinator: unsigned(row.try_get("bytes_from_coordinator")?),
                    from_peers: unsigned(row.try_get("bytes_from_peers")?),
                    served_to_peers: unsigned(row.try_get("bytes_served")?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(pb::TransferStats {
            from_coordinator: unsigned(totals.try_get("coordinator")?),
            from_peers: unsigned(totals.try_get("peers")?),
            served_to_peers: unsigned(totals.try_get("served")?),
            hosts,
        })
    }
}

/// Whether one of these units (`payload`, `module_hash`) needs `hash`.
fn any_needs(rows: &[sqlx::any::AnyRow], hash: &cobble_core::BlobHash) -> Result<bool> {
    let wanted = hash.0.as_slice();
    for row in rows {
        let module: Vec<u8> = row.try_get("module_hash")?;
        if module == wanted {
            return Ok(true);
        }
        let payload: Vec<u8> = row.try_get("payload")?;
        let payload = pb::Manifest::decode(payload.as_slice())
            .map_err(|e| crate::Error::Corrupt(format!("unit payload: {e}")))?;
        // A reduce step's own module travels in its payload.
        let input = payload
            .inputs
            .iter()
            .filter_map(|i| i.blob.as_ref())
            .chain(payload.module.as_ref())
            .any(|b| b.hash == wanted);
        if input {
            return Ok(true);
        }
    }
    Ok(false)
}
