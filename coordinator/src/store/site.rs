//! What the project's web site shows: its counters, the ranked lists of
//! users, teams and hosts (paginated, by total credit or by RAC, searched
//! by name), and the server's status. Read-only; the web layer caches it.

use super::Store;
use crate::credit;
use crate::error::{Error, Result};
use serde::Serialize;
use sqlx::Row;

/// Which list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Board {
    Users,
    Teams,
    Hosts,
}

impl Board {
    pub fn parse(text: &str) -> Option<Board> {
        match text {
            "users" => Some(Board::Users),
            "teams" => Some(Board::Teams),
            "hosts" => Some(Board::Hosts),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Board::Users => "users",
            Board::Teams => "teams",
            Board::Hosts => "hosts",
        }
    }

    /// The rows and their `detail` (a user's team, a host's owner), and
    /// the table ranks are counted in.
    pub(super) fn source(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Board::Users => (
                "accounts x LEFT JOIN teams t ON t.id = x.team_id",
                "COALESCE(t.name, '')",
                "accounts",
            ),
            Board::Teams => ("teams x", "''", "teams"),
            Board::Hosts => (
                "hosts x JOIN accounts a ON a.id = x.account_id",
                OWNER_NAME,
                "hosts",
            ),
        }
    }

    /// The name shown for row `x`: an account's or a host's only with the
    /// account's consent, else an anonymous id; a team's always (a team is
    /// public by its founder's choice).
    pub(super) fn shown_name(self) -> &'static str {
        match self {
            Board::Users => USER_NAME,
            Board::Teams => "x.name",
            Board::Hosts => HOST_NAME,
        }
    }
}

/// A board in credit order (total credit descending, then id), as the
/// lists and `cobble leaderboard` rank it.
#[derive(Debug, Default)]
pub struct Standings {
    order: Vec<(f64, i64)>,
}

impl Standings {
    /// The rank of a row with this credit and id: one more than the rows
    /// ahead of it, as the lists count.
    pub fn rank_of(&self, credit: f64, id: i64) -> u64 {
        let ahead = self
            .order
            .partition_point(|&(c, i)| c > credit || (c == credit && i < id));
        ahead as u64 + 1
    }
}

/// What a list is ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ranking {
    /// Total credit, ties by age: the order `cobble leaderboard` gives.
    Credit,
    /// Recent average credit as of now (a 7-day half-life).
    Rac,
}

impl Ranking {
    pub fn parse(text: &str) -> Option<Ranking> {
        match text {
            "credit" => Some(Ranking::Credit),
            "rac" => Some(Ranking::Rac),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Ranking::Credit => "credit",
            Ranking::Rac => "rac",
        }
    }

    fn column(self) -> &'static str {
        match self {
            Ranking::Credit => "total_credit",
            Ranking::Rac => "rac_key",
        }
    }
}

/// The public names, in SQL: `x` an account, or `x` a host owned by `a`.
const USER_NAME: &str =
    "CASE WHEN x.public_name = 1 THEN x.name ELSE 'anonymous-' || CAST(x.id AS TEXT) END";
const HOST_NAME: &str =
    "CASE WHEN a.public_name = 1 THEN x.name ELSE 'host-' || CAST(x.id AS TEXT) END";
pub(super) const OWNER_NAME: &str =
    "CASE WHEN a.public_name = 1 THEN a.name ELSE 'anonymous-' || CAST(a.id AS TEXT) END";

/// Longest name search taken (names are at most 64 characters).
pub const MAX_SEARCH_CHARS: usize = 100;
/// Most rows on one page.
pub const MAX_PER_PAGE: u32 = 100;
/// Highest page number taken.
pub const MAX_PAGE: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    pub board: Board,
    pub ranking: Ranking,
    /// From 1.
    pub page: u32,
    pub per_page: u32,
    pub search: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    /// Among all of the board by this ranking, a search or not.
    pub rank: u64,
    pub id: i64,
    pub name: String,
    pub detail: String,
    pub total_credit: f64,
    pub recent_average_credit: f64,
    pub valid_results: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RankedPage {
    pub board: Board,
    pub ranking: Ranking,
    pub page: u32,
    pub per_page: u32,
    /// Rows matching the search (all of the board without one).
    pub total: u64,
    pub entries: Vec<Ranked>,
}

