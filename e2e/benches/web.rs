//! The web site under load: the real `cobble-coordinator` binary (SQLite,
//! or PostgreSQL with COBBLE_TEST_POSTGRES_URL) holding a project of
//! COBBLE_WEB_ACCOUNTS accounts (100,000) in COBBLE_WEB_TEAMS teams (2,000)
//! with COBBLE_WEB_HOSTS hosts (200,000), all credited, and a job of
//! COBBLE_WEB_UNITS units (2,500,000 in jobs of at most a million, so
//! 5,000,000 results) submitted through the real CLI and store. Then COBBLE_WEB_CLIENTS (16) clients
//! request one page for COBBLE_BENCH_SECONDS (15), each over a fresh
//! HTTP/1.1 connection as a first visit does: the top-users page, a user's
//! page, the server status. Requests per second and p50/p99/max.
//!
//! Accounts, teams and hosts are inserted with SQL in a few statements
//! (through the registration flow 300,000 attaches would take longer than
//! the measurement is worth); the job, its units and its results go
//! through the coordinator as a researcher's would.
//!
//! `cargo xtask bench web`.

use cobble_e2e::{Coordinator, fresh_postgres, http_get, write_job};
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Fills accounts, teams and hosts with credited rows, named and
/// consenting, in a few statements that both backends take.
async fn populate(url: &str, accounts: u64, teams: u64, hosts: u64) -> anyhow::Result<()> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await?;
    let now = cobble_core::now_ms();
    let numbers = |n: u64| {
        format!("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})")
    };
    // Credit spread over the rows; the RAC key a monotone stand-in (its
    // order, not its value, is what the pages use).
    sqlx::query(&format!(
        "INSERT INTO teams (name, total_credit, rac, rac_time_ms, valid_results, created_ms, rac_key)
         {} SELECT 'team-' || CAST(i AS TEXT), (i * 7919) % 1000003, (i * 31) % 997, $1, i, $1,
                   CAST((i * 31) % 997 AS REAL) FROM n",
        numbers(teams)
    ))
    .bind(now)
    .execute(&pool)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO accounts (name, key_hash, team_id, total_credit, rac, rac_time_ms, valid_results,
                               created_ms, public_name, rac_key)
         {} SELECT 'user-' || CAST(i AS TEXT), $1, 1 + i % {teams}, (i * 7919) % 100003,
                   (i * 31) % 997, $2, i % 1000, $2, 1, CAST((i * 31) % 997 AS REAL) FROM n",
        numbers(accounts)
    ))
    .bind(vec![0u8; 32])
    .bind(now)
    .execute(&pool)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO hosts (account_id, name, key_hash, cpus, os, total_credit, rac, rac_time_ms,
                            valid_results, created_ms, last_contact_ms, daily_quota, rac_key)
         {} SELECT 1 + i % {accounts}, 'host-' || CAST(i AS TEXT), $1, 4, 'linux', (i * 7919) % 50021,
                   (i * 31) % 997, $2, i % 500, $2, $2 - (i * 1000) % 86400000, 64,
                   CAST((i * 31) % 997 AS REAL) FROM n",
        numbers(hosts)
    ))
    .bind(vec![0u8; 32])
    .bind(now)
    .execute(&pool)
    .await?;
    pool.close().await;
    Ok(())
}

struct Figures {
    requests: usize,
    seconds: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    errors: usize,
}

/// `clients` threads asking for `path` for `seconds`.
fn hammer(site: &str, path: &str, clients: u64, seconds: u64) -> Figures {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (site, path) = (site.to_string(), path.to_string());
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut errors = 0;
                while Instant::now() < deadline {
                    let asked = Instant::now();
                    let answer = http_get(&site, &path);
                    latencies.push(asked.elapsed());
                    if answer.status != 200 {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for thread in threads {
        if let Ok((latencies, failed)) = thread.join() {
            all.extend(latencies);
            errors += failed;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)));
    Figures {
        requests: all.len(),
        seconds,
        p50: at(0.50).copied().unwrap_or_default(),
        p99: at(0.99).copied().unwrap_or_default(),
        max: all.last().copied().unwrap_or_default(),
        errors,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

async fn run(backend: &str, postgres: Option<String>) -> anyhow::Result<()> {
    let accounts = env_or("COBBLE_WEB_ACCOUNTS", 100_000);
    let teams = env_or("COBBLE_WEB_TEAMS", 2_000);
    let hosts = env_or("COBBLE_WEB_HOSTS", 200_000);
    let units = env_or("COBBLE_WEB_UNITS", 2_500_000);
    let clients = env_or("COBBLE_WEB_CLIENTS", 16);
    let seconds = env_or("COBBLE_BENCH_SECONDS", 15);
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let mut flags = vec![
        "--max-requests-per-ip-per-sec".to_string(),
        "0".to_string(),
        "--max-connections-per-ip".to_string(),
        "0".to_string(),
    ];
    if let Some(url) = &postgres {
        flags.extend(["--database-url".to_string(), url.clone()]);
    }
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let coordinator = Coordinator::start_with(dir, &flag_refs);
    let site = coordinator.web_url.clone().expect("the site's address");
    let url = postgres.clone().unwrap_or_else(|| {
        format!(
            "sqlite://{}",
            coordinator.data_dir.join("cobble.db").display()
        )
    });
    let started = Instant::now();
    populate(&url, accounts, teams, hosts).await?;
    // A job holds at most a million units: several jobs, then.
    let mut submitted = 0;
    while submitted < units {
        let count = (units - submitted).min(1_000_000);
        let job_dir = dir.join(format!("job-{submitted}"));
        let spec = write_job(
            &job_dir,
            cobble_unit_artifacts::PRIMES,
            "primes.wasm",
            &format!(
                "name = \"web\"\nmodule = \"primes.wasm\"\nargs = [\"{{start}}\"]\n\
                 [split]\nrange = {{ start = 0, end = {count}, per_unit = 1 }}\n\
                 [replication]\nmin_quorum = 2\ntarget_results = 2\n"
            ),
        );
        coordinator.submit(&spec);
        submitted += count;
    }
    eprintln!(
        "{backend}: {accounts} accounts, {teams} teams, {hosts} hosts, {} results in {:.0} s",
        units * 2,
        started.elapsed().as_secs_f64()
    );
    let user = format!("/users/{}", accounts / 2 + 1);
    for path in ["/users", user.as_str(), "/status"] {
        // One visit first: what a cold cache costs is in max, not p50.
        let _ = http_get(&site, path);
        let f = hammer(&site, path, clients, seconds);
        println!(
            "| {backend} | `{path}` | {:.0} | {} / {} | {} | {} |",
            f.requests as f64 / f.seconds,
            ms(f.p50),
            ms(f.p99),
            ms(f.max),
            f.errors
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    println!("| backend | page | requests/s | p50 / p99 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|");
    run("SQLite", None).await?;
    match std::env::var("COBBLE_TEST_POSTGRES_URL") {
        Ok(admin) => run("PostgreSQL", Some(fresh_postgres(&admin).await?)).await?,
        Err(_) => eprintln!("skipping PostgreSQL: COBBLE_TEST_POSTGRES_URL is not set"),
    }
    Ok(())
}
