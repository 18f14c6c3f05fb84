//! Cobble's coordinator: splits jobs into signed work units, schedules
//! replicas on volunteers' hosts, validates results by quorum and grants
//! credit, all behind one gRPC port.
//!
//! [`start`] opens the store; [`serve`] runs the server on a listener the
//! caller bound, over TLS with the certificate [`server_tls`] loads, until
//! the shutdown future resolves.

pub mod blob_store;
pub mod config;
pub mod credit;
pub mod db;
pub mod error;
pub mod integrity;
pub mod leader;
pub mod limits;
pub mod metrics;
pub mod secrets;
pub mod service;
pub mod store;
pub mod tracker;
pub mod validate;
pub mod validator;
pub mod web;

pub use config::Config;
pub use error::{Error, Result};

use blob_store::BlobStore;
use cobble_proto::v1 as pb;
use db::Db;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;

/// How often overdue leases are swept, so their units are reissued, and
/// credit owed to hosts that passed a check is paid.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// How long a stop waits for requests in flight: a stalled upload must not
/// keep a coordinator from stopping when its operator (or systemd) says so.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Opens (creating on first start) the database, blob store and key.
pub async fn start(config: &Config) -> Result<Store> {
    std::fs::create_dir_all(&config.data_dir).map_err(Error::io(format!(
        "creating data dir {}",
        config.data_dir.display()
    )))?;
    let db = match &config.database_url {
        Some(url) => Db::connect(url, config.database_connections).await?,
        None => Db::open_embedded(&config.data_dir).await?,
    };
    // With a bucket, the data dir holds the upload scratch space.
    let blobs = BlobStore::open(config.blob_location()?, config.data_dir.join("blobs"))
        .await?
        .with_rate_limit(config.max_serve_bytes_per_sec);
    let (key_path, create) = match &config.signing_key {
        Some(path) => (path.clone(), false),
        None => (config.data_dir.join("project.key"), true),
    };
    let key = secrets::signing_key(&key_path, create)?;
    let code_key = config
        .code_signing_key
        .as_deref()
        .map(cobble_core::manifest::project_key_from_hex)
        .transpose()
        .map_err(|e| Error::InvalidArgument(format!("--code-signing-key: {e}")))?;
    let runtimes = load_runtimes(config, &blobs).await?;
    let store = Store::new(db, blobs, key)
        .with_runtimes(runtimes)
        .with_policy(config.integrity.clone())
        .with_invite_code(config.invite_code.clone())
        .with_code_key(code_key)
        .with_limits(limits::Limits::new(&config.limits));
    store
        .adopt_first_researcher(&config.researcher_token_path())
        .await?;
    store.fill_rac_keys().await?;
    store.fill_cross_project_ids().await?;
    Ok(store)
}

/// The runtimes this coordinator serves: each file checked against the
/// SHA-256 pinned in `cobble_core::runtime`, then kept as a blob like any
/// module. A wrong file fails the start, with the reason.
async fn load_runtimes(
    config: &Config,
    blobs: &BlobStore,
) -> Result<std::collections::HashMap<&'static str, pb::BlobRef>> {
    let mut runtimes = std::collections::HashMap::new();
    let Some(path) = &config.python_runtime else {
        return Ok(runtimes);
    };
    let runtime = cobble_core::runtime::PYTHON;
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| Error::InvalidArgument(format!("--python-runtime {}: {e}", path.display())))?;
    runtime.check(&bytes).map_err(|reason| {
        Error::InvalidArgument(format!("--python-runtime {}: {reason}", path.display()))
    })?;
    let hash = cobble_core::BlobHash::of(&bytes);
    if !blobs.contains(&hash).await? {
        blobs.put(&bytes).await?;
    }
    runtimes.insert(
        runtime.name,
        pb::BlobRef {
            hash: hash.0.to_vec(),
            size: bytes.len() as u64,
            chunk_root: Vec::new(),
        },
    );
    Ok(runtimes)
}

/// The certificate the coordinator serves, or None with
/// `--insecure-plaintext`. Without `--tls-cert`, a self-signed one is made
/// on first start (for `localhost`, loopback and the listen address) and
/// kept in the data dir, so the fingerprint volunteers pin stays the same.
pub fn server_tls(config: &Config) -> Result<Option<Arc<cobble_tls::ServerCert>>> {
    if config.insecure_plaintext {
        return Ok(None);
    }
    let identity = load_tls_identity(config)?;
    Ok(Some(cobble_tls::ServerCert::new(&identity)?))
}

/// Re-reads the certificate files, for SIGHUP: new handshakes get the new
/// certificate, open connections keep theirs. A bad file leaves the
/// current certificate in place.
pub fn reload_tls(config: &Config, cert: &cobble_tls::ServerCert) -> Result<()> {
    cert.replace(&load_tls_identity(config)?)?;
    Ok(())
}

