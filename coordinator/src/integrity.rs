//! The integrity policy's pure decisions: when a host is trusted, whether a
//! unit goes out alone or replicated (and whether it is secretly
//! spot-checked), how a host's daily quota and trust move with each
//! outcome, how much work a host may hold, and which network two hosts
//! share. The store applies these; nothing here does I/O.
//!
//! The model (ARCHITECTURE.md, "Integrity") is BOINC's adaptive
//! replication and result quotas plus Sarmenta's spot-checking: trust is
//! earned per host and per module by a run of valid results, lost with any
//! invalid or failed one, and a host caught lying has every result it
//! returned unreplicated verified again.

use std::net::IpAddr;

/// Which addresses the one-network-per-unit rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NetworkRule {
    /// Public addresses only: a lab cluster on a private network or a
    /// one-machine demo on loopback still completes its jobs.
    Public,
    /// Every address, loopback and private ranges included.
    All,
    /// Never: replicas may go to hosts on one network.
    Off,
}

/// The project's integrity settings, flags of `cobble-coordinator serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct Policy {
    /// Consecutive valid results (per host and module) after which a host
    /// is trusted and may get units unreplicated (BOINC's default: 10).
    #[arg(long, default_value_t = 10)]
    pub trust_after: u32,
    /// Fraction of units that would go to an untrusted host alone (jobs
    /// with `min_quorum = 1`) that are secretly replicated to check it.
    #[arg(long, default_value_t = 0.05, value_parser = fraction)]
    pub spot_check_untrusted: f64,
    /// Fraction of units that would go to a trusted host alone that are
    /// secretly replicated to check it.
    #[arg(long, default_value_t = 0.01, value_parser = fraction)]
    pub spot_check_trusted: f64,
    /// Replicas of one unit go to different /24 (IPv4) or /48 (IPv6)
    /// networks, so one person's accounts on one network cannot fill a
    /// quorum.
    #[arg(long, value_enum, default_value_t = NetworkRule::Public)]
    pub network_rule: NetworkRule,
    /// After a replica of a unit is issued, its other replicas wait this
    /// long, so back-to-back requests (one cheater, two accounts) cannot
    /// take both.
    #[arg(long, default_value_t = 2_000)]
    pub replica_spacing_ms: i64,
    /// Consecutive valid results (per module) that make a host proven: a
    /// lower bar than trust, reached by honest hosts soon after they join
    /// and rarely by saboteurs.
    #[arg(long, default_value_t = 3)]
    pub proven_after: u32,
    /// While proven hosts are asking for work, a further replica of a unit
    /// that no proven host holds (or a tie-break after a disagreement) is
    /// kept for proven hosts this long: new accounts and saboteurs then
    /// rarely validate each other. Afterwards anyone may take it, so
    /// nothing stalls.
    #[arg(long, default_value_t = 60_000)]
    pub proven_replica_window_ms: i64,
    /// Results one CPU of a host may hold at once (BOINC's
    /// `max_wus_in_progress`): its cores plus a work buffer.
    #[arg(long, default_value_t = 2)]
    pub max_in_progress_per_cpu: u32,
    /// Results a host that has never returned a valid one may hold at once.
    #[arg(long, default_value_t = 2)]
    pub new_host_max_in_progress: u32,
    /// A new host's daily result quota; it doubles with each valid result
    /// (up to `max_daily_quota_per_cpu` per CPU) and halves with each
    /// invalid, failed or timed-out one, down to one a day.
    #[arg(long, default_value_t = 64)]
    pub initial_daily_quota: u32,
    #[arg(long, default_value_t = 2_000)]
    pub max_daily_quota_per_cpu: u32,
    /// Fuel one run of a researcher's validator module may burn (about
    /// ten seconds of work): a validator compares outputs, it does not
    /// compute them.
    #[arg(long, default_value_t = 10_000_000_000)]
    pub validator_fuel: u64,
    #[arg(long, default_value_t = 256)]
    pub validator_memory_mib: u32,
    #[arg(long, default_value_t = 60_000)]
    pub validator_wall_ms: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            trust_after: 10,
            spot_check_untrusted: 0.05,
            spot_check_trusted: 0.01,
            network_rule: NetworkRule::Public,
            replica_spacing_ms: 2_000,
            proven_after: 3,
            proven_replica_window_ms: 60_000,
            max_in_progress_per_cpu: 2,
            new_host_max_in_progress: 2,
            initial_daily_quota: 64,
            max_daily_quota_per_cpu: 2_000,
            validator_fuel: 10_000_000_000,
            validator_memory_mib: 256,
            validator_wall_ms: 60_000,
        }
    }
}

/// Parses a spot-check rate: a number from 0 to 1 (NaN or 5 would make
/// every unit, or none, a check without saying so).
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err(format!("{text:?} is not a fraction from 0 to 1")),
    }
}

