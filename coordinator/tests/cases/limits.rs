//! Abuse limits over real sockets: one address that floods the
//! coordinator with bad credentials, junk and idle connections is refused,
//! while an honest host on another address keeps being served.

use super::grpc::{channel_from, serve_on_loopback};
use cobble_client::{Connection, Credentials};
use cobble_coordinator::Config;
use cobble_coordinator::limits::LimitConfig;
use cobble_proto::v1::{self as pb, worker_service_client::WorkerServiceClient};
use tonic::Code;

#[tokio::test]
async fn a_flooding_address_is_refused_and_an_honest_host_is_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config {
        limits: LimitConfig {
            max_requests_per_ip_per_sec: 20,
            max_registrations_per_ip_per_min: 3,
            max_auth_failures_per_ip_per_min: 5,
            max_requests_per_host_per_sec: 10,
            max_connections_per_ip: 4,
            max_streams_per_connection: 16,
        },
        ..Config::defaults_in(dir.path())
    };
    let (url, security, stop, server) = serve_on_loopback(config).await;
    let honest_channel = channel_from(&url, &security, "127.0.0.3").await;
    let attached = WorkerServiceClient::new(honest_channel.clone())
        .register_host(pb::RegisterHostRequest {
            account: "honest".into(),
            host_name: "box".into(),
            ..Default::default()
        })
        .await
        .expect("attach")
        .into_inner();
    let honest = Connection::from_channel(
        honest_channel,
        Credentials::Host {
            id: attached.host_id,
            key: attached.host_key,
        },
    );
    let heartbeat = |connection: &Connection| {
        let request = connection.request(pb::HeartbeatRequest::default());
        let mut client = WorkerServiceClient::new(connection.channel());
        async move { client.heartbeat(request).await.map(|_| ()) }
    };
    heartbeat(&honest).await.expect("an honest heartbeat");

    // Mallory registers too often: the fourth in a minute is refused.
    let mallory_channel = channel_from(&url, &security, "127.0.0.2").await;
    let mut registered = 0;
    let mut refused = None;
    for index in 0..5 {
        let result = WorkerServiceClient::new(mallory_channel.clone())
            .register_host(pb::RegisterHostRequest {
                account: format!("sock{index}"),
                host_name: "box".into(),
                ..Default::default()
            })
            .await;
        match result {
            Ok(_) => registered += 1,
            Err(status) => refused = Some(status),
        }
    }
    assert_eq!(registered, 3);
    let refused = refused.expect("a refusal");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("per minute"), "{refused:?}");

    // Then guesses host keys: after five failures the address is refused
    // everything, before any credential is even looked at.
    let guesser = Connection::from_channel(
        mallory_channel.clone(),
        Credentials::Host {
            id: attached.host_id,
            key: "guess".into(),
        },
    );
    let mut codes = Vec::new();
    for _ in 0..12 {
        codes.push(heartbeat(&guesser).await.expect_err("a wrong key").code());
    }
    assert_eq!(codes[0], Code::Unauthenticated);
    assert_eq!(codes.last(), Some(&Code::ResourceExhausted), "{codes:?}");
    let boxed = WorkerServiceClient::new(mallory_channel.clone())
        .get_project_info(pb::ProjectInfoRequest {})
        .await
        .expect_err("the penalty box refuses even public calls");
    assert!(
        boxed.message().contains("failed authentication"),
        "{boxed:?}"
    );

    // And floods with idle connections: past four, its connections are
    // closed at once.
    let mut idle = Vec::new();
    for _ in 0..10 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("address"))
            .expect("bind");
        if let Ok(stream) = socket
            .connect(url.trim_start_matches("https://").parse().expect("address"))
            .await
        {
            idle.push(stream);
        }
    }
    let security_from_mallory = cobble_client::Security {
        local_address: Some("127.0.0.2".parse().expect("ip")),
        ..security.clone()
    };
    assert!(
        cobble_client::connect(&url, &security_from_mallory)
            .await
            .is_err(),
        "a fifth connection from the flooding address"
    );

    // Through all of it, the honest host is served.
    heartbeat(&honest).await.expect("still served");
    let work = WorkerServiceClient::new(honest.channel())
        .request_work(honest.request(pb::WorkRequest {
            slots: 1,
            wait_s: 0,
        }))
        .await;
    assert!(work.is_ok(), "{work:?}");
    // A host that calls too fast is told to slow down.
    let mut slowed = false;
    for _ in 0..40 {
        if let Err(status) = heartbeat(&honest).await {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert!(status.message().contains("slow down"), "{status:?}");
            slowed = true;
            break;
        }
    }
    assert!(slowed, "40 heartbeats at once were all served");
    drop(idle);
    stop.send(()).ok();
    server.await.expect("server task").expect("clean shutdown");
}
