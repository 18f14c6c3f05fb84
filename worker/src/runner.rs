//! The worker's main loop: fetch a signed unit, verify it, gather its
//! blobs, run it in the sandbox, upload its outputs and report.
//!
//! Invariant 5 lives here: nothing of a unit is used before its manifest
//! signature and every blob hash verify; a unit that fails either is
//! reported as a client error and never run.

mod background;
mod fetch;
mod report;

use fetch::Queued;

use crate::activity::Monitor;
use crate::attach::{self, Volunteer};
use crate::cache;
use crate::error::{Error, Result};
use crate::journal::{Journal, Recovered};
use crate::peer::{self, ChunkFilter, PeerTls, Sharing, SharingPrefs};
use crate::prefs::Prefs;
use crate::status::Transfers;
use crate::tasks::{TaskSignals, TaskState, Tasks};
use cobble_client::{Connection, Credentials, Security};
use cobble_core::BlobHash;
use cobble_proto::v1::{
    self as pb, report_request::Outcome, worker_service_client::WorkerServiceClient,
};
use cobble_sandbox::{EngineSettings, Invocation, RunReport, Sandbox, UnitControl, UnitLimits};
use ed25519_dalek::VerifyingKey;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tonic::transport::Channel;

const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Keep at most this much of stderr in an error report.
const STDERR_TAIL: usize = 2048;

/// The last [`STDERR_TAIL`] bytes of what a failed unit wrote to stderr
/// (where a Python traceback ends with its exception), as text. Cut as
/// bytes: the unit chooses them, and a cut inside a character must not
/// panic the slot.
fn stderr_tail(stderr: &[u8]) -> String {
    String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(STDERR_TAIL)..]).into_owned()
}

/// Settings of `cobble-worker run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub coordinator: String,
    pub data_dir: PathBuf,
    pub volunteer: Volunteer,
    /// Units computed at once.
    pub slots: u32,
    /// The computing preferences in effect (the monitor enforces the rest).
    pub prefs: Prefs,
    /// Where to serve other workers; None to neither serve nor fetch from
    /// peers (every input then comes from the coordinator).
    pub peer_listen: Option<std::net::SocketAddr>,
    /// The coordinator's certificate fingerprint, when the volunteer gives
    /// it; else the one pinned on first attach (or the system's roots).
    pub tls_fingerprint: Option<cobble_client::Fingerprint>,
    /// Allow `http://` to a coordinator on another machine.
    pub insecure_plaintext: bool,
}

/// Rewrites a unit's stdout before upload. Only test adversaries set one
/// (see the e2e crate's cheater); the shipped worker never does.
pub type StdoutFilter = Arc<dyn Fn(&mut Vec<u8>) + Send + Sync>;

/// Extension points for tests; `Hooks::default()` is the real worker. The
/// fields exist only with the `test-utils` feature, which release builds
/// of the worker do not enable: the shipped binary has no way to set them
/// and no code path that reads them.
#[derive(Clone, Default)]
pub struct Hooks {
    #[cfg(feature = "test-utils")]
    pub stdout_filter: Option<StdoutFilter>,
    /// Rewrites chunks served to peers (the corrupt-peer adversary).
    #[cfg(feature = "test-utils")]
    pub served_chunk_filter: Option<ChunkFilter>,
    /// Never asks for work: only serves peers what is in the cache (test
    /// seeders and adversaries).
    #[cfg(feature = "test-utils")]
    pub serve_only: bool,
}

impl Hooks {
    fn stdout_filter(&self) -> Option<&StdoutFilter> {
        #[cfg(feature = "test-utils")]
        return self.stdout_filter.as_ref();
        #[cfg(not(feature = "test-utils"))]
        None
    }

    fn served_chunk_filter(&self) -> Option<ChunkFilter> {
        #[cfg(feature = "test-utils")]
        return self.served_chunk_filter.clone();
        #[cfg(not(feature = "test-utils"))]
        None
    }

    pub(super) fn serve_only(&self) -> bool {
        #[cfg(feature = "test-utils")]
        return self.serve_only;
        #[cfg(not(feature = "test-utils"))]
        false
    }
}

