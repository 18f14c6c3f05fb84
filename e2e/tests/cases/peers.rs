//! Peer-to-peer input data, end to end: workers trade an input's chunks
//! and the coordinator serves about one copy; a peer serving corrupt
//! chunks is dropped and the download still ends correct; a peer that
//! vanishes mid-transfer is replaced; alone, a worker gets everything from
//! the coordinator and fetches an evicted blob again; and the peer service
//! serves nothing it was not asked for by hash.

use cobble_core::BlobHash;
use cobble_e2e::{
    Coordinator, Process, probe_digest, pseudo_random_bytes, start_volunteers, start_worker_with,
    wait_until, worker_status, write_shared_input_job,
};
use cobble_proto::v1::{self as pb, peer_service_client::PeerServiceClient};
use std::path::Path;
use std::time::Duration;

/// 32 chunks of 256 KiB.
const INPUT_BYTES: usize = 8 << 20;

fn finish(coordinator: &Coordinator, job: &str, units: usize, input: &[u8], dir: &Path) {
    let (done, status) = coordinator.wait_done(job, Duration::from_secs(180));
    assert!(done, "{status}");
    let out = dir.join(format!("out-{job}"));
    coordinator.cli_ok(&["results", job, "--out", out.to_str().expect("utf-8")]);
    for unit in 0..units {
        let stdout = std::fs::read_to_string(out.join(unit.to_string()).join("stdout"))
            .expect("a unit's stdout");
        assert_eq!(stdout, probe_digest(input), "unit {unit} saw other bytes");
    }
    // Workers rewrite their status file within a second of a change.
    std::thread::sleep(Duration::from_millis(1500));
}

/// A serve-only peer (the test adversary binary) whose cache already holds
/// `input`; `extra` adds flags such as `--corrupt-chunks`.
fn seeder(
    coordinator: &Coordinator,
    dir: &Path,
    name: &str,
    input: &[u8],
    extra: &[&str],
) -> Process {
    let data_dir = dir.join(name);
    let blobs = data_dir.join("blobs");
    std::fs::create_dir_all(&blobs).expect("seeder cache");
    std::fs::write(blobs.join(BlobHash::of(input).to_hex()), input).expect("seed the cache");
    let mut args = vec!["--serve-only"];
    args.extend_from_slice(extra);
    let process = start_worker_with("cobble-cheater", coordinator, &data_dir, name, &args);
    // Its first heartbeat announces the blob to the tracker; the credit
    // in its status comes back with the answer to that heartbeat.
    assert!(
        wait_until(Duration::from_secs(30), || worker_status(&data_dir)
            .is_some_and(|status| status.credit.is_some())),
        "the seeder's first heartbeat did not return: {}",
        process.log_text()
    );
    process
}

fn transfers(data_dir: &Path) -> cobble_worker::status::TransferCounts {
    worker_status(data_dir)
        .map(|s| s.transfers)
        .unwrap_or_default()
}

#[test]
fn workers_trade_chunks_and_the_coordinator_serves_each_about_once() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let input = pseudo_random_bytes(INPUT_BYTES, 1);
    let names = ["w1", "w2", "w3", "w4"];
    let _workers = start_volunteers(&coordinator, dir, &names);
    let job = coordinator.submit(&write_shared_input_job(dir, &input, 8));
    finish(&coordinator, &job, 8, &input, dir);

    let (mut from_coordinator, mut from_peers) = (0, 0);
    for name in names {
        let t = transfers(&dir.join(name));
        from_coordinator += t.downloaded_from_coordinator;
        from_peers += t.downloaded_from_peers;
    }
    // Every worker that ran a unit holds the input once; the module is
    // small and comes along the same way.
    assert!(from_peers > 0, "no byte travelled between peers");
    assert!(
        from_coordinator < 2 * INPUT_BYTES as u64,
        "the coordinator served {from_coordinator} bytes of an {INPUT_BYTES}-byte input to {} workers",
        names.len()
    );
    // The project sees the same figures once the heartbeats are in.
    let reported = wait_until(Duration::from_secs(20), || {
        let stats: serde_json::Value =
            serde_json::from_str(&coordinator.cli_ok(&["transfers", "--json"])).expect("json");
        stats["from_peers"].as_u64() == Some(from_peers)
            && stats["from_coordinator"].as_u64() == Some(from_coordinator)
    });
    assert!(reported, "{}", coordinator.cli_ok(&["transfers"]));
}