fn load_tls_identity(config: &Config) -> Result<cobble_tls::Identity> {
    let (cert, key) = config.tls_files();
    if config.tls_cert.is_some() {
        return Ok(cobble_tls::Identity::from_pem_files(&cert, &key)?);
    }
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let ip = config.listen.ip();
    if !ip.is_unspecified() && !ip.is_loopback() {
        names.push(ip.to_string());
    }
    Ok(cobble_tls::Identity::load_or_create(&cert, &key, &names)?)
}

/// Serves every service on `listener` until `shutdown` resolves, over TLS
/// with `tls` (see [`server_tls`]), or in plaintext without it.
pub async fn serve(
    store: Store,
    config: &Config,
    listener: TcpListener,
    tls: Option<Arc<cobble_tls::ServerCert>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    use pb::{
        blob_service_server::BlobServiceServer, job_service_server::JobServiceServer,
        stats_service_server::StatsServiceServer, worker_service_server::WorkerServiceServer,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<WorkerServiceServer<service::WorkerApi>>()
        .await;
    health
        .set_serving::<JobServiceServer<service::JobApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Server(format!("reflection descriptors: {e}")))?;
    // The older v1alpha too: grpcio-reflection (Python) and older tools
    // speak only it.
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Server(format!("reflection descriptors: {e}")))?;

    let leadership = Arc::new(leader::Leadership::new(store.db.clone()));
    // Several coordinators may share a PostgreSQL database: the tracker's
    // state is then theirs in common.
    let tracker = Arc::new(match store.db.backend() {
        db::Backend::Postgres => tracker::Tracker::shared(store.db.clone()),
        db::Backend::Sqlite => tracker::Tracker::default(),
    });
    let sweeper = tokio::spawn(sweep_overdue(
        store.clone(),
        leadership.clone(),
        tracker.clone(),
    ));
    let collector = tokio::spawn(collect_garbage(
        store.clone(),
        leadership.clone(),
        i64::from(config.unreferenced_blob_hours) * 3_600_000,
        i64::from(config.keep_outputs_hours) * 3_600_000,
        (config.stats_every_hours > 0).then(|| {
            (
                config.stats_dir(),
                Duration::from_secs(u64::from(config.stats_every_hours) * 3_600),
            )
        }),
    ));
    let validator = tokio::spawn(run_validators(store.clone(), leadership));
    let (stopping, mut stop_requested) = tokio::sync::watch::channel(false);
    let (incoming, acceptor) = accept_with_backoff(listener, store.limits().clone());
    let (incoming, handshaker) = match tls {
        Some(cert) => {
            let (tls, handshaker) = cobble_tls::accept(incoming, cert.config(false)?);
            (Incoming::Tls(tls), Some(handshaker))
        }
        None => (Incoming::Plain(incoming), None),
    };
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(store.limits().max_streams_per_connection())
        .layer(metrics::MetricsLayer(store.metrics().clone()))
        .layer(limits::LimitLayer(store.limits().clone()))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(WorkerServiceServer::new(service::WorkerApi {
            store: store.clone(),
            project_name: config.project_name.clone(),
            tracker,
        }))
        .add_service(JobServiceServer::new(service::JobApi {
            store: store.clone(),
        }))
        .add_service(StatsServiceServer::new(service::StatsApi {
            store: store.clone(),
        }))
        .add_service(BlobServiceServer::new(service::BlobApi {
            store: store.clone(),
            max_blob_bytes: config.max_blob_bytes,
            open_uploads: std::sync::Arc::default(),
        }));
    let stop = {
        let store = store.clone();
        async move {
            shutdown.await;
            stopping.send(true).ok();
            // Hosts in a long poll answer now rather than hold up the stop.
            store.notify_work_added();
        }
    };
    let server = async move {
        match incoming {
            Incoming::Plain(incoming) => router.serve_with_incoming_shutdown(incoming, stop).await,
            Incoming::Tls(incoming) => router.serve_with_incoming_shutdown(incoming, stop).await,
        }
    };
    let grace_over = async {
        let _ = stop_requested.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = grace_over => {
            tracing::warn!(grace = ?SHUTDOWN_GRACE, "requests still open after the grace period; stopping without them");
            Ok(())
        }
    };
    sweeper.abort();
    collector.abort();
    validator.abort();
    acceptor.abort();
    if let Some(handshaker) = handshaker {
        handshaker.abort();
    }
    store.db.close().await;
    result.map_err(|e| Error::Server(format!("gRPC server: {e}")))
}

/// What the server reads connections from.
enum Incoming {
    Plain(ReceiverStream<std::io::Result<Counted>>),
    Tls(ReceiverStream<std::io::Result<cobble_tls::ServerStream<Counted>>>),
}

