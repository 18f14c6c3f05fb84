//! The one way Cobble replaces a file: write a temporary file beside it
//! (a unique name, so concurrent writers never share one), fsync it unless
//! told the file is worthless after a crash, rename it over the target,
//! fsync the directory. A `kill -9` at any point leaves either the old
//! contents or the new, never a torn file. Streams too large for memory
//! (blob uploads and downloads) follow the same steps in their own code.

use std::io::Write;
use std::path::Path;

/// Who may read the file, and whether it must survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct How {
    /// Unix permission bits of the new file.
    pub mode: u32,
    /// fsync the file and its directory before returning.
    pub sync: bool,
}

impl How {
    /// Credentials, journals: the owner only, durable.
    pub const PRIVATE: How = How {
        mode: 0o600,
        sync: true,
    };
    /// Configuration others may read (a systemd unit), durable.
    pub const PUBLIC: How = How {
        mode: 0o644,
        sync: true,
    };
    /// An installed program, durable.
    pub const EXECUTABLE: How = How {
        mode: 0o755,
        sync: true,
    };
    /// Caches and status files: rebuilt or rewritten if lost, so not
    /// worth an fsync, but never torn.
    pub const CACHE: How = How {
        mode: 0o644,
        sync: false,
    };
}

/// Atomically replaces `path` with `contents`.
pub fn replace(path: &Path, contents: &[u8], how: How) -> std::io::Result<()> {
    let temporary = path.with_extension(format!("{}.partial", crate::random_token()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(how.mode);
    }
    let written = (|| {
        let mut file = options.open(&temporary)?;
        file.write_all(contents)?;
        if how.sync {
            file.sync_all()?;
        }
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        std::fs::remove_file(&temporary).ok();
    }
    written?;
    if how.sync
        && let Some(dir) = path.parent()
        && let Ok(dir) = std::fs::File::open(dir)
    {
        dir.sync_all().ok();
    }
    Ok(())
}

/// Atomically replaces `path` with `contents`, readable by the owner only.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    replace(path, contents, How::PRIVATE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_with_the_asked_permissions_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("file.json");
        std::fs::write(&path, b"old").expect("write");
        for (how, mode) in [
            (How::PRIVATE, 0o600),
            (How::EXECUTABLE, 0o755),
            (How::CACHE, 0o644),
        ] {
            replace(&path, b"new contents", how).expect("replace");
            assert_eq!(std::fs::read(&path).expect("read"), b"new contents");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let actual = std::fs::metadata(&path)
                    .expect("metadata")
                    .permissions()
                    .mode();
                assert_eq!(actual & 0o777, mode, "{how:?}");
            }
            std::fs::remove_file(&path).expect("remove");
        }
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
        assert!(left.is_empty(), "{left:?}");
        // A target in a missing directory fails and leaves nothing behind.
        assert!(replace(&dir.path().join("nope/file"), b"x", How::PUBLIC).is_err());
    }
}
