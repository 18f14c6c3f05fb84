//! Researchers' validator modules (`[validator] kind = "module"`), run by
//! the coordinator in the sandbox work units run in (`cobble-sandbox`), with
//! caps of the operator's choosing. A validator is a pure function of a
//! unit's outputs: the coordinator runs it, never a work unit.
//!
//! The protocol (workunits/README.md, "Validators"): `/input/<i>/stdout`
//! and `/input/<i>/output/<name>` hold the i-th output; the validator
//! prints one line per output, in order: a label (outputs with equal
//! labels agree) or `-` (this output is unacceptable on its own).

use crate::error::{Error, Result};
use crate::integrity::Policy;
use cobble_core::BlobHash;
use cobble_sandbox::{Invocation, PreparedModule, Sandbox, UnitControl, UnitLimits};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Labels and rejections are short; more is a broken validator.
const MAX_VERDICT_BYTES: u64 = 1 << 20;

/// What a validator said of one output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Agrees with every output given the same label in the same run.
    Label(String),
    Rejected,
}

/// The validators' engine, built on first use: most projects never run one.
#[derive(Default)]
pub struct Validators {
    sandbox: tokio::sync::OnceCell<Arc<Sandbox>>,
}

impl std::fmt::Debug for Validators {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validators")
            .field("started", &self.sandbox.initialized())
            .finish()
    }
}

impl Validators {
    async fn sandbox(&self) -> Result<&Arc<Sandbox>> {
        self.sandbox
            .get_or_try_init(|| async { Ok(Arc::new(Sandbox::new(None)?)) })
            .await
    }

    /// Compiles a validator module (cached by hash): at submit, so a bad
    /// module is refused before any unit waits for it.
    pub async fn prepare(&self, hash: &BlobHash, path: &Path) -> Result<PreparedModule> {
        let sandbox = self.sandbox().await?.clone();
        let (hash, path) = (*hash, path.to_path_buf());
        // Compiling is CPU work; it must not stall the runtime's other tasks.
        tokio::task::spawn_blocking(move || sandbox.prepare(&hash, &path))
            .await
            .map_err(|e| Error::Corrupt(format!("compiling a validator: {e}")))?
            .map_err(Error::from)
    }

    /// Runs `module` over the outputs laid out under `input_dir`; `Ok(Err)`
    /// is the validator's own failure (a trap, its limits, a malformed
    /// verdict), told apart from the coordinator's.
    pub async fn run(
        &self,
        module: &PreparedModule,
        input_dir: &Path,
        count: usize,
        policy: &Policy,
    ) -> Result<std::result::Result<Vec<Verdict>, String>> {
        let sandbox = self.sandbox().await?;
        let output_dir = input_dir.with_extension("scratch");
        tokio::fs::create_dir_all(&output_dir)
            .await
            .map_err(Error::io(format!("creating {}", output_dir.display())))?;
        let limits = UnitLimits {
            fuel: policy.validator_fuel,
            memory_bytes: u64::from(policy.validator_memory_mib) << 20,
            wall_time: Duration::from_millis(policy.validator_wall_ms),
            max_output_bytes: MAX_VERDICT_BYTES,
        };
        let report = sandbox
            .run(
                module,
                Invocation {
                    env: &[],
                    args: &[],
                    input_dir,
                    output_dir: &output_dir,
                    checkpoint_dir: None,
                    stdin: Vec::new(),
                    seed: [0; 32],
                    limits,
                    control: UnitControl::unpaused(),
                },
            )
            .await;
        tokio::fs::remove_dir_all(&output_dir).await.ok();
        let report = report?;
        Ok(match report.outcome {
            Ok(()) => parse_verdicts(&report.stdout, count),
            Err(failure) => {
                let stderr = String::from_utf8_lossy(&report.stderr);
                let last = stderr.lines().last().unwrap_or_default();
                Err(format!("{failure} {last}").trim_end().to_string())
            }
        })
    }
}

