//! The statistics export third-party sites read (BOINC's db_dump): the
//! same files and element names, so BOINCstats, Free-DC and the like can
//! rank a Cobble project beside BOINC ones. `tables.xml` (counts and total
//! credit), `user.gz`, `team.gz` and `host.gz`, each replaced atomically.
//!
//! Privacy: an account's name, and its hosts' names, go out only with its
//! consent (`public_name`); otherwise the shown anonymous id, and no cpid.
//! The cpid is a hash of a random per-account id, never anything that
//! identifies the person. Totals count everyone.

use super::Store;
use super::site::Board;
use crate::credit;
use crate::error::{Error, Result};
use cobble_core::durable::{How, replace};
use flate2::Compression;
use flate2::write::GzEncoder;
use sqlx::Row;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

/// Rows read per query: memory stays bounded whatever the project's size.
const PAGE: i64 = 5_000;

/// What one export wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSummary {
    pub users: u64,
    pub teams: u64,
    pub hosts: u64,
    pub total_credit: f64,
}

/// The exported files, for serving them and nothing else.
pub const EXPORT_FILES: [&str; 4] = ["tables.xml", "user.gz", "team.gz", "host.gz"];

impl Store {
    /// Writes the export into `dir` (created if need be).
    pub async fn export_stats(&self, dir: &Path) -> Result<ExportSummary> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(Error::io(format!("creating {}", dir.display())))?;
        let now = cobble_core::now_ms();
        let users = self.export_users(dir, now).await?;
        let teams = self.export_teams(dir, now).await?;
        let hosts = self.export_hosts(dir, now).await?;
        let total_credit: f64 =
            sqlx::query_scalar("SELECT COALESCE(SUM(total_credit), 0.0) FROM accounts")
                .fetch_one(self.db.pool())
                .await?;
        let mut tables = String::from("<tables>\n");
        let _ = write!(
            tables,
            " <update_time>{}</update_time>\n <nusers_total>{users}</nusers_total>\n \
             <nteams_total>{teams}</nteams_total>\n <nhosts_total>{hosts}</nhosts_total>\n \
             <total_credit>{total_credit:.6}</total_credit>\n</tables>\n",
            now / 1000
        );
        write_file(dir, "tables.xml", tables.into_bytes()).await?;
        Ok(ExportSummary {
            users,
            teams,
            hosts,
            total_credit,
        })
    }

    async fn export_users(&self, dir: &Path, now: i64) -> Result<u64> {
        let name = Board::Users.shown_name();
        let mut out = Gz::new("users");
        let sql = format!(
            "SELECT x.id, {name} AS name, x.public_name, x.cross_project_id, x.created_ms,
                    x.total_credit, x.rac, x.rac_time_ms, x.team_id
             FROM accounts x WHERE x.id > $1 ORDER BY x.id LIMIT {PAGE}"
        );
        self.each_row(&sql, |row| {
            let consented = row.try_get::<i64, _>("public_name")? == 1;
            let cpid = match row.try_get::<Option<String>, _>("cross_project_id")? {
                Some(id) if consented => cpid(&id),
                _ => String::new(),
            };
            out.record("user", |e| {
                e.field("id", row.try_get("id")?);
                e.text("name", &row.try_get::<String, _>("name")?);
                e.field("create_time", row.try_get::<i64, _>("created_ms")? / 1000);
                credit_fields(e, row, now)?;
                e.text("cpid", &cpid);
                e.field(
                    "teamid",
                    row.try_get::<Option<i64>, _>("team_id")?.unwrap_or(0),
                );
                Ok(())
            })
        })
        .await?;
        let count = out.count;
        write_file(dir, "user.gz", out.finish()?).await?;
        Ok(count)
    }

    async fn export_teams(&self, dir: &Path, now: i64) -> Result<u64> {
        // Teams have no founder of record: the first account to join
        // stands for one, named only with its consent.
        let founder = "CASE WHEN f.public_name = 1 THEN f.name
                            ELSE 'anonymous-' || CAST(f.id AS TEXT) END";
        let mut out = Gz::new("teams");
        let sql = format!(
            "SELECT x.id, x.name, x.created_ms, x.total_credit, x.rac, x.rac_time_ms,
                    f.id AS founder_id, {founder} AS founder_name
             FROM teams x
             LEFT JOIN accounts f ON f.id = (SELECT MIN(m.id) FROM accounts m WHERE m.team_id = x.id)
             WHERE x.id > $1 ORDER BY x.id LIMIT {PAGE}"
        );
        self.each_row(&sql, |row| {
            out.record("team", |e| {
                e.field("id", row.try_get("id")?);
                e.field("type", 1);
                e.text("name", &row.try_get::<String, _>("name")?);
                e.field(
                    "userid",
                    row.try_get::<Option<i64>, _>("founder_id")?.unwrap_or(0),
                );
                credit_fields(e, row, now)?;
                e.text(
                    "founder_name",
                    &row.try_get::<Option<String>, _>("founder_name")?
                        .unwrap_or_default(),
                );
                e.field("create_time", row.try_get::<i64, _>("created_ms")? / 1000);
                Ok(())
            })
        })
        .await?;
        let count = out.count;
        write_file(dir, "team.gz", out.finish()?).await?;
        Ok(count)
    }

    async fn export_hosts(&self, dir: &Path, now: i64) -> Result<u64> {
        let mut out = Gz::new("hosts");
        let sql = format!(
            "SELECT x.id, x.account_id, x.total_credit, x.rac, x.rac_time_ms, x.os, x.cpus,
                    x.created_ms, x.last_contact_ms
             FROM hosts x WHERE x.id > $1 ORDER BY x.id LIMIT {PAGE}"
        );
        // As BOINC's: no host names at all, consent or not.
        self.each_row(&sql, |row| {
            out.record("host", |e| {
                e.field("id", row.try_get("id")?);
                e.field("userid", row.try_get::<i64, _>("account_id")?);
                credit_fields(e, row, now)?;
                e.text("p_vendor", "");
                e.text("p_model", "");
                e.text("os_name", &row.try_get::<String, _>("os")?);
                e.text("os_version", "");
                e.field("create_time", row.try_get::<i64, _>("created_ms")? / 1000);
                e.field("rpc_time", row.try_get::<i64, _>("last_contact_ms")? / 1000);
                e.field("timezone", 0);
                e.field("p_ncpus", row.try_get::<i64, _>("cpus")?);
                Ok(())
            })
        })
        .await?;
        let count = out.count;
        write_file(dir, "host.gz", out.finish()?).await?;
        Ok(count)
    }

    /// Runs `sql` (`$1` the last id seen, ordered by id, `LIMIT {PAGE}`)
    /// page by page, handing each row to `each`.
    async fn each_row(
        &self,
        sql: &str,
        mut each: impl FnMut(&sqlx::any::AnyRow) -> Result<()>,
    ) -> Result<()> {
        let mut after = 0i64;
        loop {
            let rows = sqlx::query(sql)
                .bind(after)
                .fetch_all(self.db.pool())
                .await?;
            for row in &rows {
                after = row.try_get("id")?;
                each(row)?;
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    /// Gives accounts created before cross-project ids existed one (a
    /// no-op once done); run at start.
    pub async fn fill_cross_project_ids(&self) -> Result<()> {
        let ids: Vec<i64> =
            sqlx::query_scalar("SELECT id FROM accounts WHERE cross_project_id IS NULL")
                .fetch_all(self.db.pool())
                .await?;
        for id in ids {
            sqlx::query(
                "UPDATE accounts SET cross_project_id = $1 WHERE id = $2 AND cross_project_id IS NULL",
            )
            .bind(cobble_core::random_token())
            .bind(id)
            .execute(self.db.writes())
            .await?;
        }
        Ok(())
    }
}

/// `total_credit`, `expavg_credit` (RAC as of now) and `expavg_time`.
fn credit_fields(e: &mut Element, row: &sqlx::any::AnyRow, now: i64) -> Result<()> {
    let rac: f64 = row.try_get("rac")?;
    let rac_time: i64 = row.try_get("rac_time_ms")?;
    e.float("total_credit", row.try_get("total_credit")?);
    e.float("expavg_credit", credit::decayed_rac(rac, rac_time, now));
    e.float("expavg_time", now as f64 / 1000.0);
    Ok(())
}

/// The exported cross-project id: 32 hex digits of a hash of the account's
/// random id, with a context of its own.
fn cpid(cross_project_id: &str) -> String {
    let hash = blake3::derive_key("cobble stats export cpid v1", cross_project_id.as_bytes());
    hex::encode(&hash[..16])
}

/// A gzip'd XML list, one element per record.
struct Gz {
    encoder: GzEncoder<Vec<u8>>,
    buffer: String,
    root: &'static str,
    count: u64,
    failed: Option<std::io::Error>,
}

/// One record's fields, escaped as XML text.
struct Element<'a>(&'a mut String);

impl Element<'_> {
    fn field(&mut self, name: &str, value: i64) {
        let _ = writeln!(self.0, " <{name}>{value}</{name}>");
    }

    fn float(&mut self, name: &str, value: f64) {
        let value = if value.is_finite() { value } else { 0.0 };
        let _ = writeln!(self.0, " <{name}>{value:.6}</{name}>");
    }

    fn text(&mut self, name: &str, value: &str) {
        let _ = writeln!(self.0, " <{name}>{}</{name}>", xml_escape(value));
    }
}

