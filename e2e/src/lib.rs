//! Test harness: starts the real `cobble-coordinator`, `cobble-worker` and
//! `cobble` binaries on loopback, each in its own temporary directory, and
//! kills them when dropped. Used by the end-to-end tests (and benchmarks).

pub mod browser;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Path of a workspace binary, built (once per test process) by cargo so it
/// is never stale, whichever way the tests were started.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut command = Command::new(cargo);
        command.args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "cobble-coordinator",
            "-p",
            "cobble-worker",
            "-p",
            "cobble-cli",
            "-p",
            "cobble-e2e",
        ]);
        if profile_dir.ends_with("release") {
            command.arg("--release");
        }
        let status = command.status().expect("running cargo build");
        assert!(status.success(), "building the binaries failed");
    });
    let path = profile_dir.join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// `cobble-worker exec`, its compiled-module cache under the target
/// directory rather than the user's home.
pub fn worker_exec() -> Command {
    let worker = binary("cobble-worker");
    let mut command = Command::new(&worker);
    command.arg("exec");
    if let Some(profile_dir) = worker.parent() {
        command.env("XDG_CACHE_HOME", profile_dir.join("exec-cache"));
    }
    command
}

/// `cobble` run without a coordinator (`init`, `run-local`), with the
/// compiled-module cache `worker_exec` uses.
pub fn cobble() -> Command {
    let cobble = binary("cobble");
    let mut command = Command::new(&cobble);
    if let Some(profile_dir) = cobble.parent() {
        command.env("XDG_CACHE_HOME", profile_dir.join("exec-cache"));
    }
    command
}

/// A running process that is killed when dropped, with its stderr in a file.
pub struct Process {
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(mut command: Command, log: PathBuf) -> Process {
        let file = std::fs::File::create(&log).expect("log file");
        command.stderr(file).stdin(Stdio::null());
        let child = command.spawn().expect("spawning a binary");
        Process { child, log }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` `count` times.
    pub fn wait_for_log(&self, needle: &str, count: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.log_text().matches(needle).count() >= count)
    }

    /// SIGKILL: no chance to clean up, as when a machine loses power.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A log without its colours: the binaries log with ANSI escapes.
pub fn plain(log: &str) -> String {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    condition()
}

/// A coordinator on a random loopback port with embedded SQLite.
pub struct Coordinator {
    pub process: Process,
    /// `https://127.0.0.1:PORT` (`http://` with `--insecure-plaintext`).
    pub url: String,
    pub project_key: String,
    /// SHA-256 of the coordinator's self-signed TLS certificate, hex.
    pub tls_fingerprint: Option<String>,
    /// `http://127.0.0.1:PORT/`: the web site (None with `--web-listen off`).
    pub web_url: Option<String>,
    pub data_dir: PathBuf,
}

impl Coordinator {
    pub fn start(dir: &Path) -> Coordinator {
        Self::start_with(dir, &[])
    }

    pub fn start_with(dir: &Path, extra: &[&str]) -> Coordinator {
        Self::start_at(dir, &dir.join("coordinator"), extra)
    }

    /// Starts on a given data dir; `extra` flags override the defaults
    /// (a later `--listen` wins over the random port, a later
    /// `--spot-check-*` over the tests' zero).
    pub fn start_at(dir: &Path, data_dir: &Path, extra: &[&str]) -> Coordinator {
        Self::start_env(dir, data_dir, extra, &[])
    }

    /// Like [`Coordinator::start_at`], with environment variables (secrets
    /// such as an object store's keys, which never go on a command line).
    pub fn start_env(
        dir: &Path,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Coordinator {
        let data_dir = data_dir.to_path_buf();
        let mut command = Command::new(binary("cobble-coordinator"));
        command.envs(env.iter().copied());
        // No random spot-checks: a test with one worker and a quorum-1 job
        // would wait for a second host that never comes. The store tests
        // cover spot-checks with their rate set.
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--web-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--spot-check-untrusted", "0", "--spot-check-trusted", "0"])
            .args(extra)
            .stdout(Stdio::piped());
        let log = dir.join(format!("coordinator-{}.log", unique_suffix()));
        let mut process = Process::spawn(command, log);
        let stdout = process.child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut url = None;
        let mut project_key = None;
        let mut tls_fingerprint = None;
        let mut web_url = None;
        while let Some(Ok(line)) = lines.next() {
            if let Some(site) = line.strip_prefix("web site at ") {
                web_url = Some(site.to_string());
            }
            if let Some(address) = line.strip_prefix("cobble-coordinator listening on ") {
                url = Some(address.to_string());
            }
            if let Some(fingerprint) = line.strip_prefix("tls certificate sha256 ") {
                tls_fingerprint = Some(fingerprint.to_string());
            }
            if let Some(key) = line.strip_prefix("project signing key ") {
                project_key = Some(key.to_string());
                break;
            }
        }
        let (Some(url), Some(project_key)) = (url, project_key) else {
            panic!("coordinator did not start: {}", process.log_text());
        };
        Coordinator {
            process,
            url,
            project_key,
            tls_fingerprint,
            web_url,
            data_dir,
        }
    }

    /// The web site's address without its final `/`, to append paths to.
    pub fn site(&self) -> String {
        self.web_url
            .as_deref()
            .expect("the banner names the site (--web-listen is not off)")
            .trim_end_matches('/')
            .to_string()
    }

    /// `host:port`, for restarting a coordinator on the same address.
    pub fn address(&self) -> String {
        self.url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, address)| address)
            .to_string()
    }

