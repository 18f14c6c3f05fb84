//! The project's secrets, each a hex file created on first start with mode
//! 0600 or read from a path the operator gives: the ed25519 signing key
//! that signs every manifest, and the first researcher's token.

use crate::error::{Error, Result};
use ed25519_dalek::SigningKey;
use std::io::Write;
use std::path::Path;

/// Reads a secret file, creating it from `make` if `create` and it does
/// not exist.
fn load_or_create(
    path: &Path,
    create: bool,
    what: &str,
    make: impl FnOnce() -> String,
) -> Result<String> {
    let fail = |message: String| Error::Secret {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && create => {
            let secret = make();
            write_private(path, &secret).map_err(|e| fail(format!("cannot create: {e}")))?;
            tracing::info!(path = %path.display(), "created {what}");
            Ok(secret)
        }
        Err(error) => Err(fail(error.to_string())),
    }
}

/// The project signing key: 32 secret bytes as hex.
pub fn signing_key(path: &Path, create: bool) -> Result<SigningKey> {
    let text = load_or_create(path, create, "project signing key", || {
        hex::encode(cobble_core::manifest::generate_signing_key().to_bytes())
    })?;
    let fail = |message: &str| Error::Secret {
        path: path.display().to_string(),
        message: message.to_string(),
    };
    let bytes = hex::decode(&text).map_err(|_| fail("not hex"))?;
    let secret: [u8; 32] = bytes
        .try_into()
        .map_err(|_| fail("expected 32 bytes (64 hex digits)"))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// The first researcher's token, from its file (created on first start).
pub fn researcher_token(path: &Path) -> Result<String> {
    let token = load_or_create(path, true, "researcher token", cobble_core::random_token)?;
    if token.len() < 16 {
        return Err(Error::Secret {
            path: path.display().to_string(),
            message: "a researcher token needs at least 16 characters".into(),
        });
    }
    Ok(token)
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
        let first = signing_key(&path, true).expect("create");
        let second = signing_key(&path, true).expect("load");
        assert_eq!(first.to_bytes(), second.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "zz").expect("write");
        assert!(signing_key(&path, true).is_err());
        assert!(signing_key(&dir.path().join("absent"), false).is_err());
    }

    #[test]
    fn a_researcher_token_is_made_once_and_must_be_long() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("researcher.token");
        let token = researcher_token(&path).expect("create");
        assert_eq!(researcher_token(&path).expect("read"), token);
        std::fs::write(&path, "short").expect("write");
        assert!(researcher_token(&path).is_err());
    }
}