impl Gz {
    fn new(root: &'static str) -> Gz {
        let mut gz = Gz {
            encoder: GzEncoder::new(Vec::new(), Compression::default()),
            buffer: String::new(),
            root,
            count: 0,
            failed: None,
        };
        gz.buffer.push_str(&format!("<{root}>\n"));
        gz
    }

    fn record(
        &mut self,
        tag: &str,
        fields: impl FnOnce(&mut Element<'_>) -> Result<()>,
    ) -> Result<()> {
        let _ = writeln!(self.buffer, "<{tag}>");
        fields(&mut Element(&mut self.buffer))?;
        let _ = writeln!(self.buffer, "</{tag}>");
        self.count += 1;
        if self.buffer.len() > 1 << 16 {
            self.flush();
        }
        Ok(())
    }

    fn flush(&mut self) {
        if let Err(error) = self.encoder.write_all(self.buffer.as_bytes()) {
            self.failed.get_or_insert(error);
        }
        self.buffer.clear();
    }

    fn finish(mut self) -> Result<Vec<u8>> {
        let _ = writeln!(self.buffer, "</{}>", self.root);
        self.flush();
        if let Some(error) = self.failed {
            return Err(Error::Io {
                context: "compressing the stats export".into(),
                source: error,
            });
        }
        self.encoder
            .finish()
            .map_err(Error::io("compressing the stats export"))
    }
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no way to carry most control characters.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Replaces `dir/name` whole: a reader sees the old file or the new one.
async fn write_file(dir: &Path, name: &str, bytes: Vec<u8>) -> Result<()> {
    let path = dir.join(name);
    tokio::task::spawn_blocking(move || replace(&path, &bytes, How::PUBLIC))
        .await
        .map_err(|e| Error::Corrupt(format!("writing the stats export: {e}")))?
        .map_err(Error::io(format!("writing the stats export's {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_is_escaped_and_control_characters_dropped() {
        assert_eq!(
            xml_escape("<a href='x'>&\"\u{1}</a>"),
            "&lt;a href=&apos;x&apos;&gt;&amp;&quot; &lt;/a&gt;"
        );
    }

    #[test]
    fn cpids_are_stable_hashes_that_reveal_nothing() {
        let a = cpid("0123456789abcdef");
        assert_eq!(a.len(), 32);
        assert_eq!(a, cpid("0123456789abcdef"));
        assert_ne!(a, cpid("0123456789abcdeg"));
        assert!(!a.contains("0123456789abcdef"));
    }
}
