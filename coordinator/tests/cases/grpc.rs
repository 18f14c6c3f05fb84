//! The real gRPC server on a loopback port: the standard health and
//! reflection services answer, so ordinary gRPC tools can talk to it, and
//! bogus credentials are refused with a clear status.

use cobble_client::{Connection, Credentials};
use cobble_coordinator::Config;
use cobble_proto::v1::{
    self as pb, job_service_client::JobServiceClient, worker_service_client::WorkerServiceClient,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

type Server = tokio::task::JoinHandle<Result<(), cobble_coordinator::Error>>;

/// The real server over TLS on a random loopback port: its URL, how to
/// reach it (pinned to its self-signed certificate), the switch that stops
/// it, and its task.
type Served = (
    String,
    cobble_client::Security,
    tokio::sync::oneshot::Sender<()>,
    Server,
);

/// A channel to the server, the project's first researcher on it, and a
/// pretend module that researcher uploaded.
pub(super) async fn as_owner_with_module(
    url: &str,
    security: &cobble_client::Security,
    data_dir: &std::path::Path,
) -> (tonic::transport::Channel, Connection, pb::BlobRef) {
    let channel = cobble_client::connect(url, security)
        .await
        .expect("connect");
    let token = std::fs::read_to_string(data_dir.join("researcher.token")).expect("token");
    let researcher = Connection::from_channel(
        channel.clone(),
        Credentials::Researcher(token.trim().into()),
    );
    let module = researcher
        .upload_bytes(b"\0asm\x01\0\0\0 pretend module")
        .await
        .expect("module");
    (channel, researcher, module)
}

pub(super) async fn serve_on_loopback(config: Config) -> Served {
    let store = cobble_coordinator::start(&config).await.expect("start");
    serve_store(store, config).await
}

pub(super) async fn serve_store(store: cobble_coordinator::store::Store, config: Config) -> Served {
    let tls = cobble_coordinator::server_tls(&config)
        .expect("certificate")
        .expect("TLS is the default");
    let security = cobble_client::Security::pinned(Some(tls.fingerprint()), false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        cobble_coordinator::serve(store, &config, listener, Some(tls), async {
            stopped.await.ok();
        })
        .await
    });
    (url, security, stop, server)
}

