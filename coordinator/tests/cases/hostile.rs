//! The hostile-input corpus: one real coordinator over TLS, and a list of
//! inputs an attacker would send with a stock gRPC client, each with the
//! clear answer it must get. Afterwards nothing is lost or corrupted: the
//! credit granted before the attack is exactly what it was, and an honest
//! job submitted after it completes. Hostile inputs to the worker
//! (manifests, chunks, peers) have their corpus in `worker_side` below.

use super::grpc::{as_owner_with_module, serve_on_loopback};
use cobble_client::{Connection, Credentials};
use cobble_coordinator::Config;
use cobble_proto::v1::{
    self as pb, blob_service_client::BlobServiceClient, job_service_client::JobServiceClient,
    report_request::Outcome, stats_service_client::StatsServiceClient,
    worker_service_client::WorkerServiceClient,
};
use std::future::Future;
use std::pin::Pin;
use tonic::Code;
use tonic::transport::Channel;

type Answer = Pin<Box<dyn Future<Output = Result<String, tonic::Status>> + Send>>;

/// One hostile input and the answer it must get: a status code and words
/// of its message, or success with words of the reply.
struct Case {
    name: &'static str,
    code: Code,
    words: &'static str,
    call: Answer,
}

fn case(
    name: &'static str,
    code: Code,
    words: &'static str,
    call: impl Future<Output = Result<String, tonic::Status>> + Send + 'static,
) -> Case {
    Case {
        name,
        code,
        words,
        call: Box::pin(call),
    }
}

fn split_range(start: i64, end: i64, per_unit: i64) -> Option<pb::SplitRule> {
    Some(pb::SplitRule {
        rule: Some(pb::split_rule::Rule::Range(pb::RangeSplit {
            start,
            end,
            per_unit,
        })),
    })
}

fn replication(
    min_quorum: u32,
    target_results: u32,
    max_total_results: u32,
) -> Option<pb::Replication> {
    Some(pb::Replication {
        min_quorum,
        target_results,
        max_total_results,
        adaptive: None,
    })
}

fn blob_ref(bytes: &[u8]) -> pb::BlobRef {
    pb::BlobRef {
        hash: cobble_core::BlobHash::of(bytes).0.to_vec(),
        size: bytes.len() as u64,
        chunk_root: Vec::new(),
    }
}

async fn attach(channel: &Channel, name: &str) -> Connection {
    let attached = WorkerServiceClient::new(channel.clone())
        .register_host(pb::RegisterHostRequest {
            account: name.into(),
            host_name: name.into(),
            cpus: 4,
            ..Default::default()
        })
        .await
        .expect("attach")
        .into_inner();
    Connection::from_channel(
        channel.clone(),
        Credentials::Host {
            id: attached.host_id,
            key: attached.host_key,
        },
    )
}

/// Takes one unit; returns its lease id.
async fn lease(host: &Connection) -> String {
    let work = WorkerServiceClient::new(host.channel())
        .request_work(host.request(pb::WorkRequest {
            slots: 1,
            wait_s: 2,
        }))
        .await
        .expect("work")
        .into_inner();
    let assignment = work.assignments.first().expect("a unit");
    let manifest: pb::Manifest =
        prost::Message::decode(assignment.manifest.as_slice()).expect("manifest");
    manifest.lease_id
}

fn success(stdout: pb::BlobRef, files: Vec<pb::OutputFile>) -> Option<Outcome> {
    Some(Outcome::Success(pb::Success {
        stdout: Some(stdout),
        files,
        fuel_used: 1_000,
        elapsed_ms: 1,
        inline: Vec::new(),
    }))
}

async fn report(
    host: Connection,
    lease_id: String,
    outcome: Option<Outcome>,
) -> Result<String, tonic::Status> {
    WorkerServiceClient::new(host.channel())
        .report_result(host.request(pb::ReportRequest { lease_id, outcome }))
        .await
        .map(|r| r.into_inner().status)
}

async fn upload(
    connection: Connection,
    chunks: Vec<pb::BlobChunk>,
) -> Result<String, tonic::Status> {
    BlobServiceClient::new(connection.channel())
        .upload_blob(connection.request(tokio_stream::iter(chunks)))
        .await
        .map(|r| format!("stored {}", r.into_inner().already_present))
}

