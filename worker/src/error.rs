//! Errors of the worker crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a valid WebAssembly module: {0}")]
    InvalidModule(String),
    #[error(transparent)]
    Sandbox(#[from] cobble_sandbox::Error),
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("blob {hash} failed verification: expected {expected}, got {actual}")]
    BlobMismatch {
        hash: String,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Core(#[from] cobble_core::Error),
    #[error("coordinator refused the request: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("transfer: {0}")]
    Transfer(#[from] cobble_client::Error),
    #[error(
        "the coordinator's project key {actual} differs from the key pinned in {pinned_in} ({expected}): refusing to attach; if the project really changed its key, delete that file"
    )]
    ProjectKeyChanged {
        pinned_in: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(transparent)]
    Tls(#[from] cobble_tls::Error),
    #[error(
        "the coordinator's code-signing key {actual} differs from the key pinned in {pinned_in} ({expected}): refusing to attach; if the project really changed its code-signing key, delete that file"
    )]
    CodeKeyChanged {
        pinned_in: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("install: {0}")]
    Install(String),
    #[error("state file {path} is corrupt: {message}")]
    CorruptState { path: PathBuf, message: String },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
