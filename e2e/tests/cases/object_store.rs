//! Blobs in shared storage (issue 14): two coordinators on one PostgreSQL
//! database and one S3 bucket, served by a real S3-compatible server
//! (moto's server mode, from PyPI; `cargo xtask setup` installs it). A
//! researcher submits through one coordinator, workers attached to the
//! other fetch the input and upload outputs, the researcher collects them
//! through the first: every byte goes through the bucket, none through a
//! coordinator's disk. Then the S3 server dies: an upload is refused with
//! UNAVAILABLE and a message that says why, and the coordinator lives on.
//! A second test drives the store's S3 side directly with the worst it
//! can meet: multipart uploads, a forged upload, an object changed behind
//! its back, re-upload times for the garbage collector, an outage.

use cobble_coordinator::blob_store::{BlobStore, Location};
use cobble_coordinator::error::Error;
use cobble_core::BlobHash;
use cobble_core::chunk::{CHUNK_SIZE, ChunkList};
use cobble_e2e::{Coordinator, Process, fresh_postgres, start_volunteers, wait_until, write_job};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const BUCKET: &str = "cobble-shared";
const KEYS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "cobble-test"),
    ("AWS_SECRET_ACCESS_KEY", "cobble-test-secret"),
    ("AWS_REGION", "us-east-1"),
];

fn helper() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/s3_bucket.py")
}

