//! The transitioner's decision for one work unit: given every result of the
//! unit, is there a quorum, which results are valid, does the unit need
//! another replica, or has it failed? Pure: the caller loads the rows and
//! applies the [`Decision`] in one transaction.

use crate::credit;
use cobble_core::agreement::{Agreement, stdout_close};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultState {
    Unsent,
    InProgress,
    /// Reported successfully, awaiting (or past) validation.
    Success,
    ClientError,
    TimedOut,
    Aborted,
}

/// What the transitioner needs to know of one result.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultView {
    pub id: i64,
    pub state: ResultState,
    /// Output digest of a successful result: of stdout and files under a
    /// bitwise validator, of the files alone under a numeric one.
    pub digest: Option<Vec<u8>>,
    /// Stdout of a successful result, loaded only for a numeric validator.
    pub stdout: Option<Vec<u8>>,
    /// Fuel the reporting host measured for a successful result.
    pub fuel_used: u64,
    /// Under a module validator: the group the researcher's validator put
    /// this success in (negative: it rejected the output), None until it
    /// has seen it.
    pub group: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Replication {
    pub min_quorum: u32,
    pub max_total_results: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A quorum agrees: the unit is done.
    Done {
        canonical: i64,
        valid: Vec<i64>,
        invalid: Vec<i64>,
        /// Granted to each valid result.
        credit: f64,
    },
    /// No quorum yet; create this many new unsent results (may be zero).
    Wait { new_results: u32 },
    /// No quorum is possible within `max_total_results`.
    Errored { reason: String },
    /// A success awaits the job's validator module, which runs outside the
    /// transaction (`store/validation.rs`); decide again once it has.
    Validate,
}

/// Whether two successful results agree under the job's validator.
fn agree(agreement: Agreement, a: &ResultView, b: &ResultView) -> bool {
    let same_digest = a.digest.is_some() && a.digest == b.digest;
    match agreement {
        Agreement::Bitwise => same_digest,
        Agreement::Numeric {
            rel_tolerance,
            abs_tolerance,
        } => {
            same_digest
                && match (&a.stdout, &b.stdout) {
                    (Some(x), Some(y)) => stdout_close(x, y, rel_tolerance, abs_tolerance),
                    _ => false,
                }
        }
        Agreement::Module => matches!((a.group, b.group), (Some(x), Some(y)) if x == y && x >= 0),
    }
}