/// Everything one slot needs, shared by all slots.
struct Worker {
    /// Carries this host's credentials on every call.
    connection: Connection,
    prefs: Prefs,
    slots: u32,
    /// The units in hand, for the heartbeat, the governor and `status`.
    tasks: Tasks,
    /// True while units may use the CPU; the activity monitor sets it.
    permit: watch::Receiver<bool>,
    /// Woken when a unit leaves a slot, so the work buffer refills.
    slot_freed: Notify,
    /// The volunteer's "finish current units then stop": fetch no more.
    finishing: Arc<std::sync::atomic::AtomicBool>,
    transfers: Arc<Transfers>,
    /// What this worker serves to peers; None with peer-to-peer off.
    sharing: Option<Arc<Sharing>>,
    /// The port peers reach this worker on (0: it serves none).
    peer_port: u32,
    /// One download per blob at a time, whoever asks (slot or prefetch).
    fetching: std::sync::Mutex<std::collections::HashMap<BlobHash, Arc<tokio::sync::Mutex<()>>>>,
    /// Set when a report was accepted since the last heartbeat: credit may
    /// have been granted, so the next heartbeat comes soon.
    reported_since_heartbeat: std::sync::atomic::AtomicBool,
    project_key: VerifyingKey,
    /// The project's offline code-signing key, pinned on attach: every
    /// module must be signed by it.
    code_key: Option<VerifyingKey>,
    /// The sandboxes, made when a unit needs one, dropped when idle.
    pub(crate) engines: Engines,
    blob_dir: PathBuf,
    journal: Journal,
    hooks: Hooks,
    /// Reports waiting to go, batched by `report::send_reports`.
    reports: report::Reports,
}

