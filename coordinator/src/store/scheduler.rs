//! The scheduler: hands unsent results to a host as signed manifests.
//!
//! A host never receives two results of one unit, and an account never two
//! (invariant 1), nor two hosts on one network where the policy's network
//! rule applies, so a volunteer cannot validate their own answer. Results
//! are picked in a random order, and a unit's replicas are spaced in time,
//! so hosts asking back to back do not pair up. A host holds at most what
//! its CPUs and daily quota justify. Replicas are never told about each
//! other. How a unit's first replica goes out (alone, replicated, or
//! secretly spot-checked) is [`Policy::issue`]'s decision.

use super::{HostIdentity, Store, random_fraction};
use crate::db::Tx;
use crate::error::{Error, Result};
use crate::integrity::{HostLoad, Issue};
use cobble_proto::v1 as pb;
use prost::Message;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// Units one request may take, whatever the host asks for.
const MAX_SLOTS_PER_REQUEST: u32 = 16;
const DAY_MS: i64 = 24 * 3600 * 1000;
/// How long a refusal for the network rule shows in a job's status.
pub(super) const NETWORK_WAIT_SHOWN_MS: i64 = 60_000;

/// One unsent result a host may take, with what issuing it needs.
struct Candidate {
    result_id: i64,
    unit_id: i64,
    job_id: i64,
    /// Results of the unit already issued to some host.
    issued: i64,
    /// A known-answer unit: its copies are all made at submit, and each is
    /// judged alone.
    known: bool,
    min_quorum: u32,
    target_results: u32,
    adaptive: bool,
    module: Vec<u8>,
    deadline_s: i64,
    spec: Vec<u8>,
    payload: Vec<u8>,
}

impl Store {
    /// Hands out work to a host whose address is unknown (the network rule
    /// does not apply): for embedding and tests.
    pub async fn request_work(
        &self,
        host: HostIdentity,
        slots: u32,
    ) -> Result<Vec<pb::Assignment>> {
        self.request_work_from(host, slots, None).await
    }

