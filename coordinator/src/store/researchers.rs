//! Researcher accounts: tokens kept only as hashes, job ownership, quotas
//! (bytes uploaded, units in flight), and the audit log of who submitted,
//! cancelled and downloaded what. Operators manage accounts with
//! `cobble-coordinator researcher add|list|revoke` on the same database.

use super::Store;
use crate::error::{Error, Result};
use cobble_core::BlobHash;
use sqlx::Row;
use std::path::Path;

/// The account the project's `researcher.token` becomes on first start.
pub const FIRST_RESEARCHER: &str = "owner";
/// Quotas of a new account unless the operator says otherwise.
pub const DEFAULT_MAX_STORED_BYTES: i64 = 10 << 30;
pub const DEFAULT_MAX_UNITS_IN_FLIGHT: i64 = 1_000_000;

/// An authenticated researcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Researcher {
    pub id: i64,
    pub name: String,
    /// May cancel and collect every job; held to no quota.
    pub admin: bool,
    pub max_stored_bytes: i64,
    pub max_units_in_flight: i64,
}

/// One line of `researcher list`.
#[derive(Debug, Clone)]
pub struct ResearcherInfo {
    pub researcher: Researcher,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    pub jobs: i64,
    pub stored_bytes: i64,
}

/// One line of the audit log.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub job_id: Option<i64>,
    pub detail: String,
}

fn token_hash(token: &str) -> Vec<u8> {
    blake3::hash(token.as_bytes()).as_bytes().to_vec()
}

fn researcher_from(row: &sqlx::any::AnyRow) -> Result<Researcher> {
    Ok(Researcher {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        admin: row.try_get::<i64, _>("admin")? != 0,
        max_stored_bytes: row.try_get("max_stored_bytes")?,
        max_units_in_flight: row.try_get("max_units_in_flight")?,
    })
}

const RESEARCHER_COLUMNS: &str = "id, name, admin, max_stored_bytes, max_units_in_flight";

/// Names are what the audit log and `researcher list` show: short, plain.
fn check_name(name: &str) -> Result<()> {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if name.is_empty() || name.len() > 64 || !plain || name == "operator" {
        return Err(Error::InvalidArgument(format!(
            "{name:?} is not a researcher name: 1 to 64 letters, digits, '-', '_', '.' or '@' (and not \"operator\")"
        )));
    }
    Ok(())
}

