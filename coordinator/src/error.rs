//! Errors of the coordinator, and their one mapping to gRPC status codes.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Core(#[from] cobble_core::Error),
    /// The sandbox refused a researcher's validator module, or failed.
    #[error("validator module: {0}")]
    Sandbox(#[from] cobble_sandbox::Error),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// A quota is used up; the message gives the figures.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("secret file {path}: {message}")]
    Secret { path: String, message: String },
    #[error(transparent)]
    Tls(#[from] cobble_tls::Error),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors a retry cures: PostgreSQL's deadlock and serialization
/// failures, SQLite's busy and locked, a pool with no free connection.
fn transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(e) => matches!(
            e.code().as_deref(),
            Some("40001" | "40P01" | "5" | "6" | "517" | "262")
        ),
        _ => false,
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use tonic::Status;
        match error {
            Error::InvalidArgument(m) => Status::invalid_argument(m),
            Error::Core(e) => Status::invalid_argument(e.to_string()),
            Error::Sandbox(
                e @ (cobble_sandbox::Error::InvalidModule(_) | cobble_sandbox::Error::NotACommand),
            ) => Status::invalid_argument(format!("validator module: {e}")),
            Error::NotFound(m) => Status::not_found(m),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::ResourceExhausted(m) => Status::resource_exhausted(m),
            Error::Database(e) if transient(&e) => {
                tracing::warn!(error = %e, "transient database error; the caller retries");
                Status::unavailable("the coordinator's database is busy; try again")
            }
            // Internal details go to the operator's log, not to callers.
            internal @ (Error::Database(_)
            | Error::Migrate(_)
            | Error::Io { .. }
            | Error::Corrupt(_)
            | Error::Secret { .. }
            | Error::Tls(_)
            | Error::Sandbox(_)) => {
                tracing::error!(error = %internal, "internal error");
                Status::internal("internal coordinator error; see the coordinator's log")
            }
        }
    }
}