async fn submit(researcher: Connection, spec: pb::JobSpec) -> Result<String, tonic::Status> {
    JobServiceClient::new(researcher.channel())
        .submit_job(researcher.request(pb::SubmitJobRequest { spec: Some(spec) }))
        .await
        .map(|r| format!("job {}", r.into_inner().job_id))
}

async fn peers(
    host: Connection,
    lease_id: String,
    hash: Vec<u8>,
    peer_certificate: Vec<u8>,
) -> Result<String, tonic::Status> {
    WorkerServiceClient::new(host.channel())
        .get_peers(host.request(pb::PeersRequest {
            hash,
            lease_id,
            peer_port: 7711,
            peer_certificate,
        }))
        .await
        .map(|r| {
            let r = r.into_inner();
            format!(
                "{} peers, capability {} bytes",
                r.peers.len(),
                r.capability.len()
            )
        })
}

async fn total_credit(channel: &Channel) -> f64 {
    StatsServiceClient::new(channel.clone())
        .get_leaderboard(pb::LeaderboardRequest {
            kind: "users".into(),
            limit: 1_000,
        })
        .await
        .expect("leaderboard")
        .into_inner()
        .entries
        .iter()
        .map(|e| e.total_credit)
        .sum()
}

/// Runs an honest one-unit job to completion: two hosts agree.
async fn honest_job(researcher: &Connection, hosts: [&Connection; 2], module: &pb::BlobRef) -> i64 {
    let spec = super::store::one_unit_spec(module.clone(), 1_000);
    let job: i64 = submit(researcher.clone(), spec)
        .await
        .expect("an honest job")
        .trim_start_matches("job ")
        .parse()
        .expect("job id");
    for host in hosts {
        let lease_id = lease(host).await;
        let stdout = host.upload_bytes(b"the answer\n").await.expect("upload");
        assert_eq!(
            report(host.clone(), lease_id, success(stdout, vec![]))
                .await
                .expect("report"),
            "accepted"
        );
    }
    job
}