impl Store {
    /// On a project's first start (no researcher yet), the token in
    /// `token_path` (created if absent, mode 0600) becomes the admin account
    /// [`FIRST_RESEARCHER`], which adopts every job from before accounts.
    /// Afterwards the file is not read again: revoking that account works.
    pub async fn adopt_first_researcher(&self, token_path: &Path) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let any: Option<i64> = sqlx::query_scalar("SELECT id FROM researchers LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
        if any.is_some() {
            return Ok(());
        }
        let token = crate::secrets::researcher_token(token_path)?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO researchers (name, token_hash, admin, max_stored_bytes, max_units_in_flight, created_ms)
             VALUES ($1, $2, 1, 0, 0, $3) RETURNING id",
        )
        .bind(FIRST_RESEARCHER)
        .bind(token_hash(&token))
        .bind(cobble_core::now_ms())
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE jobs SET researcher_id = $1 WHERE researcher_id IS NULL")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.db.make_durable().await?;
        tracing::info!(
            path = %token_path.display(),
            "the researcher token became the admin account {FIRST_RESEARCHER:?}"
        );
        Ok(())
    }

    /// Creates an account; returns its token, which is stored only as a
    /// hash and so can be shown this once.
    pub async fn add_researcher(
        &self,
        name: &str,
        admin: bool,
        max_stored_bytes: i64,
        max_units_in_flight: i64,
    ) -> Result<String> {
        check_name(name)?;
        if max_stored_bytes < 0 || max_units_in_flight < 0 {
            return Err(Error::InvalidArgument(
                "quotas are 0 (no limit) or more".into(),
            ));
        }
        let token = format!(
            "{}{}",
            cobble_core::random_token(),
            cobble_core::random_token()
        );
        let mut tx = self.db.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO researchers (name, token_hash, admin, max_stored_bytes, max_units_in_flight, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(token_hash(&token))
        .bind(i64::from(admin))
        .bind(max_stored_bytes)
        .bind(max_units_in_flight)
        .bind(cobble_core::now_ms())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(Error::AlreadyExists(format!(
                "a researcher named {name:?} exists already"
            )));
        }
        audit(
            &mut tx,
            "operator",
            "researcher_add",
            None,
            &format!("{name} admin={admin}"),
        )
        .await?;
        tx.commit().await?;
        self.db.make_durable().await?;
        Ok(token)
    }

    /// Revokes an account: its token stops working at once; its jobs keep
    /// running and stay visible to admins.
    pub async fn revoke_researcher(&self, name: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE researchers SET revoked_ms = $2 WHERE name = $1 AND revoked_ms IS NULL",
        )
        .bind(name)
        .bind(cobble_core::now_ms())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(Error::NotFound(format!(
                "no active researcher named {name:?}"
            )));
        }
        audit(&mut tx, "operator", "researcher_revoke", None, name).await?;
        tx.commit().await?;
        self.db.make_durable().await?;
        Ok(())
    }

    pub async fn list_researchers(&self) -> Result<Vec<ResearcherInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {RESEARCHER_COLUMNS}, created_ms, revoked_ms,
                    (SELECT COUNT(*) FROM jobs j WHERE j.researcher_id = r.id) AS jobs,
                    (SELECT COALESCE(SUM(b.size), 0) FROM researcher_blobs b
                      WHERE b.researcher_id = r.id AND b.uploaded = 1) AS stored
             FROM researchers r ORDER BY id"
        ))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ResearcherInfo {
                    researcher: researcher_from(row)?,
                    created_ms: row.try_get("created_ms")?,
                    revoked_ms: row.try_get("revoked_ms")?,
                    jobs: row.try_get("jobs")?,
                    stored_bytes: row.try_get("stored")?,
                })
            })
            .collect()
    }

    /// The active account with this name (for tests and tools).
    pub async fn researcher_named(&self, name: &str) -> Result<Researcher> {
        let row = sqlx::query(&format!(
            "SELECT {RESEARCHER_COLUMNS} FROM researchers WHERE name = $1 AND revoked_ms IS NULL"
        ))
        .bind(name)
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| Error::NotFound(format!("no active researcher named {name:?}")))?;
        researcher_from(&row)
    }

    /// Who presents `token`; a revoked or unknown token is refused.
    pub async fn researcher_by_token(&self, token: &str) -> Result<Researcher> {
        let row = sqlx::query(&format!(
            "SELECT {RESEARCHER_COLUMNS}, revoked_ms FROM researchers WHERE token_hash = $1"
        ))
        .bind(token_hash(token))
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| Error::Unauthenticated("unknown researcher token".into()))?;
        if row.try_get::<Option<i64>, _>("revoked_ms")?.is_some() {
            return Err(Error::Unauthenticated(
                "this researcher token was revoked; ask the project's operator for a new one"
                    .into(),
            ));
        }
        researcher_from(&row)
    }

    /// Refuses unless `researcher` owns the job or is an admin. A job that
    /// does not exist is NotFound for everyone.
    pub async fn authorize_job(&self, researcher: &Researcher, job_id: i64) -> Result<()> {
        let owner: Option<Option<i64>> =
            sqlx::query_scalar("SELECT researcher_id FROM jobs WHERE id = $1")
                .bind(job_id)
                .fetch_optional(self.db.pool())
                .await?;
        match owner {
            None => Err(Error::NotFound(format!("no job {job_id}"))),
            Some(_) if researcher.admin => Ok(()),
            Some(Some(owner)) if owner == researcher.id => Ok(()),
            Some(_) => Err(Error::PermissionDenied(format!(
                "job {job_id} belongs to another researcher"
            ))),
        }
    }

    /// Refuses a new job that would take `researcher` past their units in
    /// flight (units of running jobs not yet done), with the figures.
    pub(crate) async fn check_units_quota(
        &self,
        researcher: &Researcher,
        new_units: i64,
    ) -> Result<()> {
        if researcher.admin || researcher.max_units_in_flight == 0 {
            return Ok(());
        }
        let in_flight: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM units u JOIN jobs j ON j.id = u.job_id
             WHERE j.researcher_id = $1 AND j.state = 'running' AND u.state = 'pending'",
        )
        .bind(researcher.id)
        .fetch_one(self.db.pool())
        .await?;
        if in_flight + new_units > researcher.max_units_in_flight {
            return Err(Error::ResourceExhausted(format!(
                "researcher {} has {in_flight} units in flight and may have {}; this job adds {new_units}. Wait for jobs to finish or cancel some",
                researcher.name, researcher.max_units_in_flight
            )));
        }
        Ok(())
    }

    /// Refuses an upload that would take `researcher` past their stored
    /// bytes, before any byte is read. A blob they uploaded already costs
    /// nothing more.
    pub async fn check_upload_quota(
        &self,
        researcher: &Researcher,
        hash: &BlobHash,
        size: u64,
    ) -> Result<()> {
        if researcher.admin || researcher.max_stored_bytes == 0 {
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT COALESCE(SUM(size), 0) AS stored,
                    COALESCE(SUM(CASE WHEN hash = $2 THEN 1 ELSE 0 END), 0) AS has
             FROM researcher_blobs WHERE researcher_id = $1 AND uploaded = 1",
        )
        .bind(researcher.id)
        .bind(hash.0.to_vec())
        .fetch_one(self.db.pool())
        .await?;
        let (stored, has): (i64, i64) = (row.try_get("stored")?, row.try_get("has")?);
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        if has == 0 && stored.saturating_add(size) > researcher.max_stored_bytes {
            return Err(Error::ResourceExhausted(format!(
                "researcher {} stores {stored} bytes and may store {}; this upload of {size} bytes would exceed it",
                researcher.name, researcher.max_stored_bytes
            )));
        }
        Ok(())
    }

    /// Records a researcher's upload: counted against their quota, and
    /// theirs to download.
    pub async fn record_upload(
        &self,
        researcher: &Researcher,
        hash: &BlobHash,
        size: u64,
    ) -> Result<()> {
        self.grant_blobs(researcher, &[(hash.0.to_vec(), size as i64)], true)
            .await
    }

    /// Lets `researcher` download these blobs (outputs of their job, just
    /// shown to them); `uploaded` counts them against their quota.
    pub(crate) async fn grant_blobs(
        &self,
        researcher: &Researcher,
        blobs: &[(Vec<u8>, i64)],
        uploaded: bool,
    ) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.begin_write().await?;
        for (hash, size) in blobs {
            sqlx::query(
                "INSERT INTO researcher_blobs (researcher_id, hash, size, uploaded) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (researcher_id, hash) DO UPDATE SET uploaded = CASE
                     WHEN researcher_blobs.uploaded = 1 THEN 1 ELSE EXCLUDED.uploaded END",
            )
            .bind(researcher.id)
            .bind(hash)
            .bind(size)
            .bind(i64::from(uploaded))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Whether `researcher` may download the blob: admins any; others what
    /// they uploaded and the outputs of their jobs they were shown.
    pub async fn may_download(&self, researcher: &Researcher, hash: &BlobHash) -> Result<bool> {
        if researcher.admin {
            return Ok(true);
        }
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM researcher_blobs WHERE researcher_id = $1 AND hash = $2",
        )
        .bind(researcher.id)
        .bind(hash.0.to_vec())
        .fetch_optional(self.db.pool())
        .await?;
        Ok(found.is_some())
    }

    /// Appends to the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        job_id: Option<i64>,
        detail: &str,
    ) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        audit(&mut tx, actor, action, job_id, detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The latest `limit` entries, newest first.
    pub async fn audit_log(&self, limit: i64) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at_ms, actor, action, job_id, detail FROM audit_log ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    at_ms: row.try_get("at_ms")?,
                    actor: row.try_get("actor")?,
                    action: row.try_get("action")?,
                    job_id: row.try_get("job_id")?,
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Forgets deleted blobs in researchers' accounts (after collection).
    pub(crate) async fn forget_researcher_blob(&self, hash: &BlobHash) -> Result<()> {
        sqlx::query("DELETE FROM researcher_blobs WHERE hash = $1")
            .bind(hash.0.to_vec())
            .execute(self.db.writes())
            .await?;
        Ok(())
    }
}

/// Appends to the audit log inside `tx`.
pub(crate) async fn audit(
    tx: &mut crate::db::Tx,
    actor: &str,
    action: &str,
    job_id: Option<i64>,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at_ms, actor, action, job_id, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(cobble_core::now_ms())
    .bind(actor)
    .bind(action)
    .bind(job_id)
    .bind(detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
