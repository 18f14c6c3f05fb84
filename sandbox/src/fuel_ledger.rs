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
//!
//! Looking at the state file costs a `stat`, a few microseconds: on every
//! host call that would make a unit that writes a byte at a time several
//! times slower. So the ledger looks during the first host calls after a
//! stretch of computing (where a checkpoint's open, write, close and rename
//! come), and otherwise at most once per `LOOK_EVERY_FUEL`: a checkpoint
//! written in the middle of a stream of host calls is recorded that much
//! late, a few milliseconds of work over.

use cobble_core::durable;
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The unit's checkpoint file, as named by the protocol (workunits/README.md).
const STATE: &str = "state";
/// Fuel between two host calls that makes the second the start of a burst
/// (about a millisecond of work).
const QUIET_FUEL: u64 = 1_000_000;
/// Host calls looked after at the start of a burst: saving a checkpoint and
/// its progress through the SDK takes eight WASI calls, and the output cap's
/// hooks (`output_cap`) add one before each open, write and close, up to
/// sixteen; twice that leaves room.
const BURST_CALLS: u32 = 32;
/// Otherwise the ledger looks once per this much fuel (about 10 ms of work).
const LOOK_EVERY_FUEL: u64 = 10_000_000;

#[derive(Debug)]
pub struct FuelLedger {
    /// `<checkpoint dir>.fuel`: fuel spent up to the current checkpoint.
    record: PathBuf,
    state: PathBuf,
    /// Fuel spent by earlier passes up to the checkpoint this pass resumed from.
    carried: u64,
    /// The state file as last seen, to notice when the unit replaces it.
    seen: Option<Version>,
    /// Fuel (of this pass) at the last host call's return.
    last_call: u64,
    /// Fuel at the last look at the state file.
    last_look: u64,
    /// Host calls of the current burst still to be looked after.
    burst_left: u32,
    /// Looks taken, for tests.
    looks: u64,
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
        // Not following links: the unit controls what this name is.
        std::fs::symlink_metadata(path)
            .ok()
            .map(|m| Version::of(&m))
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
            last_call: 0,
            last_look: 0,
            // A start reads its checkpoint: a burst.
            burst_left: BURST_CALLS,
            looks: 0,
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
        if spent.saturating_sub(self.last_call) >= QUIET_FUEL {
            self.burst_left = BURST_CALLS;
        }
        self.last_call = spent;
        if self.burst_left > 0 {
            self.burst_left -= 1;
        } else if spent.saturating_sub(self.last_look) < LOOK_EVERY_FUEL {
            return;
        }
        self.last_look = spent;
        self.looks += 1;
        let now = Version::read(&self.state);
        if now == self.seen {
            return;
        }
        self.seen = now;
        if now.is_some() {
            self.write(self.carried.saturating_add(spent));
        }
    }

    /// Replaces the record crash-safely: a torn record would read as zero.
    fn write(&self, total: u64) {
        if let Err(error) = durable::write_private(&self.record, total.to_string().as_bytes()) {
            tracing::warn!(%error, record = %self.record.display(), "cannot record fuel at checkpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Saves a checkpoint as the protocol says: write, then rename over.
    fn save(dir: &Path, contents: &[u8]) {
        std::fs::write(dir.join("state.partial"), contents).expect("write");
        std::fs::rename(dir.join("state.partial"), dir.join("state")).expect("rename");
    }

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
        save(&dir, b"one");
        first.observe(250);
        first.observe(400);
        assert_eq!(
            FuelLedger::open(&dir).carried(),
            250,
            "fuel at the checkpoint, not after"
        );

        let mut second = FuelLedger::open(&dir);
        save(&dir, b"two");
        second.observe(50);
        assert_eq!(FuelLedger::open(&dir).carried(), 300, "passes add up");
    }

    /// A unit that makes host calls without pause is looked after about
    /// once per `LOOK_EVERY_FUEL`; one that computes between checkpoints is
    /// looked after on each call of a save.
    #[test]
    fn streams_of_host_calls_are_looked_after_sparingly() {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("checkpoint");
        std::fs::create_dir(&dir).expect("mkdir");
        let mut chatty = FuelLedger::open(&dir);
        for call in 1..=1_000_000 {
            chatty.observe(call * 100);
        }
        let expected = u64::from(BURST_CALLS) + 100_000_000 / LOOK_EVERY_FUEL;
        assert!(chatty.looks <= expected, "{} looks", chatty.looks);

        // A save after a long computation is seen on its rename, the fourth
        // call of the burst, and recorded at that call's fuel.
        let mut computing = FuelLedger::open(&dir);
        let start = 50 * QUIET_FUEL;
        for call in 0..3 {
            computing.observe(start + call * 10);
        }
        std::fs::write(dir.join("state"), b"saved").expect("write");
        computing.observe(start + 30);
        computing.observe(start + 2 * QUIET_FUEL);
        assert_eq!(FuelLedger::open(&dir).carried(), start + 30);
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