    /// How a test's own gRPC client reaches this coordinator: pinned to its
    /// certificate, as a researcher given the fingerprint would be.
    pub fn security(&self) -> cobble_client::Security {
        let fingerprint = self
            .tls_fingerprint
            .as_deref()
            .map(|f| f.parse().expect("the banner's fingerprint parses"));
        cobble_client::Security::pinned(fingerprint, false)
    }

    /// Opens a gRPC channel to this coordinator.
    pub async fn channel(&self) -> tonic::transport::Channel {
        cobble_client::connect(&self.url, &self.security())
            .await
            .expect("connecting to the coordinator")
    }

    /// Runs `cobble-coordinator` on this coordinator's data dir (researcher
    /// accounts, the audit log), beside the running server.
    pub fn admin(&self, args: &[&str]) -> Output {
        Command::new(binary("cobble-coordinator"))
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .expect("running cobble-coordinator")
    }

    /// Runs `cobble` as the researcher holding `token`.
    pub fn cli_as(&self, token: &str, args: &[&str]) -> Output {
        let mut command = Command::new(binary("cobble"));
        if let Some(fingerprint) = &self.tls_fingerprint {
            command.env("COBBLE_TLS_FINGERPRINT", fingerprint);
        }
        command
            .env("COBBLE_TOKEN", token)
            .arg("--coordinator")
            .arg(&self.url)
            .args(args)
            .output()
            .expect("running cobble")
    }

    /// Runs `cobble` against this coordinator.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(binary("cobble"));
        if let Some(fingerprint) = &self.tls_fingerprint {
            command.env("COBBLE_TLS_FINGERPRINT", fingerprint);
        }
        command
            .env("COBBLE_TOKEN", self.researcher_token())
            .arg("--coordinator")
            .arg(&self.url)
            .args(args)
            .output()
            .expect("running cobble")
    }

    /// The token the coordinator created on first start.
    pub fn researcher_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("researcher.token"))
            .map(|t| t.trim().to_string())
            .unwrap_or_default()
    }

    /// Submits a job spec and returns the new job's id.
    pub fn submit(&self, spec: &Path) -> String {
        let spec = spec.to_str().expect("spec path is UTF-8");
        let job = self.cli_ok(&["submit", spec]).trim().to_string();
        assert!(job.parse::<i64>().is_ok(), "submit printed {job:?}");
        job
    }

    /// Writes and submits a one-unit primes job; returns its id.
    pub fn submit_tiny_primes_job(&self, dir: &Path) -> String {
        self.submit(&write_job(
            dir,
            cobble_unit_artifacts::PRIMES,
            "primes.wasm",
            TINY_PRIMES_JOB,
        ))
    }

    /// Waits until a job is done; returns whether it finished and its status.
    pub fn wait_done(&self, job: &str, timeout: Duration) -> (bool, String) {
        let done = wait_until(timeout, || {
            self.cli_ok(&["status", job]).contains("): done,")
        });
        (done, self.cli_ok(&["status", job]))
    }

    /// Runs `cobble` and returns its stdout, failing the test on error.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "cobble {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// Coordinator flags for benchmarks that simulate a crowd of machines from
/// one loopback address: the per-address limits (meant for one address,
/// one machine or one NAT) would otherwise throttle the crowd itself.
pub const ONE_ADDRESS_MANY_MACHINES: [&str; 6] = [
    "--max-requests-per-ip-per-sec",
    "0",
    "--max-registrations-per-ip-per-min",
    "0",
    "--max-connections-per-ip",
    "0",
];

