//! Cobble's volunteer worker: attaches to a project, fetches signed work
//! units, verifies them, runs them in a wasmtime sandbox and reports results.

pub mod activity;
pub mod attach;
pub mod cache;
pub mod error;
pub mod exec;
pub mod install;
pub mod journal;
pub mod local_page;
pub mod peer;
pub mod prefs;
pub mod runner;
pub mod status;
pub mod sys;
pub mod tasks;

pub use error::{Error, Result};
pub use runner::{Hooks, RunConfig, run};

/// Logs to stderr, filtered by `RUST_LOG` (e.g. `RUST_LOG=info` for unit
/// starts, ends and suspensions); only warnings and errors by default, so
/// a volunteer's journal stays quiet.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
