//! gRPC reflection for tools that discover the API: the stock Python
//! client (grpcio-reflection, which speaks only v1alpha) lists the
//! coordinator's services and fetches their descriptors. `cargo xtask
//! setup` installs grpcio and grpcio-reflection from PyPI.

use cobble_e2e::Coordinator;
use std::process::Command;

#[test]
fn the_stock_python_reflection_client_discovers_the_api() {
    let has_client = Command::new("python3")
        .args(["-c", "import grpc_reflection.v1alpha"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_client {
        eprintln!(
            "skipping: python3 with grpcio-reflection is not installed (`cargo xtask setup` installs it)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    // Plaintext on loopback: the test is about reflection, not TLS.
    let coordinator = Coordinator::start_with(dir.path(), &["--insecure-plaintext"]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/reflection_client.py"
    );
    let output = Command::new("python3")
        .arg(script)
        .arg(coordinator.address())
        .output()
        .expect("running python3");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Python client failed: {}{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    for service in [
        "cobble.v1.WorkerService",
        "cobble.v1.JobService",
        "cobble.v1.BlobService",
        "cobble.v1.StatsService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            text.contains(&format!("service {service}")),
            "{service} not listed: {text}"
        );
    }
    let descriptors: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("descriptors "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(descriptors >= 1, "no descriptors for WorkerService: {text}");
}
