//! One command to join (`--worker-dist DIR`): the site serves the worker's
//! binaries from DIR under `/dist/`, a list of their SHA-256 signed by the
//! project's key, and `/install.sh`, a script with that key pinned in it
//! which downloads the worker, checks signature and hash, and refuses on
//! any mismatch before anything is installed.
//!
//! The list is made when the coordinator starts, from the files as they
//! are then (and checked against the `SHA256SUMS` that `cargo xtask dist`
//! wrote beside them, when present): a file changed afterwards, on disk or
//! on the way, no longer matches what was signed.

use super::{Failure, Site};
use crate::error::Error;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_stream::StreamExt as _;

/// The static worker the script installs (`cargo xtask dist` names it).
pub const BINARY: &str = "cobble-worker-linux-x86_64";
/// The signed list, as `sha256sum` writes it after a header line.
pub const SUMS: &str = "SHA256SUMS";
/// The raw 64-byte Ed25519 signature of [`SUMS`].
pub const SIGNATURE: &str = "SHA256SUMS.sig";
/// The first line of the signed list. Whatever else the project's key signs
/// starts with `cobble-...-v1` and a NUL, so no signature over this text
/// can be taken for one over a manifest or a capability, or the reverse.
const HEADER: &str = "# cobble-worker-dist-v1: SHA-256 of each file, signed by the project's key\n";

/// The distribution as served: its files, their signed list, the script.
#[derive(Debug)]
pub struct WorkerDist {
    dir: PathBuf,
    files: Vec<DistFile>,
    sums: String,
    signature: [u8; 64],
    public_key_pem: String,
    project_key_hex: String,
}

/// One file of the distribution, hashed when the coordinator started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistFile {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// Names served under `/dist/`: plain file names, nothing a path or a
/// shell could read as more.
fn servable_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