/// Decides the fate of a pending unit. `results` lists every result of the
/// unit, in the order they were created.
pub fn decide(replication: Replication, agreement: Agreement, results: &[ResultView]) -> Decision {
    if agreement == Agreement::Module
        && results
            .iter()
            .any(|r| r.state == ResultState::Success && r.group.is_none())
    {
        return Decision::Validate;
    }
    // Group successful results: each joins the first group whose first
    // member it agrees with (tolerance is not transitive, so members are
    // compared with that representative only), keeping report order.
    let mut groups: Vec<(&ResultView, Vec<&ResultView>)> = Vec::new();
    for result in results.iter().filter(|r| r.state == ResultState::Success) {
        if result.digest.is_none() {
            continue;
        }
        match groups
            .iter_mut()
            .find(|(first, _)| agree(agreement, first, result))
        {
            Some((_, members)) => members.push(result),
            None => groups.push((result, vec![result])),
        }
    }
    // The largest group wins; the earliest group breaks ties.
    let best = groups
        .iter()
        .enumerate()
        .max_by_key(|(position, (_, members))| (members.len(), std::cmp::Reverse(*position)))
        .map(|(_, group)| group);
    let best_size = best.map_or(0, |(_, members)| members.len()) as u32;

    if let Some((_, members)) = best
        && best_size >= replication.min_quorum
    {
        let valid: Vec<i64> = members.iter().map(|r| r.id).collect();
        let invalid = results
            .iter()
            .filter(|r| r.state == ResultState::Success && !valid.contains(&r.id))
            .map(|r| r.id)
            .collect();
        // Fuel is deterministic, so honest replicas agree on it; taking the
        // minimum means no single host can inflate the credit it shares.
        let fuel = members.iter().map(|r| r.fuel_used).min().unwrap_or(0);
        return Decision::Done {
            canonical: members[0].id,
            valid,
            invalid,
            credit: credit::for_fuel(fuel),
        };
    }

    let outstanding = results
        .iter()
        .filter(|r| matches!(r.state, ResultState::Unsent | ResultState::InProgress))
        .count() as u32;
    let total = results.len() as u32;
    let needed = replication.min_quorum - best_size;
    let room = replication.max_total_results.saturating_sub(total);
    let new_results = needed.saturating_sub(outstanding).min(room);
    if outstanding + new_results < needed {
        // Even if every remaining replica agreed with the best group, no
        // quorum could form: give up now rather than waste volunteers' time.
        let errors = results
            .iter()
            .filter(|r| r.state == ResultState::ClientError)
            .count();
        return Decision::Errored {
            reason: format!(
                "no quorum of {} within {} results ({} successes in {} disagreeing groups, {} client errors)",
                replication.min_quorum,
                replication.max_total_results,
                groups.iter().map(|(_, m)| m.len()).sum::<usize>(),
                groups.len(),
                errors
            ),
        };
    }
    Decision::Wait { new_results }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResultState::*;

    const QUORUM_2_OF_5: Replication = Replication {
        min_quorum: 2,
        max_total_results: 5,
    };

    /// Builds results from a compact notation: `"a"`/`"b"` are successes
    /// with that digest, `u` unsent, `p` in progress, `e` client error, `t`
    /// timed out. Ids count from 1.
    fn results(spec: &[&str]) -> Vec<ResultView> {
        spec.iter()
            .enumerate()
            .map(|(i, s)| {
                let (state, digest) = match *s {
                    "u" => (Unsent, None),
                    "p" => (InProgress, None),
                    "e" => (ClientError, None),
                    "t" => (TimedOut, None),
                    digest => (Success, Some(digest.as_bytes().to_vec())),
                };
                ResultView {
                    id: i as i64 + 1,
                    state,
                    digest,
                    stdout: None,
                    fuel_used: 1_000_000_000 + i as u64,
                    group: None,
                }
            })
            .collect()
    }

    fn check(spec: &[&str], expected: Decision) {
        assert_eq!(
            decide(QUORUM_2_OF_5, Agreement::Bitwise, &results(spec)),
            expected,
            "{spec:?}"
        );
    }

    fn wait(new_results: u32) -> Decision {
        Decision::Wait { new_results }
    }

    #[test]
    fn decisions() {
        check(&["u", "u"], wait(0));
        check(&["a", "p"], wait(0));
        check(&["a", "b"], wait(1));
        check(&["a", "t"], wait(1));
        check(&["t", "t"], wait(2));
        check(&["a", "e"], wait(1));
        check(&["a", "b", "c", "d", "p"], wait(0));
        // Agreement: the first agreeing result is canonical, credit from the
        // lowest fuel claim among the agreeing ones.
        check(
            &["a", "a"],
            Decision::Done {
                canonical: 1,
                valid: vec![1, 2],
                invalid: vec![],
                credit: credit::for_fuel(1_000_000_000),
            },
        );
        check(
            &["b", "a", "a"],
            Decision::Done {
                canonical: 2,
                valid: vec![2, 3],
                invalid: vec![1],
                credit: credit::for_fuel(1_000_000_001),
            },
        );
    }

    #[test]
    fn gives_up_when_no_quorum_can_form() {
        let decision = decide(
            QUORUM_2_OF_5,
            Agreement::Bitwise,
            &results(&["a", "b", "c", "d", "e"]),
        );
        assert!(matches!(decision, Decision::Errored { .. }), "{decision:?}");
        let decision = decide(
            QUORUM_2_OF_5,
            Agreement::Bitwise,
            &results(&["e", "e", "e", "e", "a"]),
        );
        assert!(matches!(decision, Decision::Errored { .. }), "{decision:?}");
        // Four used, one left, but two more would be needed.
        let decision = decide(
            QUORUM_2_OF_5,
            Agreement::Bitwise,
            &results(&["e", "e", "e", "t"]),
        );
        assert!(matches!(decision, Decision::Errored { .. }), "{decision:?}");
    }

    #[test]
    fn numeric_validation_groups_close_stdouts_with_equal_files() {
        let numeric = Agreement::Numeric {
            rel_tolerance: 1e-9,
            abs_tolerance: 0.0,
        };
        let result = |id: i64, stdout: &str, files: &str| ResultView {
            id,
            state: Success,
            digest: Some(files.as_bytes().to_vec()),
            stdout: Some(stdout.as_bytes().to_vec()),
            fuel_used: 1_000_000_000,
            group: None,
        };
        let close = [
            result(1, "mean 0.5000000000001", "f"),
            result(2, "mean 0.5", "f"),
        ];
        assert!(matches!(
            decide(QUORUM_2_OF_5, numeric, &close),
            Decision::Done { .. }
        ));
        assert_eq!(
            decide(
                QUORUM_2_OF_5,
                Agreement::Bitwise,
                &[result(1, "a", "f"), result(2, "a", "g")]
            ),
            wait(1)
        );
        let far = [result(1, "mean 0.50001", "f"), result(2, "mean 0.5", "f")];
        assert_eq!(decide(QUORUM_2_OF_5, numeric, &far), wait(1));
        let other_files = [result(1, "mean 0.5", "f"), result(2, "mean 0.5", "g")];
        assert_eq!(decide(QUORUM_2_OF_5, numeric, &other_files), wait(1));
    }

    #[test]
    fn a_single_result_quorum_is_done_at_once() {
        let replication = Replication {
            min_quorum: 1,
            max_total_results: 3,
        };
        let decision = decide(replication, Agreement::Bitwise, &results(&["a"]));
        assert!(matches!(decision, Decision::Done { canonical: 1, .. }));
    }

    #[test]
    fn module_validation_groups_by_the_validators_verdict() {
        let result = |id: i64, group: Option<i64>| ResultView {
            id,
            state: Success,
            digest: Some(vec![id as u8]),
            stdout: None,
            fuel_used: 1_000_000_000 + id as u64,
            group,
        };
        let module = |results: &[ResultView]| decide(QUORUM_2_OF_5, Agreement::Module, results);
        // An output the validator has not seen: nothing is decided without it.
        assert_eq!(
            module(&[result(1, Some(1)), result(2, None)]),
            Decision::Validate
        );
        // Different digests, one group: they agree.
        assert_eq!(
            module(&[result(1, Some(1)), result(2, Some(1))]),
            Decision::Done {
                canonical: 1,
                valid: vec![1, 2],
                invalid: vec![],
                credit: credit::for_fuel(1_000_000_001),
            }
        );
        assert_eq!(module(&[result(1, Some(1)), result(2, Some(2))]), wait(1));
        // Rejected outputs agree with nothing, not even with each other.
        assert_eq!(module(&[result(1, Some(-1)), result(2, Some(-1))]), wait(1));
        assert_eq!(
            module(&[result(1, Some(-1)), result(2, Some(2)), result(3, Some(2))]),
            Decision::Done {
                canonical: 2,
                valid: vec![2, 3],
                invalid: vec![1],
                credit: credit::for_fuel(1_000_000_002),
            }
        );
    }
}
