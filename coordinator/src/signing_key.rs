//! The project's ed25519 signing key: created on first start with mode
//! 0600, or read from a path the operator gives.

use crate::error::{Error, Result};
use ed25519_dalek::SigningKey;
use std::io::Write;
use std::path::Path;

/// Loads the key at `path`, creating it if `create` and it does not exist.
/// The file holds the 32 secret bytes as hex.
pub fn load_or_create(path: &Path, create: bool) -> Result<SigningKey> {
    let fail = |message: String| Error::SigningKey {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|e| fail(format!("not hex: {e}")))?;
            let secret: [u8; 32] = bytes
                .try_into()
                .map_err(|_| fail("expected 32 bytes (64 hex digits)".into()))?;
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && create => {
            let key = cobble_core::manifest::generate_signing_key();
            write_private(path, &hex::encode(key.to_bytes()))
                .map_err(|e| fail(format!("cannot create: {e}")))?;
            tracing::info!(path = %path.display(), "created project signing key");
            Ok(key)
        }
        Err(error) => Err(fail(error.to_string())),
    }
}

/// Writes a secret readable by its owner only, from the moment it exists.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_stable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("project.key");
        let first = load_or_create(&path, true).expect("create");
        let second = load_or_create(&path, true).expect("load");
        assert_eq!(first.to_bytes(), second.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "zz").expect("write");
        assert!(load_or_create(&path, true).is_err());
        assert!(load_or_create(&dir.path().join("absent"), false).is_err());
    }
}
