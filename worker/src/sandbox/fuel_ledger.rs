//! Fuel a unit spent before the checkpoint it resumes from.
//!
//! A unit removed from memory, or whose worker was killed, starts again
//! from its own checkpoint. The fuel it spent reaching that checkpoint is
//! part of the work behind its result, and credit derives from fuel: a
//! resumed replica that reported only its last pass would lower the credit
//! its whole quorum shares (the minimum of the replicas' claims). So each
//! time the unit replaces `/checkpoint/state`, the fuel spent up to then is
//! written beside the checkpoint directory, where the unit cannot reach,
//! and a resumed pass starts from that figure, against the same budget.
//!
//! Fuel spent after the last checkpoint is redone by the next pass and so
//! not carried: the total matches an uninterrupted run's to within the
//! little work a start repeats (parsing arguments, reading the checkpoint).

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The unit's checkpoint file, as named by the protocol (workunits/README.md).
const STATE: &str = "state";

#[derive(Debug)]
pub struct FuelLedger {
    /// `<checkpoint dir>.fuel`: fuel spent up to the current checkpoint.
    record: PathBuf,
    state: PathBuf,
    /// Fuel spent by earlier passes up to the checkpoint this pass resumed from.
    carried: u64,
    /// The state file as last seen, to notice when the unit replaces it.
    seen: Option<Version>,
}

/// Enough of a file's metadata to tell one version of it from the next:
/// the protocol replaces the state by renaming a new file over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    inode: u64,
}

impl Version {
    fn of(metadata: &Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Version {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            #[cfg(unix)]
            inode: metadata.ino(),
        }
    }

    fn read(path: &Path) -> Option<Self> {
        std::fs::metadata(path).ok().map(|m| Version::of(&m))
    }
}

impl FuelLedger {
    /// The ledger of the unit whose checkpoints live in `checkpoint_dir`.
    /// Without a checkpoint to resume from, nothing is carried.
    pub fn open(checkpoint_dir: &Path) -> Self {
        let mut record = checkpoint_dir.as_os_str().to_owned();
        record.push(".fuel");
        let record = PathBuf::from(record);
        let state = checkpoint_dir.join(STATE);
        let seen = Version::read(&state);
        let carried = if seen.is_some() {
            std::fs::read_to_string(&record)
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(0)
        } else {
            std::fs::remove_file(&record).ok();
            0
        };
        FuelLedger {
            record,
            state,
            carried,
            seen,
        }
    }

    /// Fuel spent by earlier passes, counted toward this one's budget and total.
    pub fn carried(&self) -> u64 {
        self.carried
    }

    /// Called each time the unit returns from a host call, `spent` being the
    /// fuel this pass has used so far: if that call replaced the checkpoint,
    /// the total up to it is recorded.
    pub fn observe(&mut self, spent: u64) {
        let now = Version::read(&self.state);
        if now == self.seen {
            return;
        }
        self.seen = now;
        if now.is_some() {
            self.write(self.carried.saturating_add(spent));
        }
    }

    /// Writes the record atomically: a torn record would read as zero.
    fn write(&self, total: u64) {
        let mut partial = self.record.as_os_str().to_owned();
        partial.push(".partial");
        let written = std::fs::write(&partial, total.to_string())
            .and_then(|()| std::fs::rename(&partial, &self.record));
        if let Err(error) = written {
            tracing::warn!(%error, record = %self.record.display(), "cannot record fuel at checkpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuel_is_recorded_when_the_state_is_replaced_and_carried_on_resume() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("checkpoint");
        std::fs::create_dir(&dir).expect("mkdir");
        let mut first = FuelLedger::open(&dir);
        assert_eq!(first.carried(), 0, "nothing to resume from");
        first.observe(100);
        assert!(
            !root.path().join("checkpoint.fuel").exists(),
            "no checkpoint yet"
        );
        std::fs::write(dir.join("state.partial"), b"one").expect("write");
        std::fs::rename(dir.join("state.partial"), dir.join("state")).expect("rename");
        first.observe(250);
        first.observe(400);
        assert_eq!(
            FuelLedger::open(&dir).carried(),
            250,
            "fuel at the checkpoint, not after"
        );

        let mut second = FuelLedger::open(&dir);
        std::fs::write(dir.join("state.partial"), b"two").expect("write");
        std::fs::rename(dir.join("state.partial"), dir.join("state")).expect("rename");
        second.observe(50);
        assert_eq!(FuelLedger::open(&dir).carried(), 300, "passes add up");
    }

    #[test]
    fn a_record_without_a_checkpoint_is_stale() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("checkpoint");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(root.path().join("checkpoint.fuel"), "12345").expect("write");
        assert_eq!(FuelLedger::open(&dir).carried(), 0);
        assert!(!root.path().join("checkpoint.fuel").exists());
    }

    #[test]
    fn a_garbled_record_carries_nothing() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("checkpoint");
        std::fs::create_dir(&dir).expect("mkdir");
        std::fs::write(dir.join("state"), b"s").expect("write");
        std::fs::write(root.path().join("checkpoint.fuel"), "12\u{0}x").expect("write");
        assert_eq!(FuelLedger::open(&dir).carried(), 0);
    }
}
