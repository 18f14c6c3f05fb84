//! Peer-to-peer input delivery, measured on real processes: a coordinator
//! and N workers on loopback (N = 16 and 32), one job whose units all read
//! the same 64 MiB input. For each N it runs twice, with peer-to-peer on
//! and with `--no-peers` (coordinator-only delivery), and prints the share
//! of delivered bytes the coordinator served, the time until every worker
//! holds the input, and how the upload load spread over the workers.
//!
//! Loopback has no bandwidth limit of its own, so the links are modelled
//! with the products' own limits: the coordinator serves at most
//! COBBLE_SWARM_COORDINATOR_MBPS megabits per second (default 200, a small
//! project server) with `--max-serve-bytes-per-sec`, and each worker
//! uploads to peers at most COBBLE_SWARM_WORKER_MBPS (default 80, a home
//! connection) with `max_bytes_sec_up`. Set either to 0 for no limit.
//!
//! `cargo bench -p cobble-e2e --bench swarm` (COBBLE_SWARM_SIZES=16,32 and
//! COBBLE_SWARM_MIB=64 to change the sizes).

use cobble_core::BlobHash;
use cobble_e2e::{
    Coordinator, Process, pseudo_random_bytes, start_worker_with, wait_until, worker_status,
    write_shared_input_job,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

struct Outcome {
    /// Seconds from submission until each worker held the input.
    held_after: Vec<f64>,
    from_coordinator: u64,
    from_peers: u64,
    served: Vec<u64>,
}

/// Link speeds, in bytes per second (0: unlimited).
struct Links {
    coordinator: u64,
    worker_up: u64,
}

fn run(workers: usize, input: &[u8], peers: bool, links: &Links) -> Outcome {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator_limit = links.coordinator.to_string();
    let mut flags = cobble_e2e::ONE_ADDRESS_MANY_MACHINES.to_vec();
    flags.extend(["--max-serve-bytes-per-sec", &coordinator_limit]);
    let coordinator = Coordinator::start_with(dir, &flags);
    let upload_limit = format!("max_bytes_sec_up={}", links.worker_up);
    let mut extra = vec![
        "--slots",
        "1",
        "--pref",
        "work_buf_min_units=0",
        "--pref",
        "work_buf_max_units=0",
        "--pref",
        &upload_limit,
    ];
    if !peers {
        extra.push("--no-peers");
    }
    let dirs: Vec<PathBuf> = (0..workers).map(|i| dir.join(format!("w{i:02}"))).collect();
    let processes: Vec<Process> = dirs
        .iter()
        .enumerate()
        .map(|(i, data_dir)| {
            start_worker_with(
                "cobble-worker",
                &coordinator,
                data_dir,
                &format!("v{i}"),
                &extra,
            )
        })
        .collect();
    let attached = wait_until(Duration::from_secs(120), || {
        dirs.iter().all(|d| worker_status(d).is_some())
    });
    assert!(attached, "not every worker started");
    let cached: Vec<PathBuf> = dirs
        .iter()
        .map(|d| d.join("blobs").join(BlobHash::of(input).to_hex()))
        .collect();
    let spec = write_shared_input_job(dir, input, workers as u32);
    let submitted = Instant::now();
    let job = coordinator.submit(&spec);
    let mut held_after = vec![None; workers];
    while held_after.iter().any(Option::is_none) && submitted.elapsed() < Duration::from_secs(900) {
        for (i, path) in cached.iter().enumerate() {
            if held_after[i].is_none() && path.is_file() {
                held_after[i] = Some(submitted.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(600));
    assert!(done, "{status}");
    std::thread::sleep(Duration::from_millis(1500));
    let mut outcome = Outcome {
        held_after: held_after
            .into_iter()
            .map(|t| t.unwrap_or(f64::NAN))
            .collect(),
        from_coordinator: 0,
        from_peers: 0,
        served: Vec::new(),
    };
    for data_dir in &dirs {
        let t = worker_status(data_dir)
            .map(|s| s.transfers)
            .unwrap_or_default();
        outcome.from_coordinator += t.downloaded_from_coordinator;
        outcome.from_peers += t.downloaded_from_peers;
        outcome.served.push(t.served_to_peers);
    }
    drop(processes);
    outcome
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("COBBLE_SWARM_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 32]);
    let input_mib: usize = std::env::var("COBBLE_SWARM_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let megabits = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let (coordinator_mbps, worker_mbps) = (
        megabits("COBBLE_SWARM_COORDINATOR_MBPS", 200),
        megabits("COBBLE_SWARM_WORKER_MBPS", 80),
    );
    let links = Links {
        coordinator: coordinator_mbps * 1_000_000 / 8,
        worker_up: worker_mbps * 1_000_000 / 8,
    };
    let input = pseudo_random_bytes(input_mib << 20, 42);
    println!(
        "one job, every unit reads the same {input_mib} MiB input; one unit per worker; \
         coordinator link {coordinator_mbps} Mbit/s, worker uplinks {worker_mbps} Mbit/s (0: unlimited)"
    );
    for workers in sizes {
        let swarm = run(workers, &input, true, &links);
        let alone = run(workers, &input, false, &links);
        let last = |o: &Outcome| o.held_after.iter().copied().fold(0.0, f64::max);
        let delivered = swarm.from_coordinator + swarm.from_peers;
        let mut served = swarm.served.clone();
        served.sort_unstable();
        let sharers = served.iter().filter(|&&b| b > 0).count();
        println!("N = {workers}:");
        println!(
            "  coordinator served {:.1} MiB of {:.1} MiB delivered: {:.1}% ({:.2} copies of the input; 1/N = {:.1}%)",
            mib(swarm.from_coordinator),
            mib(delivered),
            swarm.from_coordinator as f64 / delivered.max(1) as f64 * 100.0,
            swarm.from_coordinator as f64 / input.len() as f64,
            100.0 / workers as f64,
        );
        println!(
            "  every worker held the input after {:.2} s with peers, {:.2} s coordinator-only ({:.2}x); coordinator-only served {:.1} MiB",
            last(&swarm),
            last(&alone),
            last(&alone) / last(&swarm),
            mib(alone.from_coordinator),
        );
        println!(
            "  uploads per worker (MiB): min {:.1}, median {:.1}, max {:.1}; {sharers} of {workers} workers served peers",
            mib(served[0]),
            mib(served[served.len() / 2]),
            mib(served[served.len() - 1]),
        );
    }
}