fn sha256_of(path: &Path) -> Result<(String, u64), Error> {
    let mut file =
        std::fs::File::open(path).map_err(Error::io(format!("reading {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        if read == 0 {
            break;
        }
        size += read as u64;
        hasher.update(&buffer[..read]);
    }
    Ok((hex::encode(hasher.finalize()), size))
}

impl WorkerDist {
    /// Hashes every file of `dir` and signs their list with `key`. Refuses
    /// a directory without the worker binary, a file name that cannot be
    /// served as it is, and a `SHA256SUMS` that disagrees with the files.
    pub fn load(dir: &Path, key: &SigningKey) -> Result<WorkerDist, Error> {
        let entries =
            std::fs::read_dir(dir).map_err(Error::io(format!("reading {}", dir.display())))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(Error::io(format!("reading {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == SUMS || name == SIGNATURE || name.starts_with('.') {
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(Error::io(format!("reading {}", entry.path().display())))?;
            if !kind.is_file() {
                continue;
            }
            if !servable_name(&name) {
                return Err(Error::InvalidArgument(format!(
                    "--worker-dist: cannot serve {name:?} (file names of letters, digits, '.', '_', '-' and '+' only)"
                )));
            }
            let (sha256, size) = sha256_of(&entry.path())?;
            files.push(DistFile { name, sha256, size });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        if !files.iter().any(|f| f.name == BINARY) {
            return Err(Error::InvalidArgument(format!(
                "--worker-dist {}: no {BINARY} in it (`cargo xtask dist` builds it into target/dist)",
                dir.display()
            )));
        }
        check_build_sums(dir, &files)?;
        let mut sums = HEADER.to_string();
        for file in &files {
            sums.push_str(&format!("{}  {}\n", file.sha256, file.name));
        }
        let signature = key.sign(sums.as_bytes()).to_bytes();
        Ok(WorkerDist {
            dir: dir.to_path_buf(),
            files,
            sums,
            signature,
            public_key_pem: public_key_pem(key),
            project_key_hex: hex::encode(key.verifying_key().as_bytes()),
        })
    }

    pub fn files(&self) -> &[DistFile] {
        &self.files
    }

    /// The signed list of hashes.
    pub fn sums(&self) -> &str {
        &self.sums
    }

    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The path of a served file, if `name` is one.
    pub fn path_of(&self, name: &str) -> Option<(PathBuf, &DistFile)> {
        self.files
            .iter()
            .find(|f| f.name == name)
            .map(|f| (self.dir.join(&f.name), f))
    }

    /// The install script for a site at `site_url` whose volunteers attach
    /// to `coordinator_url`. Everything it embeds is single-quoted.
    pub fn install_script(&self, project: &str, site_url: &str, coordinator_url: &str) -> String {
        INSTALL_SCRIPT
            .replace("@PROJECT@", &project.replace(|c: char| c.is_control(), " "))
            .replace("@SITE@", &shell_quote(site_url.trim_end_matches('/')))
            .replace("@COORDINATOR@", &shell_quote(coordinator_url))
            .replace("@PROJECT_KEY@", &shell_quote(&self.project_key_hex))
            .replace("@BINARY@", BINARY)
            .replace("@KEY_PEM@", &self.public_key_pem)
    }
}

/// `cargo xtask dist` writes `SHA256SUMS` beside what it built: when it is
/// there, every file must be listed and agree, so a file replaced between
/// the build and this start is refused rather than signed.
fn check_build_sums(dir: &Path, files: &[DistFile]) -> Result<(), Error> {
    let path = dir.join(SUMS);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(Error::io(format!("reading {}", path.display()))(error)),
    };
    let listed: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (hash, name) = l.split_once(char::is_whitespace)?;
            Some((hash, name.trim_start().trim_start_matches('*')))
        })
        .collect();
    for file in files {
        match listed.iter().find(|(_, name)| *name == file.name) {
            Some((hash, _)) if hash.eq_ignore_ascii_case(&file.sha256) => {}
            Some((hash, _)) => {
                return Err(Error::InvalidArgument(format!(
                    "--worker-dist: {} has SHA-256 {}, but {} says {hash}; refusing to serve it",
                    file.name,
                    file.sha256,
                    path.display()
                )));
            }
            None => {
                return Err(Error::InvalidArgument(format!(
                    "--worker-dist: {} is not listed in {}; refusing to serve it",
                    file.name,
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// The key as OpenSSL reads it: an Ed25519 SubjectPublicKeyInfo (RFC 8410),
/// a fixed 12-byte prefix and the 32 key bytes, in PEM.
fn public_key_pem(key: &SigningKey) -> String {
    use base64::Engine as _;
    const SPKI_PREFIX: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let der = [&SPKI_PREFIX[..], key.verifying_key().as_bytes()].concat();
    format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// One word for a POSIX shell, whatever it holds.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// `/install.sh`: the script, with this project's key and addresses in it.
pub(super) async fn install_script(State(site): State<Site>) -> Response {
    let Some(dist) = &site.info.dist else {
        return no_dist();
    };
    let script = dist.install_script(
        &site.info.project,
        &site.info.site_url,
        &site.info.coordinator_url,
    );
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        script,
    )
        .into_response()
}

/// `/dist/{file}`: the signed list, its signature, or a file as it is on
/// disk now (so a file changed since the start no longer matches).
pub(super) async fn file(State(site): State<Site>, UrlPath(name): UrlPath<String>) -> Response {
    let Some(dist) = site.info.dist.clone() else {
        return no_dist();
    };
    let binary = [(header::CONTENT_TYPE, "application/octet-stream")];
    if name == SUMS {
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            dist.sums().to_string(),
        )
            .into_response();
    }
    if name == SIGNATURE {
        return (binary, dist.signature().to_vec()).into_response();
    }
    let Some((path, _)) = dist.path_of(&name) else {
        return Failure::new(
            StatusCode::NOT_FOUND,
            format!("No file {name:?} here; {SUMS} lists what there is."),
        )
        .into_response();
    };
    let file = match std::fs::File::open(&path).and_then(|f| Ok((f.metadata()?.len(), f))) {
        Ok((size, file)) => (size, Arc::new(file)),
        Err(error) => {
            tracing::error!(%error, path = %path.display(), "cannot read a distribution file");
            return Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "The file cannot be read now; try again later.",
            )
            .into_response();
        }
    };
    let (size, file) = file;
    let offsets = (0..size.div_ceil(PIECE)).map(move |i| i * PIECE);
    let pieces = tokio_stream::iter(offsets).then(move |offset| {
        let file = file.clone();
        async move {
            let length = (size - offset).min(PIECE) as usize;
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt as _;
                let mut buffer = vec![0u8; length];
                file.read_exact_at(&mut buffer, offset).map(|()| buffer)
            })
            .await
            .map_err(std::io::Error::other)?
        }
    });
    let mut response = (binary, Body::from_stream(pieces)).into_response();
    if let Ok(length) = HeaderValue::from_str(&size.to_string()) {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, length);
    }
    response
}

/// Read and sent a piece at a time.
const PIECE: u64 = 256 << 10;

fn no_dist() -> Response {
    Failure::new(
        StatusCode::NOT_FOUND,
        "This project serves no worker binaries (its coordinator runs without --worker-dist); its home page says how to join.",
    )
    .into_response()
}

const INSTALL_SCRIPT: &str = r#"#!/bin/sh
# Installs the Cobble worker for @PROJECT@:
#   curl -fsSL <this site>/install.sh | sh -s -- --user NAME [--team TEAM] [--public-name]
# It downloads the worker from the site, checks the list of hashes against
# the project's key pinned below and the worker against that list, and
# refuses on any mismatch before anything is installed. Then it runs
# `cobble-worker install` (a systemd user service; see --help there), with
# the arguments given after `--`.
set -eu

site=@SITE@
coordinator=@COORDINATOR@
project_key=@PROJECT_KEY@
binary=@BINARY@
key_pem='@KEY_PEM@'

fail() {
    echo "cobble install: $*" >&2
    exit 1
}

[ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ] ||
    fail "this project ships its worker for x86_64 Linux only (this machine: $(uname -s) $(uname -m))"
for tool in curl openssl sha256sum awk mktemp; do
    command -v "$tool" >/dev/null 2>&1 ||
        fail "'$tool' is needed to download and check the worker; install it and run this again"
done
case "$(openssl version)" in
OpenSSL\ [3-9]*) ;;
*) fail "OpenSSL 3 or later is needed to check the project's signature (found: $(openssl version))" ;;
esac

work=$(mktemp -d) || fail "cannot create a temporary directory"
trap 'rm -rf "$work"' EXIT
trap 'exit 1' INT TERM

fetch() {
    curl -fsSL --proto '=http,https' -o "$work/$2" "$site/dist/$1" ||
        fail "cannot download $site/dist/$1"
}

fetch SHA256SUMS sums
fetch SHA256SUMS.sig sums.sig
printf '%s\n' "$key_pem" >"$work/key.pem"
openssl pkeyutl -verify -pubin -inkey "$work/key.pem" -rawin \
    -in "$work/sums" -sigfile "$work/sums.sig" >/dev/null 2>&1 ||
    fail "the list of hashes from $site is not signed by this project's key ($project_key); refusing to install anything"
expected=$(awk -v name="$binary" '$2 == name { print $1 }' "$work/sums")
[ -n "$expected" ] || fail "the signed list of hashes names no $binary"

fetch "$binary" cobble-worker
actual=$(sha256sum "$work/cobble-worker" | cut -d ' ' -f 1)
[ "$actual" = "$expected" ] ||
    fail "the downloaded worker has SHA-256 $actual, but the project signed $expected: it was altered or damaged on the way; refusing to install it (nothing was installed)"

chmod 755 "$work/cobble-worker"
echo "cobble install: the worker matches the project's signed hash $expected"
"$work/cobble-worker" install --coordinator "$coordinator" --project-key "$project_key" "$@"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn dist_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).expect("write");
        }
        dir
    }

    #[test]
    fn the_list_is_signed_and_names_every_file() {
        let dir = dist_with(&[
            (BINARY, b"worker"),
            ("cobble-worker_0.1.0_amd64.deb", b"deb"),
        ]);
        let dist = WorkerDist::load(dir.path(), &key()).expect("loads");
        assert!(dist.sums().starts_with(HEADER));
        assert_eq!(dist.files().len(), 2);
        let worker_hash = hex::encode(Sha256::digest(b"worker"));
        assert!(dist.sums().contains(&format!("{worker_hash}  {BINARY}\n")));
        let signature = ed25519_dalek::Signature::from_bytes(dist.signature());
        key()
            .verifying_key()
            .verify_strict(dist.sums().as_bytes(), &signature)
            .expect("signed by the project's key");
    }

    #[test]
    fn a_dir_without_the_worker_or_with_odd_names_or_wrong_sums_is_refused() {
        let empty = dist_with(&[("README", b"x")]);
        let error = WorkerDist::load(empty.path(), &key()).expect_err("no binary");
        assert!(error.to_string().contains(BINARY), "{error}");

        let odd = dist_with(&[(BINARY, b"w"), ("it's $(rm -rf)", b"x")]);
        let error = WorkerDist::load(odd.path(), &key()).expect_err("odd name");
        assert!(error.to_string().contains("cannot serve"), "{error}");

        let wrong = dist_with(&[
            (BINARY, b"tampered"),
            (SUMS, format!("{}  {BINARY}\n", "0".repeat(64)).as_bytes()),
        ]);
        let error = WorkerDist::load(wrong.path(), &key()).expect_err("sums disagree");
        assert!(error.to_string().contains("refusing to serve"), "{error}");

        let unlisted = dist_with(&[
            (BINARY, b"w"),
            ("extra.deb", b"d"),
            (
                SUMS,
                format!("{}  {BINARY}\n", hex::encode(Sha256::digest(b"w"))).as_bytes(),
            ),
        ]);
        let error = WorkerDist::load(unlisted.path(), &key()).expect_err("unlisted file");
        assert!(error.to_string().contains("not listed"), "{error}");

        assert!(WorkerDist::load(Path::new("/nonexistent/dist"), &key()).is_err());
    }

    #[test]
    fn the_script_quotes_what_it_embeds_and_pins_the_key() {
        let dir = dist_with(&[(BINARY, b"w")]);
        let dist = WorkerDist::load(dir.path(), &key()).expect("loads");
        let script = dist.install_script(
            "Prime\nHunt",
            "http://site.example/'; rm -rf ~; 'x",
            "https://c.example:7710",
        );
        assert!(script.contains("site='http://site.example/'\\''; rm -rf ~; '\\''x'\n"));
        assert!(script.contains("coordinator='https://c.example:7710'\n"));
        assert!(script.contains("Installs the Cobble worker for Prime Hunt:"));
        assert!(script.contains(&dist.public_key_pem));
        assert!(script.contains("MCowBQYDK2VwAyEA"), "an Ed25519 SPKI");
    }
}
