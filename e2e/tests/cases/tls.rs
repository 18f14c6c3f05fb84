//! TLS on every link, as volunteers and researchers meet it: a worker pins
//! a self-signed project's certificate on first attach and refuses a
//! changed one, saying how to re-pin; the CLI verifies against a given
//! fingerprint or the system's roots; plaintext is allowed only to this
//! machine; SIGHUP swaps the certificate without dropping connections.

use cobble_e2e::{Coordinator, start_worker, start_worker_with, wait_until};
use cobble_proto::v1::{self as pb, worker_service_client::WorkerServiceClient};
use std::time::Duration;

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_worker_pins_the_certificate_and_refuses_a_changed_one() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let first = Coordinator::start(dir);
    let original = first.tls_fingerprint.clone().expect("a TLS coordinator");
    assert!(first.url.starts_with("https://"), "{}", first.url);
    let job = first.submit_tiny_primes_job(dir);
    let worker_dir = dir.join("ada");
    let worker = start_worker("cobble-worker", &first, &worker_dir, "ada");
    // The job's quorum is two: a second volunteer.
    let bob = start_worker("cobble-worker", &first, &dir.join("bob"), "bob");
    let (done, status) = first.wait_done(&job, Duration::from_secs(120));
    assert!(done, "{status}\n{}", worker.log_text());
    let attachment = cobble_worker::attach::load(&worker_dir)
        .expect("attach.toml")
        .expect("attached");
    assert_eq!(
        attachment.tls_fingerprint.as_deref(),
        Some(original.as_str())
    );

    // The researcher's CLI: a wrong fingerprint, or none for a self-signed
    // certificate, is refused, with the fingerprint shown to pin.
    let wrong = "ab".repeat(32);
    let refused = std::process::Command::new(cobble_e2e::binary("cobble"))
        .args(["--coordinator", &first.url, "--tls-fingerprint", &wrong])
        .args(["leaderboard"])
        .output()
        .expect("cobble");
    assert!(!refused.status.success());
    let text = stderr_of(&refused);
    assert!(text.contains("certificate changed"), "{text}");
    assert!(text.contains(&original), "{text}");
    let unpinned = std::process::Command::new(cobble_e2e::binary("cobble"))
        .args(["--coordinator", &first.url, "leaderboard"])
        .env_remove("COBBLE_TLS_FINGERPRINT")
        .output()
        .expect("cobble");
    let text = stderr_of(&unpinned);
    assert!(!unpinned.status.success(), "{text}");
    assert!(text.contains("not trusted"), "{text}");
    assert!(
        text.contains(&format!("--tls-fingerprint {original}")),
        "{text}"
    );
    // Plaintext gRPC to the TLS port: an error, not a hang.
    let plain = first.address();
    let output = std::process::Command::new(cobble_e2e::binary("cobble"))
        .args(["--coordinator", &format!("http://{plain}"), "leaderboard"])
        .output()
        .expect("cobble");
    assert!(!output.status.success(), "plaintext to a TLS server");

    // The coordinator comes back on the same address and data with another
    // certificate, as an attacker in the middle would show.
    let address = first.address();
    let data_dir = first.data_dir.clone();
    drop(first);
    std::fs::remove_file(data_dir.join("tls.crt")).expect("old certificate");
    std::fs::remove_file(data_dir.join("tls.key")).expect("old key");
    let second = Coordinator::start_at(dir, &data_dir, &["--listen", &address]);
    let replaced = second.tls_fingerprint.clone().expect("TLS");
    assert_ne!(replaced, original);
    let refused = wait_until(Duration::from_secs(60), || {
        worker.log_text().contains("certificate changed")
    });
    assert!(refused, "{}", worker.log_text());
    drop(worker);
    drop(bob);

    // Restarted, the worker will not attach; the message says what to do.
    let mut restarted = start_worker("cobble-worker", &second, &worker_dir, "ada");
    let exited = wait_until(Duration::from_secs(30), || {
        matches!(restarted.child.try_wait(), Ok(Some(_)))
    });
    let log = restarted.log_text();
    assert!(exited, "the worker kept running: {log}");
    assert!(log.contains("certificate changed"), "{log}");
    assert!(
        log.contains(&format!("--tls-fingerprint {replaced}")),
        "{log}"
    );

    // Told the new fingerprint, it re-pins and computes again.
    let job = second.submit_tiny_primes_job(dir);
    let repinned: Vec<_> = ["ada", "bob"]
        .into_iter()
        .map(|name| {
            start_worker_with(
                "cobble-worker",
                &second,
                &dir.join(name),
                name,
                &["--tls-fingerprint", &replaced],
            )
        })
        .collect();
    let (done, status) = second.wait_done(&job, Duration::from_secs(120));
    assert!(done, "{status}\n{}", repinned[0].log_text());
    let attachment = cobble_worker::attach::load(&worker_dir)
        .expect("attach.toml")
        .expect("attached");
    assert_eq!(
        attachment.tls_fingerprint.as_deref(),
        Some(replaced.as_str())
    );
}

