//! Errors of the sandbox crate: the module or the engine is at fault, never
//! the unit (a unit's own failures are `UnitFailure`s in its report).

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
    #[error("module is not a WASI command: it exports no `_start` function")]
    NotACommand,
    #[error("wasm engine: {0}")]
    Engine(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
