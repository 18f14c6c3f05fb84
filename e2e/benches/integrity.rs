//! Saboteurs: a real coordinator (the `cobble-coordinator` binary, SQLite
//! and, with COBBLE_TEST_POSTGRES_URL, PostgreSQL) and many simulated hosts
//! over real gRPC. The hosts are a load driver, not workers running wasm:
//! each knows the right answer to every unit (`answer <start>`) and either
//! returns it or a wrong one. For saboteur fractions f = 0.05, 0.1, 0.2,
//! non-colluding (each returns its own random wrong answer, cheating on
//! each result with probability s) and colluding (all return the same
//! wrong answer on the same units, a fraction s of them), s = 1.0 and 0.3,
//! it prints wrong canonical results, the replication overhead (results
//! issued per validated unit), and what saboteurs got, beside the analytic
//! rate of wrong results for plain quorum 2 with colluders, 3p^2 - 2p^3.
//!
//! `cargo xtask bench integrity`; COBBLE_BENCH_UNITS (default 20000),
//! COBBLE_BENCH_HOSTS (100), COBBLE_BENCH_SCENARIOS (a filter such as
//! `0.1-colluding`), COBBLE_BENCH_BACKENDS (`sqlite,postgres`).

#[path = "common/mod.rs"]
mod common;

use cobble_e2e::{Coordinator, write_job};
use cobble_proto::v1::{self as pb, job_service_client::JobServiceClient, report_request::Outcome};
use prost::Message;
use sqlx::Row;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Scenario {
    fraction: f64,
    colluding: bool,
    rate: f64,
}

#[derive(Debug, Default)]
struct Figures {
    units: u64,
    wrong: u64,
    /// Wrong canonical results accepted from one host.
    wrong_alone: u64,
    results_issued: u64,
    saboteur_results: u64,
    saboteur_valid: u64,
    unreplicated: u64,
    seconds: f64,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A cheap deterministic hash, for coordinated cheating and per-result dice.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ceb3fe1a85ec53);
    x ^ (x >> 33)
}