#[test]
fn sighup_swaps_the_certificate_without_dropping_connections() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let names = ["localhost".to_string()];
    let pair = |name: &str| {
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        let identity =
            cobble_tls::Identity::load_or_create(&cert, &key, &names).expect("certificate");
        (cert, key, identity.fingerprint())
    };
    let (a_cert, a_key, a) = pair("a");
    let (b_cert, b_key, b) = pair("b");
    let (live_cert, live_key) = (dir.join("live.crt"), dir.join("live.key"));
    std::fs::copy(&a_cert, &live_cert).expect("copy");
    std::fs::copy(&a_key, &live_key).expect("copy");
    let coordinator = Coordinator::start_with(
        dir,
        &[
            "--tls-cert",
            live_cert.to_str().expect("utf-8"),
            "--tls-key",
            live_key.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(coordinator.tls_fingerprint, Some(a.to_hex()));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let connect = |fingerprint: cobble_tls::Fingerprint| {
        let security = cobble_client::Security::pinned(Some(fingerprint), false);
        let url = coordinator.url.clone();
        runtime.block_on(async move { cobble_client::connect(&url, &security).await })
    };
    let info = |channel: &tonic::transport::Channel| {
        let mut client = WorkerServiceClient::new(channel.clone());
        runtime.block_on(async move { client.get_project_info(pb::ProjectInfoRequest {}).await })
    };
    let open = connect(a).expect("pinned to the first certificate");
    info(&open).expect("a call");

    std::fs::copy(&b_cert, &live_cert).expect("copy");
    std::fs::copy(&b_key, &live_key).expect("copy");
    let hangup = |pid: u32| {
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    };
    hangup(coordinator.process.child.id());
    assert!(
        coordinator.process.wait_for_log(
            "reloaded the TLS certificate",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        coordinator.process.log_text()
    );
    info(&open).expect("the open connection survives the reload");
    let error = connect(a).expect_err("the old certificate is gone");
    assert!(error.to_string().contains("certificate changed"), "{error}");
    info(&connect(b).expect("the new certificate")).expect("a call");

    // A broken file on the next reload leaves the working certificate.
    std::fs::write(&live_cert, "not a certificate").expect("write");
    hangup(coordinator.process.child.id());
    assert!(
        coordinator.process.wait_for_log(
            "cannot reload the TLS certificate",
            1,
            Duration::from_secs(10)
        ),
        "{}",
        coordinator.process.log_text()
    );
    info(&connect(b).expect("still the new certificate")).expect("a call");
}

#[test]
fn plaintext_only_to_this_machine() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // A coordinator behind a TLS-terminating proxy would serve plaintext;
    // on loopback the worker and the CLI accept it.
    let coordinator = Coordinator::start_with(dir, &["--insecure-plaintext"]);
    assert!(
        coordinator.url.starts_with("http://"),
        "{}",
        coordinator.url
    );
    assert_eq!(coordinator.tls_fingerprint, None);
    let job = coordinator.submit_tiny_primes_job(dir);
    let worker = start_worker("cobble-worker", &coordinator, &dir.join("ada"), "ada");
    let _bob = start_worker("cobble-worker", &coordinator, &dir.join("bob"), "bob");
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(120));
    assert!(done, "{status}\n{}", worker.log_text());

    // To another machine, the CLI and the worker refuse before sending a
    // byte, and say how to allow it.
    let refused = std::process::Command::new(cobble_e2e::binary("cobble"))
        .args(["--coordinator", "http://192.0.2.1:7710", "leaderboard"])
        .output()
        .expect("cobble");
    let text = stderr_of(&refused);
    assert!(!refused.status.success());
    assert!(text.contains("refusing plaintext"), "{text}");
    assert!(text.contains("--insecure-plaintext"), "{text}");
    let mut worker = std::process::Command::new(cobble_e2e::binary("cobble-worker"))
        .args([
            "run",
            "--coordinator",
            "http://192.0.2.1:7710",
            "--data-dir",
        ])
        .arg(dir.join("bob"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("worker");
    let exited = wait_until(Duration::from_secs(20), || {
        matches!(worker.try_wait(), Ok(Some(_)))
    });
    if !exited {
        worker.kill().ok();
    }
    let output = worker.wait_with_output().expect("worker output");
    let text = stderr_of(&output);
    assert!(exited, "the worker kept trying: {text}");
    assert!(text.contains("refusing plaintext"), "{text}");
}
