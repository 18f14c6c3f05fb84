//! A flood from one address against an honest worker: the real
//! coordinator (the `cobble-coordinator` binary, SQLite, TLS) and one
//! honest simulated host on 127.0.0.1 that requests a unit, uploads its
//! output and reports, about 20 times a second, as a busy worker does. In
//! the flood phases a second address, 127.0.0.2, runs at once: 64
//! concurrent loops of calls with a wrong host key, registrations, stalled
//! uploads, and 500 TCP connections that never finish a TLS handshake.
//!
//! Printed side by side from one run: the honest host's RequestWork and
//! ReportResult latency (p50, p99, max) and errors with no flood, under
//! the flood with the default abuse limits, and under the flood with the
//! limits off; and how many junk calls the flooder made and how they
//! ended. `cargo xtask bench flood`; COBBLE_BENCH_SECONDS per phase (15).

use cobble_client::{Connection, Credentials, Security};
use cobble_e2e::{Coordinator, ONE_ADDRESS_MANY_MACHINES, write_job};
use cobble_proto::v1::{
    self as pb, blob_service_client::BlobServiceClient, report_request::Outcome,
    worker_service_client::WorkerServiceClient,
};
use prost::Message;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

const HONEST: &str = "127.0.0.1";
const FLOODER: &str = "127.0.0.2";

fn from(security: &Security, ip: &str) -> Security {
    Security {
        local_address: Some(ip.parse().expect("ip")),
        ..security.clone()
    }
}

#[derive(Default)]
struct Latencies {
    request: Vec<Duration>,
    report: Vec<Duration>,
    errors: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:>6} calls  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>8.2} ms",
        samples.len(),
        ms(percentile(samples, 0.50)),
        ms(percentile(samples, 0.99)),
        ms(samples.last().copied().unwrap_or_default())
    )
}

