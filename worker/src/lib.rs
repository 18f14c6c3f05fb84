//! Cobble's volunteer worker: attaches to a project, fetches signed work
//! units, verifies them, runs them in a wasmtime sandbox and reports results.

pub mod attach;
mod durable;
pub mod error;
pub mod exec;
pub mod journal;
pub mod prefs;
pub mod runner;
pub mod sandbox;

pub use error::{Error, Result};
pub use runner::{Hooks, RunConfig, run};

/// Logs to stderr, filtered by `RUST_LOG`; unit starts and ends by default.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
