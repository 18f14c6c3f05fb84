//! Errors of the shared domain logic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a blob hash must be 32 bytes (64 hex digits), got {0} bytes")]
    BadHashLength(usize),
    #[error("invalid hex in blob hash: {0}")]
    BadHashHex(String),
    #[error("chunk list refused: {0}")]
    BadChunkList(String),
    #[error("manifest signature does not verify against the project key: refusing the unit")]
    BadSignature,
    #[error("manifest signature is malformed: {0}")]
    MalformedSignature(String),
    #[error("manifest bytes do not decode: {0}")]
    MalformedManifest(String),
    #[error("project key is malformed: {0}")]
    BadProjectKey(String),
    /// The project requires modules signed by its offline code key.
    #[error("{0}")]
    UnsignedCode(String),
    #[error("job spec {path}: {message}")]
    Spec { path: PathBuf, message: String },
    #[error("job spec field `{field}`: {message}")]
    InvalidField { field: String, message: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Error::InvalidField {
            field: field.to_string(),
            message: message.into(),
        }
    }
}