/// Attaches and computes until `shutdown` resolves. `monitor` decides when
/// units may use the CPU; start it before lowering the process priority.
pub async fn run(
    config: RunConfig,
    monitor: Monitor,
    hooks: Hooks,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let blob_dir = config.data_dir.join("blobs");
    let work_dir = config.data_dir.join("work");
    for dir in [&config.data_dir, &blob_dir, &work_dir] {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    let pinned = match (config.tls_fingerprint, attach::load(&config.data_dir)?) {
        (Some(given), _) => Some(given),
        (None, Some(existing)) => existing.pinned_certificate()?,
        (None, None) => None,
    };
    // Without a pin, the first attach trusts what the coordinator shows
    // (like the project key) and pins it; every later connection is strict.
    let first_use = Security {
        first_use: pinned.is_none(),
        ..Security::pinned(pinned, config.insecure_plaintext)
    };
    let channel = connect_with_retry(&config.coordinator, &first_use).await?;
    let mut attempt = 0;
    let attachment = loop {
        let attached = attach::attach(
            &channel,
            &config.coordinator,
            &config.data_dir,
            &config.volunteer,
            first_use.seen.untrusted().or(pinned),
        )
        .await;
        match attached {
            Err(Error::Rpc(status)) if attach_later(&status) => {
                let wait = backoff(attempt);
                tracing::warn!(%status, "the coordinator cannot attach this host now; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            other => break other?,
        }
    };
    let channel = if first_use.first_use {
        let strict = Security::pinned(attachment.pinned_certificate()?, config.insecure_plaintext);
        connect_with_retry(&config.coordinator, &strict).await?
    } else {
        channel
    };
    let project_key = cobble_core::manifest::project_key_from_hex(&attachment.project_key)?;
    let code_key = attachment
        .code_key
        .as_deref()
        .map(cobble_core::manifest::project_key_from_hex)
        .transpose()?;
    let engines = Engines::new(config.data_dir.join("modules"))?;
    let connection = Connection::from_channel(
        channel,
        Credentials::Host {
            id: attachment.host_id,
            key: attachment.host_key.clone(),
        },
    );
    let journal = Journal::new(work_dir);
    let recovered = journal.recover(&project_key, cobble_core::now_ms());
    let (queue, queue_receiver) = tokio::sync::mpsc::unbounded_channel();
    let transfers = Arc::new(Transfers::default());
    let mut background = tokio::task::JoinSet::new();
    let (sharing, peer_port) = match config.peer_listen {
        Some(address) => {
            let sharing = Arc::new(Sharing::new(
                PeerTls::load_or_create(&config.data_dir, project_key)?,
                blob_dir.clone(),
                SharingPrefs {
                    upload_slots: config.prefs.peer_upload_slots as usize,
                    max_bytes_sec_up: config.prefs.max_bytes_sec_up,
                    serve_while_in_use: config.prefs.serve_peers_while_in_use,
                },
                monitor.activity.clone(),
                transfers.clone(),
                hooks.served_chunk_filter(),
            ));
            let listener = bind_peer_listener(address).await?;
            let port = listener
                .local_addr()
                .map_err(Error::io("reading the peer address"))?
                .port();
            tracing::info!(port, "serving peers");
            background.spawn(peer::serve(sharing.clone(), listener));
            (Some(sharing), u32::from(port))
        }
        None => (None, 0),
    };
    let (reports, report_queue) = tokio::sync::mpsc::unbounded_channel();
    let worker = Arc::new(Worker {
        reports,
        connection,
        prefs: config.prefs.clone(),
        slots: config.slots.max(1),
        tasks: Tasks::default(),
        permit: monitor.permit.clone(),
        slot_freed: Notify::new(),
        finishing: monitor.controls.finishing.clone(),
        transfers,
        sharing,
        peer_port,
        fetching: std::sync::Mutex::default(),
        reported_since_heartbeat: std::sync::atomic::AtomicBool::new(false),
        project_key,
        code_key,
        engines,
        blob_dir,
        journal,
        hooks,
    });
    background.spawn(report::send_reports(worker.clone(), report_queue));
    // Units a previous run of this worker left unfinished go first in the
    // queue; finished ones only need their report sent again.
    for item in recovered {
        match item {
            Recovered::Resume(assignment) => {
                tracing::info!("resuming a unit interrupted by a restart");
                worker.enqueue(assignment, &queue).await;
            }
            Recovered::Report(manifest, request) => {
                let worker = worker.clone();
                background.spawn(async move {
                    tracing::info!(
                        unit_id = manifest.unit_id,
                        "re-sending a report interrupted by a restart"
                    );
                    worker.report(&manifest, request).await;
                    worker.journal.finish(&manifest.lease_id);
                });
            }
        }
    }
    let queue_receiver = Arc::new(tokio::sync::Mutex::new(queue_receiver));
    let mut slots = tokio::task::JoinSet::new();
    for slot in 0..worker.slots {
        let (worker, queue_receiver) = (worker.clone(), queue_receiver.clone());
        slots.spawn(async move { worker.slot_loop(slot, &queue_receiver).await });
    }
    {
        let worker = worker.clone();
        slots.spawn(async move { worker.fetch_loop(queue).await });
    }
    background::spawn(
        &worker,
        &monitor,
        &config,
        attachment.host_id,
        &mut background,
    );
    tokio::select! {
        _ = slots.join_next() => tracing::error!("a work slot ended unexpectedly"),
        _ = shutdown => tracing::info!("stopping"),
    }
    // Dropping the set aborts the slots: a unit in flight stays in the
    // journal and resumes from its checkpoint when the worker restarts.
    slots.shutdown().await;
    background.shutdown().await;
    Ok(())
}

/// Binds the peer port; if it is taken (another worker on this machine),
/// any free port on the same address will do.
async fn bind_peer_listener(address: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => Ok(listener),
        Err(error) if address.port() != 0 => {
            tracing::warn!(%error, %address, "peer port taken; using another");
            let any_port = std::net::SocketAddr::new(address.ip(), 0);
            tokio::net::TcpListener::bind(any_port)
                .await
                .map_err(Error::io(format!("binding the peer service on {any_port}")))
        }
        Err(error) => Err(Error::Io {
            context: format!("binding the peer service on {address}"),
            source: error,
        }),
    }
}

/// Connects, waiting out a coordinator that is down; an address, scheme or
/// certificate that is wrong fails at once, as retrying cannot cure it.
async fn connect_with_retry(url: &str, security: &Security) -> Result<Channel> {
    let mut attempt = 0;
    loop {
        match cobble_client::connect(url, security).await {
            Ok(channel) => return Ok(channel),
            Err(
                error @ (cobble_client::Error::BadUrl { .. }
                | cobble_client::Error::Plaintext { .. }
                | cobble_client::Error::Certificate { .. }),
            ) => return Err(error.into()),
            Err(error) => {
                let wait = backoff(attempt);
                tracing::warn!(%error, "coordinator unreachable; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

/// Whether a refused attach is worth trying again: the coordinator is busy
/// or this address registered too many hosts lately (a lab behind one
/// NAT); a wrong invitation code or key is not.
fn attach_later(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::DeadlineExceeded
    )
}

/// Exponential backoff with full jitter, so a crowd of workers does not
/// return to a recovering coordinator in lockstep.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(500)
        .saturating_mul(1 << attempt.min(7))
        .min(MAX_BACKOFF);
    let fraction = f64::from(u16::from_le_bytes(cobble_core::random_bytes::<2>())) / 65_535.0;
    ceiling.mul_f64(0.5 + fraction / 2.0)
}

impl Worker {
    fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        self.connection.request(message)
    }

    fn client(&self) -> WorkerServiceClient<Channel> {
        worker_client(&self.connection)
    }

    /// Takes units from the work buffer and computes them, one at a time.
    async fn slot_loop(
        &self,
        slot: u32,
        queue: &tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Queued>>,
    ) {
        loop {
            let Some(unit) = queue.lock().await.recv().await else {
                return;
            };
            self.process(slot, unit).await;
            self.slot_freed.notify_one();
        }
    }

    async fn process(&self, slot: u32, unit: Queued) {
        let Queued { manifest, received } = unit;
        tracing::info!(
            unit_id = manifest.unit_id,
            job_id = manifest.job_id,
            slot,
            "unit started"
        );
        let unit_dir = self.journal.unit_dir(&manifest.lease_id);
        let outcome = match self.compute(&manifest, &unit_dir, received).await {
            Ok(Some(outcome)) => Some(outcome),
            Ok(None) => None,
            Err(Error::Transfer(error)) if is_transient_transfer(&error) => {
                // The lease ran out while the coordinator was unreachable:
                // nothing to report; the coordinator reissues the unit.
                tracing::warn!(unit_id = manifest.unit_id, %error, "abandoning unit: coordinator unreachable until its deadline");
                None
            }
            Err(error) => {
                tracing::error!(unit_id = manifest.unit_id, %error, "unit could not run");
                let kind = match error {
                    Error::BlobMismatch { .. } => "bad_blob",
                    Error::InvalidModule(_)
                    | Error::Sandbox(
                        cobble_sandbox::Error::InvalidModule(_)
                        | cobble_sandbox::Error::NotACommand,
                    ) => "bad_module",
                    _ => "internal",
                };
                Some(client_error(kind, &error.to_string()))
            }
        };
        if let Some(outcome) = outcome {
            let request = pb::ReportRequest {
                lease_id: manifest.lease_id.clone(),
                outcome: Some(outcome),
            };
            if let Err(error) = self.journal.record_report(&manifest.lease_id, &request) {
                tracing::warn!(%error, "cannot journal the report");
            }
            self.report(&manifest, request).await;
        }
        self.journal.finish(&manifest.lease_id);
        self.tasks.remove(&manifest.lease_id);
    }

    /// Runs a verified unit. `None` means there is nothing to report: the
    /// coordinator no longer wants the result, or its deadline passed.
    async fn compute(
        &self,
        manifest: &pb::Manifest,
        unit_dir: &Path,
        received: std::time::Instant,
    ) -> Result<Option<Outcome>> {
        let lease_id = manifest.lease_id.as_str();
        let Some((memory_bytes, signals)) = self.tasks.handles(lease_id) else {
            return Ok(None);
        };
        self.tasks.set_state(lease_id, TaskState::Downloading);
        let module_ref = manifest
            .module
            .as_ref()
            .ok_or_else(|| Error::InvalidModule("manifest names no module".into()))?;
        let module_path = self
            .ensure_blob(module_ref, lease_id, manifest.deadline_ms)
            .await?;
        let module_hash = BlobHash::from_slice(&module_ref.hash)?;
        let input_dir = unit_dir.join("input");
        let output_dir = unit_dir.join("output");
        let checkpoint_dir = unit_dir.join("checkpoint");
        // Inputs of an interrupted run are stale; its checkpoint is not.
        std::fs::remove_dir_all(&input_dir).ok();
        for dir in [&input_dir, &checkpoint_dir] {
            std::fs::create_dir_all(dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
        }
        self.tasks
            .set_checkpoint_dir(lease_id, checkpoint_dir.clone());
        for input in &manifest.inputs {
            let blob = input.blob.as_ref().ok_or_else(|| {
                Error::InvalidModule(format!("input {:?} has no blob", input.name))
            })?;
            let cached = self
                .ensure_blob(blob, lease_id, manifest.deadline_ms)
                .await?;
            // Names were checked with the signature (`is_input_path`):
            // relative, plain parts; a reduce unit's are `INDEX/NAME`.
            let target = input_dir.join(&input.name);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(Error::io(format!("creating {}", parent.display())))?;
            }
            link_input(&cached, &target)?;
        }
        let sandbox = self.engines.get(manifest.nan_canonicalization_off)?;
        let preparing = std::time::Instant::now();
        // Compiling takes seconds for a large module (CPython): off the
        // runtime's threads, which heartbeats and reports need.
        let (prepared, origin) = {
            let sandbox = sandbox.clone();
            tokio::task::spawn_blocking(move || sandbox.prepare_from(&module_hash, &module_path))
                .await
                .map_err(|e| Error::InvalidModule(format!("preparing the module: {e}")))??
        };
        if origin != cobble_sandbox::Origin::Memory {
            tracing::info!(
                module = %module_hash,
                ?origin,
                ms = preparing.elapsed().as_millis() as u64,
                "module prepared"
            );
        }
        let env: Vec<(String, String)> = manifest
            .env
            .iter()
            .map(|var| (var.name.clone(), var.value.clone()))
            .collect();
        let limits = manifest.limits.unwrap_or_default();
        // Each pass is one run from the unit's last checkpoint; a unit
        // removed from memory takes another pass when memory allows.
        let report = loop {
            let remaining = manifest.deadline_ms - cobble_core::now_ms();
            if remaining <= 0 {
                tracing::warn!(
                    unit_id = manifest.unit_id,
                    "deadline passed before the unit could finish"
                );
                return Ok(None);
            }
            if checkpoint_dir.join("state").is_file() {
                tracing::info!(
                    unit_id = manifest.unit_id,
                    "resuming from the unit's checkpoint"
                );
            }
            // Outputs of an interrupted run are stale.
            std::fs::remove_dir_all(&output_dir).ok();
            std::fs::create_dir_all(&output_dir)
                .map_err(Error::io(format!("creating {}", output_dir.display())))?;
            let invocation = Invocation {
                args: &manifest.args,
                env: &env,
                input_dir: &input_dir,
                output_dir: &output_dir,
                checkpoint_dir: Some(&checkpoint_dir),
                stdin: Vec::new(),
                seed: unit_seed(manifest),
                limits: UnitLimits::from_proto(&limits, Duration::from_millis(remaining as u64)),
                control: UnitControl {
                    permit: self.permit.clone(),
                    memory_bytes: memory_bytes.clone(),
                },
            };
            self.tasks.set_state(lease_id, TaskState::Running);
            let handed_over = received.elapsed();
            tokio::select! {
                report = sandbox.run(&prepared, invocation) => {
                    let report = report?;
                    tracing::info!(
                        unit_id = manifest.unit_id,
                        fuel = report.fuel_used,
                        elapsed_ms = report.elapsed.as_millis() as u64,
                        // From receiving the assignment to the unit's first instruction:
                        // verification, blobs, module lookup, instantiation.
                        first_instruction_us = (handed_over + report.startup).as_micros() as u64,
                        outcome = ?report.outcome,
                        "unit finished"
                    );
                    break report;
                }
                () = signals.abort.notified() => {
                    tracing::info!(unit_id = manifest.unit_id, "coordinator no longer needs this unit; aborted");
                    return Ok(None);
                }
                () = signals.evict.notified() => {}
            }
            // Dropping the run freed its memory; wait to be let back in.
            self.tasks.evicted(lease_id);
            tracing::info!(
                unit_id = manifest.unit_id,
                "unit removed from memory to respect the RAM preferences; it resumes from its checkpoint"
            );
            if !self.wait_for_memory(manifest, &signals).await {
                return Ok(None);
            }
        };
        self.tasks.set_state(lease_id, TaskState::Uploading);
        self.outcome_of(report, manifest.deadline_ms)
            .await
            .map(Some)
    }

    /// Waits until the memory governor readmits an evicted unit; false if
    /// it was aborted or its deadline passed first.
    async fn wait_for_memory(&self, manifest: &pb::Manifest, signals: &TaskSignals) -> bool {
        let remaining = (manifest.deadline_ms - cobble_core::now_ms()).max(0) as u64;
        tokio::select! {
            () = signals.readmit.notified() => true,
            () = signals.abort.notified() => false,
            () = tokio::time::sleep(Duration::from_millis(remaining)) => false,
        }
    }

    async fn outcome_of(&self, report: RunReport, deadline_ms: i64) -> Result<Outcome> {
        if let Err(failure) = &report.outcome {
            return Ok(client_error(
                failure.kind(),
                &format!("{failure}; stderr: {}", stderr_tail(&report.stderr)),
            ));
        }
        let mut stdout = report.stdout;
        if let Some(filter) = self.hooks.stdout_filter() {
            filter(&mut stdout);
        }
        // Small outputs go inline with the report: no upload call, and no
        // file of their own on the coordinator.
        let mut inline = Vec::new();
        let mut budget = cobble_core::output::MAX_INLINE_BYTES_PER_REPORT;
        let stdout = if stdout.len() <= cobble_core::output::MAX_INLINE_BYTES {
            budget -= stdout.len();
            let blob = inline_ref(&stdout);
            inline.push(stdout);
            blob
        } else {
            let blob = with_retry(deadline_ms, "uploading stdout", || {
                self.connection.upload_bytes(&stdout)
            })
            .await?;
            self.count_upload(blob.size);
            blob
        };
        let mut files = Vec::with_capacity(report.files.len());
        for file in &report.files {
            let small = usize::try_from(file.size)
                .ok()
                .filter(|size| *size <= cobble_core::output::MAX_INLINE_BYTES && *size <= budget);
            let bytes = match small {
                // Read with a bound: the file's size was taken when the unit ended.
                Some(size) => read_at_most(&file.path, size),
                None => None,
            };
            let blob = match bytes {
                Some(bytes) => {
                    budget -= bytes.len();
                    let blob = inline_ref(&bytes);
                    inline.push(bytes);
                    blob
                }
                None => {
                    let blob = with_retry(deadline_ms, "uploading an output file", || {
                        self.connection.upload_file(&file.path)
                    })
                    .await?;
                    self.count_upload(blob.size);
                    blob
                }
            };
            files.push(pb::OutputFile {
                name: file.name.clone(),
                blob: Some(blob),
            });
        }
        Ok(Outcome::Success(pb::Success {
            stdout: Some(stdout),
            files,
            fuel_used: report.fuel_used,
            elapsed_ms: report.elapsed.as_millis() as u64,
            inline,
        }))
    }

    /// Returns the cached path of a blob, downloading and verifying it first
    /// if needed: from peers when the manifest commits to a chunk list and
    /// peer-to-peer is on, else whole from the coordinator. Only verified
    /// bytes ever reach the cache.
    async fn ensure_blob(
        &self,
        blob: &pb::BlobRef,
        lease_id: &str,
        deadline_ms: i64,
    ) -> Result<PathBuf> {
        let gate = self.download_gate(blob)?;
        let _one_download = gate.lock().await;
        self.download_unless_cached(blob, lease_id, deadline_ms)
            .await
    }

    /// `ensure_blob` for a unit still waiting for a slot; does nothing while
    /// another download of the blob is under way, so that a prefetch never
    /// queues behind a slot that needs the blob now.
    async fn prefetch_blob(
        &self,
        blob: &pb::BlobRef,
        lease_id: &str,
        deadline_ms: i64,
    ) -> Result<()> {
        let gate = self.download_gate(blob)?;
        let Ok(_one_download) = gate.try_lock() else {
            return Ok(());
        };
        self.download_unless_cached(blob, lease_id, deadline_ms)
            .await
            .map(|_| ())
    }

    /// One lock per blob: a blob is downloaded by one task at a time.
    fn download_gate(&self, blob: &pb::BlobRef) -> Result<Arc<tokio::sync::Mutex<()>>> {
        let hash = BlobHash::from_slice(&blob.hash)?;
        Ok(self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(hash)
            .or_default()
            .clone())
    }

    /// The download itself; call it holding the blob's gate.
    async fn download_unless_cached(
        &self,
        blob: &pb::BlobRef,
        lease_id: &str,
        deadline_ms: i64,
    ) -> Result<PathBuf> {
        let hash = BlobHash::from_slice(&blob.hash)?;
        let path = self.blob_dir.join(hash.to_hex());
        if path.is_file() {
            cache::touch(&path);
            return Ok(path);
        }
        let result = match &self.sharing {
            Some(sharing) if !blob.chunk_root.is_empty() => {
                peer::fetch(peer::Fetch {
                    connection: &self.connection,
                    sharing,
                    transfers: &self.transfers,
                    blob,
                    lease_id,
                    peer_port: self.peer_port,
                    deadline_ms,
                })
                .await
            }
            _ => self.download_whole(blob, &hash, &path, deadline_ms).await,
        };
        if result.is_ok() {
            tracing::info!(blob = %hash, size = blob.size, "blob fetched");
            self.trim_cache();
        }
        result
    }

    /// The whole blob in one stream from the coordinator.
    async fn download_whole(
        &self,
        blob: &pb::BlobRef,
        hash: &BlobHash,
        path: &Path,
        deadline_ms: i64,
    ) -> Result<PathBuf> {
        let downloaded = with_retry(deadline_ms, "downloading a blob", || {
            self.connection.download_verified(hash, path)
        })
        .await;
        match downloaded {
            Ok(size) if size == blob.size => {
                self.transfers
                    .downloaded_from_coordinator
                    .fetch_add(size, Ordering::Relaxed);
                Ok(path.to_path_buf())
            }
            Ok(size) => {
                std::fs::remove_file(path).ok();
                Err(Error::BlobMismatch {
                    hash: hash.to_hex(),
                    expected: format!("{} bytes", blob.size),
                    actual: format!("{size} bytes"),
                })
            }
            Err(cobble_client::Error::HashMismatch { expected, actual }) => {
                Err(Error::BlobMismatch {
                    hash: expected.to_hex(),
                    expected: expected.to_hex(),
                    actual: actual.to_hex(),
                })
            }
            Err(error) => Err(error.into()),
        }
    }

    fn count_upload(&self, bytes: u64) {
        self.transfers
            .uploaded_to_coordinator
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Keeps the blob cache under its cap (`cache::cap_bytes`), never
    /// evicting a blob a unit in hand needs.
    fn trim_cache(&self) {
        let cap = cache::cap_bytes(
            self.prefs.disk_max_used_gb,
            crate::sys::free_disk_bytes(&self.blob_dir),
        );
        let needed = self.tasks.needed_blobs();
        for (name, size) in cache::trim(&self.blob_dir, cap, &needed) {
            tracing::info!(blob = %name, size, "evicted from the cache (disk_max_used_gb)");
        }
    }

    /// Reports, batched with whatever else finished meanwhile, retrying
    /// through coordinator outages until the lease is over; returns once
    /// the coordinator answered (or the report was given up).
    async fn report(&self, manifest: &pb::Manifest, report: pb::ReportRequest) {
        let (sent, answered) = tokio::sync::oneshot::channel();
        let queued = self.reports.send(report::Pending {
            manifest: manifest.clone(),
            request: report.clone(),
            sent,
        });
        if queued.is_err() || answered.await.is_err() {
            // No batcher (shutting down): send it alone.
            self.report_one(manifest, report).await;
        }
    }

    /// Reports one unit by itself, retrying until the lease is over.
    async fn report_one(&self, manifest: &pb::Manifest, report: pb::ReportRequest) {
        let sent = with_retry(manifest.deadline_ms, "reporting", || async {
            self.client()
                .report_result(self.authorized(report.clone()))
                .await
                .map_err(cobble_client::Error::Rpc)
        })
        .await;
        match sent {
            Ok(response) => {
                tracing::info!(unit_id = manifest.unit_id, status = %response.into_inner().status, "reported");
                self.reported_since_heartbeat.store(true, Ordering::Relaxed);
            }
            Err(error) => {
                tracing::warn!(unit_id = manifest.unit_id, %error, "report refused; dropping the result");
            }
        }
    }
}

/// How a report names an output it carries inline.
fn inline_ref(bytes: &[u8]) -> pb::BlobRef {
    pb::BlobRef {
        hash: BlobHash::of(bytes).0.to_vec(),
        size: bytes.len() as u64,
        chunk_root: Vec::new(),
    }
}

/// A file's bytes if it holds exactly `size` of them (it was measured when
/// the unit ended; anything else means it changed, and it is uploaded).
fn read_at_most(path: &Path, size: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::with_capacity(size);
    file.take(size as u64 + 1).read_to_end(&mut bytes).ok()?;
    (bytes.len() == size).then_some(bytes)
}

fn is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Internal | Code::Aborted
    )
}

/// Retries a transfer through coordinator outages, with backoff, until the
/// lease's deadline: a network failure is never the unit's failure.
pub(crate) async fn with_retry<T, F, Fut>(
    deadline_ms: i64,
    what: &str,
    mut transfer: F,
) -> Result<T, cobble_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, cobble_client::Error>>,
{
    let mut attempt = 0;
    loop {
        match transfer().await {
            Err(error) if is_transient_transfer(&error) && cobble_core::now_ms() < deadline_ms => {
                let wait = backoff(attempt);
                attempt += 1;
                tracing::warn!(%error, "{what} failed; retrying in {wait:?}");
                tokio::time::sleep(wait).await;
            }
            result => return result,
        }
    }
}

fn is_transient_transfer(error: &cobble_client::Error) -> bool {
    match error {
        cobble_client::Error::Unreachable { .. } => true,
        cobble_client::Error::Rpc(status) => is_transient(status),
        _ => false,
    }
}

pub(crate) fn worker_client(connection: &Connection) -> WorkerServiceClient<Channel> {
    WorkerServiceClient::new(connection.channel())
        .max_decoding_message_size(cobble_core::chunk::CHUNK_SIZE as usize * 2)
}

fn client_error(kind: &str, message: &str) -> Outcome {
    Outcome::ClientError(pb::ClientError {
        kind: kind.to_string(),
        message: message.to_string(),
    })
}

/// The same on every replica of a unit, different across units.
pub fn unit_seed(manifest: &pb::Manifest) -> [u8; 32] {
    let mut material = Vec::with_capacity(16);
    material.extend_from_slice(&manifest.job_id.to_le_bytes());
    material.extend_from_slice(&manifest.unit_id.to_le_bytes());
    blake3::derive_key("cobble unit seed v1", &material)
}

/// The worker's sandboxes: one per engine setting a job may choose (NaN
/// canonicalization off compiles other code), each with the compiled
/// modules it holds in memory. Made when a unit needs one; dropped after
/// the worker has been idle a while (`background`), so an idle worker
/// holds no engine and no compiled code. The next unit then makes the
/// engine again and loads its module from the disk cache, which both
/// settings share (file names say the settings).
pub(crate) struct Engines {
    cache_dir: PathBuf,
    standard: std::sync::Mutex<Option<Arc<Sandbox>>>,
    fast_nans: std::sync::Mutex<Option<Arc<Sandbox>>>,
}

impl Engines {
    fn new(cache_dir: PathBuf) -> Result<Engines> {
        // Jobs without NaN canonicalization had a directory of their own
        // before file names said the engine's settings.
        if let Some(parent) = cache_dir.parent() {
            std::fs::remove_dir_all(parent.join("modules-fast-nans")).ok();
        }
        // Made now, so a cache that cannot be is said at start.
        std::fs::create_dir_all(&cache_dir)
            .map_err(Error::io(format!("creating {}", cache_dir.display())))?;
        Ok(Engines {
            cache_dir,
            standard: std::sync::Mutex::default(),
            fast_nans: std::sync::Mutex::default(),
        })
    }

    fn get(&self, fast_nans: bool) -> Result<Arc<Sandbox>> {
        let slot = if fast_nans {
            &self.fast_nans
        } else {
            &self.standard
        };
        let mut held = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sandbox) = held.as_ref() {
            return Ok(sandbox.clone());
        }
        let settings = EngineSettings {
            nan_canonicalization: !fast_nans,
            ..EngineSettings::default()
        };
        let sandbox = Arc::new(Sandbox::with_settings(
            Some(self.cache_dir.clone()),
            settings,
        )?);
        *held = Some(sandbox.clone());
        Ok(sandbox)
    }

    /// Drops the sandboxes no unit holds now; returns whether any was held.
    pub(crate) fn release(&self) -> bool {
        let mut released = false;
        for slot in [&self.standard, &self.fast_nans] {
            released |= slot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .is_some();
        }
        released
    }
}

/// Places a cached blob (or `exec`'s input file) at its input name: a hard
/// link when possible (no copy), else a copy. The unit sees `/input`
/// read-only either way.
pub(crate) fn link_input(cached: &Path, target: &Path) -> Result<()> {
    if std::fs::hard_link(cached, target).is_ok() {
        return Ok(());
    }
    std::fs::copy(cached, target)
        .map(|_| ())
        .map_err(Error::io(format!("placing input {}", target.display())))
}

#[cfg(test)]
mod tests {
    use super::{STDERR_TAIL, attach_later, stderr_tail};
    use tonic::{Code, Status};

    #[test]
    fn a_failed_units_stderr_is_cut_without_splitting_a_character() {
        // Two-byte characters and one more byte: the cut falls one byte
        // into a character.
        let mut stderr = "é".repeat(STDERR_TAIL).into_bytes();
        stderr.push(b'!');
        let tail = stderr_tail(&stderr);
        assert!(
            tail.starts_with('\u{fffd}') && tail.ends_with("é!"),
            "{tail:?}"
        );
        // Bytes that are no text at all, and nothing.
        assert_eq!(stderr_tail(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(stderr_tail(b""), "");
        let short = "Traceback (most recent call last):\nValueError: boom\n";
        assert_eq!(stderr_tail(short.as_bytes()), short);
    }

    #[test]
    fn only_a_busy_or_rate_limited_attach_is_tried_again() {
        for code in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
        ] {
            assert!(attach_later(&Status::new(code, "later")), "{code:?}");
        }
        for code in [
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::Internal,
        ] {
            assert!(!attach_later(&Status::new(code, "never")), "{code:?}");
        }
    }
}