#[tokio::test]
async fn fifty_hostile_inputs_each_get_a_clear_answer_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        integrity: super::store::test_policy(),
        ..Config::defaults_in(dir.path())
    };
    let (url, security, stop, server) = serve_on_loopback(config).await;
    let (channel, researcher, module) = as_owner_with_module(&url, &security, dir.path()).await;
    let private = researcher
        .upload_bytes(b"another researcher's private input")
        .await
        .expect("private upload");
    let honest = attach(&channel, "honest").await;
    let other = attach(&channel, "other").await;
    let first = honest_job(&researcher, [&honest, &other], &module).await;
    let credit_before = total_credit(&channel).await;
    assert!(credit_before > 0.0, "the honest job earned credit");

    // A unit `honest` holds while the attacks run, and one `other` holds.
    let mut spec = super::store::one_unit_spec(module.clone(), 1_000);
    spec.split = split_range(0, 2, 1);
    let attacked: i64 = submit(researcher.clone(), spec)
        .await
        .expect("a job to attack")
        .trim_start_matches("job ")
        .parse()
        .expect("job id");
    let held = lease(&honest).await;
    let others = lease(&other).await;
    let stdout = honest.upload_bytes(b"7\n").await.expect("upload");

    let anonymous = Connection::from_channel(channel.clone(), Credentials::Anonymous);
    let with_key = |id: i64, key: &str| {
        Connection::from_channel(
            channel.clone(),
            Credentials::Host {
                id,
                key: key.into(),
            },
        )
    };
    let (honest_id, honest_key) = match &honest_credentials(&honest) {
        Some(pair) => pair.clone(),
        None => unreachable!(),
    };
    let liar = with_key(honest_id, "not-the-key");
    let wrong_token =
        Connection::from_channel(channel.clone(), Credentials::Researcher("x".repeat(32)));
    let spec_with = |change: fn(&mut pb::JobSpec)| {
        let mut spec = super::store::one_unit_spec(module.clone(), 1_000);
        change(&mut spec);
        spec
    };
    let chunk = |expected: Option<pb::BlobRef>, data: &[u8]| pb::BlobChunk {
        expected,
        data: data.to_vec(),
    };
    let file = |name: &str| pb::OutputFile {
        name: name.into(),
        blob: Some(stdout.clone()),
    };
    let (h, r, o) = (honest.clone(), researcher.clone(), other.clone());
    let heartbeat = |c: Connection| async move {
        WorkerServiceClient::new(c.channel())
            .heartbeat(c.request(pb::HeartbeatRequest::default()))
            .await
            .map(|_| "ok".to_string())
    };
    let has = |c: Connection, hashes: Vec<Vec<u8>>| async move {
        BlobServiceClient::new(c.channel())
            .has_blobs(c.request(pb::HasBlobsRequest { hashes }))
            .await
            .map(|r| format!("{} missing", r.into_inner().missing.len()))
    };
    let get = |c: Connection, hash: Vec<u8>| async move {
        let mut stream = BlobServiceClient::new(c.channel())
            .get_blob(c.request(pb::GetBlobRequest { hash }))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
        Ok("read".to_string())
    };
    let seed = |c: Connection, hash: Vec<u8>, have: Vec<u8>| async move {
        WorkerServiceClient::new(c.channel())
            .get_seed_chunk(c.request(pb::SeedChunkRequest {
                hash,
                have,
                peers_stalled: true,
            }))
            .await
            .map(|_| "chunk".to_string())
    };
    let big = vec![0u8; 2_000];
    let cases = vec![
        // Credentials.
        case(
            "no credentials",
            Code::Unauthenticated,
            "missing",
            heartbeat(anonymous.clone()),
        ),
        case(
            "a wrong host key",
            Code::Unauthenticated,
            "",
            heartbeat(liar.clone()),
        ),
        case(
            "another host's id with my key",
            Code::Unauthenticated,
            "",
            heartbeat(with_key(honest_id + 1, &honest_key)),
        ),
        case(
            "a host id that is no number",
            Code::Unauthenticated,
            "host id",
            {
                let c = anonymous.clone();
                async move {
                    let mut request = tonic::Request::new(pb::HeartbeatRequest::default());
                    request
                        .metadata_mut()
                        .insert("x-cobble-host", "one".parse().expect("ascii"));
                    request
                        .metadata_mut()
                        .insert("x-cobble-host-key", "k".parse().expect("ascii"));
                    WorkerServiceClient::new(c.channel())
                        .heartbeat(request)
                        .await
                        .map(|_| "ok".into())
                }
            },
        ),
        case(
            "a host id that does not exist",
            Code::Unauthenticated,
            "",
            heartbeat(with_key(999_999, &honest_key)),
        ),
        case(
            "submit without a token",
            Code::Unauthenticated,
            "researcher token",
            submit(anonymous.clone(), spec_with(|_| {})),
        ),
        case(
            "submit with a wrong token",
            Code::Unauthenticated,
            "unknown researcher token",
            submit(wrong_token.clone(), spec_with(|_| {})),
        ),
        case(
            "a host submits a job",
            Code::Unauthenticated,
            "researcher token",
            submit(h.clone(), spec_with(|_| {})),
        ),
        case(
            "download without credentials",
            Code::Unauthenticated,
            "",
            get(anonymous.clone(), module.hash.clone()),
        ),
        case(
            "results of a job without a token",
            Code::Unauthenticated,
            "",
            {
                let c = anonymous.clone();
                async move {
                    JobServiceClient::new(c.channel())
                        .get_job_results(c.request(pb::JobRequest { job_id: first }))
                        .await
                        .map(|_| "results".into())
                }
            },
        ),
        // The tracker vouches only for the blobs of a unit the host holds.
        case(
            "peers for a blob the host's unit does not need",
            Code::PermissionDenied,
            "does not need",
            peers(h.clone(), held.clone(), vec![5; 32], vec![1; 32]),
        ),
        case(
            "peers under another host's lease",
            Code::PermissionDenied,
            "not this host's",
            peers(h.clone(), others.clone(), module.hash.clone(), vec![1; 32]),
        ),
        case(
            "peers asked without a certificate of one's own",
            Code::Ok,
            "0 peers, capability 0 bytes",
            peers(h.clone(), held.clone(), module.hash.clone(), vec![]),
        ),
        case(
            "peers for the module of one's own unit",
            Code::Ok,
            "capability 144 bytes",
            peers(h.clone(), held.clone(), module.hash.clone(), vec![1; 32]),
        ),
        // Leases and reports.
        case(
            "a report for a lease that never existed",
            Code::NotFound,
            "lease",
            report(
                h.clone(),
                "no-such-lease".into(),
                success(stdout.clone(), vec![]),
            ),
        ),
        case(
            "a report for another host's lease",
            Code::PermissionDenied,
            "",
            report(h.clone(), others.clone(), success(stdout.clone(), vec![])),
        ),
        case(
            "a report with no outcome",
            Code::InvalidArgument,
            "outcome",
            report(h.clone(), held.clone(), None),
        ),
        case(
            "a report naming an output never uploaded",
            Code::InvalidArgument,
            "",
            report(
                h.clone(),
                held.clone(),
                success(blob_ref(b"never uploaded"), vec![]),
            ),
        ),
        case(
            "a report whose output hash is not 32 bytes",
            Code::InvalidArgument,
            "32 bytes",
            report(
                h.clone(),
                held.clone(),
                success(
                    pb::BlobRef {
                        hash: vec![1, 2, 3],
                        size: 3,
                        chunk_root: vec![],
                    },
                    vec![],
                ),
            ),
        ),
        case(
            "an output file named ../escape",
            Code::InvalidArgument,
            "",
            report(
                h.clone(),
                held.clone(),
                success(stdout.clone(), vec![file("../escape")]),
            ),
        ),
        case(
            "an output file with an absolute name",
            Code::InvalidArgument,
            "",
            report(
                h.clone(),
                held.clone(),
                success(stdout.clone(), vec![file("/etc/passwd")]),
            ),
        ),
        case(
            "an output file listed twice",
            Code::InvalidArgument,
            "",
            report(
                h.clone(),
                held.clone(),
                success(stdout.clone(), vec![file("a"), file("a")]),
            ),
        ),
        // Uploads.
        case(
            "an upload with no header",
            Code::InvalidArgument,
            "first chunk",
            upload(r.clone(), vec![chunk(None, b"data")]),
        ),
        case(
            "an empty upload stream",
            Code::InvalidArgument,
            "empty upload",
            upload(r.clone(), vec![]),
        ),
        case(
            "an upload longer than declared",
            Code::InvalidArgument,
            "longer",
            upload(
                r.clone(),
                vec![chunk(
                    Some(pb::BlobRef {
                        size: 4,
                        ..blob_ref(b"data")
                    }),
                    b"data and more",
                )],
            ),
        ),
        case(
            "an upload shorter than declared",
            Code::InvalidArgument,
            "",
            upload(
                r.clone(),
                vec![chunk(
                    Some(pb::BlobRef {
                        size: 100,
                        ..blob_ref(b"data")
                    }),
                    b"data",
                )],
            ),
        ),
        case(
            "an upload whose bytes do not match its hash",
            Code::InvalidArgument,
            "does not match",
            upload(
                r.clone(),
                vec![chunk(Some(blob_ref(b"what I say")), b"what I did")],
            ),
        ),
        case(
            "an upload larger than the coordinator takes",
            Code::ResourceExhausted,
            "limit",
            upload(
                r.clone(),
                vec![chunk(
                    Some(pb::BlobRef {
                        size: 1 << 50,
                        ..blob_ref(b"x")
                    }),
                    b"x",
                )],
            ),
        ),
        case(
            "a host upload larger than its unit allows",
            Code::ResourceExhausted,
            "1000-byte limit",
            upload(h.clone(), vec![chunk(Some(blob_ref(&big)), &big)]),
        ),
        case(
            "a host that holds no unit uploads",
            Code::PermissionDenied,
            "units they hold",
            {
                let idle = attach(&channel, "idle").await;
                upload(
                    idle,
                    vec![chunk(Some(blob_ref(b"free storage")), b"free storage")],
                )
            },
        ),
        case(
            "HasBlobs with 10,001 hashes",
            Code::InvalidArgument,
            "at most 10000",
            has(r.clone(), vec![vec![7; 32]; 10_001]),
        ),
        case(
            "HasBlobs with a 3-byte hash",
            Code::InvalidArgument,
            "32 bytes",
            has(r.clone(), vec![vec![7; 3]]),
        ),
        case(
            "GetBlob of a hash nobody stored",
            Code::NotFound,
            "not stored",
            get(r.clone(), vec![9; 32]),
        ),
        case(
            "a host reads another job's data by hash",
            Code::PermissionDenied,
            "not the module or an input",
            get(h.clone(), private.hash.clone()),
        ),
        case(
            "a host asks for the chunk list of another job's data",
            Code::PermissionDenied,
            "not the module or an input",
            {
                let c = h.clone();
                let hash = private.hash.clone();
                async move {
                    WorkerServiceClient::new(c.channel())
                        .get_chunk_list(c.request(pb::ChunkListRequest { hash }))
                        .await
                        .map(|_| "list".into())
                }
            },
        ),
        case(
            "a host asks the super-seed for another job's data",
            Code::PermissionDenied,
            "not the module or an input",
            seed(h.clone(), private.hash.clone(), vec![0]),
        ),
        case(
            "GetBlob with a malformed hash",
            Code::InvalidArgument,
            "32 bytes",
            get(h.clone(), vec![9; 5]),
        ),
        case(
            "a seed chunk with a chunk map of the wrong length",
            Code::InvalidArgument,
            "one bit",
            seed(h.clone(), module.hash.clone(), vec![0; 99]),
        ),
        // Job specs sent straight over gRPC, past the CLI's checks.
        case(
            "an empty spec",
            Code::InvalidArgument,
            "",
            submit(r.clone(), pb::JobSpec::default()),
        ),
        case(
            "a quorum of zero",
            Code::InvalidArgument,
            "quorum",
            submit(
                r.clone(),
                spec_with(|s| s.replication = replication(0, 0, 0)),
            ),
        ),
        case(
            "a quorum of a thousand",
            Code::InvalidArgument,
            "",
            submit(
                r.clone(),
                spec_with(|s| s.replication = replication(1000, 1000, 1000)),
            ),
        ),
        case(
            "a range that ends before it starts",
            Code::InvalidArgument,
            "",
            submit(r.clone(), spec_with(|s| s.split = split_range(10, 0, 1))),
        ),
        case(
            "a billion units",
            Code::InvalidArgument,
            "units",
            submit(
                r.clone(),
                spec_with(|s| s.split = split_range(0, 1_000_000_000, 1)),
            ),
        ),
        case(
            "a negative step",
            Code::InvalidArgument,
            "",
            submit(r.clone(), spec_with(|s| s.split = split_range(0, 10, -1))),
        ),
        case(
            "no fuel",
            Code::InvalidArgument,
            "fuel",
            submit(
                r.clone(),
                spec_with(|s| {
                    s.limits = Some(pb::Limits {
                        fuel: 0,
                        memory_mib: 16,
                        deadline_s: 60,
                        max_output_bytes: 1000,
                    })
                }),
            ),
        ),
        case(
            "max_output_bytes of 2^64-1",
            Code::InvalidArgument,
            "max_output_bytes",
            submit(
                r.clone(),
                spec_with(|s| {
                    s.limits = Some(pb::Limits {
                        fuel: 1000,
                        memory_mib: 16,
                        deadline_s: 60,
                        max_output_bytes: u64::MAX,
                    })
                }),
            ),
        ),
        case(
            "an input named ../../etc/passwd",
            Code::InvalidArgument,
            "",
            submit(
                r.clone(),
                spec_with(|s| {
                    s.inputs = vec![pb::NamedBlob {
                        name: "../../etc/passwd".into(),
                        blob: s.module.clone(),
                    }]
                }),
            ),
        ),
        case(
            "an input with an absolute name",
            Code::InvalidArgument,
            "",
            submit(
                r.clone(),
                spec_with(|s| {
                    s.inputs = vec![pb::NamedBlob {
                        name: "/etc/passwd".into(),
                        blob: s.module.clone(),
                    }]
                }),
            ),
        ),
        case(
            "an input name with a NUL byte",
            Code::InvalidArgument,
            "",
            submit(
                r.clone(),
                spec_with(|s| {
                    s.inputs = vec![pb::NamedBlob {
                        name: "a\0b".into(),
                        blob: s.module.clone(),
                    }]
                }),
            ),
        ),
        case(
            "a module nobody uploaded",
            Code::InvalidArgument,
            "",
            submit(
                r.clone(),
                spec_with(|s| s.module = Some(blob_ref(b"\0asm not uploaded"))),
            ),
        ),
        case(
            "a job name of 10,000 characters",
            Code::InvalidArgument,
            "name",
            submit(r.clone(), spec_with(|s| s.name = "n".repeat(10_000))),
        ),
        case(
            "a module signature of 3 bytes",
            Code::InvalidArgument,
            "64 bytes",
            submit(r.clone(), spec_with(|s| s.module_signature = vec![1, 2, 3])),
        ),
        case(
            "cancel a job that does not exist",
            Code::NotFound,
            "no job",
            {
                let c = r.clone();
                async move {
                    JobServiceClient::new(c.channel())
                        .cancel_job(c.request(pb::JobRequest { job_id: 424_242 }))
                        .await
                        .map(|_| "cancelled".into())
                }
            },
        ),
        // A report that is repeated is answered, not applied twice.
        case(
            "the same report twice (first)",
            Code::Ok,
            "accepted",
            report(h.clone(), held.clone(), success(stdout.clone(), vec![])),
        ),
        case(
            "the same report twice (again)",
            Code::Ok,
            "duplicate",
            report(h.clone(), held.clone(), success(stdout.clone(), vec![])),
        ),
        case(
            "a client error report from the other host",
            Code::Ok,
            "accepted",
            report(
                o.clone(),
                others.clone(),
                Some(Outcome::ClientError(pb::ClientError {
                    kind: "trap".into(),
                    message: "x".repeat(100_000),
                })),
            ),
        ),
    ];
    let mut failures = Vec::new();
    let count = cases.len();
    for case in cases {
        let answer = case.call.await;
        let (code, message) = match &answer {
            Ok(reply) => (Code::Ok, reply.clone()),
            Err(status) => (status.code(), status.message().to_string()),
        };
        eprintln!(
            "{:<55} {:?}: {}",
            case.name,
            code,
            message.chars().take(120).collect::<String>()
        );
        if code != case.code || !message.contains(case.words) {
            failures.push(format!(
                "{}: expected {:?} with {:?}, got {code:?}: {message}",
                case.name, case.code, case.words
            ));
        }
        if code == Code::Internal || code == Code::Unknown {
            failures.push(format!(
                "{}: an internal error is no clear answer",
                case.name
            ));
        }
    }
    assert!(count >= 40, "the corpus has {count} cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Nothing lost: the credit granted before is unchanged by the attacks
    // (the accepted reports above were of a quorum-2 job still waiting), and
    // an honest job still completes and earns.
    assert_eq!(total_credit(&channel).await, credit_before);
    JobServiceClient::new(channel.clone())
        .cancel_job(researcher.request(pb::JobRequest { job_id: attacked }))
        .await
        .expect("cancel the attacked job");
    let (fresh, second) = (
        attach(&channel, "fresh").await,
        attach(&channel, "second").await,
    );
    let job = honest_job(&researcher, [&fresh, &second], &module).await;
    let status = JobServiceClient::new(channel.clone())
        .get_job_status(pb::JobRequest { job_id: job })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.state, "done", "{status:?}");
    assert!(total_credit(&channel).await > credit_before);
    stop.send(()).ok();
    server.await.expect("server task").expect("clean shutdown");
}

/// The host's own id and key, to forge requests from its neighbours.
fn honest_credentials(connection: &Connection) -> Option<(i64, String)> {
    let request = connection.request(());
    let id = request
        .metadata()
        .get("x-cobble-host")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    let key = request
        .metadata()
        .get("x-cobble-host-key")?
        .to_str()
        .ok()?
        .to_string();
    Some((id, key))
}