/// Reads a validator's stdout: exactly one non-empty line per output.
pub fn parse_verdicts(stdout: &[u8], count: usize) -> std::result::Result<Vec<Verdict>, String> {
    let text = std::str::from_utf8(stdout)
        .map_err(|_| "the validator printed something that is not UTF-8".to_string())?;
    let verdicts: Vec<Verdict> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| match line {
            "-" => Verdict::Rejected,
            label => Verdict::Label(label.to_string()),
        })
        .collect();
    if verdicts.len() != count {
        return Err(format!(
            "the validator printed {} verdicts for {count} outputs",
            verdicts.len()
        ));
    }
    Ok(verdicts)
}

/// Turns one run's verdicts into lasting groups. `members` are the run's
/// outputs as (result id, group already assigned). An output the
/// validator saw before keeps its group; a new one joins the group of an
/// earlier-grouped output it was labelled with, else starts a group named
/// by its own result id (unique within the unit). Returns the new groups.
pub fn assign_groups(members: &[(i64, Option<i64>)], verdicts: &[Verdict]) -> Vec<(i64, i64)> {
    const REJECTED: i64 = -1;
    let mut assigned = Vec::new();
    for (position, ((result_id, existing), verdict)) in members.iter().zip(verdicts).enumerate() {
        if existing.is_some() {
            continue;
        }
        let group = match verdict {
            Verdict::Rejected => REJECTED,
            Verdict::Label(label) => {
                let same = |other: &Verdict| matches!(other, Verdict::Label(l) if l == label);
                let earlier_group = members
                    .iter()
                    .zip(verdicts)
                    .filter(|(_, v)| same(v))
                    .find_map(|((_, g), _)| g.filter(|g| *g >= 0));
                let first_new = members
                    .iter()
                    .zip(verdicts)
                    .take(position)
                    .find(|((_, g), v)| g.is_none() && same(v))
                    .map(|((id, _), _)| *id);
                earlier_group.or(first_new).unwrap_or(*result_id)
            }
        };
        assigned.push((*result_id, group));
    }
    assigned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(text: &str) -> Verdict {
        Verdict::Label(text.into())
    }

    #[test]
    fn verdicts_are_one_line_per_output() {
        let check = |stdout: &str, count: usize, expected: Option<Vec<Verdict>>| {
            assert_eq!(
                parse_verdicts(stdout.as_bytes(), count).ok(),
                expected,
                "{stdout:?}"
            );
        };
        check("a\nb\n", 2, Some(vec![label("a"), label("b")]));
        check("  a \n\n-\n", 2, Some(vec![label("a"), Verdict::Rejected]));
        check("a\n", 2, None);
        check("a\nb\nc\n", 2, None);
        check("", 1, None);
        assert!(parse_verdicts(&[0xff, b'\n'], 1).is_err());
    }

    #[test]
    fn groups_last_across_runs() {
        let check =
            |members: &[(i64, Option<i64>)], verdicts: &[Verdict], expected: &[(i64, i64)]| {
                assert_eq!(
                    assign_groups(members, verdicts),
                    expected,
                    "{members:?} {verdicts:?}"
                );
            };
        // First run: groups named after their first member.
        check(
            &[(5, None), (7, None)],
            &[label("x"), label("x")],
            &[(5, 5), (7, 5)],
        );
        check(
            &[(5, None), (7, None)],
            &[label("x"), label("y")],
            &[(5, 5), (7, 7)],
        );
        // Later runs keep earlier groups; labels are per run.
        check(
            &[(5, Some(5)), (7, Some(7)), (9, None)],
            &[label("q"), label("p"), label("p")],
            &[(9, 7)],
        );
        check(
            &[(5, Some(5)), (9, None)],
            &[label("q"), label("r")],
            &[(9, 9)],
        );
        // Rejected outputs join no group, and no group joins them.
        check(
            &[(5, Some(-1)), (9, None)],
            &[label("a"), label("a")],
            &[(9, 9)],
        );
        check(
            &[(5, None), (9, None)],
            &[Verdict::Rejected, label("a")],
            &[(5, -1), (9, 9)],
        );
    }
}
