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
    /// Researcher accounts: who may submit jobs and collect their results.
    Researcher {
        #[command(subcommand)]
        action: ResearcherAction,
        /// Where the project lives: the same flags as `serve`.
        #[command(flatten)]
        config: cobble_coordinator::Config,
    },
    /// The audit log: who submitted, cancelled and downloaded what, newest
    /// first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[command(flatten)]
        config: cobble_coordinator::Config,
    },
    /// Writes the statistics export (BOINC's db_dump files) to
    /// `<data-dir>/stats/` now, beside a running server or not.
    ExportStats {
        #[command(flatten)]
        config: cobble_coordinator::Config,
    },
}

#[derive(Subcommand)]
enum ResearcherAction {
    /// Creates an account and prints its token, once (only a hash is kept).
    Add {
        name: String,
        /// May cancel and collect every job, and is held to no quota.
        #[arg(long)]
        admin: bool,
        /// Bytes of uploads (modules, inputs) the researcher may keep; 0: no limit.
        #[arg(long, default_value_t = cobble_coordinator::store::DEFAULT_MAX_STORED_BYTES)]
        max_stored_bytes: i64,
        /// Units of running jobs not yet done; 0: no limit.
        #[arg(long, default_value_t = cobble_coordinator::store::DEFAULT_MAX_UNITS_IN_FLIGHT)]
        max_units_in_flight: i64,
    },
    /// Lists accounts with their jobs, stored bytes and quotas.
    List,
    /// Revokes an account: its token stops working at once.
    Revoke { name: String },
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
    let config = match Cli::parse().command {
        Command::Serve(config) => config,
        Command::Researcher { action, config } => return researcher(action, &config).await,
        Command::Audit { limit, config } => return audit(limit, &config).await,
        Command::ExportStats { config } => {
            let store = cobble_coordinator::start(&config).await?;
            let dir = config.stats_dir();
            let summary = store.export_stats(&dir).await?;
            println!(
                "exported {} users, {} teams, {} hosts ({:.2} credit in all) to {}",
                summary.users,
                summary.teams,
                summary.hosts,
                summary.total_credit,
                dir.display()
            );
            store.db.close().await;
            return Ok(());
        }
    };
    let store = cobble_coordinator::start(&config).await?;
    let tls = cobble_coordinator::server_tls(&config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let key = hex::encode(store.signing_key().verifying_key().as_bytes());
    let web = match config.web_listen.as_str() {
        "off" => None,
        address => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| {
                    format!(
                        "cannot serve the web site on {address} (--web-listen; `off` to disable)"
                    )
                })?,
        ),
    };
    // A bad distribution stops the start, as a bad flag does: serving a
    // list that disagrees with the build would only fail at volunteers'.
    let dist = match (&config.worker_dist, &web) {
        (Some(dir), Some(_)) => Some(std::sync::Arc::new(
            cobble_coordinator::web::WorkerDist::load(dir, store.signing_key())?,
        )),
        (Some(_), None) => anyhow::bail!("--worker-dist needs the web site (--web-listen)"),
        (None, _) => None,
    };
    let (scheme, certificate) = match &tls {
        Some(cert) => (
            "https",
            format!("tls certificate sha256 {}", cert.fingerprint()),
        ),
        None => ("http", "tls off (--insecure-plaintext)".to_string()),
    };
    // Scripts and tests read these lines, up to the signing key, which comes
    // last; keep their form stable. A closed stdout must not stop a server.
    let site = match &web {
        Some(listener) => format!("web site at http://{}/", listener.local_addr()?),
        None => "web site off".to_string(),
    };
    let banner = format!(
        "cobble-coordinator listening on {scheme}://{address}\nresearcher token in {}\n{certificate}\n{site}\nproject signing key {key}\n",
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
    if let Some(listener) = web {
        let site_url = config.site_url.clone().unwrap_or_else(|| {
            listener
                .local_addr()
                .map(|a| format!("http://{a}"))
                .unwrap_or_default()
        });
        let info = cobble_coordinator::web::SiteInfo {
            project: config.project_name.clone(),
            description: config.project_description.clone(),
            coordinator_url: config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{address}")),
            project_key: key.clone(),
            stats_dir: config.stats_dir(),
            site_url,
            dist,
        };
        let router = cobble_coordinator::web::router(store.clone(), info);
        tokio::spawn(cobble_coordinator::web::serve(listener, router));
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

async fn researcher(
    action: ResearcherAction,
    config: &cobble_coordinator::Config,
) -> anyhow::Result<()> {
    let store = cobble_coordinator::start(config).await?;
    match action {
        ResearcherAction::Add {
            name,
            admin,
            max_stored_bytes,
            max_units_in_flight,
        } => {
            let token = store
                .add_researcher(&name, admin, max_stored_bytes, max_units_in_flight)
                .await?;
            eprintln!("researcher {name:?} added; give them this token (it is not shown again):");
            println!("{token}");
        }
        ResearcherAction::List => {
            println!(
                "{:<20} {:<6} {:<8} {:>6} {:>14} {:>14} {:>12}",
                "name", "admin", "state", "jobs", "stored bytes", "max stored", "max units"
            );
            for info in store.list_researchers().await? {
                let r = &info.researcher;
                let limit = |value: i64| {
                    if r.admin || value == 0 {
                        "none".to_string()
                    } else {
                        value.to_string()
                    }
                };
                println!(
                    "{:<20} {:<6} {:<8} {:>6} {:>14} {:>14} {:>12}",
                    r.name,
                    if r.admin { "yes" } else { "no" },
                    if info.revoked_ms.is_some() {
                        "revoked"
                    } else {
                        "active"
                    },
                    info.jobs,
                    info.stored_bytes,
                    limit(r.max_stored_bytes),
                    limit(r.max_units_in_flight),
                );
            }
        }
        ResearcherAction::Revoke { name } => {
            store.revoke_researcher(&name).await?;
            eprintln!("researcher {name:?} revoked");
        }
    }
    store.db.close().await;
    Ok(())
}

async fn audit(limit: i64, config: &cobble_coordinator::Config) -> anyhow::Result<()> {
    let store = cobble_coordinator::start(config).await?;
    for entry in store.audit_log(limit.clamp(1, 100_000)).await? {
        let job = entry
            .job_id
            .map(|j| format!(" job {j}"))
            .unwrap_or_default();
        println!(
            "{} {} {}{} {}",
            utc(entry.at_ms),
            entry.actor,
            entry.action,
            job,
            entry.detail
        );
    }
    store.db.close().await;
    Ok(())
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`, so the log reads
/// without a calculator.
fn utc(ms: i64) -> String {
    let (days, in_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        cobble_core::civil_date(days),
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1_000 % 60,
        in_day % 1_000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn audit_times_read_as_utc() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::utc(1_796_122_170_182), "2026-12-01T10:49:30.182Z");
        assert_eq!(super::utc(-1), "1969-12-31T23:59:59.999Z");
    }
}
