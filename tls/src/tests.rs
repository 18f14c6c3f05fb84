use super::*;
use tokio::net::TcpListener;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[test]
fn fingerprints_parse_as_operators_copy_them() {
    let fingerprint = Fingerprint::of(b"certificate");
    let hex = fingerprint.to_hex();
    assert_eq!(hex.parse::<Fingerprint>().expect("plain"), fingerprint);
    assert_eq!(
        hex.to_uppercase().parse::<Fingerprint>().expect("upper"),
        fingerprint
    );
    let colons = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    assert_eq!(colons.parse::<Fingerprint>().expect("colons"), fingerprint);
    for bad in [
        "",
        "abc",
        &hex[2..],
        &format!("{hex}00"),
        &hex.replace('a', "g"),
    ] {
        let error = bad.parse::<Fingerprint>().expect_err(bad);
        assert!(error.to_string().contains("64 hex digits"), "{error}");
    }
}

#[test]
fn a_self_signed_certificate_is_made_once_private_and_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let names = vec!["localhost".to_string()];
    let first = Identity::load_or_create(&cert, &key, &names).expect("create");
    let again = Identity::load_or_create(&cert, &key, &names).expect("load");
    assert_eq!(first.fingerprint(), again.fingerprint());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key).expect("key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A key that belongs to another certificate is refused, not served.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).expect("dir");
    Identity::load_or_create(&other.join("tls.crt"), &other.join("tls.key"), &names)
        .expect("another pair");
    let error = Identity::from_pem_files(&cert, &other.join("tls.key")).expect_err("mismatch");
    assert!(error.to_string().contains("do not fit"), "{error}");
    std::fs::write(dir.path().join("empty.crt"), "nothing here").expect("write");
    let error = Identity::from_pem_files(&dir.path().join("empty.crt"), &key).expect_err("no cert");
    assert!(error.to_string().contains("no PEM certificate"), "{error}");
}

/// A health service over TLS on a random port, serving `cert`.
async fn serve(cert: Arc<ServerCert>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let config = cert.config(false).expect("server config");
    let (incoming, _acceptor) = accept(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        config,
    );
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(incoming)
            .await
            .ok();
    });
    (address, server)
}

async fn check(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

async fn open(
    address: &str,
    trust: Trust,
    seen: &Seen,
) -> Result<tonic::transport::Channel, String> {
    let config = client_config(trust, seen.clone(), None).expect("client config");
    connect_channel(address, config, None, |e| e)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn pinning_first_use_and_system_roots_over_real_sockets() {
    let names = vec!["localhost".to_string()];
    let identity = Identity::self_signed(&names).expect("identity");
    let fingerprint = identity.fingerprint();
    let cert = ServerCert::new(&identity).expect("server cert");
    let (address, server) = serve(cert.clone()).await;

    // Pinned to the right certificate: connects and calls.
    let seen = Seen::default();
    let channel = open(&address, Trust::Pinned(fingerprint), &seen)
        .await
        .expect("pinned");
    check(channel.clone()).await.expect("call over TLS");

    // No authority vouches for a self-signed certificate: refused with the
    // fingerprint to pin.
    let error = open(&address, Trust::System, &Seen::default())
        .await
        .expect_err("self-signed under system trust");
    assert!(error.contains("not trusted"), "{error}");
    assert!(error.contains(&fingerprint.to_hex()), "{error}");

    // Trust on first use accepts it and says what to pin.
    let first = Seen::default();
    let channel_first = open(&address, Trust::FirstUse, &first)
        .await
        .expect("first use");
    check(channel_first).await.expect("call");
    assert_eq!(first.untrusted(), Some(fingerprint));

    // The operator replaces the certificate (SIGHUP): the open connection
    // keeps working; a client pinned to the old one is refused, told both
    // fingerprints and how to re-pin.
    let replacement = Identity::self_signed(&names).expect("new identity");
    cert.replace(&replacement).expect("reload");
    assert_eq!(cert.fingerprint(), replacement.fingerprint());
    check(channel)
        .await
        .expect("an open connection survives a reload");
    let error = open(&address, Trust::Pinned(fingerprint), &Seen::default())
        .await
        .expect_err("changed certificate");
    assert!(error.contains("certificate changed"), "{error}");
    assert!(error.contains(&fingerprint.to_hex()), "{error}");
    assert!(
        error.contains(&format!("--tls-fingerprint {}", replacement.fingerprint())),
        "{error}"
    );
    server.abort();
}

#[tokio::test]
async fn silent_and_junk_connections_do_not_keep_a_client_out() {
    let identity = Identity::self_signed(&["localhost".to_string()]).expect("identity");
    let fingerprint = identity.fingerprint();
    let (address, server) = serve(ServerCert::new(&identity).expect("cert")).await;
    use tokio::io::AsyncWriteExt;
    let mut idle = Vec::new();
    for i in 0..50 {
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        if i % 2 == 0 {
            stream
                .write_all(b"GET / HTTP/1.1\r\n\r\nnot a handshake")
                .await
                .ok();
        }
        idle.push(stream);
    }
    let channel = open(&address, Trust::Pinned(fingerprint), &Seen::default())
        .await
        .expect("an honest client gets through");
    check(channel).await.expect("call");
    // Plaintext gRPC to a TLS port gets an error, not a hang.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(5));
    if let Ok(channel) = plain.connect().await {
        check(channel).await.expect_err("plaintext to a TLS server");
    }
    server.abort();
}
