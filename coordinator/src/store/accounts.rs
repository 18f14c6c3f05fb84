//! Accounts, teams and hosts: attaching a worker and authenticating it.

use super::{Store, key_hash, key_matches};
use crate::error::{Error, Result};
use cobble_proto::v1::RegisterHostRequest;
use sqlx::Row;

/// A host as the services see it after authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIdentity {
    pub host_id: i64,
    pub account_id: i64,
}

/// The result of attaching a host.
#[derive(Debug, Clone)]
pub struct Attached {
    pub account_id: i64,
    /// Set only when this call created the account.
    pub new_account_key: Option<String>,
    pub host_id: i64,
    pub host_key: String,
}

const MAX_NAME_LEN: usize = 64;

fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = !name.trim().is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{what} name {name:?} must be 1 to {MAX_NAME_LEN} printable characters"
        )))
    }
}

impl Store {
    /// Attaches a host to an account, creating the account (and its team)
    /// on first use. An existing account requires its key.
    pub async fn register_host(&self, request: &RegisterHostRequest) -> Result<Attached> {
        check_name("account", &request.account)?;
        if !request.team.is_empty() {
            check_name("team", &request.team)?;
        }
        let host_name = if request.host_name.is_empty() {
            "host"
        } else {
            request.host_name.as_str()
        };
        check_name("host", host_name)?;
        let now = cobble_core::now_ms();
        let mut tx = self.db.begin_write().await?;

        let existing = sqlx::query("SELECT id, key_hash FROM accounts WHERE name = $1")
            .bind(&request.account)
            .fetch_optional(&mut *tx)
            .await?;
        let (account_id, new_account_key) = match existing {
            Some(row) => {
                let stored: Vec<u8> = row.try_get("key_hash")?;
                if request.account_key.is_empty() {
                    return Err(Error::AlreadyExists(format!(
                        "account {:?} exists; attach with its account key",
                        request.account
                    )));
                }
                if !key_matches(&request.account_key, &stored) {
                    return Err(Error::Unauthenticated(format!(
                        "wrong account key for account {:?}",
                        request.account
                    )));
                }
                (row.try_get::<i64, _>("id")?, None)
            }
            None => {
                if !request.account_key.is_empty() {
                    return Err(Error::NotFound(format!(
                        "no account {:?}; attach without a key to create it",
                        request.account
                    )));
                }
                if let Some(code) = &self.invite_code
                    && !key_matches(&request.invite_code, code)
                {
                    return Err(Error::PermissionDenied(
                        "this project creates accounts by invitation only: attach with the invitation code its operators gave you (--invite-code)"
                            .into(),
                    ));
                }
                let key = cobble_core::random_token();
                // Two first attaches of one new account at once: the one
                // that loses the race is told the account exists, rather
                // than hitting a unique violation (an internal error).
                let id: Option<i64> = sqlx::query_scalar(
                    "INSERT INTO accounts (name, key_hash, created_ms, cross_project_id)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (name) DO NOTHING RETURNING id",
                )
                .bind(&request.account)
                .bind(key_hash(&key))
                .bind(now)
                .bind(cobble_core::random_token())
                .fetch_optional(&mut *tx)
                .await?;
                let id = id.ok_or_else(|| {
                    Error::AlreadyExists(format!(
                        "account {:?} was just created by another attach; attach with its account key",
                        request.account
                    ))
                })?;
                (id, Some(key))
            }
        };

        // Consent to public names: the latest attach decides.
        sqlx::query("UPDATE accounts SET public_name = $1 WHERE id = $2")
            .bind(i64::from(request.public_name))
            .bind(account_id)
            .execute(&mut *tx)
            .await?;

        if !request.team.is_empty() {
            // Get or create, safe when two hosts attach to a new team at
            // once: the insert waits for the other's and does nothing, and
            // the select (a new snapshot) then sees its row.
            sqlx::query(
                "INSERT INTO teams (name, created_ms) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&request.team)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let team_id: i64 = sqlx::query_scalar("SELECT id FROM teams WHERE name = $1")
                .bind(&request.team)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("UPDATE accounts SET team_id = $1 WHERE id = $2")
                .bind(team_id)
                .bind(account_id)
                .execute(&mut *tx)
                .await?;
        }

        let host_key = cobble_core::random_token();
        let host_id: i64 = sqlx::query_scalar(
            "INSERT INTO hosts (account_id, name, key_hash, cpus, memory_bytes, os, created_ms, last_contact_ms, daily_quota)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) RETURNING id",
        )
        .bind(account_id)
        .bind(host_name)
        .bind(key_hash(&host_key))
        .bind(i64::from(request.cpus))
        .bind(i64::try_from(request.memory_bytes).unwrap_or(i64::MAX))
        .bind(&request.os)
        .bind(now)
        .bind(i64::from(self.policy().initial_daily_quota.max(1)))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.db.make_durable().await?;
        tracing::info!(account = %request.account, host_id, "host attached");
        Ok(Attached {
            account_id,
            new_account_key,
            host_id,
            host_key,
        })
    }

    /// Checks a host's credentials from request metadata.
    pub async fn authenticate_host(&self, host_id: i64, host_key: &str) -> Result<HostIdentity> {
        let row = sqlx::query("SELECT account_id, key_hash FROM hosts WHERE id = $1")
            .bind(host_id)
            .fetch_optional(self.db.pool())
            .await?;
        let refused =
            || Error::Unauthenticated(format!("unknown host {host_id} or wrong host key"));
        let row = row.ok_or_else(refused)?;
        let stored: Vec<u8> = row.try_get("key_hash")?;
        if !key_matches(host_key, &stored) {
            return Err(refused());
        }
        Ok(HostIdentity {
            host_id,
            account_id: row.try_get("account_id")?,
        })
    }
}