fn unit_fraction(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

/// The stdout a simulated host reports for a unit.
fn stdout_for(scenario: &Scenario, saboteur: bool, host: u64, start: u64, nonce: u64) -> Vec<u8> {
    if saboteur {
        if scenario.colluding {
            // All colluders cheat on the same units, with the same answer.
            if unit_fraction(start ^ 0x0c01_10de) < scenario.rate {
                return format!("colluded {start}\n").into_bytes();
            }
        } else if unit_fraction(host << 40 ^ start ^ nonce << 20) < scenario.rate {
            return format!("wrong {start} from {host} #{nonce}\n").into_bytes();
        }
    }
    format!("answer {start}\n").into_bytes()
}

async fn simulated_host(
    url: String,
    security: cobble_client::Security,
    index: u64,
    saboteur: bool,
    scenario: Scenario,
    done: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let (connection, mut worker) = common::attach(
        &url,
        &security,
        format!("{}{index}", if saboteur { "s" } else { "h" }),
        format!("host{index}"),
        4,
    )
    .await?;
    let mut nonce = 0;
    while !done.load(Ordering::Relaxed) {
        let response = match worker
            .request_work(connection.request(pb::WorkRequest {
                slots: 8,
                wait_s: 1,
            }))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if response.assignments.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        for assignment in response.assignments {
            let manifest = pb::Manifest::decode(assignment.manifest.as_slice())?;
            let start: u64 = manifest
                .args
                .first()
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            nonce += 1;
            let stdout = stdout_for(&scenario, saboteur, index, start, nonce);
            let blob = connection.upload_bytes(&stdout).await?;
            let report = pb::ReportRequest {
                lease_id: manifest.lease_id,
                outcome: Some(Outcome::Success(pb::Success {
                    stdout: Some(blob),
                    files: vec![],
                    fuel_used: 1_000_000_000,
                    elapsed_ms: 1,
                    inline: Vec::new(),
                })),
            };
            // As the real worker does: a report the coordinator could not
            // take now (its database busy) is sent again, or the unit
            // would wait out its deadline.
            for attempt in 0..10u64 {
                match worker
                    .report_result(connection.request(report.clone()))
                    .await
                {
                    Ok(_) => break,
                    Err(status) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        if status.code() != tonic::Code::Unavailable {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn run(scenario: Scenario, units: u64, hosts: u64, database_url: Option<&str>) -> Figures {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let mut flags = cobble_e2e::ONE_ADDRESS_MANY_MACHINES.to_vec();
    if let Some(url) = database_url {
        flags.extend(["--database-url", url]);
    }
    let coordinator = Coordinator::start_with(dir, &flags);
    let spec = write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        &format!(
            "name = \"integrity\"\nmodule = \"primes.wasm\"\nargs = [\"{{start}}\"]\n\
             [split]\nrange = {{ start = 0, end = {units}, per_unit = 1 }}\n\
             [replication]\nmin_quorum = 2\ntarget_results = 2\nmax_total_results = 6\n"
        ),
    );
    let job: i64 = coordinator.submit(&spec).parse().expect("job id");
    let saboteurs = (hosts as f64 * scenario.fraction).round() as u64;
    let done = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let mut tasks = Vec::new();
    for index in 0..hosts {
        // Saboteurs spread evenly among the honest.
        let saboteur = index * saboteurs / hosts != (index + 1) * saboteurs / hosts;
        let host = simulated_host(
            coordinator.url.clone(),
            coordinator.security(),
            index,
            saboteur,
            scenario,
            done.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let outcome = host.await;
            if let Err(error) = &outcome {
                eprintln!("simulated host {index} failed: {error:#}");
            }
            outcome
        }));
    }
    let channel = coordinator.channel().await;
    let mut jobs = JobServiceClient::new(channel);
    let mut last_report = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = jobs
            .get_job_status(pb::JobRequest { job_id: job })
            .await
            .expect("status")
            .into_inner();
        if status.state == "done" || began.elapsed() > Duration::from_secs(3_600) {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "  {:.0} s: {} of {} units done, {} results in progress, {} failed calls",
                began.elapsed().as_secs_f64(),
                status.units_done,
                status.units_total,
                status.results_in_progress,
                errors.load(Ordering::Relaxed)
            );
            if status.units_done == 0 && std::env::var("COBBLE_BENCH_DEBUG").is_ok() {
                eprintln!("  data dir {}", coordinator.data_dir.display());
                std::thread::sleep(Duration::from_secs(60));
            }
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let mut figures = figures_from_database(database_url.map_or_else(
        || {
            format!(
                "sqlite://{}",
                coordinator.data_dir.join("cobble.db").display()
            )
        },
        str::to_string,
    ))
    .await;
    figures.seconds = seconds;
    if errors.load(Ordering::Relaxed) > 0 {
        eprintln!(
            "  {} calls failed and were retried",
            errors.load(Ordering::Relaxed)
        );
    }
    figures
}

/// Reads the outcome from the coordinator's database: the canonical
/// stdout of each unit against the right answer.
async fn figures_from_database(url: String) -> Figures {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.expect("database");
    let units = sqlx::query(
        "SELECT u.payload, u.replicated, r.output FROM units u
         LEFT JOIN results r ON r.id = u.canonical_result_id WHERE u.state = 'done'",
    )
    .fetch_all(&pool)
    .await
    .expect("units");
    let mut figures = Figures::default();
    for row in &units {
        figures.units += 1;
        let payload: Vec<u8> = row.try_get("payload").expect("payload");
        let payload = pb::Manifest::decode(payload.as_slice()).expect("payload");
        let start = payload.args.first().cloned().unwrap_or_default();
        let right = blake3::hash(format!("answer {start}\n").as_bytes());
        let output: Option<Vec<u8>> = row.try_get("output").expect("output");
        let stdout = output
            .and_then(|o| pb::Success::decode(o.as_slice()).ok())
            .and_then(|s| s.stdout)
            .map(|b| b.hash)
            .unwrap_or_default();
        let alone = row
            .try_get::<Option<i64>, _>("replicated")
            .expect("replicated")
            == Some(0);
        if stdout != right.as_bytes() {
            figures.wrong += 1;
            if alone {
                figures.wrong_alone += 1;
            }
        }
        if row
            .try_get::<Option<i64>, _>("replicated")
            .expect("replicated")
            == Some(0)
        {
            figures.unreplicated += 1;
        }
    }
    let issued = sqlx::query(
        "SELECT a.name, r.validate_state FROM results r JOIN accounts a ON a.id = r.account_id",
    )
    .fetch_all(&pool)
    .await
    .expect("results");
    for row in &issued {
        figures.results_issued += 1;
        let name: String = row.try_get("name").expect("name");
        if name.starts_with('s') {
            figures.saboteur_results += 1;
            if row.try_get::<String, _>("validate_state").expect("state") == "valid" {
                figures.saboteur_valid += 1;
            }
        }
    }
    pool.close().await;
    figures
}

#[tokio::main]
async fn main() {
    let units = env_or("COBBLE_BENCH_UNITS", 20_000);
    let hosts = env_or("COBBLE_BENCH_HOSTS", 100);
    let filter = std::env::var("COBBLE_BENCH_SCENARIOS").unwrap_or_default();
    let backends = std::env::var("COBBLE_BENCH_BACKENDS").unwrap_or("sqlite,postgres".into());
    let postgres = std::env::var("COBBLE_TEST_POSTGRES_URL").ok();
    println!("saboteurs: {units} units, {hosts} simulated hosts, quorum 2, default policy");
    println!(
        "| backend | f | saboteurs | s | wrong canonical | rate | plain quorum 2 (3p²−2p³) | results per unit | unreplicated | saboteur results (valid) | time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for backend in backends.split(',') {
        let database = match (backend, &postgres) {
            ("sqlite", _) => None,
            ("postgres", Some(admin)) => Some(admin.clone()),
            ("postgres", None) => {
                eprintln!("skipping PostgreSQL: COBBLE_TEST_POSTGRES_URL is not set");
                continue;
            }
            (other, _) => panic!("unknown backend {other}"),
        };
        // f = 0 first: the cost of integrity with honest hosts only.
        for fraction in [0.0, 0.05, 0.1, 0.2] {
            for colluding in [false, true] {
                for rate in [1.0, 0.3] {
                    if fraction == 0.0 && (colluding || rate < 1.0) {
                        continue;
                    }
                    let scenario = Scenario {
                        fraction,
                        colluding,
                        rate,
                    };
                    let name = format!(
                        "{fraction}-{}-{rate}",
                        if colluding {
                            "colluding"
                        } else {
                            "independent"
                        }
                    );
                    if !name.contains(&filter) {
                        continue;
                    }
                    let url = match &database {
                        Some(admin) => Some(
                            common::fresh_postgres(admin)
                                .await
                                .expect("a fresh database"),
                        ),
                        None => None,
                    };
                    let figures = run(scenario, units, hosts, url.as_deref()).await;
                    let p = fraction;
                    let baseline = if colluding {
                        (3.0 * p * p - 2.0 * p * p * p) * rate
                    } else {
                        0.0
                    };
                    println!(
                        "| {backend} | {fraction} | {} | {rate} | {} ({} alone) | {:.4}% | {:.2}% | {:.3} | {} | {} ({}) | {:.0} s |",
                        if colluding {
                            "colluding"
                        } else {
                            "independent"
                        },
                        figures.wrong,
                        figures.wrong_alone,
                        100.0 * figures.wrong as f64 / figures.units.max(1) as f64,
                        100.0 * baseline,
                        figures.results_issued as f64 / figures.units.max(1) as f64,
                        figures.unreplicated,
                        figures.saboteur_results,
                        figures.saboteur_valid,
                        figures.seconds,
                    );
                }
            }
        }
    }
}