/// CPUs a host may claim: a host declaring 2^32 CPUs gets no more than this.
pub const MAX_CPUS: u32 = 256;

/// How the first replica of a unit is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Issue {
    /// Alone: the unit is accepted on this host's word while it stays trusted.
    Alone,
    /// With the job's usual replicas.
    Replicated,
    /// As if alone, but a second replica checks it; the host cannot tell.
    SpotCheck,
}

impl Policy {
    pub fn is_trusted(&self, consecutive_valid: u32) -> bool {
        consecutive_valid >= self.trust_after.max(1)
    }

    /// Whether a host may take replicas kept for proven hosts.
    pub fn is_proven(&self, consecutive_valid: u32) -> bool {
        consecutive_valid >= self.proven_after.max(1)
    }

    /// Chooses how a unit's first replica goes out. `adaptive` is the job's
    /// choice; `roll_alone` and `roll_check` are uniform draws in [0, 1).
    /// A trusted host gets it alone with probability 1 - 1/consecutive_valid
    /// (BOINC's adaptive replication); of the units that would go alone, a
    /// fraction is spot-checked.
    pub fn issue(
        &self,
        min_quorum: u32,
        adaptive: bool,
        consecutive_valid: u32,
        roll_alone: f64,
        roll_check: f64,
    ) -> Issue {
        let trusted = self.is_trusted(consecutive_valid);
        let alone = if min_quorum <= 1 {
            true
        } else {
            adaptive && trusted && roll_alone >= 1.0 / f64::from(consecutive_valid.max(1))
        };
        if !alone {
            return Issue::Replicated;
        }
        let check = if trusted {
            self.spot_check_trusted
        } else {
            self.spot_check_untrusted
        };
        if roll_check < check {
            Issue::SpotCheck
        } else {
            Issue::Alone
        }
    }

    /// How many more results a host may take now: the request, bounded by
    /// what its CPUs justify (fewer for a host with no valid result yet)
    /// and by what is left of its daily quota.
    pub fn may_take(&self, host: &HostLoad, asked: u32) -> u32 {
        let cpus = host.cpus.clamp(1, MAX_CPUS);
        let mut cap = cpus.saturating_mul(self.max_in_progress_per_cpu.max(1));
        if host.valid_results == 0 {
            cap = cap.min(self.new_host_max_in_progress.max(1));
        }
        let room = cap.saturating_sub(host.in_progress);
        let quota_left = host.daily_quota.saturating_sub(host.sent_today);
        asked.min(room).min(quota_left)
    }

    /// The daily quota after an outcome (BOINC's `daily_result_quota`):
    /// doubled by a valid result, halved by an invalid, failed or
    /// timed-out one, never below one a day.
    pub fn quota_after(&self, quota: u32, cpus: u32, outcome: Outcome) -> u32 {
        let max = cpus
            .clamp(1, MAX_CPUS)
            .saturating_mul(self.max_daily_quota_per_cpu.max(1));
        match outcome {
            Outcome::Valid => quota.saturating_mul(2).clamp(1, max),
            Outcome::Invalid | Outcome::Failed => (quota / 2).max(1),
        }
    }

    /// The network a replica is charged to, or None where the rule exempts
    /// the address.
    pub fn network_of(&self, ip: IpAddr) -> Option<String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        let local = match ip {
            IpAddr::V4(v4) => {
                v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified()
            }
            IpAddr::V6(v6) => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_unique_local()
                    || v6.is_unicast_link_local()
            }
        };
        match (self.network_rule, local) {
            (NetworkRule::Off, _) | (NetworkRule::Public, true) => None,
            _ => Some(match ip {
                IpAddr::V4(v4) => {
                    let [a, b, c, _] = v4.octets();
                    format!("{a}.{b}.{c}.0/24")
                }
                IpAddr::V6(v6) => {
                    let s = v6.segments();
                    format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
                }
            }),
        }
    }
}

/// What a host holds and has taken today, for [`Policy::may_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLoad {
    pub cpus: u32,
    pub valid_results: u64,
    pub in_progress: u32,
    pub daily_quota: u32,
    pub sent_today: u32,
}

/// How one of a host's results ended, as trust and quota see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Valid,
    Invalid,
    /// A client error or a missed deadline.
    Failed,
}