    /// Hands out up to `slots` results to a host that asked from `peer`.
    pub async fn request_work_from(
        &self,
        host: HostIdentity,
        slots: u32,
        peer: Option<IpAddr>,
    ) -> Result<Vec<pb::Assignment>> {
        let now = cobble_core::now_ms();
        let network = peer.and_then(|ip| self.policy.network_of(ip));
        // Overdue leases first, in a transaction of their own: their units
        // may be what this host gets.
        self.expire_overdue().await?;
        let mut tx = self.db.begin_write().await?;
        let load = self.host_load_in(&mut tx, host, now).await?;
        let room = self
            .policy
            .may_take(&load, slots.clamp(1, MAX_SLOTS_PER_REQUEST)) as usize;

        let mut assignments = Vec::new();
        let mut trust: HashMap<Vec<u8>, u32> = HashMap::new();
        let mut taken_units = HashSet::new();
        // Further replicas of units already out first, so that units finish
        // rather than all start (and hosts' quotas, which grow with valid
        // results, are not spent on first replicas alone). Within each, from
        // a random point of the random order to its end, then from its
        // start: every unsent result can be reached, none is favoured.
        // The host's best run of valid results for any module: a bound on
        // its trust for each, so rows reserved above it are skipped on
        // their own columns, before any join (with many new hosts,
        // thousands of further replicas wait reserved for proven ones, and
        // every request of a new host would otherwise join each of them).
        let best_trust: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(consecutive_valid), 0) FROM host_trust WHERE host_id = $1",
        )
        .bind(host.host_id)
        .fetch_one(&mut *tx)
        .await?;
        let from = random_key();
        let passes = [
            (true, from, i64::MAX),
            (true, i64::MIN, from),
            (false, from, i64::MAX),
            (false, i64::MIN, from),
        ];
        for (further, low, high) in passes {
            while assignments.len() < room {
                let batch = self
                    .candidates_in(
                        &mut tx,
                        host,
                        network.as_deref(),
                        now,
                        (further, low, high),
                        (room, best_trust),
                    )
                    .await?;
                let fetched = batch.len();
                let mut claimed_any = false;
                for candidate in batch {
                    if assignments.len() >= room || !taken_units.insert(candidate.unit_id) {
                        continue;
                    }
                    let consecutive_valid = match trust.get(&candidate.module) {
                        Some(count) => *count,
                        None => {
                            let count = self
                                .trust_in(&mut tx, host.host_id, &candidate.module)
                                .await?;
                            trust.insert(candidate.module.clone(), count);
                            count
                        }
                    };
                    if let Some(assignment) = self
                        .issue_in(
                            &mut tx,
                            host,
                            network.as_deref(),
                            &candidate,
                            consecutive_valid,
                            now,
                        )
                        .await?
                    {
                        assignments.push(assignment);
                        claimed_any = true;
                    }
                }
                if fetched < room || !claimed_any {
                    break;
                }
            }
        }
        if assignments.len() < room
            && let Some(network) = &network
        {
            self.note_network_waits_in(&mut tx, host, network, now)
                .await?;
        }
        // The host's own row last: a report locks results and units before
        // hosts, and so does this, so the two cannot deadlock on PostgreSQL.
        let today = now / DAY_MS;
        sqlx::query(
            "UPDATE hosts SET last_contact_ms = $1,
                    sent_today = CASE WHEN quota_day = $2 THEN sent_today ELSE 0 END + $3,
                    quota_day = $2
             WHERE id = $4",
        )
        .bind(now)
        .bind(today)
        .bind(assignments.len() as i64)
        .bind(host.host_id)
        .execute(&mut *tx)
        .await?;
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

    /// What the host holds and took today (nothing, if its last quota day
    /// is over). Reads without locking the host's row.
    async fn host_load_in(&self, tx: &mut Tx, host: HostIdentity, now: i64) -> Result<HostLoad> {
        let row = sqlx::query(
            "SELECT cpus, valid_results, daily_quota,
                    CASE WHEN quota_day = $2 THEN sent_today ELSE 0 END AS sent_today,
                    (SELECT COUNT(*) FROM results r WHERE r.host_id = h.id AND r.state = 'in_progress') AS in_progress
             FROM hosts h WHERE h.id = $1",
        )
        .bind(host.host_id)
        .bind(now / DAY_MS)
        .fetch_one(&mut **tx)
        .await?;
        let number = |column: &str| -> Result<i64> { Ok(row.try_get::<i64, _>(column)?.max(0)) };
        let small = |value: i64| u32::try_from(value).unwrap_or(u32::MAX);
        Ok(HostLoad {
            cpus: small(number("cpus")?),
            valid_results: number("valid_results")? as u64,
            in_progress: small(number("in_progress")?),
            daily_quota: small(number("daily_quota")?),
            sent_today: small(number("sent_today")?),
        })
    }

    /// Unsent results this host may take, first or further replicas, in
    /// random-key order within `[low, high)`: ready (spacing over), not kept for proven hosts
    /// unless it is one, of no unit it, its account or its network holds.
    async fn candidates_in(
        &self,
        tx: &mut Tx,
        host: HostIdentity,
        network: Option<&str>,
        now: i64,
        (further, low, high): (bool, i64, i64),
        (limit, best_trust): (usize, i64),
    ) -> Result<Vec<Candidate>> {
        let rows = sqlx::query(&format!(
            "SELECT r.id, r.unit_id, u.payload, j.id AS job_id, j.spec, j.deadline_s,
                    j.min_quorum, j.target_results, j.adaptive, j.module_hash,
                    (SELECT COUNT(*) FROM results i WHERE i.unit_id = r.unit_id AND i.host_id IS NOT NULL) AS issued,
                    CASE WHEN u.known_digest IS NULL THEN 0 ELSE 1 END AS known
             FROM results r
             JOIN units u ON u.id = r.unit_id
             JOIN jobs j ON j.id = u.job_id
             WHERE r.state = 'unsent' AND r.rand_key >= $1 AND r.rand_key < $2
               AND r.ready_ms <= $3
               AND (r.reserved_until_ms <= $3 OR r.reserved_min_valid <= $9)
               AND u.state = 'pending' AND j.state = 'running'
               AND (r.reserved_until_ms <= $3 OR COALESCE((
                       SELECT t.consecutive_valid FROM host_trust t
                       WHERE t.host_id = $4 AND t.module = j.module_hash), 0) >= r.reserved_min_valid)
               AND NOT EXISTS (
                   SELECT 1 FROM results o
                   WHERE o.unit_id = r.unit_id AND o.host_id IS NOT NULL
                     AND (o.host_id = $4 OR o.account_id = $5 OR o.network = $6))
               AND r.further = $8
             ORDER BY r.rand_key LIMIT $7{}",
            self.db.skip_locked("r")
        ))
        .bind(low)
        .bind(high)
        .bind(now)
        .bind(host.host_id)
        .bind(host.account_id)
        .bind(network)
        .bind(limit as i64)
        .bind(i64::from(further))
        .bind(best_trust)
        .fetch_all(&mut **tx)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Candidate {
                    result_id: row.try_get("id")?,
                    unit_id: row.try_get("unit_id")?,
                    job_id: row.try_get("job_id")?,
                    issued: row.try_get("issued")?,
                    known: row.try_get::<i64, _>("known")? != 0,
                    min_quorum: row.try_get::<i64, _>("min_quorum")?.clamp(1, 1000) as u32,
                    target_results: row.try_get::<i64, _>("target_results")?.clamp(1, 1000) as u32,
                    adaptive: row.try_get::<i64, _>("adaptive")? != 0,
                    module: row.try_get("module_hash")?,
                    deadline_s: row.try_get("deadline_s")?,
                    spec: row.try_get("spec")?,
                    payload: row.try_get("payload")?,
                })
            })
            .collect()
    }

    /// Claims one candidate for the host and signs its manifest; None if
    /// another transaction took it first (PostgreSQL).
    async fn issue_in(
        &self,
        tx: &mut Tx,
        host: HostIdentity,
        network: Option<&str>,
        candidate: &Candidate,
        consecutive_valid: u32,
        now: i64,
    ) -> Result<Option<pb::Assignment>> {
        let lease_id = cobble_core::random_token();
        let deadline_ms = now + candidate.deadline_s * 1000;
        let claimed = sqlx::query(
            "UPDATE results SET state = 'in_progress', host_id = $1, account_id = $2,
                    lease_id = $3, sent_ms = $4, deadline_ms = $5, network = $6, host_valid = $7
             WHERE id = $8 AND state = 'unsent'",
        )
        .bind(host.host_id)
        .bind(host.account_id)
        .bind(&lease_id)
        .bind(now)
        .bind(deadline_ms)
        .bind(network)
        .bind(i64::from(consecutive_valid))
        .bind(candidate.result_id)
        .execute(&mut **tx)
        .await?;
        if claimed.rows_affected() != 1 {
            return Ok(None);
        }
        self.note_active(&candidate.module, consecutive_valid, now);
        // Whoever takes this unit's other replicas asks at another time. A
        // replica another request is claiming right now is skipped, not
        // waited for: both waiting on each other's row would deadlock.
        sqlx::query(&format!(
            "UPDATE results SET ready_ms = $1 WHERE id IN (
                 SELECT id FROM results WHERE unit_id = $2 AND state = 'unsent' AND ready_ms < $1{})",
            self.db.skip_locked("results")
        ))
        .bind(now + self.policy.replica_spacing_ms.max(0))
        .bind(candidate.unit_id)
        .execute(&mut **tx)
        .await?;
        if candidate.issued == 0 && !candidate.known {
            let issue = self.policy.issue(
                candidate.min_quorum,
                candidate.adaptive,
                consecutive_valid,
                random_fraction(),
                random_fraction(),
            );
            let replicas = match issue {
                Issue::Alone => {
                    sqlx::query("UPDATE units SET quorum = 1 WHERE id = $1")
                        .bind(candidate.unit_id)
                        .execute(&mut **tx)
                        .await?;
                    0
                }
                Issue::Replicated => candidate.target_results.max(candidate.min_quorum),
                Issue::SpotCheck => {
                    if candidate.min_quorum < 2 {
                        sqlx::query("UPDATE units SET quorum = 2 WHERE id = $1")
                            .bind(candidate.unit_id)
                            .execute(&mut **tx)
                            .await?;
                    }
                    candidate.min_quorum.max(2)
                }
            };
            self.add_replicas_in(
                tx,
                candidate.unit_id,
                &candidate.module,
                replicas,
                Reserve::UnlessProvenHolds,
                now,
            )
            .await?;
        }
        let manifest = build_manifest(candidate, lease_id, now, deadline_ms)?;
        Ok(Some(cobble_core::manifest::sign(
            &manifest,
            self.signing_key(),
        )))
    }

    /// Brings a unit's live results (unsent, in progress, or successes not
    /// refused) up to `wanted`. New replicas wait out the spacing, and while
    /// proven hosts are active they are kept for them as `reserve` says.
    pub(super) async fn add_replicas_in(
        &self,
        tx: &mut Tx,
        unit_id: i64,
        module: &[u8],
        wanted: u32,
        reserve: Reserve,
        now: i64,
    ) -> Result<()> {
        let row = sqlx::query(
            "SELECT COUNT(*) FILTER (WHERE state IN ('unsent', 'in_progress')
                        OR (state = 'reported' AND outcome = 'success' AND validate_state <> 'invalid')) AS live,
                    COALESCE(MAX(host_valid) FILTER (WHERE state IN ('in_progress', 'reported')), 0) AS held_valid
             FROM results WHERE unit_id = $1",
        )
        .bind(unit_id)
        .fetch_one(&mut **tx)
        .await?;
        let live: i64 = row.try_get("live")?;
        let held_valid: i64 = row.try_get("held_valid")?;
        let missing = i64::from(wanted) - live;
        let held_valid = match reserve {
            Reserve::UnlessProvenHolds => u32::try_from(held_valid.max(0)).unwrap_or(u32::MAX),
            Reserve::Always => 0,
        };
        let placement = self.placement(module, held_valid, now);
        for _ in 0..missing.max(0) {
            super::jobs::insert_unsent(tx, unit_id, now, placement).await?;
        }
        Ok(())
    }

    /// When a new replica may go out, and until when it is kept for hosts
    /// more credible than any that holds the unit (`held_valid`, their best
    /// run of valid results): trusted hosts if one is active, else proven
    /// ones if one is active, else nobody in particular.
    pub(super) fn placement(&self, module: &[u8], held_valid: u32, now: i64) -> Placement {
        let window = self.policy.proven_replica_window_ms.max(0);
        let active = self
            .proven_active
            .lock()
            .ok()
            .and_then(|active| active.get(module).copied())
            .unwrap_or([i64::MIN; 2]);
        let tiers = [
            (self.policy.trust_after.max(1), active[0]),
            (self.policy.proven_after.max(1), active[1]),
        ];
        let reserved = tiers
            .iter()
            .find(|(level, seen)| held_valid < *level && within_window(now, *seen, window))
            .map(|(level, _)| *level);
        Placement {
            ready_ms: now + self.policy.replica_spacing_ms.max(0),
            reserved_until_ms: if reserved.is_some() { now + window } else { 0 },
            reserved_min_valid: reserved.unwrap_or(0),
            further: true,
        }
    }

    /// Whether a proven host (for this module) took a unit within the
    /// replica window: one may then confirm what new hosts agreed on.
    pub(super) fn proven_active(&self, module: &[u8], now: i64) -> bool {
        let window = self.policy.proven_replica_window_ms.max(0);
        self.proven_active
            .lock()
            .ok()
            .and_then(|active| active.get(module).copied())
            .is_some_and(|[_, proven]| within_window(now, proven, window))
    }

    /// Notes that a host with this run of valid results took a unit.
    fn note_active(&self, module: &[u8], consecutive_valid: u32, now: i64) {
        let trusted = self.policy.is_trusted(consecutive_valid);
        let proven = self.policy.is_proven(consecutive_valid);
        if !(trusted || proven) {
            return;
        }
        if let Ok(mut active) = self.proven_active.lock() {
            let seen = active.entry(module.to_vec()).or_insert([i64::MIN; 2]);
            if trusted {
                seen[0] = now;
            }
            if proven {
                seen[1] = now;
            }
        }
    }

    /// Consecutive valid results of the host for a module.
    pub(super) async fn trust_in(&self, tx: &mut Tx, host_id: i64, module: &[u8]) -> Result<u32> {
        let count: Option<i64> = sqlx::query_scalar(
            "SELECT consecutive_valid FROM host_trust WHERE host_id = $1 AND module = $2",
        )
        .bind(host_id)
        .bind(module)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(count.map_or(0, |c| u32::try_from(c.max(0)).unwrap_or(u32::MAX)))
    }

    /// Marks the units this host could have taken but for its network, so
    /// `cobble status` can say why they wait.
    async fn note_network_waits_in(
        &self,
        tx: &mut Tx,
        host: HostIdentity,
        network: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE units SET network_wait_ms = $1 WHERE id IN (
                 SELECT r.unit_id FROM results r
                 JOIN units u ON u.id = r.unit_id JOIN jobs j ON j.id = u.job_id
                 WHERE r.state = 'unsent' AND r.ready_ms <= $1 AND u.state = 'pending' AND j.state = 'running'
                   AND EXISTS (SELECT 1 FROM results n WHERE n.unit_id = r.unit_id AND n.network = $2)
                   AND NOT EXISTS (SELECT 1 FROM results o WHERE o.unit_id = r.unit_id AND o.host_id IS NOT NULL
                                     AND (o.host_id = $3 OR o.account_id = $4))
                 LIMIT 64)",
        )
        .bind(now)
        .bind(network)
        .bind(host.host_id)
        .bind(host.account_id)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// Whether something seen at `seen` is recent at `now`. A window of 0 is
