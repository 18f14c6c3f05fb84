//! Faults under load (issue 14): two coordinators on one PostgreSQL server
//! that the test starts itself (Debian's `initdb` and `pg_ctl`, a random
//! port, a temp dir), so that it can kill it; simulated hosts over real
//! gRPC that fail over between the coordinators as a load balancer would,
//! and retry what was not taken. While they work: a coordinator is killed
//! with SIGKILL; the database server is killed with SIGKILL and started
//! again; the blob store's disk fills up and is freed. After each, every
//! unit ends done, no unit has more results than its limit, no result is
//! credited twice, and every host's, account's and the project's credit is
//! the sum of its credited results, checked with SQL.

use cobble_client::{Connection, Credentials, Security};
use cobble_e2e::{Coordinator, ONE_ADDRESS_MANY_MACHINES, wait_until, write_job};
use cobble_proto::v1::{
    self as pb, job_service_client::JobServiceClient, report_request::Outcome,
    worker_service_client::WorkerServiceClient,
};
use prost::Message;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A PostgreSQL server of this test's own.
struct Postgres {
    _dir: tempfile::TempDir,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    /// Debian keeps the server programs beside each other, off PATH.
    fn programs() -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|entry| entry.path().join("bin"))
            .filter(|bin| bin.join("pg_ctl").is_file() && bin.join("initdb").is_file())
            .collect();
        found.sort();
        found.pop()
    }

    /// Runs a server program, as the `postgres` user when this is root
    /// (the server refuses to run as root).
    fn command(&self, program: &str) -> Command {
        as_postgres_user(&self.bin.join(program))
    }

    fn start() -> Option<Postgres> {
        let Some(bin) = Self::programs() else {
            eprintln!("skipping: no PostgreSQL server programs under /usr/lib/postgresql");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        give_to_postgres_user(dir.path());
        let port = free_port();
        let server = Postgres {
            data: dir.path().join("data"),
            _dir: dir,
            bin,
            port,
        };
        let status = server
            .command("initdb")
            .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
            .arg(&server.data)
            .output()
            .expect("running initdb");
        assert!(
            status.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        server.run();
        Some(server)
    }

    /// Starts the server on its data dir and waits until it takes
    /// connections; after a SIGKILL, until the old processes are gone.
    fn run(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let started = self
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.data.with_file_name("server.log"))
                .arg("-o")
                .arg(format!(
                    "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
                    self.port,
                    self.data.with_file_name("").display()
                ))
                .args(["-w", "-t", "30", "start"])
                .output()
                .expect("running pg_ctl");
            if started.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start: {}\n{}",
                String::from_utf8_lossy(&started.stderr),
                std::fs::read_to_string(self.data.with_file_name("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGKILL to the postmaster, as when the database machine loses
    /// power; its backends exit on their own.
    fn kill(&self) {
        let pid = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .next()
                    .and_then(|l| l.trim().parse::<i32>().ok())
            })
            .expect("the server's pid");
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill");
        // Wait for the backends to notice and go, or the next start finds
        // their shared memory still in use.
        let gone = wait_until(Duration::from_secs(30), || {
            let out = Command::new("pgrep")
                .args(["-f", &format!("-p {}", self.port)])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default();
            out.is_empty()
        });
        assert!(gone, "PostgreSQL's processes outlived their postmaster");
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn as_postgres_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn give_to_postgres_user(dir: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .arg("postgres:postgres")
            .arg(dir)
            .status()
            .expect("chown");
        assert!(status.success(), "chown of the server's dir failed");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Two coordinators of one project: one database, one blob directory, one
/// signing key and one certificate.
struct Project {
    coordinators: Vec<Option<Coordinator>>,
    urls: Vec<String>,
    security: Security,
    database: String,
    _dir: tempfile::TempDir,
}

impl Project {
    fn start(server: &Postgres, blob_dir: &Path) -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        let database = server.url("postgres");
        let blobs = blob_dir.display().to_string();
        let mut flags: Vec<&str> = ONE_ADDRESS_MANY_MACHINES.to_vec();
        flags.extend([
            "--database-url",
            &database,
            "--blob-dir",
            &blobs,
            "--initial-daily-quota",
            "1000000",
            "--replica-spacing-ms",
            "200",
            "--max-requests-per-host-per-sec",
            "0",
        ]);
        let first = Coordinator::start_with(dir.path(), &flags);
        let second_dir = dir.path().join("second");
        std::fs::create_dir_all(&second_dir).expect("second data dir");
        for file in ["project.key", "researcher.token", "tls.crt", "tls.key"] {
            std::fs::copy(first.data_dir.join(file), second_dir.join(file)).expect("copy");
        }
        let second = Coordinator::start_at(dir.path(), &second_dir, &flags);
        assert_eq!(first.project_key, second.project_key);
        assert_eq!(first.tls_fingerprint, second.tls_fingerprint);
        Project {
            urls: vec![first.url.clone(), second.url.clone()],
            security: first.security(),
            coordinators: vec![Some(first), Some(second)],
            database,
            _dir: dir,
        }
    }

    fn alive(&self) -> &Coordinator {
        self.coordinators
            .iter()
            .flatten()
            .next()
            .expect("a coordinator alive")
    }
}

/// What a simulated host's outputs are: the unit's answer, padded to
/// `output_bytes` (past the inline limit, they are uploaded).
fn answer(manifest: &pb::Manifest, output_bytes: usize) -> Vec<u8> {
    let mut text = format!(
        "answer {}\n",
        manifest.args.first().map_or("", String::as_str)
    )
    .into_bytes();
    text.resize(output_bytes.max(text.len()), b'.');
    text
}

/// The load generator: `hosts` hosts that ask for work, answer, and report
/// in batches, failing over to the other coordinator and retrying until
/// `stop`. Returns the calls that failed and were retried.
fn generate_load(
    project: &Project,
    hosts: usize,
    output_bytes: usize,
    stop: Arc<AtomicBool>,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicU64>) {
    let retried = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for index in 0..hosts {
        let (urls, security, stop, retried) = (
            project.urls.clone(),
            project.security.clone(),
            stop.clone(),
            retried.clone(),
        );
        tasks.push(tokio::spawn(async move {
            simulated_host(urls, security, index, output_bytes, stop, retried).await;
        }));
    }
    (tasks, retried)
}

async fn simulated_host(
    urls: Vec<String>,
    security: Security,
    index: usize,
    output_bytes: usize,
    stop: Arc<AtomicBool>,
    retried: Arc<AtomicU64>,
) {
    let mut at = index % urls.len();
    let mut credentials = None;
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let outcome = async {
            let channel = cobble_client::connect(&urls[at], &security).await?;
            let mut worker = WorkerServiceClient::new(channel.clone());
            let (id, key) = match &credentials {
                Some(known) => known,
                None => {
                    let attached = worker
                        .register_host(pb::RegisterHostRequest {
                            account: format!("host{index}"),
                            host_name: format!("host{index}"),
                            cpus: 8,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    credentials.insert((attached.host_id, attached.host_key))
                }
            };
            let connection = Connection::from_channel(
                channel,
                Credentials::Host {
                    id: *id,
                    key: key.clone(),
                },
            );
            work(&mut worker, &connection, output_bytes, &stop, &retried).await
        };
        if let Err(error) = outcome.await {
            failures += 1;
            retried.fetch_add(1, Ordering::Relaxed);
            if failures % 20 == 1 {
                eprintln!("  host {index} on {}: {error:#}; failing over", urls[at]);
            }
            // As a load balancer would: the other coordinator next.
            at = (at + 1) % urls.len();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Asks, answers and reports until `stop` or an error the caller fails
/// over on. A batch that was not taken is sent again, as the worker does.
async fn work(
    worker: &mut WorkerServiceClient<tonic::transport::Channel>,
    connection: &Connection,
    output_bytes: usize,
    stop: &AtomicBool,
    retried: &AtomicU64,
) -> anyhow::Result<()> {
    let mut unsent: Option<pb::ReportBatch> = None;
    while !stop.load(Ordering::Relaxed) {
        if let Some(batch) = &unsent {
            match worker
                .report_results(connection.request(batch.clone()))
                .await
            {
                Ok(answers) => {
                    for answer in answers.into_inner().results {
                        if answer.status == "refused" {
                            eprintln!("  a report was refused: {}", answer.error);
                        }
                    }
                    unsent = None;
                }
                Err(status) if retryable(&status) => {
                    retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(status) => return Err(status.into()),
            }
        }
        let assignments = match worker
            .request_work(connection.request(pb::WorkRequest {
                slots: 8,
                wait_s: 1,
            }))
            .await
        {
            Ok(response) => response.into_inner().assignments,
            Err(status) if retryable(&status) && status.code() != tonic::Code::Unavailable => {
                retried.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        let mut reports = Vec::new();
        for assignment in assignments {
            let manifest = pb::Manifest::decode(assignment.manifest.as_slice())?;
            let bytes = answer(&manifest, output_bytes);
            let blob = pb::BlobRef {
                hash: blake3::hash(&bytes).as_bytes().to_vec(),
                size: bytes.len() as u64,
                chunk_root: Vec::new(),
            };
            let inline = if bytes.len() <= cobble_core::output::MAX_INLINE_BYTES {
                vec![bytes]
            } else {
                // Uploaded until it is taken: the disk may be full.
                loop {
                    match connection.upload_bytes(&bytes).await {
                        Ok(_) => break,
                        Err(_) if !stop.load(Ordering::Relaxed) => {
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(error) => return Err(error.into()),
                    }
                }
                Vec::new()
            };
            reports.push(pb::ReportRequest {
                lease_id: manifest.lease_id,
                outcome: Some(Outcome::Success(pb::Success {
                    stdout: Some(blob),
                    files: vec![],
                    fuel_used: 1_000_000_000,
                    elapsed_ms: 1,
                    inline,
                })),
            });
        }
        if !reports.is_empty() {
            unsent = Some(pb::ReportBatch { reports });
        }
    }
    Ok(())
}

fn retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::Unknown
    )
}

/// Submits a job of `units` units, quorum 2, at most 4 results a unit.
fn submit(project: &Project, units: u32) -> i64 {
    let coordinator = project.alive();
    let spec = write_job(
        &coordinator.data_dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        &format!(
            "name = \"faults\"\nmodule = \"primes.wasm\"\nargs = [\"{{start}}\"]\n\
             [split]\nrange = {{ start = 0, end = {units}, per_unit = 1 }}\n\
             [replication]\nmin_quorum = 2\ntarget_results = 2\nmax_total_results = 4\nadaptive = false\n\
             [limits]\ndeadline_s = 20\n"
        ),
    );
    coordinator.submit(&spec).parse().expect("job id")
}

async fn units_done(project: &Project, job: i64) -> Option<(u32, String)> {
    for url in &project.urls {
        let Ok(channel) = cobble_client::connect(url, &project.security).await else {
            continue;
        };
        if let Ok(status) = JobServiceClient::new(channel)
            .get_job_status(pb::JobRequest { job_id: job })
            .await
        {
            let status = status.into_inner();
            return Some((status.units_done, status.state));
        }
    }
    None
}

/// Waits until the job has `done` units validated, or is done.
async fn wait_for_units(project: &Project, job: i64, done: u32, timeout: Duration) -> bool {
    let until = Instant::now() + timeout;
    while Instant::now() < until {
        if let Some((units, state)) = units_done(project, job).await
            && (units >= done || state == "done")
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// The invariants, read from the database with SQL.
async fn check_invariants(database: &str, job: i64, units: i64) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(database).await.expect("database");
    let scalar = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(job)
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        }
    };
    assert_eq!(
        scalar("SELECT COUNT(*) FROM units WHERE job_id = $1 AND state = 'done'").await,
        units,
        "every submitted unit ends done"
    );
    assert_eq!(
        scalar(
            "SELECT COUNT(*) FROM (SELECT r.unit_id FROM results r JOIN units u ON u.id = r.unit_id
             WHERE u.job_id = $1 GROUP BY r.unit_id HAVING COUNT(*) > 4) x"
        )
        .await,
        0,
        "no unit has more results than max_total_results"
    );
    assert_eq!(
        scalar(
            "SELECT COUNT(*) FROM results r JOIN units u ON u.id = r.unit_id
             WHERE u.job_id = $1 AND r.credit = 'granted' AND r.validate_state <> 'valid'"
        )
        .await,
        0,
        "only valid results are credited"
    );
    assert_eq!(
        scalar(
            "SELECT COUNT(*) FROM (SELECT r.unit_id FROM results r JOIN units u ON u.id = r.unit_id
             WHERE u.job_id = $1 AND r.validate_state = 'valid' GROUP BY r.unit_id HAVING COUNT(*) < 2) x"
        )
        .await,
        0,
        "every unit validated by a quorum of two"
    );
    // Credit: each host's, each account's and the project's totals are the
    // sums of their credited results; a result credited twice would show.
    let mismatched: Vec<(i64, f64, f64, i64, i64)> = sqlx::query_as(
        "SELECT h.id, h.total_credit,
                CAST(COALESCE(SUM(r.granted_credit), 0) AS DOUBLE PRECISION),
                h.valid_results,
                CAST(COUNT(r.id) AS BIGINT)
         FROM hosts h LEFT JOIN results r ON r.host_id = h.id AND r.credit = 'granted'
         GROUP BY h.id, h.total_credit, h.valid_results",
    )
    .fetch_all(&pool)
    .await
    .expect("host credit");
    for (host, total, sum, valid, count) in &mismatched {
        assert!(
            (total - sum).abs() < 1e-6 && valid == count,
            "host {host}: credit {total} vs its results' {sum}, valid {valid} vs {count} credited"
        );
    }
    let accounts: Vec<(i64, f64, f64)> = sqlx::query_as(
        "SELECT a.id, a.total_credit, CAST(COALESCE(SUM(h.total_credit), 0) AS DOUBLE PRECISION)
         FROM accounts a LEFT JOIN hosts h ON h.account_id = a.id GROUP BY a.id, a.total_credit",
    )
    .fetch_all(&pool)
    .await
    .expect("account credit");
    for (account, total, sum) in &accounts {
        assert!(
            (total - sum).abs() < 1e-6,
            "account {account}: {total} vs its hosts' {sum}"
        );
    }
    let (granted, credited): (f64, f64) = sqlx::query_as(
        "SELECT CAST(COALESCE((SELECT SUM(granted_credit) FROM results), 0) AS DOUBLE PRECISION),
                CAST(COALESCE((SELECT SUM(total_credit) FROM hosts), 0) AS DOUBLE PRECISION)",
    )
    .fetch_one(&pool)
    .await
    .expect("project credit");
    assert!(
        (granted - credited).abs() < 1e-6 && granted > 0.0,
        "the project's credit {credited} vs its results' {granted}"
    );
    pool.close().await;
}

const UNITS: u32 = 1_500;
const HOSTS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_coordinator_mid_load_stops_nothing() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let blobs = tempfile::tempdir().expect("blob dir");
    let mut project = Project::start(&server, blobs.path());
    let job = submit(&project, UNITS);
    let stop = Arc::new(AtomicBool::new(false));
    let (hosts, retried) = generate_load(&project, HOSTS, 64, stop.clone());
    assert!(
        wait_for_units(&project, job, UNITS / 4, Duration::from_secs(120)).await,
        "the load got going"
    );
    // SIGKILL to the first coordinator, which led the background work.
    if let Some(mut first) = project.coordinators[0].take() {
        first.process.kill();
    }
    let finished = wait_for_units(&project, job, UNITS, Duration::from_secs(180)).await;
    stop.store(true, Ordering::Relaxed);
    for host in hosts {
        let _ = host.await;
    }
    assert!(finished, "the job finished on the surviving coordinator");
    let (_, state) = units_done(&project, job).await.expect("status");
    assert_eq!(state, "done");
    eprintln!(
        "{} calls failed and were retried",
        retried.load(Ordering::Relaxed)
    );
    check_invariants(&project.database, job, i64::from(UNITS)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_and_restarting_postgresql_mid_load_loses_nothing() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let blobs = tempfile::tempdir().expect("blob dir");
    let project = Project::start(&server, blobs.path());
    let job = submit(&project, UNITS);
    let stop = Arc::new(AtomicBool::new(false));
    let (hosts, retried) = generate_load(&project, HOSTS, 64, stop.clone());
    assert!(
        wait_for_units(&project, job, UNITS / 4, Duration::from_secs(120)).await,
        "the load got going"
    );
    server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.run();
    let finished = wait_for_units(&project, job, UNITS, Duration::from_secs(240)).await;
    stop.store(true, Ordering::Relaxed);
    for host in hosts {
        let _ = host.await;
    }
    assert!(finished, "the job finished once the database was back");
    eprintln!(
        "{} calls failed and were retried",
        retried.load(Ordering::Relaxed)
    );
    check_invariants(&project.database, job, i64::from(UNITS)).await;
}

/// A tmpfs of `mib` MiB at a new directory, unmounted when dropped; None
/// where this test may not mount (not root, or no CAP_SYS_ADMIN).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        mounted.status.success().then_some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_blob_disk_holds_uploads_back_until_space_returns() {
    let Some(server) = Postgres::start() else {
        return;
    };
    let Some(disk) = SmallDisk::mount(48) else {
        eprintln!("skipping: cannot mount a small tmpfs here (needs root)");
        return;
    };
    const UNITS: u32 = 300;
    let project = Project::start(&server, disk.path());
    let job = submit(&project, UNITS);
    // Fill the disk before the hosts start: every upload fails with the
    // storage full, and no unit can be validated.
    let filler = disk.path().join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=64"])
        .arg(format!("of={}", filler.display()))
        .output();
    let stop = Arc::new(AtomicBool::new(false));
    // Outputs of 80 KiB: past the inline limit, so they are uploaded.
    let (hosts, retried) = generate_load(&project, 6, 80 << 10, stop.clone());
    let refused = {
        let retried = retried.clone();
        tokio::task::spawn_blocking(move || {
            wait_until(Duration::from_secs(60), || {
                retried.load(Ordering::Relaxed) >= 20
            })
        })
        .await
        .expect("wait")
    };
    if !refused {
        let log = project.alive().process.log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!(
            "coordinator log:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
        let df = Command::new("df")
            .arg(disk.path())
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default();
        eprintln!("{}", String::from_utf8_lossy(&df));
    }
    assert!(refused, "uploads were refused while the disk was full");
    let during = units_done(&project, job).await.map_or(0, |(done, _)| done);
    assert_eq!(during, 0, "no unit validated without its outputs stored");
    std::fs::remove_file(&filler).expect("free the disk");
    let finished = wait_for_units(&project, job, UNITS, Duration::from_secs(180)).await;
    stop.store(true, Ordering::Relaxed);
    for host in hosts {
        let _ = host.await;
    }
    assert!(finished, "the job finished once there was space again");
    check_invariants(&project.database, job, i64::from(UNITS)).await;
    let log = project.alive().process.log_text();
    assert!(
        log.contains("storage is full"),
        "the coordinator said why uploads failed"
    );
}