#[tokio::test]
async fn health_reflection_and_auth_over_grpc() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        project_name: "grpc-test".into(),
        ..Config::defaults_in(dir.path())
    };
    let (url, security, stop, server) = serve_on_loopback(config).await;
    let channel = cobble_client::connect(&url, &security)
        .await
        .expect("connect");

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "cobble.v1.WorkerService".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("reflection answer")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in [
        "cobble.v1.WorkerService",
        "cobble.v1.JobService",
        "cobble.v1.StatsService",
        "cobble.v1.BlobService",
    ] {
        assert!(
            names.iter().any(|n| n == service),
            "{service} missing from {names:?}"
        );
    }

    let mut worker = WorkerServiceClient::new(channel.clone());
    let project = worker
        .get_project_info(pb::ProjectInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(
        (project.name.as_str(), project.signing_key.len()),
        ("grpc-test", 32)
    );
    let refused = worker
        .request_work(pb::WorkRequest {
            slots: 1,
            wait_s: 0,
        })
        .await
        .expect_err("no credentials");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut bogus = tonic::Request::new(pb::WorkRequest {
        slots: 1,
        wait_s: 0,
    });
    bogus
        .metadata_mut()
        .insert("x-cobble-host", "1".parse().expect("ascii"));
    bogus
        .metadata_mut()
        .insert("x-cobble-host-key", "forged".parse().expect("ascii"));
    let refused = worker
        .request_work(bogus)
        .await
        .expect_err("forged credentials");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("wrong host key"),
        "{}",
        refused.message()
    );

    // Researcher calls need the token; anonymous or wrong ones are refused.
    let token = std::fs::read_to_string(dir.path().join("researcher.token")).expect("token file");
    let researcher = Connection::from_channel(
        channel.clone(),
        Credentials::Researcher(token.trim().into()),
    );
    let impostor =
        Connection::from_channel(channel.clone(), Credentials::Researcher("0".repeat(32)));
    let anonymous = Connection::from_channel(channel.clone(), Credentials::Anonymous);
    for connection in [&anonymous, &impostor] {
        let refused = JobServiceClient::new(channel.clone())
            .submit_job(connection.request(pb::SubmitJobRequest::default()))
            .await
            .expect_err("submit without the token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = JobServiceClient::new(channel.clone())
            .cancel_job(connection.request(pb::JobRequest { job_id: 1 }))
            .await
            .expect_err("cancel without the token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = connection
            .upload_bytes(b"spam")
            .await
            .expect_err("upload without the token");
        assert!(
            refused.to_string().contains("researcher token"),
            "{refused}"
        );
    }
    let stored = researcher
        .upload_bytes(b"data")
        .await
        .expect("the researcher may upload");
    assert_eq!(stored.size, 4);

    // An upload that does not match its declared hash is refused and stored nowhere.
    let forged = pb::BlobChunk {
        expected: Some(pb::BlobRef {
            hash: cobble_core::BlobHash::of(b"honest").0.to_vec(),
            size: 6,
            chunk_root: Vec::new(),
        }),
        data: b"forged".to_vec(),
    };
    let refused = pb::blob_service_client::BlobServiceClient::new(channel.clone())
        .upload_blob(researcher.request(tokio_stream::iter([forged])))
        .await
        .expect_err("mismatched upload");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    // Asking about more blobs than one call answers is refused outright,
    // not answered for the first ten thousand (the rest would read as held).
    let mut blobs = pb::blob_service_client::BlobServiceClient::new(channel.clone());
    let too_many = pb::HasBlobsRequest {
        hashes: vec![vec![7u8; 32]; 50_000],
    };
    let refused = blobs
        .has_blobs(researcher.request(too_many))
        .await
        .expect_err("50,000 hashes");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("at most 10000"),
        "{}",
        refused.message()
    );
    let answered = blobs
        .has_blobs(researcher.request(pb::HasBlobsRequest {
            hashes: vec![vec![7u8; 32], stored.hash.clone()],
        }))
        .await
        .expect("a small question is answered")
        .into_inner();
    assert_eq!(answered.missing, [vec![7u8; 32]]);

    stop.send(()).ok();
    server.await.expect("server task").expect("clean shutdown");
}

/// A channel whose connections come from `source`, a loopback address of
/// our choosing: how the tests put hosts on different networks.
pub(super) async fn channel_from(
    url: &str,
    security: &cobble_client::Security,
    source: &str,
) -> tonic::transport::Channel {
    let security = cobble_client::Security {
        local_address: Some(source.parse().expect("address")),
        ..security.clone()
    };
    cobble_client::connect(url, &security)
        .await
        .expect("connect from a loopback address")
}

/// Replicas of a unit never go to two hosts on one /24 when the rule
/// applies to loopback; a unit held back only by that rule says so in the
/// job's status; a host on another network then gets it.
#[tokio::test]
async fn replicas_go_to_hosts_on_different_networks() {
    use cobble_coordinator::integrity::{NetworkRule, Policy};
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        integrity: Policy {
            network_rule: NetworkRule::All,
            ..super::store::test_policy()
        },
        ..Config::defaults_in(dir.path())
    };
    let store = cobble_coordinator::start(&config).await.expect("start");
    let job = super::store::submit(&store, 1, (2, 2, 5), 600).await;
    let (url, security, stop, server) = serve_store(store.clone(), config).await;

    let mut hosts = Vec::new();
    for (name, source) in [
        ("first", "127.0.0.2"),
        ("neighbour", "127.0.0.3"),
        ("elsewhere", "127.0.1.2"),
    ] {
        let channel = channel_from(&url, &security, source).await;
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
        let connection = Connection::from_channel(
            channel,
            Credentials::Host {
                id: attached.host_id,
                key: attached.host_key,
            },
        );
        hosts.push(connection);
    }
    let ask = |connection: &Connection| {
        let request = connection.request(pb::WorkRequest {
            slots: 4,
            wait_s: 0,
        });
        let mut client = WorkerServiceClient::new(connection.channel());
        async move {
            client
                .request_work(request)
                .await
                .expect("request work")
                .into_inner()
                .assignments
                .len()
        }
    };
    assert_eq!(ask(&hosts[0]).await, 1, "the first host gets the unit");
    assert_eq!(
        ask(&hosts[1]).await,
        0,
        "a host on the same /24 never gets the other replica"
    );
    let status = store.job_status(job).await.expect("status");
    assert_eq!(status.units_waiting_network, 1, "{status:?}");
    assert_eq!(ask(&hosts[2]).await, 1, "a host on another network gets it");
    stop.send(()).ok();
    server.await.expect("server task").expect("clean shutdown");
}

