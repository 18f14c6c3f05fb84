//! `cobble-coordinator serve`: runs a Cobble project's coordinator.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::Write;

#[derive(Parser)]
#[command(
    version,
    about = "Cobble's coordinator: splits jobs, signs work units, validates results"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the project: embedded SQLite and local blobs unless told otherwise.
    /// A flag given twice takes its last value, so wrappers can override defaults.
    #[command(args_override_self = true)]
    Serve(cobble_coordinator::Config),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn,h2=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve(config) = Cli::parse().command;
    let store = cobble_coordinator::start(&config).await?;
    let tls = cobble_coordinator::server_tls(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let key = hex::encode(store.signing_key().verifying_key().as_bytes());
    let (scheme, certificate) = match &tls {
        Some(cert) => (
            "https",
            format!("tls certificate sha256 {}", cert.fingerprint()),
        ),
        None => ("http", "tls off (--insecure-plaintext)".to_string()),
    };
    // Scripts and tests read these lines, up to the signing key, which comes
    // last; keep their form stable. A closed stdout must not stop a server.
    let banner = format!(
        "cobble-coordinator listening on {scheme}://{address}\nresearcher token in {}\n{certificate}\nproject signing key {key}\n",
        config.researcher_token_path().display()
    );
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush())
    {
        tracing::warn!(%error, "cannot print the start-up banner");
    }
    drop(stdout);
    if let Some(cert) = &tls {
        tokio::spawn(reload_on_hangup(config.clone(), cert.clone()));
    }
    cobble_coordinator::serve(store, &config, listener, tls, shutdown_signal()).await?;
    Ok(())
}

/// Re-reads the TLS certificate on SIGHUP (after an ACME renewal, say).
async fn reload_on_hangup(
    config: cobble_coordinator::Config,
    cert: std::sync::Arc<cobble_tls::ServerCert>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; the TLS certificate reloads only on restart");
        return;
    };
    while hangups.recv().await.is_some() {
        match cobble_coordinator::reload_tls(&config, &cert) {
            Ok(()) => {
                tracing::info!(fingerprint = %cert.fingerprint(), "reloaded the TLS certificate")
            }
            Err(error) => {
                tracing::error!(%error, "cannot reload the TLS certificate; serving the old one")
            }
        }
    }
}

/// Resolves on ctrl-c or SIGTERM, for a graceful stop.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
    tracing::info!("shutting down");
}
