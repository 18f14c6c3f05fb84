//! The validator side of the protocol (`workunits/README.md`,
//! "Validators"): a researcher's module that the coordinator runs over two
//! or more outputs of one unit, to say which agree, for results that may
//! legitimately differ (stochastic simulations, tolerances on a statistic).
//!
//! The coordinator lays the i-th output out as `/input/<i>/stdout` and
//! `/input/<i>/output/<name>`; the validator prints one line per output, in
//! order: a label (equal labels agree) or `-` (unacceptable on its own).

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// One output of the unit, as the validator receives it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub stdout: Vec<u8>,
    /// Where this output's files are (`/input/<i>/output`), maybe absent.
    pub files: PathBuf,
}

impl Candidate {
    /// Reads one output file by name; `None` if it is not there.
    pub fn file(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.files.join(name)).ok()
    }
}

/// The outputs under `/input`, in the order the coordinator numbered them.
pub fn candidates() -> io::Result<Vec<Candidate>> {
    candidates_in(Path::new(crate::INPUT_DIR))
}

fn candidates_in(dir: &Path) -> io::Result<Vec<Candidate>> {
    let mut found = Vec::new();
    for index in 0usize.. {
        let path = dir.join(index.to_string());
        if !path.is_dir() {
            break;
        }
        found.push(Candidate {
            stdout: std::fs::read(path.join("stdout")).unwrap_or_default(),
            files: path.join("output"),
        });
    }
    Ok(found)
}

/// Groups candidates and prints the verdicts: `parse` turns an output into
/// what is compared (None rejects it: a malformed output must never make
/// the validator fail, or its unit could not be decided), `agree` compares
/// two parsed outputs. Each output joins the first group whose first member
/// it agrees with, as the coordinator's own validators do.
pub fn run<T>(
    parse: impl Fn(&Candidate) -> Option<T>,
    agree: impl Fn(&T, &T) -> bool,
) -> io::Result<()> {
    let parsed: Vec<Option<T>> = candidates()?.iter().map(parse).collect();
    let labels = group(&parsed, agree);
    let mut stdout = io::stdout().lock();
    for label in labels {
        match label {
            Some(group) => writeln!(stdout, "g{group}")?,
            None => writeln!(stdout, "-")?,
        }
    }
    stdout.flush()
}

/// The group of each parsed output (None: rejected).
pub fn group<T>(parsed: &[Option<T>], agree: impl Fn(&T, &T) -> bool) -> Vec<Option<usize>> {
    let mut firsts: Vec<&T> = Vec::new();
    parsed
        .iter()
        .map(|item| {
            let item = item.as_ref()?;
            match firsts.iter().position(|first| agree(first, item)) {
                Some(group) => Some(group),
                None => {
                    firsts.push(item);
                    Some(firsts.len() - 1)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_the_first_member_and_skips_rejected_outputs() {
        let close = |a: &f64, b: &f64| (a - b).abs() <= 0.1;
        let parsed = [Some(1.0), None, Some(1.05), Some(2.0), Some(1.12)];
        // 1.12 is close to 1.05 but not to the group's first member, 1.0.
        assert_eq!(
            group(&parsed, close),
            [Some(0), None, Some(0), Some(1), Some(2)]
        );
    }

    #[test]
    fn reads_outputs_in_order_until_the_first_gap() {
        let dir = std::env::temp_dir().join(format!("cobble-sdk-test-{}", std::process::id()));
        for (index, text) in [(0, "a"), (1, "b"), (3, "d")] {
            let path = dir.join(index.to_string());
            std::fs::create_dir_all(&path).expect("dir");
            std::fs::write(path.join("stdout"), text).expect("write");
        }
        let found = candidates_in(&dir).expect("read");
        std::fs::remove_dir_all(&dir).ok();
        let stdouts: Vec<&[u8]> = found.iter().map(|c| c.stdout.as_slice()).collect();
        assert_eq!(stdouts, [b"a".as_slice(), b"b".as_slice()]);
    }
}
