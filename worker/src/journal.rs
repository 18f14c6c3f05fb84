//! The worker's durable record of the units in its hands, so that nothing
//! is lost when it is killed (invariant 7): one directory per lease under
//! `<data-dir>/work/`, holding
//!
//! - `assignment.bin`: the signed assignment, written before the unit runs;
//! - `checkpoint/`: the unit's own checkpoint and progress files;
//! - `report.bin`: the finished report, written once its outputs are
//!   uploaded and before it is sent.
//!
//! After a restart, a lease with a report is reported again (the
//! coordinator answers a repeat with "duplicate" and changes nothing); a
//! lease with only an assignment is run again and resumes from its
//! checkpoint; a lease past its deadline, or anything unreadable, is
//! dropped. Every file is written atomically (`durable::write_private`).

use cobble_core::durable;
use cobble_proto::v1 as pb;
use ed25519_dalek::VerifyingKey;
use prost::Message;
use std::path::{Path, PathBuf};

const ASSIGNMENT: &str = "assignment.bin";
const REPORT: &str = "report.bin";

/// Work found in the journal after a restart.
#[derive(Debug)]
pub enum Recovered {
    /// Run the unit again; it resumes from its checkpoint.
    Resume(pb::Assignment),
    /// Send this finished report again.
    Report(Box<pb::Manifest>, pb::ReportRequest),
}

#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    pub fn new(dir: PathBuf) -> Self {
        Journal { dir }
    }

    /// The directory of one lease's files.
    pub fn unit_dir(&self, lease_id: &str) -> PathBuf {
        self.dir.join(lease_id)
    }

    pub fn record_assignment(
        &self,
        lease_id: &str,
        assignment: &pb::Assignment,
    ) -> std::io::Result<()> {
        let dir = self.unit_dir(lease_id);
        std::fs::create_dir_all(&dir)?;
        durable::write_private(&dir.join(ASSIGNMENT), &assignment.encode_to_vec())
    }

    pub fn record_report(&self, lease_id: &str, report: &pb::ReportRequest) -> std::io::Result<()> {
        durable::write_private(
            &self.unit_dir(lease_id).join(REPORT),
            &report.encode_to_vec(),
        )
    }

    /// Forgets a lease once its report was taken or it was abandoned.
    pub fn finish(&self, lease_id: &str) {
        std::fs::remove_dir_all(self.unit_dir(lease_id)).ok();
    }

    /// Reads back what a previous run left, dropping what is expired,
    /// unreadable or signed by another key.
    pub fn recover(&self, project_key: &VerifyingKey, now_ms: i64) -> Vec<Recovered> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut recovered = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            match recover_one(&dir, project_key, now_ms) {
                Some(item) => recovered.push(item),
                None => {
                    tracing::info!(dir = %dir.display(), "dropping expired or unreadable unit");
                    std::fs::remove_dir_all(&dir).ok();
                }
            }
        }
        recovered
    }
}

fn recover_one(dir: &Path, project_key: &VerifyingKey, now_ms: i64) -> Option<Recovered> {
    let bytes = std::fs::read(dir.join(ASSIGNMENT)).ok()?;
    let assignment = pb::Assignment::decode(bytes.as_slice()).ok()?;
    // The journal is ours, but verifying again costs nothing and keeps
    // invariant 5 true even for a tampered data directory.
    let manifest = cobble_core::manifest::verify(&assignment, project_key).ok()?;
    if manifest.deadline_ms <= now_ms {
        return None;
    }
    match std::fs::read(dir.join(REPORT)) {
        Ok(bytes) => {
            let report = pb::ReportRequest::decode(bytes.as_slice()).ok()?;
            Some(Recovered::Report(Box::new(manifest), report))
        }
        Err(_) => Some(Recovered::Resume(assignment)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(
        key: &ed25519_dalek::SigningKey,
        lease: &str,
        deadline_ms: i64,
    ) -> pb::Assignment {
        let manifest = pb::Manifest {
            lease_id: lease.into(),
            deadline_ms,
            ..Default::default()
        };
        cobble_core::manifest::sign(&manifest, key)
    }

    #[test]
    fn recovers_resumes_and_reports_and_drops_the_rest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let journal = Journal::new(dir.path().to_path_buf());
        let key = cobble_core::manifest::generate_signing_key();
        let stranger = cobble_core::manifest::generate_signing_key();
        journal
            .record_assignment("run", &assignment(&key, "run", 2_000))
            .expect("write");
        journal
            .record_assignment("done", &assignment(&key, "done", 2_000))
            .expect("write");
        journal
            .record_report(
                "done",
                &pb::ReportRequest {
                    lease_id: "done".into(),
                    outcome: None,
                },
            )
            .expect("write");
        journal
            .record_assignment("late", &assignment(&key, "late", 500))
            .expect("write");
        journal
            .record_assignment("forged", &assignment(&stranger, "forged", 2_000))
            .expect("write");
        std::fs::create_dir_all(dir.path().join("torn")).expect("mkdir");
        std::fs::write(dir.path().join("torn").join(ASSIGNMENT), b"\x01\x02").expect("write");

        let mut found: Vec<String> = journal
            .recover(&key.verifying_key(), 1_000)
            .into_iter()
            .map(|item| match item {
                Recovered::Resume(a) => format!("resume {}", a.manifest.len()),
                Recovered::Report(m, _) => format!("report {}", m.lease_id),
            })
            .collect();
        found.sort();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0], "report done");
        assert!(found[1].starts_with("resume"));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(
            left.len(),
            2,
            "expired, forged and torn leases are dropped: {left:?}"
        );
    }
}