/// Connects and attaches, retrying for up to 10 s as the real worker
/// does (a flood may reset a connection); returns the failed attempts too.
async fn attach(
    url: &str,
    security: &Security,
) -> anyhow::Result<(Channel, pb::RegisterHostResponse, u64)> {
    let mut failures = 0;
    loop {
        let attempt = async {
            let channel = cobble_client::connect(url, &from(security, HONEST)).await?;
            let attached = WorkerServiceClient::new(channel.clone())
                .register_host(pb::RegisterHostRequest {
                    account: "honest".into(),
                    host_name: "honest".into(),
                    cpus: 64,
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::Ok((channel, attached))
        };
        match attempt.await {
            Ok((channel, attached)) => return Ok((channel, attached, failures)),
            Err(error) if failures < 20 => {
                eprintln!("   the honest host could not attach ({error:#}); retrying");
                failures += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The honest host: request one unit, upload an output, report; ~20/s.
async fn honest(url: String, security: Security, seconds: u64) -> anyhow::Result<Latencies> {
    let (channel, attached, failures) = attach(&url, &security).await?;
    let connection = Connection::from_channel(
        channel.clone(),
        Credentials::Host {
            id: attached.host_id,
            key: attached.host_key,
        },
    );
    let mut worker = WorkerServiceClient::new(channel);
    let mut figures = Latencies {
        errors: failures,
        ..Latencies::default()
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut nonce = 0u64;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let began = Instant::now();
        let response = worker
            .request_work(connection.request(pb::WorkRequest {
                slots: 1,
                wait_s: 0,
            }))
            .await;
        figures.request.push(began.elapsed());
        let Ok(response) = response else {
            figures.errors += 1;
            continue;
        };
        for assignment in response.into_inner().assignments {
            let manifest = pb::Manifest::decode(assignment.manifest.as_slice())?;
            nonce += 1;
            let blob = match connection
                .upload_bytes(format!("answer {nonce}\n").as_bytes())
                .await
            {
                Ok(blob) => blob,
                Err(_) => {
                    figures.errors += 1;
                    continue;
                }
            };
            let began = Instant::now();
            let reported = worker
                .report_result(connection.request(pb::ReportRequest {
                    lease_id: manifest.lease_id,
                    outcome: Some(Outcome::Success(pb::Success {
                        stdout: Some(blob),
                        files: vec![],
                        fuel_used: 1_000,
                        elapsed_ms: 1,
                        inline: Vec::new(),
                    })),
                }))
                .await;
            figures.report.push(began.elapsed());
            if reported.is_err() {
                figures.errors += 1;
            }
        }
    }
    Ok(figures)
}

#[derive(Default)]
struct FloodCounts {
    calls: AtomicU64,
    unauthenticated: AtomicU64,
    exhausted: AtomicU64,
    other: AtomicU64,
    connections_opened: AtomicU64,
}

impl FloodCounts {
    fn note(&self, result: Result<(), tonic::Status>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let counter = match result {
            Ok(()) => &self.other,
            Err(status) if status.code() == tonic::Code::Unauthenticated => &self.unauthenticated,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => &self.exhausted,
            Err(_) => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The flooder: junk calls, registrations and stalled uploads from 64
/// loops over 8 connections, and 500 silent TCP connections.
async fn flood(url: String, security: Security, stop: Arc<AtomicBool>, counts: Arc<FloodCounts>) {
    let security = from(&security, FLOODER);
    let address: std::net::SocketAddr =
        url.trim_start_matches("https://").parse().expect("address");
    let silent = {
        let (stop, counts) = (stop.clone(), counts.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..500 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                    continue;
                };
                if socket
                    .bind(format!("{FLOODER}:0").parse().expect("address"))
                    .is_err()
                {
                    continue;
                }
                if let Ok(Ok(stream)) =
                    tokio::time::timeout(Duration::from_secs(1), socket.connect(address)).await
                {
                    counts.connections_opened.fetch_add(1, Ordering::Relaxed);
                    held.push(stream);
                }
            }
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut channels = Vec::new();
    for _ in 0..8 {
        // Refused connections (past the per-address cap) are retried below.
        if let Ok(channel) = cobble_client::connect(&url, &security).await {
            channels.push(channel);
        }
    }
    let mut loops = Vec::new();
    for index in 0..64usize {
        let (stop, counts, security, url) =
            (stop.clone(), counts.clone(), security.clone(), url.clone());
        let mut channel = channels.get(index % channels.len().max(1)).cloned();
        loops.push(tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let Some(current) = channel.clone() else {
                    channel = cobble_client::connect(&url, &security).await.ok();
                    counts.note(Err(tonic::Status::unavailable("no connection")));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let liar = Connection::from_channel(
                    current.clone(),
                    Credentials::Host {
                        id: 1,
                        key: format!("guess{round}"),
                    },
                );
                let result = match round % 4 {
                    0 => WorkerServiceClient::new(current.clone())
                        .register_host(pb::RegisterHostRequest {
                            account: format!("spam{index}x{round}"),
                            host_name: "spam".into(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                    1 => {
                        // An upload that sends one chunk and then nothing.
                        let first = pb::BlobChunk {
                            expected: Some(pb::BlobRef {
                                hash: vec![round as u8; 32],
                                size: 1 << 30,
                                chunk_root: Vec::new(),
                            }),
                            data: vec![0; 1024],
                        };
                        let stream = tokio_stream::StreamExt::chain(
                            tokio_stream::iter([first]),
                            tokio_stream::pending(),
                        );
                        let mut blobs = BlobServiceClient::new(current.clone());
                        let call = blobs.upload_blob(liar.request(stream));
                        match tokio::time::timeout(Duration::from_millis(200), call).await {
                            Ok(result) => result.map(|_| ()),
                            Err(_) => Ok(()),
                        }
                    }
                    _ => WorkerServiceClient::new(current.clone())
                        .heartbeat(liar.request(pb::HeartbeatRequest::default()))
                        .await
                        .map(|_| ()),
                };
                if let Err(status) = &result
                    && status.code() == tonic::Code::Unavailable
                {
                    channel = None;
                }
                counts.note(result);
            }
        }));
    }
    for task in loops {
        task.await.ok();
    }
    silent.await.ok();
}

struct Phase {
    name: &'static str,
    flood: bool,
    limits_off: bool,
}

fn run_phase(phase: &Phase, seconds: u64) -> (Latencies, Arc<FloodCounts>) {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let mut flags: Vec<&str> = Vec::new();
    if phase.limits_off {
        flags.extend(ONE_ADDRESS_MANY_MACHINES);
        flags.extend([
            "--max-auth-failures-per-ip-per-min",
            "0",
            "--max-requests-per-host-per-sec",
            "0",
            "--max-streams-per-connection",
            "0",
        ]);
    }
    let coordinator = Coordinator::start_with(dir, &flags);
    let spec = write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        "name = \"flood\"\nmodule = \"primes.wasm\"\nargs = [\"{start}\"]\n[split]\n\
         range = { start = 0, end = 100000, per_unit = 1 }\n\
         [replication]\nmin_quorum = 1\ntarget_results = 1\nadaptive = false\n",
    );
    coordinator.submit(&spec);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let counts = Arc::new(FloodCounts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let figures = runtime.block_on(async {
        let flooder = phase.flood.then(|| {
            tokio::spawn(flood(
                coordinator.url.clone(),
                coordinator.security(),
                stop.clone(),
                counts.clone(),
            ))
        });
        // Let the flood build up before the honest host starts.
        if flooder.is_some() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let figures = match honest(coordinator.url.clone(), coordinator.security(), seconds).await {
            Ok(figures) => figures,
            Err(error) => {
                eprintln!("   the honest host never attached: {error:#}");
                Latencies {
                    errors: 1,
                    ..Latencies::default()
                }
            }
        };
        stop.store(true, Ordering::Relaxed);
        if let Some(flooder) = flooder {
            tokio::time::timeout(Duration::from_secs(10), flooder)
                .await
                .ok();
        }
        figures
    });
    (figures, counts)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds = std::env::var("COBBLE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let phases = [
        Phase {
            name: "no flood",
            flood: false,
            limits_off: false,
        },
        Phase {
            name: "flood, default limits",
            flood: true,
            limits_off: false,
        },
        Phase {
            name: "flood, limits off",
            flood: true,
            limits_off: true,
        },
    ];
    println!("honest host on {HONEST}, flood from {FLOODER}; {seconds} s per phase");
    for phase in &phases {
        let (mut figures, counts) = run_phase(phase, seconds);
        println!("== {}", phase.name);
        println!("   RequestWork   {}", summary(&mut figures.request));
        println!("   ReportResult  {}", summary(&mut figures.report));
        println!("   honest errors {}", figures.errors);
        if phase.flood {
            println!(
                "   flood: {} calls ({} unauthenticated, {} refused by limits, {} other), {} silent TCP connections opened",
                counts.calls.load(Ordering::Relaxed),
                counts.unauthenticated.load(Ordering::Relaxed),
                counts.exhausted.load(Ordering::Relaxed),
                counts.other.load(Ordering::Relaxed),
                counts.connections_opened.load(Ordering::Relaxed),
            );
        }
    }
}
