//! The digest that decides whether two results agree: a hash over the
//! unit's stdout and output files, each named by its content hash. Replicas
//! agree exactly when their digests are equal.

use cobble_proto::v1::{BlobRef, OutputFile};

/// Digests a result's outputs. Files are sorted by name first, so the order
/// a host listed them in does not matter.
pub fn digest(stdout: &BlobRef, files: &[OutputFile]) -> [u8; 32] {
    let mut sorted: Vec<&OutputFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut hasher = blake3::Hasher::new_derive_key("cobble result output digest v1");
    add_blob(&mut hasher, stdout);
    hasher.update(&(sorted.len() as u64).to_le_bytes());
    for file in sorted {
        hasher.update(&(file.name.len() as u64).to_le_bytes());
        hasher.update(file.name.as_bytes());
        match &file.blob {
            Some(blob) => add_blob(&mut hasher, blob),
            None => {
                hasher.update(&[0]);
            }
        }
    }
    *hasher.finalize().as_bytes()
}

fn add_blob(hasher: &mut blake3::Hasher, blob: &BlobRef) {
    hasher.update(&(blob.hash.len() as u64).to_le_bytes());
    hasher.update(&blob.hash);
    hasher.update(&blob.size.to_le_bytes());
}

/// Whether a reported file name is a plain relative name: one or more
/// normal path components, no `..`, no root, no control characters. Output
/// names become file names on the researcher's machine.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(char::is_control)
        && !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// The largest output a report may carry inline instead of uploading it
/// first, and the most all of one report's inline outputs may add up to.
pub const MAX_INLINE_BYTES: usize = 64 << 10;
pub const MAX_INLINE_BYTES_PER_REPORT: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(byte: u8) -> BlobRef {
        BlobRef {
            hash: vec![byte; 32],
            size: byte as u64,
            chunk_root: Vec::new(),
        }
    }

    fn file(name: &str, byte: u8) -> OutputFile {
        OutputFile {
            name: name.into(),
            blob: Some(blob(byte)),
        }
    }

    #[test]
    fn file_order_does_not_matter_but_content_and_names_do() {
        let a = digest(&blob(1), &[file("x", 2), file("y", 3)]);
        assert_eq!(a, digest(&blob(1), &[file("y", 3), file("x", 2)]));
        assert_ne!(a, digest(&blob(1), &[file("x", 3), file("y", 2)]));
        assert_ne!(a, digest(&blob(1), &[file("x", 2), file("z", 3)]));
        assert_ne!(a, digest(&blob(9), &[file("x", 2), file("y", 3)]));
        assert_ne!(a, digest(&blob(1), &[file("x", 2)]));
    }

    #[test]
    fn output_names() {
        for good in ["out.png", "a/b.txt", "tile-0001.bin", "ünïcode"] {
            assert!(is_plain_name(good), "{good:?}");
        }
        for bad in [
            "",
            "../../pwned",
            "/etc/passwd",
            "a/../b",
            "a//b",
            ".",
            "a/./b",
            "nul\0byte",
            "tab\tname",
            "win\\path",
            "trailing/",
        ] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
        assert!(!is_plain_name(&"x".repeat(256)));
    }
}