/// One caller cannot hold open more than `MAX_OPEN_UPLOADS` uploads (each
/// a socket and a file): the next is refused at once with
/// RESOURCE_EXHAUSTED, other callers are unaffected, and the caller's
/// slots come back when its stalled uploads go away.
#[tokio::test]
async fn stalled_uploads_are_capped_per_caller() {
    use cobble_coordinator::service::MAX_OPEN_UPLOADS;
    use pb::blob_service_client::BlobServiceClient;
    use tokio_stream::StreamExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::defaults_in(dir.path());
    let (url, security, stop, server) = serve_on_loopback(config).await;
    let (channel, researcher, module) = as_owner_with_module(&url, &security, dir.path()).await;
    // A host holding a unit of a job whose outputs may be 1,000 bytes.
    let spec = super::store::one_unit_spec(module, 1_000);
    JobServiceClient::new(channel.clone())
        .submit_job(researcher.request(pb::SubmitJobRequest { spec: Some(spec) }))
        .await
        .expect("submit");
    let register = |account: &str| pb::RegisterHostRequest {
        account: account.into(),
        host_name: "box".into(),
        ..Default::default()
    };
    let host_of = |attached: pb::RegisterHostResponse| {
        Connection::from_channel(
            channel.clone(),
            Credentials::Host {
                id: attached.host_id,
                key: attached.host_key,
            },
        )
    };
    let mut workers = WorkerServiceClient::new(channel.clone());
    let host = host_of(
        workers
            .register_host(register("volunteer"))
            .await
            .expect("attach")
            .into_inner(),
    );
    let idle = host_of(
        workers
            .register_host(register("idle"))
            .await
            .expect("attach")
            .into_inner(),
    );
    let work = workers
        .request_work(host.request(pb::WorkRequest {
            slots: 1,
            wait_s: 0,
        }))
        .await
        .expect("work")
        .into_inner();
    assert_eq!(work.assignments.len(), 1);
    // A host holding nothing stores nothing; a holder no more than its
    // units' outputs may be.
    let refused = idle
        .upload_bytes(b"free storage")
        .await
        .expect_err("no lease");
    assert!(refused.to_string().contains("units they hold"), "{refused}");
    let refused = host.upload_bytes(&[0; 1_001]).await.expect_err("too big");
    assert!(refused.to_string().contains("1000-byte limit"), "{refused}");

    let stall = || {
        let first = pb::BlobChunk {
            expected: Some(pb::BlobRef {
                hash: vec![9; 32],
                size: 1 << 20,
                chunk_root: Vec::new(),
            }),
            data: vec![0; 1024],
        };
        tokio_stream::iter([first]).chain(tokio_stream::pending())
    };
    let mut stalled = Vec::new();
    for _ in 0..MAX_OPEN_UPLOADS {
        let mut client = BlobServiceClient::new(channel.clone());
        let request = researcher.request(stall());
        stalled.push(tokio::spawn(
            async move { client.upload_blob(request).await },
        ));
    }
    // Until the server has counted them all, one more might slip in.
    let refused = loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let attempt = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            BlobServiceClient::new(channel.clone()).upload_blob(researcher.request(stall())),
        )
        .await;
        if let Ok(Err(status)) = attempt {
            break status;
        }
    };
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("uploads open"), "{refused:?}");

    // A host is another caller: its upload goes through.
    host.upload_bytes(b"an output")
        .await
        .expect("the host uploads");

    // The stalled uploads go away: the researcher may upload again.
    for task in &stalled {
        task.abort();
    }
    let uploaded = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match researcher.upload_bytes(b"data").await {
                Ok(blob) => break blob,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        }
    })
    .await
    .expect("the slots come back");
    assert_eq!(uploaded.size, 4);
    stop.send(()).ok();
    server.await.expect("server task").expect("clean shutdown");
}