/// Accepts connections for the server, at most `--max-connections-per-ip`
/// per address (more are closed at once). When accepting fails (out of file
/// descriptors: EMFILE), it waits a moment before trying again; handing
/// the error on made the server retry at once, spinning at 100% CPU while
/// honest connections timed out.
fn accept_with_backoff(
    listener: TcpListener,
    limits: Arc<limits::Limits>,
) -> (
    ReceiverStream<std::io::Result<Counted>>,
    tokio::task::JoinHandle<()>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let Some(slot) = limits.connection(peer.ip()) else {
                        tracing::debug!(%peer, "too many connections from this address; closing");
                        continue;
                    };
                    stream.set_nodelay(true).ok();
                    let counted = Counted {
                        stream,
                        _slot: slot,
                    };
                    if sender.send(Ok(counted)).await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection; trying again in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    (ReceiverStream::new(receiver), acceptor)
}

/// A connection, counted against its address until it closes.
struct Counted {
    stream: tokio::net::TcpStream,
    _slot: limits::ConnectionSlot,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Every hour: purges jobs collected `keep_ms` ago, then deletes blobs
/// nothing refers to once `grace_ms` old; and writes the statistics export
/// into its directory when the last is older than its interval.
async fn collect_garbage(
    store: Store,
    leadership: Arc<leader::Leadership>,
    grace_ms: i64,
    keep_ms: i64,
    stats: Option<(std::path::PathBuf, Duration)>,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(3_600));
    let mut exported: Option<std::time::Instant> = None;
    loop {
        ticker.tick().await;
        if !leadership.check().await {
            continue;
        }
        if let Some((dir, every)) = &stats
            && exported.is_none_or(|at| at.elapsed() >= *every)
        {
            match store.export_stats(dir).await {
                Ok(summary) => {
                    exported = Some(std::time::Instant::now());
                    tracing::info!(?summary, "statistics exported");
                }
                Err(error) => tracing::warn!(%error, "exporting statistics failed"),
            }
        }
        // Purged jobs' outputs become unreferenced, and go just below.
        if let Err(error) = store
            .purge_collected_jobs(cobble_core::now_ms() - keep_ms)
            .await
        {
            tracing::warn!(%error, "purging collected jobs failed");
        }
        let before = cobble_core::now_ms() - grace_ms;
        if let Err(error) = store.collect_unreferenced_blobs(before).await {
            tracing::warn!(%error, "collecting unreferenced blobs failed");
        }
        store.loops().ran(store::Loop::Garbage);
    }
}

/// Sweeps between two rounds of database maintenance (vacuum, analyze).
const MAINTENANCE_EVERY_SWEEPS: u64 = 300;

async fn sweep_overdue(
    store: Store,
    leadership: Arc<leader::Leadership>,
    tracker: Arc<tracker::Tracker>,
) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    let mut sweeps = 0u64;
    // When credit days were last recorded here (0: not yet; then the last
    // day's credit is looked at).
    let mut days_recorded = 0i64;
    loop {
        ticker.tick().await;
        sweeps += 1;
        if sweeps.is_multiple_of(60) {
            store.limits().forget_idle();
        }
        if !leadership.check().await {
            continue;
        }
        match store.expire_overdue().await {
            // Expired leases are reissued: tell the hosts waiting for work.
            Ok(expired) if expired > 0 => store.notify_work_added(),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "sweeping overdue leases failed"),
        }
        if let Err(error) = store.release_deferred_credit().await {
            tracing::warn!(%error, "paying deferred credit failed");
        }
        if let Err(error) = store.finish_jobs().await {
            tracing::warn!(%error, "finishing jobs failed");
        }
        if sweeps.is_multiple_of(60) || days_recorded == 0 {
            let now = cobble_core::now_ms();
            let since = if days_recorded == 0 {
                now - 24 * 3_600_000
            } else {
                days_recorded - 60_000
            };
            match store.record_credit_days(since).await {
                Ok(()) => days_recorded = now,
                Err(error) => tracing::warn!(%error, "recording daily credit failed"),
            }
        }
        store.loops().ran(store::Loop::Sweeper);
        if sweeps.is_multiple_of(MAINTENANCE_EVERY_SWEEPS) {
            if let Err(error) = tracker.forget_stale(cobble_core::now_ms()).await {
                tracing::warn!(%error, "forgetting stale blob holders failed");
            }
            if let Err(error) = store.db.maintain().await {
                tracing::warn!(%error, "database maintenance failed");
            }
        }
    }
}

/// Runs researchers' validator modules on the units waiting for them, one
/// unit at a time: a validator is CPU work, and the coordinator's first job
/// is answering hosts.
async fn run_validators(store: Store, leadership: Arc<leader::Leadership>) {
    loop {
        if !leadership.check().await {
            store.validation_wanted().await;
            continue;
        }
        let ran = store.run_validators().await;
        store.loops().ran(store::Loop::Validators);
        match ran {
            Ok(0) => store.validation_wanted().await,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "running validators failed");
                store.validation_wanted().await;
            }
        }
    }
}