#[test]
fn a_peer_serving_corrupt_chunks_is_dropped_and_the_download_ends_correct() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // A coordinator serving 1 MB/s: on loopback it could otherwise deliver
    // the whole input before the worker's first request to the liar, and
    // then there would be nothing to catch (two CI runs did so).
    let coordinator = Coordinator::start_with(dir, &["--max-serve-bytes-per-sec", "1000000"]);
    let input = pseudo_random_bytes(INPUT_BYTES, 2);
    let liar = seeder(&coordinator, dir, "liar", &input, &["--corrupt-chunks"]);
    let job = coordinator.submit(&write_shared_input_job(dir, &input, 1));
    let honest = start_volunteers(&coordinator, dir, &["honest"]);
    finish(&coordinator, &job, 1, &input, dir);
    let log = honest[0].log_text();
    assert!(
        log.contains("a peer sent a corrupt chunk; dropping it"),
        "the liar was never caught:\n{log}\n{}",
        liar.log_text()
    );
    let t = transfers(&dir.join("honest"));
    assert_eq!(
        t.downloaded_from_peers, 0,
        "no corrupt byte counts as delivered"
    );
    assert!(t.downloaded_from_coordinator >= INPUT_BYTES as u64);
}

#[test]
fn a_peer_that_vanishes_mid_transfer_is_replaced() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    // The coordinator slower than either peer (1 MB/s against 2 MB/s), or
    // on loopback it outruns them and there is nothing to take over.
    let coordinator = Coordinator::start_with(dir, &["--max-serve-bytes-per-sec", "1000000"]);
    let input = pseudo_random_bytes(INPUT_BYTES, 3);
    // Slow uploads (2 MB/s each), so the download is still going when
    // one of them disappears.
    let slow = ["--pref", "max_bytes_sec_up=2000000"];
    let mut first = seeder(&coordinator, dir, "first", &input, &slow);
    let _second = seeder(&coordinator, dir, "second", &input, &slow);
    let job = coordinator.submit(&write_shared_input_job(dir, &input, 1));
    let fetcher_dir = dir.join("fetcher");
    let fetcher = start_worker_with("cobble-worker", &coordinator, &fetcher_dir, "fetcher", &[]);
    assert!(
        wait_until(Duration::from_secs(60), || transfers(&fetcher_dir)
            .downloaded_from_peers
            > 0),
        "nothing came from peers: {}",
        fetcher.log_text()
    );
    first.kill();
    finish(&coordinator, &job, 1, &input, dir);
    let t = transfers(&fetcher_dir);
    assert!(
        t.downloaded_from_peers > (INPUT_BYTES / 4) as u64,
        "the remaining peer took over too little: {t:?}"
    );
}