/// Preferences every test worker runs with unless a test says otherwise:
/// compute at once and regardless of load, since the other tests and the
/// other workers of a test are load on the same machine.
pub const TEST_PREFS: [&str; 2] = ["idle_time_to_run=0", "suspend_cpu_usage=0"];

/// Starts a worker (or the test cheater) attached as `user`.
pub fn start_worker(
    binary_name: &str,
    coordinator: &Coordinator,
    data_dir: &Path,
    user: &str,
) -> Process {
    start_worker_with(binary_name, coordinator, data_dir, user, &[])
}

/// Starts a worker with extra arguments after [`TEST_PREFS`] (a later
/// `--pref` of the same key wins).
pub fn start_worker_with(
    binary_name: &str,
    coordinator: &Coordinator,
    data_dir: &Path,
    user: &str,
    extra: &[&str],
) -> Process {
    let mut command = Command::new(binary(binary_name));
    if binary_name == "cobble-worker" {
        command.arg("run");
        for pref in TEST_PREFS {
            command.args(["--pref", pref]);
        }
        // Peers find each other on loopback, on ports no test shares; so
        // do the local pages.
        command.args([
            "--peer-listen",
            "127.0.0.1:0",
            "--local-page",
            "127.0.0.1:0",
        ]);
    }
    command.args(extra);
    // Tests read the unit starts, ends and suspensions from the log.
    command.env("RUST_LOG", "info,h2=warn,wasmtime=warn,cranelift=warn");
    command
        .arg("--coordinator")
        .arg(&coordinator.url)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--user", user])
        .stdout(Stdio::null());
    let log = data_dir.with_extension("log");
    Process::spawn(command, log)
}

/// A suffix that keeps log names of one test process apart.
fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Writes `dir/job/job.toml` with `spec` beside a copy of `module` named
/// `module_name`, and returns the spec's path.
pub fn write_job(dir: &Path, module: &str, module_name: &str, spec: &str) -> PathBuf {
    let job_dir = dir.join("job");
    std::fs::create_dir_all(&job_dir).expect("creating the job dir");
    std::fs::copy(module, job_dir.join(module_name)).expect("copying the module");
    let path = job_dir.join("job.toml");
    std::fs::write(&path, spec).expect("writing the job spec");
    path
}

/// A one-unit primes job: the smallest real job.
const TINY_PRIMES_JOB: &str = "name = \"p\"\nmodule = \"primes.wasm\"\nargs = [\"{start}\", \"{end}\"]\n[split]\nrange = { start = 0, end = 10, per_unit = 10 }\n";

/// Starts one honest worker per name, each with its own data dir.
pub fn start_volunteers(coordinator: &Coordinator, dir: &Path, names: &[&str]) -> Vec<Process> {
    names
        .iter()
        .map(|name| start_worker("cobble-worker", coordinator, &dir.join(name), name))
        .collect()
}

/// Deterministic pseudo-random bytes (xorshift), for inputs that compress
/// badly and differ in every chunk.
pub fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// What the test unit `sandbox-probe digest` prints for `bytes`.
pub fn probe_digest(bytes: &[u8]) -> String {
    let digest = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("fnv1a64 {digest:016x}\n")
}

/// Writes a job of `units` units that all read the same `input` (as
/// `/input/data.bin`) and print its digest, one result each; returns the
/// spec's path.
pub fn write_shared_input_job(dir: &Path, input: &[u8], units: u32) -> PathBuf {
    let spec = format!(
        "name = \"shared-input\"\nmodule = \"probe.wasm\"\nargs = [\"digest\", \"/input/data.bin\"]\n\
         inputs = [\"data.bin\"]\n[split]\nrange = {{ start = 0, end = {units}, per_unit = 1 }}\n\
         [replication]\nmin_quorum = 1\ntarget_results = 1\n"
    );
    let path = write_job(
        dir,
        cobble_unit_artifacts::SANDBOX_PROBE,
        "probe.wasm",
        &spec,
    );
    std::fs::write(dir.join("job/data.bin"), input).expect("writing the input");
    path
}

/// The status a worker last wrote in its data dir, if any yet.
pub fn worker_status(data_dir: &Path) -> Option<cobble_worker::status::Status> {
    cobble_worker::status::read(data_dir).ok()
}

