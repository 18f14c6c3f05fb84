//! The database handle: embedded SQLite by default, PostgreSQL when one
//! machine is not enough. One SQL dialect serves both through sqlx's Any
//! driver; the few differences live here.

use crate::error::Result;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Transaction};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// Where write transactions run. SQLite: a pool of one connection, so
    /// writers queue in order here instead of sleeping in SQLite's busy
    /// handler (which polls with growing sleeps, and made a p99 of
    /// hundreds of milliseconds with a few writers). PostgreSQL: `pool`.
    writer: AnyPool,
    backend: Backend,
}

pub type Tx = Transaction<'static, Any>;

impl Db {
    /// Opens the embedded SQLite database in `data_dir`, creating it.
    pub async fn open_embedded(data_dir: &Path) -> Result<Db> {
        let path = data_dir.join("cobble.db");
        Self::connect(&format!("sqlite://{}?mode=rwc", path.display()), None).await
    }

    /// Connects to `sqlite://...` or `postgres://...` and applies
    /// migrations; `connections` caps the pool (default: 8 for SQLite, 16
    /// for PostgreSQL).
    pub async fn connect(url: &str, connections: Option<u32>) -> Result<Db> {
        install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let default_connections = if backend == Backend::Sqlite { 8 } else { 16 };
        let options = || {
            AnyPoolOptions::new()
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(move |connection, _| {
                    Box::pin(async move {
                        for setting in session_settings(backend) {
                            sqlx::query(setting).execute(&mut *connection).await?;
                        }
                        Ok(())
                    })
                })
        };
        let pool = options()
            .max_connections(connections.unwrap_or(default_connections).max(2))
            .connect(url)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers run beside the one writer. The setting is stored
            // in the database file, so one connection setting it is enough.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        } else {
            sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        }
        let writer = match backend {
            Backend::Sqlite => options().max_connections(1).connect(url).await?,
            Backend::Postgres => pool.clone(),
        };
        Ok(Db {
            pool,
            writer,
            backend,
        })
    }

    /// Makes every committed transaction durable now. On SQLite with
    /// `synchronous = NORMAL` a commit reaches the WAL but is synced only
    /// at the next checkpoint; what must survive a power loss the moment
    /// it is acknowledged (a submitted job, an account) calls this. On
    /// PostgreSQL every commit is durable already.
    pub async fn make_durable(&self) -> Result<()> {
        if self.backend == Backend::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// Housekeeping the database would otherwise need from someone else:
    /// on PostgreSQL, VACUUM and ANALYZE of the tables that change all the
    /// time (the coordinator never relies on autovacuum, which some
    /// servers run without); on SQLite, `PRAGMA optimize`. The leader runs
    /// it every few minutes.
    pub async fn maintain(&self) -> Result<()> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::query("PRAGMA optimize").execute(&self.pool).await?;
            }
            Backend::Postgres => {
                sqlx::query(
                    "VACUUM (ANALYZE) results, units, jobs, hosts, accounts, teams, host_trust, small_blobs",
                )
                .execute(&self.pool)
                .await?;
            }
        }
        Ok(())
    }

    /// For reads, and on PostgreSQL anything.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// For a write outside a transaction (one statement): on SQLite it
    /// queues with the write transactions instead of waiting for them in
    /// the busy handler.
    pub fn writes(&self) -> &AnyPool {
        &self.writer
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a transaction that will write. On SQLite it takes the write
    /// lock up front (`BEGIN IMMEDIATE`): a deferred transaction that reads
    /// and then writes fails with SQLITE_BUSY when another writer committed
    /// in between, which the busy timeout cannot cure.
    pub async fn begin_write(&self) -> Result<Tx> {
        Ok(match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        })
    }

    /// Row-lock suffix for a SELECT inside a write transaction. SQLite's
    /// `BEGIN IMMEDIATE` already serializes writers, PostgreSQL needs it.
    /// `tables` names the aliases to lock: locking a joined job row would
    /// serialize every report of the job. `NO KEY UPDATE`, because no
    /// transaction changes a key: a plain `FOR UPDATE` would also conflict
    /// with the key-share locks that foreign-key checks take (inserting a
    /// result of a unit, issuing a result to a host), and deadlock.
    pub fn for_update_of(&self, tables: &str) -> String {
        match self.backend {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(" FOR NO KEY UPDATE OF {tables}"),
        }
    }

    /// Suffix for a SELECT that picks rows to claim or touch: on
    /// PostgreSQL it locks them and skips rows another transaction holds
    /// (that one is claiming them), so claimers neither queue behind each
    /// other nor deadlock. SQLite's one writer needs none.
    pub fn skip_locked(&self, tables: &str) -> String {
        match self.backend {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(" FOR NO KEY UPDATE OF {tables} SKIP LOCKED"),
        }
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// Settings every connection starts with.
///
/// SQLite: WAL with `synchronous = NORMAL`: a commit is a write to the WAL,
/// not an fsync; a power loss (not a crash of the coordinator) may undo
/// the last commits, never half of one. Reports, leases and credit move
/// together in one transaction, so what is undone is undone whole: a host
/// whose report was undone has its lease time out and the unit go out
/// again. What must survive a power loss once acknowledged calls
/// [`Db::make_durable`]. A busy timeout, for the writers of the few
/// transactions that are not `BEGIN IMMEDIATE`.
///
/// PostgreSQL: plans that do not depend on statistics. The scheduler's and
/// reports' queries are index lookups that stop early; without ANALYZE (or
/// with statistics from when a job's units were all pending) the planner
/// picks bitmap and sequential scans that visit every pending unit. With
/// those two off it uses the indexes, whatever the statistics say; they
/// stay available where no index serves.
fn session_settings(backend: Backend) -> &'static [&'static str] {
    match backend {
        Backend::Sqlite => &["PRAGMA synchronous = NORMAL", "PRAGMA busy_timeout = 5000"],
        Backend::Postgres => &["SET enable_seqscan = off", "SET enable_bitmapscan = off"],
    }
}
