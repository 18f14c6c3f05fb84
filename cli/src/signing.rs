//! Offline code signing: making the project's code-signing key and signing
//! modules with it. Neither touches the network, so both run on the
//! machine that keeps the key.

use anyhow::Context;
use std::io::Write;
use std::path::Path;

/// Writes a new key to `file` (never over an existing one) and prints its
/// public half.
pub fn keygen(file: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = cobble_core::manifest::generate_signing_key();
    let mut handle = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never overwritten)",
                file.display()
            )
        })?;
    handle.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())?;
    handle.sync_all()?;
    eprintln!(
        "code-signing key written to {}; keep it offline. Its public key, for `cobble-coordinator serve --code-signing-key`:",
        file.display()
    );
    println!("{}", hex::encode(key.verifying_key().as_bytes()));
    Ok(())
}

/// Signs `module` with the key in `key_file`; writes the detached signature.
pub fn sign_module(module: &Path, key_file: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(key_file)
        .with_context(|| format!("reading the key {}", key_file.display()))?;
    let secret: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .with_context(|| format!("{} does not hold a key (64 hex digits)", key_file.display()))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&secret);
    let bytes = std::fs::read(module).with_context(|| format!("reading {}", module.display()))?;
    if !bytes.starts_with(b"\0asm") {
        anyhow::bail!("{} is not a WebAssembly module", module.display());
    }
    let signature = cobble_core::code_signing::sign(&cobble_core::BlobHash::of(&bytes), &key);
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut path = module.as_os_str().to_os_string();
        path.push(".sig");
        path.into()
    });
    std::fs::write(&out, cobble_core::code_signing::to_file_text(&signature))
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "signed {} with code-signing key {}; signature in {}",
        module.display(),
        hex::encode(key.verifying_key().as_bytes()),
        out.display()
    );
    Ok(())
}