/// Consecutive valid results after an outcome: any invalid or failed
/// result resets trust.
pub fn trust_after(consecutive_valid: u32, outcome: Outcome) -> u32 {
    match outcome {
        Outcome::Valid => consecutive_valid.saturating_add(1),
        Outcome::Invalid | Outcome::Failed => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::default()
    }

    #[test]
    fn issue_choice() {
        let check = |min_quorum, adaptive, valid, alone, spot, expected| {
            assert_eq!(
                policy().issue(min_quorum, adaptive, valid, alone, spot),
                expected,
                "quorum {min_quorum} adaptive {adaptive} valid {valid} rolls {alone} {spot}"
            );
        };
        use Issue::*;
        // Untrusted hosts never get a quorum-2 unit alone.
        check(2, true, 0, 0.99, 0.99, Replicated);
        check(2, true, 9, 0.99, 0.99, Replicated);
        // Trusted: alone with probability 1 - 1/valid.
        check(2, true, 10, 0.95, 0.5, Alone);
        check(2, true, 10, 0.05, 0.5, Replicated);
        check(2, true, 100, 0.02, 0.5, Alone);
        check(2, true, 100, 0.005, 0.5, Replicated);
        // A job that turned adaptive replication off replicates everything.
        check(2, false, 1000, 0.99, 0.99, Replicated);
        // Of what would go alone, 1% (trusted) or 5% (untrusted) is checked.
        check(2, true, 10, 0.95, 0.009, SpotCheck);
        check(2, true, 10, 0.95, 0.011, Alone);
        check(1, false, 0, 0.0, 0.04, SpotCheck);
        check(1, false, 0, 0.0, 0.06, Alone);
        check(1, true, 50, 0.0, 0.009, SpotCheck);
    }

    #[test]
    fn trust_and_quota_follow_outcomes() {
        assert_eq!(trust_after(9, Outcome::Valid), 10);
        assert_eq!(trust_after(50, Outcome::Invalid), 0);
        assert_eq!(trust_after(50, Outcome::Failed), 0);
        assert_eq!(trust_after(u32::MAX, Outcome::Valid), u32::MAX);
        let p = policy();
        assert!(!p.is_trusted(9) && p.is_trusted(10));
        assert_eq!(p.quota_after(16, 1, Outcome::Valid), 32);
        assert_eq!(p.quota_after(2_000, 1, Outcome::Valid), 2_000);
        assert_eq!(p.quota_after(2_000, 4, Outcome::Valid), 4_000);
        assert_eq!(p.quota_after(16, 1, Outcome::Invalid), 8);
        assert_eq!(p.quota_after(1, 1, Outcome::Failed), 1);
        // Always failing: down to one a day, however high it stood.
        let mut quota = 8_000;
        for _ in 0..20 {
            quota = p.quota_after(quota, 4, Outcome::Failed);
        }
        assert_eq!(quota, 1);
    }

    #[test]
    fn hosts_take_what_their_cpus_and_quota_justify() {
        let check = |cpus, valid_results, in_progress, sent_today, asked, expected| {
            let host = HostLoad {
                cpus,
                valid_results,
                in_progress,
                daily_quota: 16,
                sent_today,
            };
            assert_eq!(
                policy().may_take(&host, asked),
                expected,
                "{host:?} asked {asked}"
            );
        };
        // One CPU declared, four billion slots asked: two at most.
        check(1, 5, 0, 0, u32::MAX, 2);
        check(1, 5, 2, 0, u32::MAX, 0);
        check(4, 5, 3, 0, 16, 5);
        // Zero CPUs counts as one; absurd counts are capped.
        check(0, 5, 0, 0, 16, 2);
        check(u32::MAX, 5, 0, 0, 10_000, 16);
        // A host with no valid result yet gets few.
        check(64, 0, 0, 0, 16, 2);
        check(64, 0, 1, 0, 16, 1);
        // The daily quota binds.
        check(64, 5, 0, 15, 16, 1);
        check(64, 5, 0, 16, 16, 0);
        check(64, 5, 0, 99, 16, 0);
    }

    #[test]
    fn spot_check_rates_are_fractions() {
        assert_eq!(fraction("0.25"), Ok(0.25));
        assert_eq!(fraction("0"), Ok(0.0));
        assert_eq!(fraction("1"), Ok(1.0));
        for bad in ["-0.1", "1.5", "NaN", "inf", "", "five"] {
            assert!(fraction(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn networks() {
        let check = |rule, ip: &str, expected: Option<&str>| {
            let p = Policy {
                network_rule: rule,
                ..policy()
            };
            let ip: IpAddr = ip.parse().expect("test address");
            assert_eq!(p.network_of(ip).as_deref(), expected, "{rule:?} {ip}");
        };
        use NetworkRule::*;
        check(Public, "203.0.113.77", Some("203.0.113.0/24"));
        check(Public, "::ffff:203.0.113.77", Some("203.0.113.0/24"));
        check(Public, "2001:db8:12:34::1", Some("2001:db8:12::/48"));
        check(Public, "127.0.0.2", None);
        check(Public, "10.1.2.3", None);
        check(Public, "192.168.1.1", None);
        check(Public, "::1", None);
        check(Public, "fd00::1", None);
        check(All, "127.0.0.2", Some("127.0.0.0/24"));
        check(All, "127.0.1.2", Some("127.0.1.0/24"));
        check(Off, "203.0.113.77", None);
    }
}