#[test]
fn alone_a_worker_uses_the_coordinator_serves_only_by_hash_and_refetches_evicted_blobs() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let input = pseudo_random_bytes(INPUT_BYTES, 4);
    let job = coordinator.submit(&write_shared_input_job(dir, &input, 1));
    let solo_dir = dir.join("solo");
    let _solo = start_volunteers(&coordinator, dir, &["solo"]);
    finish(&coordinator, &job, 1, &input, dir);
    let t = transfers(&solo_dir);
    assert_eq!(t.downloaded_from_peers, 0);
    assert!(t.downloaded_from_coordinator >= INPUT_BYTES as u64, "{t:?}");

    // The peer service: chunks of cached blobs by hash, nothing else.
    let port = worker_status(&solo_dir)
        .and_then(|s| s.peer_port)
        .expect("the worker serves peers");
    let hash = BlobHash::of(&input);
    let secret = std::fs::read(cobble_worker::attach::state_path(&solo_dir))
        .expect("the worker's attachment file");
    std::fs::write(solo_dir.join("blobs").join("notes.txt"), b"not a blob").expect("write");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The test plays the tracker: it holds the project key and mints
    // capabilities for a caller certificate of its own.
    let project =
        cobble_coordinator::secrets::signing_key(&coordinator.data_dir.join("project.key"), false)
            .expect("the project key");
    let server = cobble_tls::Identity::from_pem_files(
        &solo_dir.join("peer.crt"),
        &solo_dir.join("peer.key"),
    )
    .expect("the worker's peer certificate")
    .fingerprint();
    let caller = cobble_tls::Identity::self_signed(&["caller".to_string()]).expect("identity");
    let grant = |blob: BlobHash| {
        cobble_core::capability::PeerCapability {
            blob,
            host_id: 1,
            certificate: caller.fingerprint().0,
            expires_ms: cobble_core::now_ms() + 60_000,
        }
        .sign(&project)
    };
    runtime.block_on(async {
        let config = cobble_tls::client_config(
            cobble_tls::Trust::Pinned(server),
            cobble_tls::Seen::default(),
            Some(&caller),
        )
        .expect("client config");
        let channel =
            cobble_tls::connect_channel(&format!("127.0.0.1:{port}"), config, None, |e| e)
                .await
                .expect("connect to the peer service over TLS");
        let peer = PeerServiceClient::new(channel);
        fn with<T>(message: T, capability: Option<Vec<u8>>) -> tonic::Request<T> {
            let mut request = tonic::Request::new(message);
            if let Some(capability) = capability {
                request.metadata_mut().insert_bin(
                    cobble_core::capability::METADATA_KEY,
                    tonic::metadata::MetadataValue::from_bytes(&capability),
                );
            }
            request
        }
        let map = peer
            .clone()
            .get_chunk_map(with(
                pb::ChunkMapRequest {
                    hash: hash.0.to_vec(),
                },
                Some(grant(hash)),
            ))
            .await
            .expect("chunk map")
            .into_inner();
        assert_eq!(map.chunk_count, 32);
        let chunk = |hash: Vec<u8>, index: u32, capability: Option<Vec<u8>>| {
            let mut peer = peer.clone();
            let request = with(pb::ChunkRequest { hash, index }, capability);
            async move { peer.get_chunk(request).await }
        };
        let first = chunk(hash.0.to_vec(), 1, Some(grant(hash)))
            .await
            .expect("chunk 1")
            .into_inner();
        assert_eq!(first.data, input[256 << 10..512 << 10]);
        let code = |result: Result<tonic::Response<pb::ChunkData>, tonic::Status>| {
            result.err().map(|status| status.code())
        };
        assert_eq!(
            code(chunk(hash.0.to_vec(), 32, Some(grant(hash))).await),
            Some(tonic::Code::NotFound)
        );
        // Without a capability, or with one for another blob: nothing, not
        // even whether the worker holds it.
        assert_eq!(
            code(chunk(hash.0.to_vec(), 1, None).await),
            Some(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(chunk(vec![7; 31], 0, Some(grant(hash))).await),
            Some(tonic::Code::PermissionDenied)
        );
        // Other files of the worker's data dir are not blobs it serves,
        // even to a caller the tracker vouches for.
        let other_files = [BlobHash::of(&secret), BlobHash::of(b"not a blob")];
        for other in other_files {
            assert_eq!(
                code(chunk(other.0.to_vec(), 0, Some(grant(other))).await),
                Some(tonic::Code::NotFound)
            );
        }
    });

    // Evicted from the cache (as the disk cap would), the input is
    // fetched again for the next job that needs it.
    let cached = solo_dir.join("blobs").join(hash.to_hex());
    std::fs::remove_file(&cached).expect("evict");
    let again = coordinator.submit(&write_shared_input_job(dir, &input, 1));
    finish(&coordinator, &again, 1, &input, dir);
    assert!(cached.is_file(), "the evicted input was not fetched again");
    assert!(transfers(&solo_dir).downloaded_from_coordinator >= 2 * INPUT_BYTES as u64);
}
