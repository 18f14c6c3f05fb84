//! The leaderboard: users, teams and hosts ranked by total credit, names
//! shown only with their owners' consent.

use super::Store;
use super::site::Board;
use crate::credit;
use crate::error::{Error, Result};
use cobble_proto::v1 as pb;
use sqlx::Row;

impl Store {
    pub async fn leaderboard(&self, kind: &str, limit: u32) -> Result<pb::Leaderboard> {
        let limit = i64::from(limit.clamp(1, 1000));
        let board = match kind {
            "" | "users" => Board::Users,
            "teams" => Board::Teams,
            "hosts" => Board::Hosts,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown leaderboard {other:?}; use users, teams or hosts"
                )));
            }
        };
        // The same rows and names as the web site's lists.
        let (from, detail, _) = board.source();
        let sql = format!(
            "SELECT x.id, {} AS name, {detail} AS detail, x.total_credit, x.rac, x.rac_time_ms,
                    x.valid_results
             FROM {from} ORDER BY x.total_credit DESC, x.id LIMIT $1",
            board.shown_name()
        );
        let now = cobble_core::now_ms();
        let rows = sqlx::query(&sql)
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        let mut entries = Vec::with_capacity(rows.len());
        for (place, row) in rows.iter().enumerate() {
            let entry = super::site::ranked_row(row, place as u64 + 1, now)?;
            entries.push(pb::LeaderboardEntry {
                rank: entry.rank as u32,
                id: entry.id,
                name: entry.name,
                detail: entry.detail,
                total_credit: entry.total_credit,
                recent_average_credit: entry.recent_average_credit,
                valid_results: entry.valid_results,
            });
        }
        Ok(pb::Leaderboard {
            kind: if kind.is_empty() { "users" } else { kind }.to_string(),
            entries,
        })
    }

    /// One host's credit, as its owner sees it in `cobble-worker status`.
    pub async fn host_credit(&self, host_id: i64) -> Result<pb::HostCredit> {
        let row = sqlx::query(
            "SELECT total_credit, rac, rac_time_ms, valid_results FROM hosts WHERE id = $1",
        )
        .bind(host_id)
        .fetch_one(self.db.pool())
        .await?;
        Ok(pb::HostCredit {
            total_credit: row.try_get("total_credit")?,
            recent_average_credit: credit::decayed_rac(
                row.try_get("rac")?,
                row.try_get("rac_time_ms")?,
                cobble_core::now_ms(),
            ),
            valid_results: row.try_get::<i64, _>("valid_results")?.max(0) as u64,
        })
    }
}
