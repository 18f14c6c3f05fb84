//! Issue 14's store paths on every backend: batched reports with inline
//! outputs, and credit that concurrent grants do not lose.

use super::store::{attach, backends, credit_of, report, submit, success, take_one};
use cobble_coordinator::Error;
use cobble_coordinator::store::{MAX_REPORTS_PER_BATCH, ReportStatus};
use cobble_core::BlobHash;
use cobble_proto::v1::{self as pb, report_request::Outcome};

/// A success whose stdout travels inline, uploaded nowhere.
fn inline_success(lease: &str, stdout: &[u8]) -> pb::ReportRequest {
    pb::ReportRequest {
        lease_id: lease.to_string(),
        outcome: Some(Outcome::Success(pb::Success {
            stdout: Some(pb::BlobRef {
                hash: BlobHash::of(stdout).0.to_vec(),
                size: stdout.len() as u64,
                chunk_root: Vec::new(),
            }),
            files: vec![],
            fuel_used: 1_000_000_000,
            elapsed_ms: 1,
            inline: vec![stdout.to_vec()],
        })),
    }
}

#[tokio::test]
async fn a_batch_records_each_good_report_and_refuses_each_bad_one_alone() {
    for backend in backends().await {
        let store = &backend.store;
        let job = submit(store, 2, (2, 2, 4), 600).await;
        let (alice, bob) = (attach(store, "alice").await, attach(store, "bob").await);
        // A new host holds two units at most; the pairs share units.
        let mut alices = Vec::new();
        let mut bobs = Vec::new();
        for _ in 0..2 {
            alices.push(take_one(store, alice).await.expect("a unit for alice"));
            bobs.push(take_one(store, bob).await.expect("a unit for bob"));
        }
        let answer = |m: &pb::Manifest| format!("{}\n", m.unit_id).into_bytes();
        // Bob reports his two by the old path, uploads first.
        for manifest in &bobs {
            let uploaded = success(store, &answer(manifest), 1_000_000_000).await;
            assert_eq!(
                report(store, bob, &manifest.lease_id, uploaded).await.ok(),
                Some(ReportStatus::Accepted)
            );
        }
        // Alice batches: a good inline report, one whose inline bytes are
        // not the output it names, one for a lease that is not hers, and
        // one with an oversized inline output.
        let mut lying = inline_success(&alices[1].lease_id, &answer(&alices[1]));
        if let Some(Outcome::Success(s)) = &mut lying.outcome {
            s.inline = vec![b"something else\n".to_vec()];
        }
        let mut oversized = inline_success(&alices[1].lease_id, &answer(&alices[1]));
        if let Some(Outcome::Success(s)) = &mut oversized.outcome {
            let big = vec![b'x'; 64 * 1024 + 1];
            s.stdout = Some(pb::BlobRef {
                hash: BlobHash::of(&big).0.to_vec(),
                size: big.len() as u64,
                chunk_root: Vec::new(),
            });
            s.inline = vec![big];
        }
        let batch = vec![
            inline_success(&alices[0].lease_id, &answer(&alices[0])),
            lying,
            inline_success(&bobs[0].lease_id, &answer(&bobs[0])),
            oversized,
        ];
        let answers = store.report_results(alice, &batch).await.expect("the call");
        assert_eq!(answers.len(), 4);
        assert!(
            matches!(answers[0], Ok(ReportStatus::Accepted)),
            "{answers:?}"
        );
        assert!(
            matches!(&answers[1], Err(Error::InvalidArgument(m)) if m.contains("none of the outputs")),
            "{answers:?}"
        );
        assert!(
            matches!(answers[2], Err(Error::PermissionDenied(_))),
            "{answers:?}"
        );
        assert!(
            matches!(&answers[3], Err(Error::InvalidArgument(m)) if m.contains("at most 65536")),
            "{answers:?}"
        );

        // The good one validated against Bob's upload; the refused ones
        // changed nothing and can be sent again, right this time.
        let status = store.job_status(job).await.expect("status");
        assert_eq!(status.units_done, 1, "{status:?}");
        let again = vec![
            inline_success(&alices[1].lease_id, &answer(&alices[1])),
            // A repeat inside a later batch: a duplicate, nothing more.
            inline_success(&alices[0].lease_id, &answer(&alices[0])),
        ];
        let answers = store.report_results(alice, &again).await.expect("the call");
        assert!(
            matches!(
                answers[..],
                [Ok(ReportStatus::Accepted), Ok(ReportStatus::Duplicate)]
            ),
            "{answers:?}"
        );
        let status = store.job_status(job).await.expect("status");
        assert_eq!(
            (status.state.as_str(), status.units_done),
            ("done", 2),
            "{status:?}"
        );
        assert_eq!(credit_of(store, "alice").await, (2.0, 2));
        assert_eq!(credit_of(store, "bob").await, (2.0, 2));

        // An inline output is a stored blob like any other: sized, read.
        let bytes = answer(&alices[0]);
        let hash = BlobHash::of(&bytes);
        assert_eq!(
            store.blob_size(&hash).await.expect("size"),
            Some(bytes.len() as u64)
        );
        assert_eq!(store.read_blob(&hash).await.expect("read"), bytes);
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn batches_past_the_limit_and_inline_floods_are_refused_whole() {
    for backend in backends().await {
        let store = &backend.store;
        submit(store, 1, (1, 1, 2), 600).await;
        let host = attach(store, "flooder").await;
        let manifest = take_one(store, host).await.expect("a unit");
        let too_many: Vec<_> = (0..=MAX_REPORTS_PER_BATCH)
            .map(|_| inline_success(&manifest.lease_id, b"x\n"))
            .collect();
        assert!(matches!(
            store.report_results(host, &too_many).await,
            Err(Error::InvalidArgument(m)) if m.contains("at most 64")
        ));
        // Sixteen files of 64 KiB inline: over the 1 MiB a report may carry.
        let chunk = vec![b'y'; 64 * 1024];
        let files: Vec<pb::OutputFile> = (0..17)
            .map(|i| {
                let mut bytes = chunk.clone();
                bytes[0] = i as u8;
                pb::OutputFile {
                    name: format!("f{i}"),
                    blob: Some(pb::BlobRef {
                        hash: BlobHash::of(&bytes).0.to_vec(),
                        size: bytes.len() as u64,
                        chunk_root: Vec::new(),
                    }),
                }
            })
            .collect();
        let mut flood = inline_success(&manifest.lease_id, b"x\n");
        if let Some(Outcome::Success(s)) = &mut flood.outcome {
            s.inline = (0..17)
                .map(|i| {
                    let mut bytes = chunk.clone();
                    bytes[0] = i as u8;
                    bytes
                })
                .collect();
            s.files = files;
        }
        let answers = store
            .report_results(host, &[flood])
            .await
            .expect("the call");
        assert!(
            matches!(&answers[0], Err(Error::InvalidArgument(m)) if m.contains("per report")),
            "{answers:?}"
        );
        // Nothing was kept of the refused report's inline bytes.
        assert_eq!(
            store.blob_size(&BlobHash::of(&chunk)).await.expect("size"),
            None
        );
        backend.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grants_to_one_account_lose_no_credit() {
    const HOSTS_PER_ACCOUNT: usize = 8;
    const UNITS: i64 = 200;
    const JOBS: i64 = 10;
    for backend in backends().await {
        let store = backend.store.clone();
        // Each unit's two results go to the two accounts (never two to one
        // account), so every grant races its account's other hosts' grants.
        // Several jobs: the last units of a job close one at a time.
        let mut jobs = Vec::new();
        for _ in 0..JOBS {
            jobs.push(submit(&store, UNITS / JOBS, (2, 2, 4), 600).await);
        }
        let mut tasks = Vec::new();
        for account in ["crowd-a", "crowd-b"] {
            let mut account_key = String::new();
            for index in 0..HOSTS_PER_ACCOUNT {
                let attached = store
                    .register_host(&pb::RegisterHostRequest {
                        account: account.into(),
                        account_key: account_key.clone(),
                        host_name: format!("{account}-{index}"),
                        ..Default::default()
                    })
                    .await
                    .expect("attach");
                if let Some(key) = attached.new_account_key {
                    account_key = key;
                }
                let host = store
                    .authenticate_host(attached.host_id, &attached.host_key)
                    .await
                    .expect("fresh credentials work");
                let (store, jobs) = (store.clone(), jobs.clone());
                tasks.push(tokio::spawn(async move {
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                    while std::time::Instant::now() < deadline {
                        let Some(manifest) = take_one(&store, host).await else {
                            let mut all_done = true;
                            for job in &jobs {
                                all_done &=
                                    store.job_status(*job).await.expect("status").state == "done";
                            }
                            if all_done {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                            continue;
                        };
                        let answer = inline_success(
                            &manifest.lease_id,
                            format!("{}\n", manifest.unit_id).as_bytes(),
                        );
                        store.report_result(host, &answer).await.expect("report");
                    }
                }));
            }
        }
        for task in tasks {
            task.await.expect("host task");
        }
        for job in &jobs {
            let status = store.job_status(*job).await.expect("status");
            assert_eq!(status.units_done, (UNITS / JOBS) as u32, "{status:?}");
        }
        for account in ["crowd-a", "crowd-b"] {
            // The account's figures are the sums of its hosts'.
            let sums: (f64, f64, i64) = sqlx::query_as(
                "SELECT CAST(SUM(h.rac) AS DOUBLE PRECISION), CAST(SUM(h.total_credit) AS DOUBLE PRECISION),
                        CAST(SUM(h.valid_results) AS BIGINT)
                 FROM hosts h JOIN accounts a ON a.id = h.account_id WHERE a.name = $1",
            )
            .bind(account)
            .fetch_one(store.db.pool())
            .await
            .expect("host sums");
            let figures: (f64, f64, i64) = sqlx::query_as(
                "SELECT rac, total_credit, valid_results FROM accounts WHERE name = $1",
            )
            .bind(account)
            .fetch_one(store.db.pool())
            .await
            .expect("account");
            assert_eq!(figures.2, sums.2, "valid results of {account}");
            assert!(
                (figures.1 - sums.1).abs() < 1e-9,
                "credit of {account}: {figures:?} vs {sums:?}"
            );
            assert!(
                (figures.0 - sums.0).abs() < 1e-4 * sums.0.max(1.0),
                "RAC of {account} lost an update: {figures:?} vs its hosts' {sums:?}"
            );
        }
        backend.cleanup().await;
    }
}

/// The SQLite and PostgreSQL migrations describe one schema: the same
/// tables with the same columns in the same order, the same nullability,
/// and the same indexes.
#[tokio::test]
async fn both_migration_sets_make_the_same_schema() {
    let backends = backends().await;
    if backends.len() < 2 {
        eprintln!("skipping: COBBLE_TEST_POSTGRES_URL is not set");
    }
    let mut schemas = Vec::new();
    for backend in &backends {
        let pool = backend.store.db.pool();
        let sqlite = backend.store.db.backend() == cobble_coordinator::db::Backend::Sqlite;
        let mut columns: Vec<(String, i64, String, i64)> = if sqlite {
            sqlx::query_as(
                "SELECT m.name, p.cid, p.name, CASE WHEN p.\"notnull\" = 1 OR p.pk > 0 THEN 1 ELSE 0 END
                 FROM sqlite_master m JOIN pragma_table_info(m.name) p
                 WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%'
                 ORDER BY m.name, p.cid",
            )
            .fetch_all(pool)
            .await
            .expect("sqlite columns")
        } else {
            sqlx::query_as(
                "SELECT CAST(table_name AS TEXT), CAST(ordinal_position AS BIGINT) - 1, CAST(column_name AS TEXT),
                        CAST(CASE WHEN is_nullable = 'NO' THEN 1 ELSE 0 END AS BIGINT)
                 FROM information_schema.columns
                 WHERE table_schema = 'public' AND table_name NOT LIKE '_sqlx%'
                 ORDER BY table_name, ordinal_position",
            )
            .fetch_all(pool)
            .await
            .expect("postgres columns")
        };
        let mut indexes: Vec<String> = if sqlite {
            sqlx::query_scalar(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL",
            )
            .fetch_all(pool)
            .await
            .expect("sqlite indexes")
        } else {
            sqlx::query_scalar(
                "SELECT CAST(indexname AS TEXT) FROM pg_indexes
                 WHERE schemaname = 'public' AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'",
            )
            .fetch_all(pool)
            .await
            .expect("postgres indexes")
        };
        // Sorted here: the two databases collate names differently; and
        // numbered again, as a dropped column leaves a gap in PostgreSQL.
        columns.sort();
        let mut previous = String::new();
        let mut position = 0;
        for column in &mut columns {
            if column.0 != previous {
                previous = column.0.clone();
                position = 0;
            }
            column.1 = position;
            position += 1;
        }
        indexes.sort();
        schemas.push((columns, indexes));
    }
    for pair in schemas.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        for (x, y) in a.0.iter().zip(&b.0) {
            assert_eq!(
                x, y,
                "the first difference between the SQLite and PostgreSQL schemas"
            );
        }
        assert_eq!(a.0.len(), b.0.len(), "as many columns in both");
        assert_eq!(a.1, b.1, "the same indexes");
    }
    for backend in backends {
        backend.cleanup().await;
    }
}

/// Two coordinators' trackers on one database: a host announced to one is
/// a peer the other names, and the super-seed's counts are theirs in
/// common, so between them every chunk goes out once before any twice.
#[tokio::test]
async fn trackers_of_two_coordinators_share_holders_and_seed_counts() {
    use cobble_coordinator::tracker::{Contact, Tracker};
    use cobble_core::chunk::ChunkSet;
    use std::collections::HashSet;
    for backend in backends().await {
        let (one, other) = (
            Tracker::shared(backend.store.db.clone()),
            Tracker::shared(backend.store.db.clone()),
        );
        let blob = BlobHash::of(b"an input");
        let contact = |host: i64| Contact {
            address: format!("192.0.2.{host}:7000"),
            certificate: [host as u8; 32],
        };
        for host in 1..=3 {
            one.note_holders(&[blob], host, Some(contact(host)), 1_000 + host)
                .await
                .expect("announce");
        }
        // A host serving nobody is not a peer.
        one.note_holders(&[blob], 9, None, 2_000)
            .await
            .expect("announce");
        let peers = other
            .recent_peers(&blob, &HashSet::from([2]), 16, 5_000)
            .await
            .expect("peers");
        let ids: Vec<i64> = peers.iter().map(|p| p.host_id).collect();
        assert_eq!(ids, [3, 1], "most recent first, the excluded left out");
        assert_eq!(peers[0].contact, contact(3));
        // Heard of again through the other coordinator: fresh there too.
        other
            .note_holders(&[blob], 1, Some(contact(1)), 9_000)
            .await
            .expect("announce");
        let ids: Vec<i64> = one
            .recent_peers(&blob, &HashSet::new(), 16, 9_500)
            .await
            .expect("peers")
            .iter()
            .map(|p| p.host_id)
            .collect();
        assert_eq!(ids, [1, 3, 2]);
        // Stale holders are forgotten.
        one.forget_stale(10 * 60 * 1000 + 5_000)
            .await
            .expect("forget");
        let left = other
            .recent_peers(&blob, &HashSet::new(), 16, 9_500)
            .await
            .expect("peers");
        assert_eq!(left.iter().map(|p| p.host_id).collect::<Vec<_>>(), [1]);

        let nothing = ChunkSet::empty(3);
        let mut handed = Vec::new();
        for tracker in [&one, &other, &one, &other] {
            handed.push(
                tracker
                    .next_seed_chunk(&blob, 3, &nothing, false)
                    .await
                    .expect("seed"),
            );
        }
        assert_eq!(handed, [Some(0), Some(1), Some(2), None]);
        backend.cleanup().await;
    }
}

/// A project that runs for a year, in miniature: round after round a job
/// is submitted, computed (inline and uploaded outputs), collected, kept
/// for its retention time and purged; the database and the blob store end
/// each round as small as they began it, and purged jobs still say what
/// they were.
#[tokio::test]
async fn collected_jobs_are_purged_and_storage_stays_bounded() {
    const ROUNDS: usize = 4;
    for backend in backends().await {
        let store = &backend.store;
        let owner = super::store::owner(store).await;
        let (alice, bob) = (attach(store, "alice").await, attach(store, "bob").await);
        let mut sizes = Vec::new();
        let mut jobs = Vec::new();
        for round in 0..ROUNDS {
            let spec = super::store::job_spec(store, 2, (2, 2, 4), 600, None).await;
            let (job, _) = store.submit_job(&spec, &owner).await.expect("submit");
            jobs.push(job);
            for _ in 0..2 {
                for host in [alice, bob] {
                    let manifest = take_one(store, host).await.expect("a unit");
                    let text = format!("round {round} unit {}\n", manifest.unit_id);
                    // Stdout inline, one output file uploaded.
                    let file = format!("file of round {round} unit {}", manifest.unit_id);
                    let stored = store.blobs.put(file.as_bytes()).await.expect("upload");
                    let mut request = inline_success(&manifest.lease_id, text.as_bytes());
                    if let Some(Outcome::Success(s)) = &mut request.outcome {
                        s.files = vec![pb::OutputFile {
                            name: "result.txt".into(),
                            blob: Some(pb::BlobRef {
                                hash: stored.0.to_vec(),
                                size: file.len() as u64,
                                chunk_root: Vec::new(),
                            }),
                        }];
                    }
                    store.report_result(host, &request).await.expect("report");
                }
            }
            assert_eq!(store.job_status(job).await.expect("status").state, "done");
            // Kept while not collected, however old.
            let later = cobble_core::now_ms() + 1_000;
            assert_eq!(
                store.purge_collected_jobs(later).await.expect("purge"),
                (0, 0)
            );
            let listed = store.job_results(job).await.expect("collect");
            assert_eq!(listed.units.len(), 2);
            // Kept until its time is over...
            let collected_just_now = cobble_core::now_ms() - 60_000;
            assert_eq!(
                store
                    .purge_collected_jobs(collected_just_now)
                    .await
                    .expect("purge")
                    .0,
                0
            );
            // ...then purged: rows now, blobs at the next collection.
            let (purged, results) = store.purge_collected_jobs(later).await.expect("purge");
            assert_eq!((purged, results), (1, 4));
            store
                .collect_unreferenced_blobs(later)
                .await
                .expect("collect garbage");
            let count = |sql: &'static str| async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(store.db.pool())
                    .await
                    .expect("count")
            };
            let files = store
                .blobs
                .older_than(i64::MAX)
                .await
                .expect("list blobs")
                .len();
            sizes.push((
                count("SELECT COUNT(*) FROM units").await,
                count("SELECT COUNT(*) FROM results").await,
                count("SELECT COUNT(*) FROM small_blobs").await,
                files,
            ));
        }
        assert!(
            sizes.iter().all(|s| *s == (0, 0, 0, 0)),
            "rows of units, results, inline outputs and blob files after each round: {sizes:?}"
        );
        for job in jobs {
            let status = store
                .job_status(job)
                .await
                .expect("a purged job still has a status");
            assert_eq!((status.state.as_str(), status.units_total), ("purged", 2));
        }
        backend.cleanup().await;
    }
}
