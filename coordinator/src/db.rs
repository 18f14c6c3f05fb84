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
    backend: Backend,
}

pub type Tx = Transaction<'static, Any>;

impl Db {
    /// Opens the embedded SQLite database in `data_dir`, creating it.
    pub async fn open_embedded(data_dir: &Path) -> Result<Db> {
        let path = data_dir.join("cobble.db");
        Self::connect(&format!("sqlite://{}?mode=rwc", path.display())).await
    }

    /// Connects to `sqlite://...` or `postgres://...` and applies migrations.
    pub async fn connect(url: &str) -> Result<Db> {
        install_default_drivers();
        let backend = if url.starts_with("postgres") {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(30))
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
        Ok(Db { pool, backend })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
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
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
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
        self.pool.close().await;
    }
}