/// A volunteer's worker computing a folding unit of many seconds (one of
/// twelve), with its local page: the worker, and the page's address once
/// the log names it and a unit runs.
pub fn worker_busy_with_local_page(
    coordinator: &Coordinator,
    dir: &Path,
    worker_dir: &Path,
) -> (Process, String) {
    let worker = start_worker_with("cobble-worker", coordinator, worker_dir, "owner", &[]);
    submit_folding_job(
        coordinator,
        dir,
        ["HPHPPHHPHPPHPHHPPHPH", "0", "12", "15000000"],
        12,
        "deadline_s = 600\nfuel = 1000000000000",
    );
    let mut page = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            page = worker
                .log_text()
                .lines()
                .find_map(|l| l.split("local page at ").nth(1))
                .map(|url| url.trim().trim_end_matches('/').to_string())
                .unwrap_or_default();
            !page.is_empty()
        }),
        "no local page in the log: {}",
        worker.log_text()
    );
    let running = || {
        worker_status(worker_dir).is_some_and(|s| {
            s.tasks
                .iter()
                .any(|t| t.state == cobble_worker::tasks::TaskState::Running)
        })
    };
    assert!(
        wait_until(Duration::from_secs(60), running),
        "no unit started"
    );
    (worker, page)
}

/// Writes and submits a folding job: ARGS are the chain, first seed, end
/// seed and steps per seed, one unit of `per_unit` seeds each, one result
/// per unit; `limits` is added to the `[limits]` table. Returns the job id.
pub fn submit_folding_job(
    coordinator: &Coordinator,
    dir: &Path,
    args: [&str; 4],
    per_unit: u32,
    limits: &str,
) -> String {
    let [chain, first_seed, end_seed, steps] = args;
    let spec = format!(
        "name = \"fold\"\nmodule = \"folding.wasm\"\nargs = [\"{chain}\", \"{{start}}\", \"{{end}}\", \"{steps}\"]\n\
         [split]\nrange = {{ start = {first_seed}, end = {end_seed}, per_unit = {per_unit} }}\n\
         [replication]\nmin_quorum = 1\ntarget_results = 1\n[limits]\n{limits}\n"
    );
    coordinator.submit(&write_job(
        dir,
        cobble_unit_artifacts::FOLDING,
        "folding.wasm",
        &spec,
    ))
}

/// A new empty database on the PostgreSQL server at `admin_url`, for one
/// test or benchmark run; returns its URL.
pub async fn fresh_postgres(admin_url: &str) -> anyhow::Result<String> {
    sqlx::any::install_default_drivers();
    let admin = sqlx::AnyPool::connect(admin_url).await?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let database = format!("cobble_run_{}_{nanos}", unique_suffix().replace('-', "_"));
    sqlx::query(&format!("CREATE DATABASE {database}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    match admin_url.rsplit_once('/') {
        Some((base, _)) => Ok(format!("{base}/{database}")),
        None => anyhow::bail!("COBBLE_TEST_POSTGRES_URL needs a database path"),
    }
}

/// An HTTP answer as a test reads it.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub content_type: String,
    /// Every header line, as sent.
    pub head: String,
    pub body: String,
}

impl HttpAnswer {
    /// A header's value, if the answer has it.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    }
}

/// GET over a plain TCP socket (HTTP/1.1, one request per connection):
/// what a browser's first request is, with no client library between.
pub fn http_get(url: &str, path: &str) -> HttpAnswer {
    http_request(url, "GET", path, &[], "")
}

/// Any request over a plain TCP socket, with extra header lines and a body.
pub fn http_request(
    url: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> HttpAnswer {
    use std::io::{Read, Write};
    let address = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream = std::net::TcpStream::connect(&address).expect("connecting to the web site");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    // The caller's Host, if it gives one (a test of what a server makes
    // of a foreign name), else the address connected to.
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {address}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .expect("sending the request");
    // Read until the answer is whole: some servers (chromedriver) keep
    // the connection open whatever the request asked.
    let mut raw = Vec::new();
    let mut buffer = [0u8; 64 << 10];
    loop {
        let read = stream.read(&mut buffer).expect("reading the answer");
        if read == 0 {
            break;
        }
        raw.extend_from_slice(&buffer[..read]);
        if answer_complete(&raw) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let mut answer = HttpAnswer {
        status,
        content_type: String::new(),
        head: head.to_string(),
        body: String::new(),
    };
    answer.content_type = answer.header("content-type").unwrap_or_default();
    answer.body = if answer
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    answer
}

/// Whether `raw` holds a whole HTTP/1.1 answer: its head, and the body its
/// Content-Length or final chunk says. An answer with neither ends when the
/// server closes.
fn answer_complete(raw: &[u8]) -> bool {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let body = &raw[end + 4..];
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    if let Some(length) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
        return body.len() >= length;
    }
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