/// The project's figures for its home page.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectCounters {
    pub hosts_active_24h: u64,
    pub results_unsent: u64,
    pub results_in_progress: u64,
    pub results_validated_24h: u64,
    pub users: u64,
    pub total_credit: f64,
    /// The sum of users' RAC: credit per day, one credit being about a
    /// second of one core's work.
    pub recent_average_credit: f64,
    /// That, as cores computing around the clock.
    pub cores_busy: f64,
}

/// What BOINC's server status page shows.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStatus {
    pub units_by_state: Vec<(String, u64)>,
    pub results_by_state: Vec<(String, u64)>,
    /// Units waiting for the validator daemon.
    pub validation_backlog: u64,
    pub users_with_recent_credit: u64,
    pub hosts_with_recent_credit: u64,
    pub database_latency_ms: f64,
}

const DAY_MS: i64 = 24 * 3_600_000;

/// One user's, team's or host's page.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub board: Board,
    pub id: i64,
    pub name: String,
    /// By total credit, among all of the board.
    pub rank: u64,
    pub total_credit: f64,
    pub recent_average_credit: f64,
    pub valid_results: u64,
    pub created_ms: i64,
    /// A user's team, a host's owner.
    pub link: Option<Link>,
    /// A host's processor count and operating system.
    pub cpus: Option<u32>,
    pub os: Option<String>,
    /// A team's members, a user's hosts, by total credit.
    pub members: Vec<Ranked>,
    /// A host's latest results.
    pub results: Vec<RecentResult>,
    /// Total credit at the end of each day it changed, today's live.
    pub history: Vec<DayPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub board: Board,
    pub id: i64,
    pub name: String,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct DayPoint {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub total_credit: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecentResult {
    pub result_id: i64,
    pub job_id: i64,
    pub unit_index: i64,
    /// valid, invalid, pending validation, error, timed out, in progress,
    /// aborted, not needed.
    pub outcome: &'static str,
    pub credit: f64,
    pub reported_ms: Option<i64>,
}

/// How many of a host's results its page lists, and members a page shows.
const RECENT_RESULTS: i64 = 20;
const MEMBERS_SHOWN: i64 = 100;

impl Store {
    /// One page of a ranked list.
    pub async fn ranked(&self, query: &ListQuery) -> Result<RankedPage> {
        if query.search.chars().count() > MAX_SEARCH_CHARS {
            return Err(Error::InvalidArgument(format!(
                "a name search is at most {MAX_SEARCH_CHARS} characters"
            )));
        }
        if !(1..=MAX_PAGE).contains(&query.page) || !(1..=MAX_PER_PAGE).contains(&query.per_page) {
            return Err(Error::InvalidArgument(format!(
                "page runs from 1 to {MAX_PAGE}, per_page from 1 to {MAX_PER_PAGE}"
            )));
        }
        let (from, detail, table) = query.board.source();
        let column = query.ranking.column();
        let pattern = like_pattern(&query.search);
        let name = query.board.shown_name();
        // A search matches shown names only: a private name must not be
        // found (nor its rank learnt) by guessing it.
        let filter = format!("($1 = '' OR LOWER({name}) LIKE LOWER($2) ESCAPE '\\')");
        let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {from} WHERE {filter}"))
            .bind(&query.search)
            .bind(&pattern)
            .fetch_one(self.db.pool())
            .await?;
        let offset = i64::from(query.page - 1) * i64::from(query.per_page);
        // Without a search a row's rank is its place; with one it is
        // counted among the whole board.
        let rank = format!(
            "(SELECT COUNT(*) FROM {table} b WHERE b.{column} > x.{column}
                 OR (b.{column} = x.{column} AND b.id < x.id)) + 1"
        );
        let rows = sqlx::query(&format!(
            "SELECT x.id, {name} AS name, {detail} AS detail, x.total_credit, x.rac, x.rac_time_ms,
                    x.valid_results, {rank} AS rank
             FROM {from} WHERE {filter}
             ORDER BY x.{column} DESC, x.id LIMIT $3 OFFSET $4",
            rank = if query.search.is_empty() {
                "CAST(0 AS BIGINT)"
            } else {
                &rank
            }
        ))
        .bind(&query.search)
        .bind(&pattern)
        .bind(i64::from(query.per_page))
        .bind(offset)
        .fetch_all(self.db.pool())
        .await?;
        let now = cobble_core::now_ms();
        let mut entries = Vec::with_capacity(rows.len());
        for (place, row) in rows.iter().enumerate() {
            let counted: i64 = row.try_get("rank")?;
            let rank = if query.search.is_empty() {
                (offset + place as i64 + 1) as u64
            } else {
                counted.max(1) as u64
            };
            entries.push(ranked_row(row, rank, now)?);
        }
        Ok(RankedPage {
            board: query.board,
            ranking: query.ranking,
            page: query.page,
            per_page: query.per_page,
            total: total.max(0) as u64,
            entries,
        })
    }

    pub async fn project_counters(&self) -> Result<ProjectCounters> {
        let now = cobble_core::now_ms();
        let pool = self.db.pool();
        let count = |sql: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(now - DAY_MS)
                .fetch_one(pool)
                .await
                .map(|n| n.max(0) as u64)
        };
        let hosts_active_24h =
            count("SELECT COUNT(*) FROM hosts WHERE last_contact_ms > $1").await?;
        let results_validated_24h = count(
            "SELECT COUNT(*) FROM results WHERE validate_state = 'valid' AND reported_ms > $1",
        )
        .await?;
        // Only the two states the home page shows: an index range each,
        // not the whole table the status page groups.
        let by_state = grouped(
            sqlx::query(
                "SELECT state, COUNT(*) AS n FROM results
                 WHERE state IN ('unsent', 'in_progress') GROUP BY state",
            )
            .fetch_all(pool)
            .await?,
        )?;
        let of = |state: &str| {
            by_state
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n)
        };
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(pool)
            .await?;
        let total_credit: f64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(total_credit), 0.0) FROM accounts")
                .fetch_one(pool)
                .await?;
        // Each account's RAC decays from its own time: summed here rather
        // than in SQL, which SQLite could not (no exp()).
        let racs = sqlx::query("SELECT rac, rac_time_ms FROM accounts WHERE rac > 0")
            .fetch_all(pool)
            .await?;
        let mut recent_average_credit = 0.0;
        for row in &racs {
            recent_average_credit +=
                credit::decayed_rac(row.try_get("rac")?, row.try_get("rac_time_ms")?, now);
        }
        Ok(ProjectCounters {
            hosts_active_24h,
            results_unsent: of("unsent"),
            results_in_progress: of("in_progress"),
            results_validated_24h,
            users: users.max(0) as u64,
            total_credit,
            recent_average_credit,
            cores_busy: recent_average_credit / 86_400.0,
        })
    }

    pub async fn server_status(&self) -> Result<ServerStatus> {
        let now = cobble_core::now_ms();
        let pool = self.db.pool();
        let started = std::time::Instant::now();
        sqlx::query_scalar::<_, i64>("SELECT 1")
            .fetch_one(pool)
            .await?;
        let database_latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let units_by_state = grouped(
            sqlx::query("SELECT state, COUNT(*) AS n FROM units GROUP BY state ORDER BY state")
                .fetch_all(pool)
                .await?,
        )?;
        let validation_backlog: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM units WHERE needs_validator = 1")
                .fetch_one(pool)
                .await?;
        let week = now - 7 * DAY_MS;
        let users_with_recent_credit: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE rac_time_ms > $1")
                .bind(week)
                .fetch_one(pool)
                .await?;
        let hosts_with_recent_credit: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM hosts WHERE rac_time_ms > $1")
                .bind(week)
                .fetch_one(pool)
                .await?;
        Ok(ServerStatus {
            units_by_state,
            results_by_state: self.results_by_state().await?,
            validation_backlog: validation_backlog.max(0) as u64,
            users_with_recent_credit: users_with_recent_credit.max(0) as u64,
            hosts_with_recent_credit: hosts_with_recent_credit.max(0) as u64,
            database_latency_ms,
        })
    }

    async fn results_by_state(&self) -> Result<Vec<(String, u64)>> {
        grouped(
            sqlx::query("SELECT state, COUNT(*) AS n FROM results GROUP BY state ORDER BY state")
                .fetch_all(self.db.pool())
                .await?,
        )
    }

    /// A board's order by total credit as of now, for ranks by binary
    /// search (the site keeps one per board for [`crate::web::FRESH_FOR`]).
    pub async fn standings(&self, board: Board) -> Result<Standings> {
        let (_, _, table) = board.source();
        let rows = sqlx::query(&format!(
            "SELECT total_credit, id FROM {table} ORDER BY total_credit DESC, id"
        ))
        .fetch_all(self.db.pool())
        .await?;
        let order = rows
            .iter()
            .map(|row| {
                Ok((
                    row.try_get::<f64, _>("total_credit")?,
                    row.try_get::<i64, _>("id")?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Standings { order })
    }

    /// A user's, team's or host's page; None if there is no such id. Its
    /// rank is read from `standings`: counting the rows ahead of it per
    /// view cost a scan of the board's credit index, with heap visits on
    /// PostgreSQL (p99 569 ms under 16 clients on 100,000 accounts).
    pub async fn profile(
        &self,
        board: Board,
        id: i64,
        standings: &Standings,
    ) -> Result<Option<Profile>> {
        let (from, detail, _) = board.source();
        let pool = self.db.pool();
        let name = board.shown_name();
        let Some(row) = sqlx::query(&format!(
            "SELECT x.id, {name} AS name, {detail} AS detail, x.total_credit, x.rac, x.rac_time_ms,
                    x.valid_results, x.created_ms
             FROM {from} WHERE x.id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await?
        else {
            return Ok(None);
        };
        let now = cobble_core::now_ms();
        let total_credit: f64 = row.try_get("total_credit")?;
        let entry = ranked_row(&row, standings.rank_of(total_credit, id), now)?;
        let mut profile = Profile {
            board,
            id,
            name: entry.name,
            rank: entry.rank,
            total_credit,
            recent_average_credit: entry.recent_average_credit,
            valid_results: entry.valid_results,
            created_ms: row.try_get("created_ms")?,
            link: None,
            cpus: None,
            os: None,
            members: Vec::new(),
            results: Vec::new(),
            history: self.history(board, id, total_credit, now).await?,
        };
        match board {
            Board::Users => {
                let team = sqlx::query(
                    "SELECT t.id, t.name FROM accounts x JOIN teams t ON t.id = x.team_id
                     WHERE x.id = $1",
                )
                .bind(id)
                .fetch_optional(pool)
                .await?;
                if let Some(team) = team {
                    profile.link = Some(Link {
                        board: Board::Teams,
                        id: team.try_get("id")?,
                        name: team.try_get("name")?,
                    });
                }
                profile.members = self
                    .members(
                        "hosts x JOIN accounts a ON a.id = x.account_id WHERE x.account_id = $1",
                        (HOST_NAME, OWNER_NAME),
                        id,
                        now,
                    )
                    .await?;
            }
            Board::Teams => {
                profile.members = self
                    .members(
                        "accounts x JOIN teams t ON t.id = x.team_id WHERE x.team_id = $1",
                        (USER_NAME, "t.name"),
                        id,
                        now,
                    )
                    .await?;
            }
            Board::Hosts => {
                let host = sqlx::query(&format!(
                    "SELECT x.account_id, {OWNER_NAME} AS name, x.cpus, x.os FROM hosts x
                     JOIN accounts a ON a.id = x.account_id WHERE x.id = $1"
                ))
                .bind(id)
                .fetch_one(pool)
                .await?;
                profile.link = Some(Link {
                    board: Board::Users,
                    id: host.try_get("account_id")?,
                    name: host.try_get("name")?,
                });
                profile.cpus = Some(host.try_get::<i64, _>("cpus")?.clamp(0, 1 << 20) as u32);
                profile.os = Some(host.try_get("os")?);
                profile.results = self.recent_results(id).await?;
            }
        }
        Ok(Some(profile))
    }

    /// Rows of `from` (which ends in a `WHERE ... = $1`) ranked by credit.
    async fn members(
        &self,
        from: &str,
        (name, detail): (&str, &str),
        id: i64,
        now: i64,
    ) -> Result<Vec<Ranked>> {
        let rows = sqlx::query(&format!(
            "SELECT x.id, {name} AS name, {detail} AS detail, x.total_credit, x.rac, x.rac_time_ms,
                    x.valid_results
             FROM {from} ORDER BY x.total_credit DESC, x.id LIMIT {MEMBERS_SHOWN}"
        ))
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .enumerate()
            .map(|(place, row)| ranked_row(row, place as u64 + 1, now))
            .collect()
    }

    async fn recent_results(&self, host_id: i64) -> Result<Vec<RecentResult>> {
        let rows = sqlx::query(&format!(
            "SELECT r.id, u.job_id, u.idx, r.state, r.outcome, r.validate_state,
                    r.granted_credit, r.reported_ms
             FROM results r JOIN units u ON u.id = r.unit_id
             WHERE r.host_id = $1 ORDER BY r.id DESC LIMIT {RECENT_RESULTS}"
        ))
        .bind(host_id)
        .fetch_all(self.db.pool())
        .await?;
        let mut results = Vec::with_capacity(rows.len());
        for row in rows {
            let outcome = match (
                row.try_get::<String, _>("state")?.as_str(),
                row.try_get::<Option<String>, _>("outcome")?.as_deref(),
                row.try_get::<String, _>("validate_state")?.as_str(),
            ) {
                ("in_progress", _, _) => "in progress",
                ("timed_out", _, _) => "timed out",
                ("aborted", _, _) => "aborted",
                ("reported", Some("success"), "valid") => "valid",
                ("reported", Some("success"), "invalid") => "invalid",
                ("reported", Some("success"), "not_needed") => "not needed",
                ("reported", Some("success"), _) => "pending validation",
                ("reported", _, _) => "error",
                _ => "unsent",
            };
            results.push(RecentResult {
                result_id: row.try_get("id")?,
                job_id: row.try_get("job_id")?,
                unit_index: row.try_get("idx")?,
                outcome,
                credit: row.try_get("granted_credit")?,
                reported_ms: row.try_get("reported_ms")?,
            });
        }
        Ok(results)
    }

    /// The stored daily totals, and today's from the live total.
    async fn history(
        &self,
        board: Board,
        id: i64,
        total_credit: f64,
        now: i64,
    ) -> Result<Vec<DayPoint>> {
        let today = now.div_euclid(DAY_MS);
        let rows = sqlx::query(
            "SELECT day, total_credit FROM credit_days
             WHERE board = $1 AND id = $2 AND day < $3 ORDER BY day",
        )
        .bind(board.name())
        .bind(id)
        .bind(today)
        .fetch_all(self.db.pool())
        .await?;
        let mut points = rows
            .iter()
            .map(|row| {
                Ok(DayPoint {
                    day: row.try_get("day")?,
                    total_credit: row.try_get("total_credit")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if total_credit > 0.0 {
            points.push(DayPoint {
                day: today,
                total_credit,
            });
        }
        Ok(points)
    }

    /// Records today's total for every user, team and host credited since
    /// `since` (Unix ms); the leader runs it every minute or so.
    pub async fn record_credit_days(&self, since: i64) -> Result<()> {
        let today = cobble_core::now_ms().div_euclid(DAY_MS);
        for board in [Board::Users, Board::Teams, Board::Hosts] {
            let (_, _, table) = board.source();
            sqlx::query(&format!(
                "INSERT INTO credit_days (board, id, day, total_credit)
                 SELECT $1, id, $2, total_credit FROM {table} WHERE rac_time_ms >= $3
                 ON CONFLICT (board, id, day) DO UPDATE SET total_credit = excluded.total_credit"
            ))
            .bind(board.name())
            .bind(today)
            .bind(since)
            .execute(self.db.writes())
            .await?;
        }
        Ok(())
    }

    /// Gives rows credited before RAC ordering keys existed their key (a
    /// no-op once done); run at start.
    pub async fn fill_rac_keys(&self) -> Result<()> {
        for table in ["accounts", "teams", "hosts"] {
            let rows = sqlx::query(&format!(
                "SELECT id, rac, rac_time_ms FROM {table} WHERE rac > 0 AND rac_key <= $1"
            ))
            .bind(credit::NO_RAC_KEY)
            .fetch_all(self.db.pool())
            .await?;
            for row in rows {
                let key = credit::rac_order_key(row.try_get("rac")?, row.try_get("rac_time_ms")?);
                sqlx::query(&format!("UPDATE {table} SET rac_key = $1 WHERE id = $2"))
                    .bind(key)
                    .bind(row.try_get::<i64, _>("id")?)
                    .execute(self.db.writes())
                    .await?;
            }
        }
        Ok(())
    }
}

/// A row of `id, name, detail, total_credit, rac, rac_time_ms,
/// valid_results` as a ranked entry, its RAC decayed to `now`.
pub(super) fn ranked_row(row: &sqlx::any::AnyRow, rank: u64, now: i64) -> Result<Ranked> {
    Ok(Ranked {
        rank,
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        detail: row.try_get("detail")?,
        total_credit: row.try_get("total_credit")?,
        recent_average_credit: credit::decayed_rac(
            row.try_get("rac")?,
            row.try_get("rac_time_ms")?,
            now,
        ),
        valid_results: row.try_get::<i64, _>("valid_results")?.max(0) as u64,
    })
}

fn grouped(rows: Vec<sqlx::any::AnyRow>) -> Result<Vec<(String, u64)>> {
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("state")?,
                row.try_get::<i64, _>("n")?.max(0) as u64,
            ))
        })
        .collect()
}

/// `%text%` for LIKE, with LIKE's own characters taken literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standings_rank_as_the_lists_count() {
        // Credit descending, then id: what `ORDER BY total_credit DESC, id` gives.
        let standings = Standings {
            order: vec![(50.0, 3), (20.0, 1), (20.0, 4), (0.0, 2)],
        };
        assert_eq!(standings.rank_of(50.0, 3), 1);
        assert_eq!(standings.rank_of(20.0, 1), 2);
        assert_eq!(standings.rank_of(20.0, 4), 3, "a tie goes by id");
        assert_eq!(standings.rank_of(0.0, 2), 4);
        // Credit earned since the snapshot ranks among it as it is now.
        assert_eq!(standings.rank_of(60.0, 2), 1);
        assert_eq!(standings.rank_of(20.0, 9), 4);
        assert_eq!(Standings::default().rank_of(1.0, 1), 1);
    }

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(like_pattern("ada"), "%ada%");
        assert_eq!(like_pattern("100%_\\"), "%100\\%\\_\\\\%");
    }
}
