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
    /// The shared object store failed or could not be reached.
    #[error("{context}: {source}")]
    BlobStore {
        context: String,
        #[source]
        source: object_store::Error,
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
    /// The caller took too long (an upload that went silent).
    #[error("{0}")]
    TimedOut(String),
    /// A quota is used up; the message gives the figures.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("secret file {path}: {message}")]
    Secret { path: String, message: String },
    #[error(transparent)]
    Tls(#[from] cobble_tls::Error),
    /// The server itself could not start or run (transport, reflection).
    #[error("server: {0}")]
    Server(String),
}

impl Error {
    /// Whether this is a refusal of what the caller sent (its own to fix),
    /// as opposed to a failure of the coordinator: in a batch, a refusal
    /// answers one item and the rest go on.
    pub fn is_refusal(&self) -> bool {
        match self {
            Error::InvalidArgument(_)
            | Error::Core(_)
            | Error::NotFound(_)
            | Error::Unauthenticated(_)
            | Error::PermissionDenied(_)
            | Error::AlreadyExists(_)
            | Error::TimedOut(_)
            | Error::ResourceExhausted(_) => true,
            Error::Database(_)
            | Error::Migrate(_)
            | Error::Io { .. }
            | Error::BlobStore { .. }
            | Error::Sandbox(_)
            | Error::Corrupt(_)
            | Error::Secret { .. }
            | Error::Tls(_)
            | Error::Server(_) => false,
        }
    }

    /// The HTTP status of this error on the web site: the same judgement
    /// as the gRPC mapping below, in one exhaustive match.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidArgument(_) | Error::Core(_) => 400,
            Error::Unauthenticated(_) => 401,
            Error::PermissionDenied(_) => 403,
            Error::NotFound(_) => 404,
            Error::AlreadyExists(_) => 409,
            Error::ResourceExhausted(_) => 429,
            Error::TimedOut(_) => 408,
            Error::Database(e) if database_code(e).is_some() => 503,
            Error::BlobStore { .. } => 503,
            Error::Io { source, .. }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                503
            }
            Error::Sandbox(
                cobble_sandbox::Error::InvalidModule(_) | cobble_sandbox::Error::NotACommand,
            ) => 400,
            Error::Database(_)
            | Error::Migrate(_)
            | Error::Io { .. }
            | Error::Sandbox(_)
            | Error::Corrupt(_)
            | Error::Secret { .. }
            | Error::Tls(_)
            | Error::Server(_) => 500,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a database error means to a caller: a conflict another attempt
/// of the whole call resolves (ABORTED), a database that is busy or
/// unreachable for now (UNAVAILABLE), or a bug (None: INTERNAL). Both
/// retryable kinds are retried by the worker and the load generator.
fn database_code(error: &sqlx::Error) -> Option<tonic::Code> {
    use tonic::Code;
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => Some(Code::Unavailable),
        sqlx::Error::Database(e) => match e.code().as_deref() {
            // PostgreSQL: serialization failure, deadlock.
            Some("40001" | "40P01") => Some(Code::Aborted),
            // PostgreSQL: connection exceptions (08...), shutting down or
            // starting (57P01-57P03), too many connections, lock not
            // available, out of memory or disk.
            Some(code)
                if code.starts_with("08")
                    || matches!(
                        code,
                        "57P01" | "57P02" | "57P03" | "53300" | "55P03" | "53100" | "53200"
                    ) =>
            {
                Some(Code::Unavailable)
            }
            // SQLite: busy, locked, and their extended codes.
            Some("5" | "6" | "517" | "262" | "261" | "773") => Some(Code::Unavailable),
            // SQLite: disk full.
            Some("13") => Some(Code::Unavailable),
            _ => None,
        },
        // sqlx's error is non-exhaustive: anything else is a bug of ours
        // (a decoding error, a missing row) or of the configuration.
        _ => None,
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
            Error::TimedOut(m) => Status::deadline_exceeded(m),
            Error::Database(e) if database_code(&e) == Some(tonic::Code::Aborted) => {
                tracing::info!(error = %e, "transaction conflict; the caller retries");
                Status::aborted("a concurrent change conflicted with this call; send it again")
            }
            Error::Database(e) if database_code(&e).is_some() => {
                tracing::warn!(error = %e, "database unavailable for now; the caller retries");
                Status::unavailable("the coordinator's database is busy or unreachable; try again")
            }
            Error::Io { context, source }
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) =>
            {
                tracing::error!(%context, error = %source, "the coordinator's storage is full");
                Status::unavailable("the coordinator's storage is full; try again later")
            }
            Error::BlobStore { context, source } => {
                tracing::error!(%context, error = %source, "the blob store failed");
                Status::unavailable("the coordinator's blob store is unreachable; try again later")
            }
            // Internal details go to the operator's log, not to callers.
            internal @ (Error::Database(_)
            | Error::Migrate(_)
            | Error::Io { .. }
            | Error::Corrupt(_)
            | Error::Secret { .. }
            | Error::Tls(_)
            | Error::Server(_)
            | Error::Sandbox(_)) => {
                tracing::error!(error = %internal, "internal error");
                Status::internal("internal coordinator error; see the coordinator's log")
            }
        }
    }
}