/// moto's S3 server on a free loopback port; killed when dropped.
fn start_s3(dir: &Path) -> (Process, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut command = Command::new("python3");
    command
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .stdout(Stdio::null());
    let process = Process::spawn(command, dir.join("moto.log"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let up = wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "moto did not start: {}", process.log_text());
    (process, endpoint)
}

fn bucket(endpoint: &str, args: &[&str]) -> String {
    let output = Command::new("python3")
        .arg(helper())
        .arg(endpoint)
        .args(args)
        .output()
        .expect("running python3");
    assert!(
        output.status.success(),
        "s3_bucket.py {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Blob files a coordinator keeps on its own disk (its upload scratch
/// space aside).
fn local_blob_files(data_dir: &Path) -> usize {
    let Ok(prefixes) = std::fs::read_dir(data_dir.join("blobs")) else {
        return 0;
    };
    prefixes
        .flatten()
        .filter(|e| e.file_name() != "tmp")
        .map(|e| std::fs::read_dir(e.path()).map_or(0, |d| d.count()))
        .sum()
}

fn has_moto() -> bool {
    let present = Command::new("python3")
        .args(["-c", "import moto.server, boto3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        eprintln!(
            "skipping: python3 with moto[server] is not installed (`cargo xtask setup` installs it)"
        );
    }
    present
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_store_checks_what_it_stores_and_what_it_reads_back() {
    if !has_moto() {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut s3, endpoint) = start_s3(dir.path());
    bucket(&endpoint, &["create", BUCKET]);
    let location = || Location::S3 {
        bucket: BUCKET.into(),
        prefix: "direct".into(),
        endpoint: Some(endpoint.clone()),
        keys: Some((KEYS[0].1.into(), KEYS[1].1.into())),
    };
    let scratch = dir.path().join("scratch");
    let store = BlobStore::open(location(), scratch.clone())
        .await
        .expect("open");
    let scratch_files = || std::fs::read_dir(scratch.join("tmp")).map_or(0, |d| d.count());

    // A wrong bucket fails the start, with the reason.
    let wrong = Location::S3 {
        bucket: "no-such-bucket".into(),
        prefix: String::new(),
        endpoint: Some(endpoint.clone()),
        keys: Some((KEYS[0].1.into(), KEYS[1].1.into())),
    };
    let refused = BlobStore::open(wrong, scratch.clone()).await;
    assert!(
        matches!(refused, Err(Error::BlobStore { .. })),
        "{refused:?}"
    );

    // One put (three chunks) and one multipart upload (past 8 MiB), each
    // written in pieces as an upload arrives.
    let small = cobble_e2e::pseudo_random_bytes(2 * CHUNK_SIZE as usize + 1000, 3);
    let large = cobble_e2e::pseudo_random_bytes(9 << 20, 4);
    for bytes in [&small, &large] {
        let mut writer = store.writer().await.expect("writer");
        for piece in bytes.chunks(100_000) {
            writer.write(piece).await.expect("write");
        }
        let hash = BlobHash::of(bytes);
        writer
            .finish(&store, &hash, bytes.len() as u64)
            .await
            .expect("upload");
        assert_eq!(
            store.size_of(&hash).await.expect("head"),
            Some(bytes.len() as u64)
        );
    }
    let (small_hash, large_hash) = (BlobHash::of(&small), BlobHash::of(&large));
    assert_eq!(store.read(&large_hash).await.expect("read"), large);
    // A coordinator that did not receive the upload computes the chunk
    // list from the bucket, as it streams.
    let other = BlobStore::open(location(), dir.path().join("other"))
        .await
        .expect("open");
    let list = other.chunk_list(&small_hash).await.expect("chunk list");
    assert_eq!(*list, ChunkList::of_bytes(&small));
    let last = other
        .read_chunk(&small_hash, small.len() as u64, 2)
        .await
        .expect("chunk");
    assert_eq!(last, small[2 * CHUNK_SIZE as usize..]);
    let copy = other.local(&large_hash).await.expect("fetched");
    assert_eq!(std::fs::read(copy.path()).expect("copy"), large);
    drop(copy);

    // An upload that does not match its hash is never put.
    let mut forged = store.writer().await.expect("writer");
    forged.write(b"not what was promised").await.expect("write");
    let claimed = BlobHash::of(b"what was promised");
    let refused = forged.finish(&store, &claimed, 21).await;
    assert!(
        matches!(refused, Err(Error::InvalidArgument(_))),
        "{refused:?}"
    );
    assert_eq!(store.size_of(&claimed).await.expect("head"), None);
    assert_eq!(scratch_files(), 0, "no upload left in the scratch space");

    // An object changed behind the store's back is caught on the way out.
    let victim = store.put(b"the honest bytes").await.expect("put");
    let key = format!("direct/blobs/{}", victim.to_hex());
    bucket(&endpoint, &["put", BUCKET, &key, "tampered bytes!!"]);
    let target = dir.path().join("placed");
    let caught = store.copy_to(&victim, &target).await;
    assert!(matches!(caught, Err(Error::Corrupt(_))), "{caught:?}");
    bucket(&endpoint, &["put", BUCKET, &key, "short"]);
    let short = store.read_range(&victim, 0, 16).await;
    assert!(matches!(short, Err(Error::Corrupt(_))), "{short:?}");

    // Uploaded again after a cut-off, a blob is not older than it; S3's
    // times have one-second steps, hence the pauses.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cut = now_ms();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store.touch(&small_hash).await.expect("touch");
    let old = store.older_than(cut).await.expect("list");
    assert!(
        old.contains(&large_hash) && old.contains(&victim),
        "{old:?}"
    );
    assert!(
        !old.contains(&small_hash),
        "a re-uploaded blob looks old: {old:?}"
    );

    // Removal takes the blob and its marker; absent blobs free nothing.
    let freed = store.remove(&small_hash).await.expect("remove");
    assert_eq!(freed, small.len() as u64);
    assert_eq!(store.remove(&small_hash).await.expect("again"), 0);
    assert!(!store.contains(&small_hash).await.expect("head"));
    let markers = bucket(&endpoint, &["list", BUCKET, "direct/touched/"]);
    assert!(markers.trim().is_empty(), "{markers}");

    // An unreachable bucket is an error the caller retries, never "absent".
    s3.kill();
    let outage = store.size_of(&large_hash).await;
    assert!(matches!(outage, Err(Error::BlobStore { .. })), "{outage:?}");
    let status = tonic::Status::from(outage.expect_err("an error"));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(matches!(
        store.put(b"during the outage").await,
        Err(Error::BlobStore { .. })
    ));
    assert_eq!(scratch_files(), 0, "a failed upload leaves nothing behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_share_one_bucket_and_survive_its_outage() {
    if !has_moto() {
        return;
    }
    let Ok(admin) = std::env::var("COBBLE_TEST_POSTGRES_URL") else {
        eprintln!(
            "skipping: COBBLE_TEST_POSTGRES_URL is not set (two coordinators need PostgreSQL)"
        );
        return;
    };
    let database = fresh_postgres(&admin).await.expect("a fresh database");
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut s3, endpoint) = start_s3(dir.path());
    bucket(&endpoint, &["create", BUCKET]);

    let store = format!("s3://{BUCKET}/project");
    let flags = [
        "--database-url",
        &database,
        "--blob-store",
        &store,
        "--blob-store-endpoint",
        &endpoint,
    ];
    let first = Coordinator::start_env(dir.path(), &dir.path().join("a"), &flags, &KEYS);
    let second_dir = dir.path().join("b");
    std::fs::create_dir_all(&second_dir).expect("second data dir");
    for file in ["project.key", "researcher.token", "tls.crt", "tls.key"] {
        std::fs::copy(first.data_dir.join(file), second_dir.join(file)).expect("copy");
    }
    let second = Coordinator::start_env(dir.path(), &second_dir, &flags, &KEYS);

    // Job 1: four units read one 1.5 MiB input (six chunks), uploaded to
    // the first coordinator, fetched by workers of the second.
    let input = cobble_e2e::pseudo_random_bytes(1_500_000, 7);
    let shared = dir.path().join("shared");
    let digest_job = first.submit(&cobble_e2e::write_shared_input_job(&shared, &input, 4));
    // Job 2: each unit writes a 300 kB output file, past the inline limit,
    // so it is uploaded to the second coordinator as a blob.
    let fill = dir.path().join("fill");
    let fill_job = first.submit(&write_job(
        &fill,
        cobble_unit_artifacts::SANDBOX_PROBE,
        "probe.wasm",
        "name = \"fill\"\nmodule = \"probe.wasm\"\nargs = [\"fill\", \"/output/big.bin\", \"300000\"]\n\
         [split]\nrange = { start = 0, end = 2, per_unit = 1 }\n\
         [replication]\nmin_quorum = 1\ntarget_results = 1\n",
    ));
    let _workers = start_volunteers(&second, dir.path(), &["ann", "bob"]);
    for job in [&digest_job, &fill_job] {
        let (done, status) = first.wait_done(job, Duration::from_secs(120));
        assert!(done, "job {job} did not finish: {status}");
    }

    // Results, collected through the first coordinator, are right.
    let out = dir.path().join("results");
    let out_text = out.to_str().expect("utf-8 path");
    first.cli_ok(&["results", &digest_job, "--out", out_text]);
    for unit in 0..4 {
        let stdout = std::fs::read_to_string(out.join(unit.to_string()).join("stdout"))
            .expect("a unit's stdout");
        assert_eq!(stdout, cobble_e2e::probe_digest(&input), "unit {unit}");
    }
    let filled = dir.path().join("filled");
    first.cli_ok(&[
        "results",
        &fill_job,
        "--out",
        filled.to_str().expect("utf-8"),
    ]);
    for unit in 0..2 {
        let big = std::fs::read(filled.join(unit.to_string()).join("big.bin")).expect("output");
        assert_eq!(big, vec![b'y'; 300_000], "unit {unit}'s output file");
    }

    // Every blob is in the bucket under the prefix, none on a local disk.
    let keys = bucket(&endpoint, &["list", BUCKET, "project/blobs/"]);
    let sizes: Vec<u64> = keys
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert!(
        sizes.contains(&1_500_000),
        "the input is in the bucket: {keys}"
    );
    assert!(
        sizes.contains(&300_000),
        "the output is in the bucket: {keys}"
    );
    assert!(
        sizes.len() >= 3,
        "the module, the input and the output: {keys}"
    );
    for coordinator in [&first, &second] {
        assert_eq!(local_blob_files(&coordinator.data_dir), 0);
        let scratch =
            std::fs::read_dir(coordinator.data_dir.join("blobs/tmp")).map_or(0, |d| d.count());
        assert_eq!(scratch, 0, "no upload left behind in the scratch space");
    }

    // The bucket goes away: an upload is refused as UNAVAILABLE, with a
    // message that says what, and the coordinator keeps serving.
    s3.kill();
    let spec = write_job(
        &dir.path().join("later"),
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        "name = \"later\"\nmodule = \"primes.wasm\"\nargs = [\"{start}\", \"{end}\"]\n\
         [split]\nrange = { start = 0, end = 10, per_unit = 10 }\n",
    );
    let refused = first.cli(&["submit", spec.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "submitted without a blob store");
    assert!(stderr.contains("blob store is unreachable"), "{stderr}");
    assert!(
        first.cli(&["status", &digest_job]).status.success(),
        "the coordinator still answers"
    );
}
