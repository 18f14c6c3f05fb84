//! Which coordinator does the project's background work when several
//! share one PostgreSQL database: the lease sweep, deferred credit, ending
//! jobs, researchers' validators and garbage collection each run in one
//! process at a time, the one holding a session advisory lock. The lock
//! lives on a connection kept for it; when that process dies its session
//! ends, the lock with it, and another process takes over at its next
//! tick. Requests need no leader: any coordinator answers any call.
//! SQLite has one process, which always leads.

use crate::db::{Backend, Db};
use sqlx::Any;
use sqlx::pool::PoolConnection;
use tokio::sync::Mutex;

/// The advisory lock's key: "cobble" in ASCII.
const LEADER_LOCK: i64 = 0x636f_6262_6c65;

#[derive(Debug)]
pub struct Leadership {
    db: Db,
    /// The connection holding the lock, while this process leads.
    held: Mutex<Option<PoolConnection<Any>>>,
}

impl Leadership {
    pub fn new(db: Db) -> Self {
        Leadership {
            db,
            held: Mutex::new(None),
        }
    }

    /// Whether this process leads now, taking the lead if nobody holds it.
    pub async fn check(&self) -> bool {
        if self.db.backend() == Backend::Sqlite {
            return true;
        }
        let mut held = self.held.lock().await;
        if let Some(connection) = held.as_mut() {
            // The lock lasts as long as this session: is it still there?
            if sqlx::query("SELECT 1")
                .execute(&mut **connection)
                .await
                .is_ok()
            {
                return true;
            }
            tracing::warn!("lost the connection holding the lead; trying to take it again");
            *held = None;
        }
        let Ok(mut connection) = self.db.pool().acquire().await else {
            return false;
        };
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *connection)
            .await
            .unwrap_or(false);
        if taken {
            tracing::info!("this coordinator now does the project's background work");
            *held = Some(connection);
        }
        taken
    }
}
