//! The blob cache's size cap (`disk_max_used_gb`): least recently used
//! blobs go first, and never one a unit in hand still needs. A blob's
//! modification time records its last use (`touch`), since access times
//! are unreliable on `relatime` and `noatime` mounts.

use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

/// One cached blob, as the eviction choice sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The file name: the blob's hex hash.
    pub name: String,
    pub size: u64,
    pub last_used: SystemTime,
}

/// The smallest cache worth having, whatever the disk.
pub const MIN_CAP_BYTES: u64 = 50_000_000;

/// The cache's size cap: `disk_max_used_gb`, but no more than a tenth of
/// the free disk (as Spotify's client does), and never under 50 MB.
pub fn cap_bytes(disk_max_used_gb: f64, free_disk: Option<u64>) -> u64 {
    let configured = (disk_max_used_gb * 1e9) as u64;
    let tenth_of_free = free_disk.map_or(u64::MAX, |free| free / 10);
    configured.min(tenth_of_free).max(MIN_CAP_BYTES)
}

/// Marks a cached blob as just used.
pub fn touch(path: &Path) {
    if let Ok(file) = std::fs::File::options().write(true).open(path) {
        file.set_modified(SystemTime::now()).ok();
    }
}

/// Which blobs to remove so that the rest fit in `cap` bytes: oldest use
/// first, skipping those in `keep`. If the kept blobs alone exceed the cap,
/// everything else goes and the cache stays over it until they are done.
pub fn choose_evictions(entries: &[Entry], cap: u64, keep: &HashSet<String>) -> Vec<String> {
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    let mut candidates: Vec<&Entry> = entries.iter().filter(|e| !keep.contains(&e.name)).collect();
    candidates.sort_by_key(|e| e.last_used);
    let mut victims = Vec::new();
    for entry in candidates {
        if total <= cap {
            break;
        }
        total -= entry.size;
        victims.push(entry.name.clone());
    }
    victims
}

/// The whole blobs cached in `dir`. Downloads in progress (`*.partial`,
/// `*.part`: any name with a dot) are not blobs yet.
pub fn entries(dir: &Path) -> Vec<Entry> {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    listing
        .flatten()
        .filter_map(|item| {
            let name = item.file_name().into_string().ok()?;
            let metadata = item.metadata().ok()?;
            (metadata.is_file() && !name.contains('.')).then(|| Entry {
                name,
                size: metadata.len(),
                last_used: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
        })
        .collect()
}

/// Brings `dir` under `cap` bytes; returns what it removed (name, size).
/// Downloads in progress are neither counted nor touched.
pub fn trim(dir: &Path, cap: u64, keep: &HashSet<String>) -> Vec<(String, u64)> {
    let entries = entries(dir);
    let mut removed = Vec::new();
    for name in choose_evictions(&entries, cap, keep) {
        let size = entries
            .iter()
            .find(|e| e.name == name)
            .map_or(0, |e| e.size);
        // A unit that links the blob into its /input keeps its own link.
        if std::fs::remove_file(dir.join(&name)).is_ok() {
            removed.push((name, size));
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn entry(name: &str, size: u64, age_s: u64) -> Entry {
        Entry {
            name: name.into(),
            size,
            last_used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 - age_s),
        }
    }

    fn check(entries: &[Entry], cap: u64, keep: &[&str], expected: &[&str]) {
        let keep = keep.iter().map(|s| s.to_string()).collect();
        assert_eq!(choose_evictions(entries, cap, &keep), expected);
    }

    #[test]
    fn the_cap_is_a_tenth_of_free_disk_within_the_preference_and_50_mb() {
        assert_eq!(cap_bytes(10.0, Some(1_000_000_000_000)), 10_000_000_000);
        assert_eq!(cap_bytes(10.0, Some(20_000_000_000)), 2_000_000_000);
        assert_eq!(cap_bytes(10.0, Some(100_000_000)), MIN_CAP_BYTES);
        assert_eq!(cap_bytes(0.05, None), MIN_CAP_BYTES);
        assert_eq!(cap_bytes(2.0, None), 2_000_000_000);
    }

    #[test]
    fn least_recently_used_go_first_until_it_fits() {
        let entries = [
            entry("new", 40, 1),
            entry("old", 40, 100),
            entry("mid", 40, 50),
        ];
        check(&entries, 120, &[], &[]);
        check(&entries, 100, &[], &["old"]);
        check(&entries, 50, &[], &["old", "mid"]);
    }

    #[test]
    fn blobs_in_use_are_never_evicted() {
        let entries = [
            entry("new", 40, 1),
            entry("old", 40, 100),
            entry("mid", 40, 50),
        ];
        check(&entries, 50, &["old"], &["mid", "new"]);
        check(&entries, 10, &["old", "mid", "new"], &[]);
    }

    #[test]
    fn trim_removes_files_and_leaves_partial_downloads() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, size) in [
            ("a", 100),
            ("b", 100),
            ("c.1234.partial", 500),
            ("d.part", 500),
        ] {
            std::fs::write(dir.path().join(name), vec![0u8; size]).expect("write");
        }
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join("a"))
            .and_then(|f| f.set_modified(old))
            .expect("age a");
        assert_eq!(
            trim(dir.path(), 150, &HashSet::new()),
            [("a".to_string(), 100)]
        );
        assert!(dir.path().join("b").is_file());
        assert!(dir.path().join("c.1234.partial").is_file());
        assert!(dir.path().join("d.part").is_file());
        touch(&dir.path().join("b"));
        assert_eq!(trim(dir.path(), 150, &HashSet::new()), []);
    }
}