/// never: the preference is off. Requests read the clock at different
/// moments, so `seen` may be a little after `now`; that is recent too,
/// never a negative age that any window would admit.
fn within_window(now: i64, seen: i64, window: i64) -> bool {
    window > 0 && now.saturating_sub(seen).max(0) < window
}

/// When a further replica is kept for proven hosts (while any is active).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reserve {
    /// Unless a proven host holds one of the unit's results: a unit going
    /// out replicated for the first time.
    UnlessProvenHolds,
    /// Always: a tie-break after results disagreed (a proven host may be
    /// the one outvoted by colluders), or a check of a caught host's word.
    Always,
}

/// Timing of a new unsent result.
#[derive(Debug, Clone, Copy)]
pub(super) struct Placement {
    pub ready_ms: i64,
    pub reserved_until_ms: i64,
    /// Consecutive valid results a host needs to take it before then.
    pub reserved_min_valid: u32,
    /// A further replica of a unit already out: issued before first ones.
    pub further: bool,
}

/// A random key for the order of issue, uniform over [0, 2^62).
pub(super) fn random_key() -> i64 {
    (u64::from_le_bytes(cobble_core::random_bytes::<8>()) >> 2) as i64
}

fn build_manifest(
    candidate: &Candidate,
    lease_id: String,
    now: i64,
    deadline_ms: i64,
) -> Result<pb::Manifest> {
    let spec = pb::JobSpec::decode(candidate.spec.as_slice())
        .map_err(|e| Error::Corrupt(format!("job spec: {e}")))?;
    let payload = pb::Manifest::decode(candidate.payload.as_slice())
        .map_err(|e| Error::Corrupt(format!("unit payload: {e}")))?;
    // A unit whose payload names a module (a reduce step with one of its
    // own) runs it, with the payload's signature and variables.
    let (module, module_signature, env) = match payload.module {
        Some(module) => (Some(module), payload.module_signature, payload.env),
        None => (spec.module, spec.module_signature, spec.env),
    };
    Ok(pb::Manifest {
        unit_id: candidate.unit_id,
        job_id: candidate.job_id,
        lease_id,
        module,
        inputs: payload.inputs,
        args: payload.args,
        limits: spec.limits,
        deadline_ms,
        issued_ms: now,
        nan_canonicalization_off: spec.nan_canonicalization_off,
        module_signature,
        env,
    })
}

#[cfg(test)]
mod tests {
    use super::within_window;

    #[test]
    fn windows_count_clock_skew_as_recent_and_zero_as_off() {
        let check = |now: i64, seen: i64, window: i64, expected: bool| {
            assert_eq!(
                within_window(now, seen, window),
                expected,
                "{now} {seen} {window}"
            );
        };
        check(1_000, 900, 200, true);
        check(1_000, 700, 200, false);
        // Seen by a request that read the clock after this one did.
        check(1_000, 1_005, 200, true);
        // Window 0 turns the preference off, whatever the clocks say.
        check(1_000, 1_005, 0, false);
        check(1_000, 1_000, 0, false);
        // Never seen.
        check(1_000, i64::MIN, 60_000, false);
    }
}
