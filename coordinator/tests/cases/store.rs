//! The coordinator's store against real databases: embedded SQLite always,
//! PostgreSQL when `COBBLE_TEST_POSTGRES_URL` is set (CI sets it). Each test
//! runs the same scenario on every backend available.

use cobble_coordinator::integrity::Policy;
use cobble_coordinator::store::{HostIdentity, ReportStatus, Store};
use cobble_coordinator::{Config, Error};
use cobble_proto::v1::{self as pb, report_request::Outcome};
use sqlx::Executor;
use std::path::Path;

/// A store on a fresh database, and what to drop afterwards.
pub(super) struct Backend {
    pub(super) store: Store,
    _dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

impl Backend {
    pub(super) async fn cleanup(self) {
        self.store.db.close().await;
        if let Some((admin_url, database)) = self.postgres {
            let dropped = match sqlx::AnyPool::connect(&admin_url).await {
                Ok(pool) => pool
                    .execute(format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)").as_str())
                    .await
                    .map(|_| ()),
                Err(error) => Err(error),
            };
            if let Err(error) = dropped {
                eprintln!("could not drop test database {database}: {error}");
            }
        }
    }
}

/// The policy scenarios run under unless they are about it.
pub(super) fn test_policy() -> Policy {
    Policy {
        // Scenarios hand a unit's replicas out one right after the other.
        replica_spacing_ms: 0,
        // Random spot-checks would make scenarios nondeterministic.
        spot_check_untrusted: 0.0,
        spot_check_trusted: 0.0,
        // Hosts here stop asking when nothing is left for them; replicas
        // kept for trusted hosts would wait for nobody.
        proven_replica_window_ms: 0,
        ..Policy::default()
    }
}

async fn open(database_url: Option<String>, dir: &Path, policy: &Policy) -> Store {
    let config = Config {
        database_url,
        integrity: policy.clone(),
        ..Config::defaults_in(dir)
    };
    cobble_coordinator::start(&config)
        .await
        .expect("store starts")
}

/// Every backend this machine offers, each on an empty database.
pub(super) async fn backends() -> Vec<Backend> {
    backends_with(&test_policy()).await
}

pub(super) async fn backends_with(policy: &Policy) -> Vec<Backend> {
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    let mut backends = vec![Backend {
        store: open(None, sqlite_dir.path(), policy).await,
        _dir: sqlite_dir,
        postgres: None,
    }];
    match std::env::var("COBBLE_TEST_POSTGRES_URL") {
        Ok(admin_url) => {
            sqlx::any::install_default_drivers();
            let admin = sqlx::AnyPool::connect(&admin_url)
                .await
                .unwrap_or_else(|e| {
                    panic!("COBBLE_TEST_POSTGRES_URL={admin_url} is set but unreachable: {e}")
                });
            let database = format!("cobble_test_{}", cobble_core::random_token());
            admin
                .execute(format!("CREATE DATABASE {database}").as_str())
                .await
                .expect("create test database");
            admin.close().await;
            let url = match admin_url.rsplit_once('/') {
                Some((base, _)) => format!("{base}/{database}"),
                None => panic!("COBBLE_TEST_POSTGRES_URL needs a database path"),
            };
            let dir = tempfile::tempdir().expect("temp dir");
            backends.push(Backend {
                store: open(Some(url), dir.path(), policy).await,
                _dir: dir,
                postgres: Some((admin_url, database)),
            });
        }
        Err(_) => eprintln!("skipping PostgreSQL: COBBLE_TEST_POSTGRES_URL is not set"),
    }
    backends
}

pub(super) async fn attach(store: &Store, account: &str) -> HostIdentity {
    let attached = store
        .register_host(&pb::RegisterHostRequest {
            account: account.into(),
            host_name: format!("{account}-box"),
            // Test volunteers allow their names: tests find them by name.
            public_name: true,
            ..Default::default()
        })
        .await
        .expect("attach");
    store
        .authenticate_host(attached.host_id, &attached.host_key)
        .await
        .expect("fresh credentials work")
}

/// The project's first researcher, whom tests submit as.
pub(super) async fn owner(store: &Store) -> cobble_coordinator::store::Researcher {
    store
        .researcher_named(cobble_coordinator::store::FIRST_RESEARCHER)
        .await
        .expect("the first researcher exists from the start")
}

pub(super) async fn submit(
    store: &Store,
    units: i64,
    replication: (u32, u32, u32),
    deadline_s: u32,
) -> i64 {
    submit_with(store, units, replication, deadline_s, None).await
}

pub(super) async fn submit_with(
    store: &Store,
    units: i64,
    replication: (u32, u32, u32),
    deadline_s: u32,
    validator: Option<pb::Validator>,
) -> i64 {
    let spec = job_spec(store, units, replication, deadline_s, validator).await;
    store
        .submit_job(&spec, &super::store::owner(store).await)
        .await
        .expect("submit")
        .0
}

/// A test job's spec: `units` units of a pretend module (only hosts in
/// these tests "run" it), its blob stored.
pub(super) async fn job_spec(
    store: &Store,
    units: i64,
    replication: (u32, u32, u32),
    deadline_s: u32,
    validator: Option<pb::Validator>,
) -> pb::JobSpec {
    let bytes = b"\0asm\x01\0\0\0 pretend module";
    let module = store.blobs.put(bytes).await.expect("blob");
    pb::JobSpec {
        name: "t".into(),
        module: Some(pb::BlobRef {
            hash: module.0.to_vec(),
            size: bytes.len() as u64,
            chunk_root: Vec::new(),
        }),
        args: vec!["{start}".into()],
        inputs: vec![],
        split: Some(pb::SplitRule {
            rule: Some(pb::split_rule::Rule::Range(pb::RangeSplit {
                start: 0,
                end: units,
                per_unit: 1,
            })),
        }),
        replication: Some(pb::Replication {
            min_quorum: replication.0,
            target_results: replication.1,
            max_total_results: replication.2,
            adaptive: None,
        }),
        limits: Some(pb::Limits {
            fuel: FUEL_LIMIT,
            memory_mib: 16,
            deadline_s,
            max_output_bytes: 1_000,
        }),
        validator,
        nan_canonicalization_off: false,
        known_answers: Vec::new(),
        known_answer_copies: 0,
        module_signature: Vec::new(),
        reduce: None,
        ..Default::default()
    }
}

/// A job of one unit of `module`, whose outputs may be `max_output_bytes`.
pub(super) fn one_unit_spec(module: pb::BlobRef, max_output_bytes: u64) -> pb::JobSpec {
    pb::JobSpec {
        name: "one".into(),
        module: Some(module),
        args: vec!["{start}".into()],
        split: Some(pb::SplitRule {
            rule: Some(pb::split_rule::Rule::Range(pb::RangeSplit {
                start: 0,
                end: 1,
                per_unit: 1,
            })),
        }),
        replication: Some(cobble_core::spec::DEFAULT_REPLICATION),
        limits: Some(pb::Limits {
            fuel: 1_000_000_000,
            memory_mib: 16,
            deadline_s: 600,
            max_output_bytes,
        }),
        ..Default::default()
    }
}

/// The fuel limit of test jobs: claims in these tests stay below it.
pub(super) const FUEL_LIMIT: u64 = 100_000_000_000;

pub(super) async fn take_one(store: &Store, host: HostIdentity) -> Option<pb::Manifest> {
    let assignments = store.request_work(host, 1).await.expect("request work");
    let key = store.signing_key().verifying_key();
    assignments
        .first()
        .map(|a| cobble_core::manifest::verify(a, &key).expect("coordinator signs what it issues"))
}

pub(super) async fn success(store: &Store, stdout: &[u8], fuel: u64) -> pb::ReportRequest {
    let hash = store.blobs.put(stdout).await.expect("blob");
    pb::ReportRequest {
        lease_id: String::new(),
        outcome: Some(Outcome::Success(pb::Success {
            stdout: Some(pb::BlobRef {
                hash: hash.0.to_vec(),
                size: stdout.len() as u64,
                chunk_root: Vec::new(),
            }),
            files: vec![],
            fuel_used: fuel,
            elapsed_ms: 1,
            inline: Vec::new(),
        })),
    }
}

pub(super) async fn report(
    store: &Store,
    host: HostIdentity,
    lease: &str,
    mut request: pb::ReportRequest,
) -> Result<ReportStatus, Error> {
    request.lease_id = lease.to_string();
    store.report_result(host, &request).await
}

pub(super) async fn credit_of(store: &Store, account: &str) -> (f64, u64) {
    let board = store.leaderboard("users", 100).await.expect("leaderboard");
    board
        .entries
        .iter()
        .find(|e| e.name == account)
        .map(|e| (e.total_credit, e.valid_results))
        .unwrap_or((0.0, 0))
}

#[tokio::test]
async fn quorum_validation_and_exactly_once_credit() {
    for backend in backends().await {
        let store = &backend.store;
        let job = submit(store, 1, (2, 2, 5), 600).await;
        let (alice, bob, carol) = (
            attach(store, "alice").await,
            attach(store, "bob").await,
            attach(store, "carol").await,
        );

        let for_alice = take_one(store, alice).await.expect("alice gets the unit");
        assert!(
            take_one(store, alice).await.is_none(),
            "invariant 1: never two replicas of a unit to one host"
        );
        let for_bob = take_one(store, bob)
            .await
            .expect("bob gets the second replica");
        assert_eq!(for_alice.unit_id, for_bob.unit_id);
        assert_ne!(for_alice.lease_id, for_bob.lease_id);
        assert!(
            take_one(store, carol).await.is_none(),
            "only target_results replicas at first"
        );

        // Alice and Bob disagree: a third replica is issued, to Carol.
        let good = success(store, b"42\n", 2_000_000_000).await;
        let bad = success(store, b"41\n", 9_000_000_000).await;
        assert_eq!(
            report(store, alice, &for_alice.lease_id, good.clone())
                .await
                .ok(),
            Some(ReportStatus::Accepted)
        );
        assert_eq!(
            report(store, bob, &for_bob.lease_id, bad).await.ok(),
            Some(ReportStatus::Accepted)
        );
        let for_carol = take_one(store, carol)
            .await
            .expect("disagreement issues another replica");

        // Bogus reports change nothing.
        assert!(matches!(
            report(store, bob, &for_carol.lease_id, good.clone()).await,
            Err(Error::PermissionDenied(_))
        ));
        assert!(matches!(
            report(store, carol, "no-such-lease", good.clone()).await,
            Err(Error::NotFound(_))
        ));
        let mut missing_blob = good.clone();
        if let Some(Outcome::Success(s)) = &mut missing_blob.outcome {
            s.stdout = Some(pb::BlobRef {
                hash: vec![7; 32],
                size: 3,
                chunk_root: Vec::new(),
            });
        }
        assert!(matches!(
            report(store, carol, &for_carol.lease_id, missing_blob).await,
            Err(Error::InvalidArgument(_))
        ));

        // Carol agrees with Alice: quorum.
        let carol_claims_more = success(store, b"42\n", 5_000_000_000).await;
        assert_eq!(
            report(store, carol, &for_carol.lease_id, carol_claims_more.clone())
                .await
                .ok(),
            Some(ReportStatus::Accepted)
        );
        let status = store.job_status(job).await.expect("status");
        assert_eq!((status.state.as_str(), status.units_done), ("done", 1));
        assert_eq!((status.results_valid, status.results_invalid), (2, 1));

        // Credit: the lowest fuel claim in the quorum, once per valid result.
        assert_eq!(credit_of(store, "alice").await, (2.0, 1));
        assert_eq!(credit_of(store, "carol").await, (2.0, 1));
        assert_eq!(credit_of(store, "bob").await, (0.0, 0));

        // Invariant 2: a repeat is a no-op with the same answer.
        assert_eq!(
            report(store, carol, &for_carol.lease_id, carol_claims_more)
                .await
                .ok(),
            Some(ReportStatus::Duplicate)
        );
        assert_eq!(
            report(store, alice, &for_alice.lease_id, good).await.ok(),
            Some(ReportStatus::Duplicate)
        );
        assert_eq!(credit_of(store, "carol").await, (2.0, 1));
        assert_eq!(
            store.job_status(job).await.expect("status").credit_granted,
            4.0
        );

        let results = store.job_results(job).await.expect("results");
        let stdout = results.units[0].stdout.as_ref().expect("canonical stdout");
        assert_eq!(stdout.hash, cobble_core::BlobHash::of(b"42\n").0.to_vec());
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn expired_leases_are_reissued_and_late_reports_change_nothing() {
    for backend in backends().await {
        let store = &backend.store;
        let job = submit(store, 1, (1, 1, 3), 1).await;
        let (slow, fast) = (attach(store, "slow").await, attach(store, "fast").await);
        let stale = take_one(store, slow).await.expect("slow takes the unit");
        assert!(take_one(store, fast).await.is_none());
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        assert_eq!(store.expire_overdue().await.expect("sweep"), 1);
        let fresh = take_one(store, fast)
            .await
            .expect("reissued after the deadline");
        assert_eq!(fresh.unit_id, stale.unit_id);

        let answer = success(store, b"ok", 1_000_000_000).await;
        assert_eq!(
            report(store, slow, &stale.lease_id, answer.clone())
                .await
                .ok(),
            Some(ReportStatus::TooLate)
        );
        assert_eq!(
            credit_of(store, "slow").await,
            (0.0, 0),
            "no credit for a timed-out result"
        );
        assert_eq!(
            report(store, fast, &fresh.lease_id, answer).await.ok(),
            Some(ReportStatus::Accepted)
        );
        let status = store.job_status(job).await.expect("status");
        assert_eq!(
            (
                status.state.as_str(),
                status.results_timed_out,
                status.results_valid
            ),
            ("done", 1, 1)
        );
        // Accepted on one host's word: its credit waits for a passed check.
        assert_eq!(credit_of(store, "fast").await, (0.0, 0));
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn units_error_out_after_max_total_results() {
    for backend in backends().await {
        let store = &backend.store;
        let job = submit(store, 1, (2, 2, 3), 600).await;
        let hosts = [
            attach(store, "a").await,
            attach(store, "b").await,
            attach(store, "c").await,
        ];
        for (i, host) in hosts.iter().enumerate() {
            let manifest = take_one(store, *host)
                .await
                .expect("a replica for each host");
            let answer = success(store, format!("answer {i}").as_bytes(), 10).await;
            report(store, *host, &manifest.lease_id, answer)
                .await
                .expect("report");
        }
        let status = store.job_status(job).await.expect("status");
        assert_eq!(
            (status.state.as_str(), status.units_errored),
            ("done", 1),
            "{status:?}"
        );
        assert_eq!(status.credit_granted, 0.0);
        assert!(
            status.last_unit_error.starts_with("unit 0: no quorum"),
            "{status:?}"
        );
        backend.cleanup().await;
    }
}

/// A job with `[reduce]`: once both units are agreed, one more unit is
/// issued whose inputs are their canonical outputs under `INDEX/`, and the
/// job ends only when it is agreed too. A job whose unit errored gets no
/// reduce unit.
#[tokio::test]
async fn a_reduce_unit_assembles_the_agreed_outputs_and_only_those() {
    for backend in backends().await {
        let store = &backend.store;
        let mut spec = job_spec(store, 2, (2, 2, 2), 600, None).await;
        let blob = |bytes: &'static [u8]| async move {
            let hash = store.blobs.put(bytes).await.expect("blob");
            pb::BlobRef {
                hash: hash.0.to_vec(),
                size: bytes.len() as u64,
                chunk_root: Vec::new(),
            }
        };
        // A shared input, a reduce module and a file of the step's own.
        let table = blob(b"shared table").await;
        let assemble = blob(b"\0asm\x01\0\0\0 pretend assembler").await;
        let config = blob(b"assembly settings").await;
        spec.inputs = vec![pb::NamedBlob {
            name: "table.bin".into(),
            blob: Some(table.clone()),
        }];
        spec.env = vec![pb::EnvVar {
            name: "MODEL".into(),
            value: "sir".into(),
        }];
        spec.reduce = Some(pb::ReduceStep {
            args: vec!["assemble".into(), "/input".into()],
            module: Some(assemble.clone()),
            inputs: vec![pb::NamedBlob {
                name: "assemble.cfg".into(),
                blob: Some(config.clone()),
            }],
            ..Default::default()
        });
        let owner = owner(store).await;
        // Worst values first: a step's file named like a unit's folder,
        // one named like a shared input, a module never uploaded.
        for (hostile, expected) in [
            ("0", "/input/0/"),
            ("table.bin", "the job has an input of that name"),
        ] {
            let mut bad = spec.clone();
            if let Some(reduce) = bad.reduce.as_mut() {
                reduce.inputs[0].name = hostile.into();
            }
            let error = store.submit_job(&bad, &owner).await.expect_err(hostile);
            assert!(error.to_string().contains(expected), "{error}");
        }
        let mut bad = spec.clone();
        if let Some(reduce) = bad.reduce.as_mut() {
            reduce.module = Some(pb::BlobRef {
                hash: vec![7; 32],
                size: 10,
                chunk_root: Vec::new(),
            });
        }
        let error = store.submit_job(&bad, &owner).await.expect_err("missing");
        assert!(error.to_string().contains("reduce.module"), "{error}");
        let job = store.submit_job(&spec, &owner).await.expect("submit").0;
        let hosts = [attach(store, "a").await, attach(store, "b").await];
        for _ in 0..2 {
            for host in hosts {
                let manifest = take_one(store, host).await.expect("a unit");
                let answer =
                    success(store, format!("tile {}", manifest.args[0]).as_bytes(), 10).await;
                report(store, host, &manifest.lease_id, answer)
                    .await
                    .expect("report");
            }
        }
        let status = store.job_status(job).await.expect("status");
        assert_eq!(
            (status.state.as_str(), status.units_total, status.units_done),
            ("running", 3, 2),
            "the reduce unit counts from the start: {status:?}"
        );
        let mut reduce_inputs = Vec::new();
        for host in hosts {
            let manifest = take_one(store, host).await.expect("the reduce unit");
            assert_eq!(manifest.args, ["assemble", "/input"]);
            // The step's own module, in place of the job's; the job's env.
            assert_eq!(
                manifest.module.as_ref().map(|m| m.hash.clone()),
                Some(assemble.hash.clone())
            );
            assert_eq!(manifest.env, spec.env);
            reduce_inputs = manifest
                .inputs
                .iter()
                .map(|i| (i.name.clone(), i.blob.as_ref().map(|b| b.hash.clone())))
                .collect();
            let answer = success(store, b"assembled", 10).await;
            report(store, host, &manifest.lease_id, answer)
                .await
                .expect("report");
        }
        let names: Vec<&str> = reduce_inputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["table.bin", "assemble.cfg", "0/stdout", "1/stdout"]);
        assert_eq!(reduce_inputs[1].1, Some(config.hash.clone()));
        let status = store.job_status(job).await.expect("status");
        assert_eq!((status.state.as_str(), status.units_done), ("done", 3));
        let results = store.job_results(job).await.expect("results");
        let reduce: Vec<_> = results.units.iter().filter(|u| u.reduce).collect();
        assert_eq!(reduce.len(), 1, "{results:?}");
        assert_eq!(reduce[0].index, 2);

        // One unit that never agrees: errored, so no reduce unit.
        let mut spec = job_spec(store, 1, (2, 2, 2), 600, None).await;
        spec.reduce = Some(pb::ReduceStep::default());
        let failed = store.submit_job(&spec, &owner).await.expect("submit").0;
        for (i, host) in hosts.iter().enumerate() {
            let manifest = take_one(store, *host).await.expect("a replica");
            let answer = success(store, format!("disagree {i}").as_bytes(), 10).await;
            report(store, *host, &manifest.lease_id, answer)
                .await
                .expect("report");
        }
        let status = store.job_status(failed).await.expect("status");
        assert_eq!(
            (status.state.as_str(), status.units_errored),
            ("done", 1),
            "{status:?}"
        );
        let results = store.job_results(failed).await.expect("results");
        assert!(results.units.iter().all(|u| !u.reduce), "{results:?}");

        // A unit that wrote a file named stdout: its outputs cannot all sit
        // under /input/0/, so the reduce unit errors with the reason
        // instead of reaching hosts whose manifests would refuse it.
        let mut spec = job_spec(store, 1, (2, 2, 2), 600, None).await;
        spec.reduce = Some(pb::ReduceStep::default());
        let clash = store.submit_job(&spec, &owner).await.expect("submit").0;
        for host in hosts {
            let manifest = take_one(store, host).await.expect("a replica");
            let mut answer = success(store, b"same", 10).await;
            if let Some(Outcome::Success(success)) = answer.outcome.as_mut() {
                success.files = vec![pb::OutputFile {
                    name: "stdout".into(),
                    blob: success.stdout.clone(),
                }];
            }
            report(store, host, &manifest.lease_id, answer)
                .await
                .expect("report");
        }
        let status = store.job_status(clash).await.expect("status");
        assert_eq!(
            (status.state.as_str(), status.units_errored),
            ("done", 1),
            "{status:?}"
        );
        let results = store.job_results(clash).await.expect("results");
        let reduce = results
            .units
            .iter()
            .find(|u| u.reduce)
            .expect("the reduce unit");
        assert!(
            reduce.error.contains("two inputs are named \"0/stdout\""),
            "{reduce:?}"
        );
        assert!(
            take_one(store, hosts[0]).await.is_none(),
            "nothing more to do"
        );
        backend.cleanup().await;
    }
}

/// A unit that fails on every host errors with the hosts' own reason, in
/// `cobble status` and `cobble results`, not only a count of failures.
#[tokio::test]
async fn a_unit_errored_by_failures_says_what_the_hosts_said() {
    for backend in backends().await {
        let store = &backend.store;
        let job = submit(store, 1, (1, 1, 1), 600).await;
        let host = attach(store, "a").await;
        let manifest = take_one(store, host).await.expect("a replica");
        let failure = pb::ReportRequest {
            lease_id: manifest.lease_id.clone(),
            outcome: Some(Outcome::ClientError(pb::ClientError {
                kind: "memory".into(),
                message: "unit tried to use more than its 256 MiB memory limit".into(),
            })),
        };
        store.report_result(host, &failure).await.expect("report");
        let status = store.job_status(job).await.expect("status");
        assert!(
            status
                .last_unit_error
                .contains("no quorum of 1 within 1 results")
                && status
                    .last_unit_error
                    .contains("last host error (memory): unit tried to use more than its 256 MiB"),
            "{status:?}"
        );
        let results = store.job_results(job).await.expect("results");
        assert!(
            results.units[0].error.contains("256 MiB memory limit"),
            "{results:?}"
        );
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn bad_credentials_and_specs_are_refused() {
    for backend in backends().await {
        let store = &backend.store;
        let host = attach(store, "eve").await;
        assert!(matches!(
            store.authenticate_host(host.host_id, "guess").await,
            Err(Error::Unauthenticated(_))
        ));
        assert!(matches!(
            store.authenticate_host(9_999, "guess").await,
            Err(Error::Unauthenticated(_))
        ));
        // An existing account cannot be taken over without its key.
        let taken = store
            .register_host(&pb::RegisterHostRequest {
                account: "eve".into(),
                ..Default::default()
            })
            .await;
        assert!(matches!(taken, Err(Error::AlreadyExists(_))));
        let wrong = store
            .register_host(&pb::RegisterHostRequest {
                account: "eve".into(),
                account_key: "0123".into(),
                ..Default::default()
            })
            .await;
        assert!(matches!(wrong, Err(Error::Unauthenticated(_))));
        // A spec naming a blob that was never uploaded is refused whole.
        let ghost = pb::BlobRef {
            hash: vec![3; 32],
            size: 10,
            chunk_root: Vec::new(),
        };
        let spec = one_unit_spec(ghost, 1);
        let refused = store
            .submit_job(&spec, &super::store::owner(store).await)
            .await;
        assert!(
            matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("not uploaded")),
            "{refused:?}"
        );
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn a_restarted_coordinator_keeps_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path: &Path = dir.path();
    let config = Config::defaults_in(path);
    let store = cobble_coordinator::start(&config).await.expect("start");
    let key = store.signing_key().verifying_key();
    let job = submit(&store, 3, (1, 1, 2), 600).await;
    store.db.close().await;
    let store = cobble_coordinator::start(&config).await.expect("restart");
    assert_eq!(
        store.signing_key().verifying_key(),
        key,
        "the project key survives restarts"
    );
    assert_eq!(store.job_status(job).await.expect("status").units_total, 3);
}

#[tokio::test]
async fn progress_reported_by_hosts_shows_in_job_status() {
    for backend in backends().await {
        let store = &backend.store;
        let job = submit(store, 2, (1, 1, 2), 600).await;
        let (worker, stranger) = (
            attach(store, "worker").await,
            attach(store, "stranger").await,
        );
        let lease = take_one(store, worker).await.expect("a unit").lease_id;
        let report = |host, fraction| {
            let lease = lease.clone();
            async move {
                store
                    .record_progress(
                        host,
                        &[pb::LeaseProgress {
                            lease_id: lease,
                            fraction,
                        }],
                    )
                    .await
                    .expect("progress")
            }
        };
        report(worker, 0.5).await;
        // Another host cannot move someone else's progress; nonsense is clamped.
        report(stranger, 1.0).await;
        assert_eq!(store.job_status(job).await.expect("status").progress, 0.25);
        report(worker, 7.0).await;
        assert_eq!(store.job_status(job).await.expect("status").progress, 0.5);
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn a_numeric_validator_accepts_results_within_tolerance() {
    for backend in backends().await {
        let store = &backend.store;
        let numeric = pb::Validator {
            kind: "numeric".into(),
            rel_tolerance: 1e-9,
            abs_tolerance: 0.0,
            module: None,
        };
        let job = submit_with(store, 1, (2, 2, 4), 600, Some(numeric)).await;
        let (a, b) = (attach(store, "a").await, attach(store, "b").await);
        let (for_a, for_b) = (
            take_one(store, a).await.expect("replica"),
            take_one(store, b).await.expect("replica"),
        );
        let close_a = success(store, b"mean 0.33333333333333331 n 1000\n", 1_000_000_000).await;
        let close_b = success(store, b"mean 0.33333333333333337 n 1000\n", 1_000_000_000).await;
        report(store, a, &for_a.lease_id, close_a)
            .await
            .expect("report");
        report(store, b, &for_b.lease_id, close_b.clone())
            .await
            .expect("report");
        // The stdouts are compared by the validator daemon, which reads
        // them outside any transaction; one it cannot read now (a blob
        // store down) keeps the unit waiting, and loses nothing.
        let Some(Outcome::Success(answer)) = &close_b.outcome else {
            panic!("a success");
        };
        let stdout = answer.stdout.as_ref().expect("a stdout");
        let hash = cobble_core::BlobHash::from_slice(&stdout.hash).expect("hash");
        let bytes = store.blobs.read(&hash).await.expect("stored");
        store.blobs.remove(&hash).await.expect("removed");
        assert_eq!(store.run_validators().await.expect("a pass"), 0);
        let status = store.job_status(job).await.expect("status");
        assert_eq!(status.state, "running", "{status:?}");
        store.blobs.put(&bytes).await.expect("back");
        assert_eq!(store.run_validators().await.expect("a pass"), 1);
        let status = store.job_status(job).await.expect("status");
        assert_eq!(
            (status.state.as_str(), status.results_valid),
            ("done", 2),
            "{status:?}"
        );
        backend.cleanup().await;
    }
}

/// Many hosts at once: no spurious busy errors on SQLite, no lost or
/// doubled work on PostgreSQL, and every invariant holds at the end.
#[tokio::test]
async fn concurrent_hosts_keep_every_invariant() {
    const UNITS: i64 = 30;
    const HOSTS: usize = 8;
    for backend in backends().await {
        let store = backend.store.clone();
        let job = submit(&store, UNITS, (2, 2, 4), 600).await;
        let answer = success(&store, b"agreed\n", 1_000_000_000).await;
        let mut tasks = Vec::new();
        for h in 0..HOSTS {
            let host = attach(&store, &format!("host{h}")).await;
            let (store, answer) = (store.clone(), answer.clone());
            tasks.push(tokio::spawn(async move {
                let mut units = Vec::new();
                // Like a worker, a host keeps asking until the job is done:
                // a unit's further replicas appear only once its first is out.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
                while std::time::Instant::now() < deadline {
                    let Some(manifest) = take_one(&store, host).await else {
                        let status = store.job_status(job).await.expect("status");
                        if status.state == "done" {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        continue;
                    };
                    units.push(manifest.unit_id);
                    let status = report(&store, host, &manifest.lease_id, answer.clone())
                        .await
                        .expect("no spurious errors under concurrency");
                    assert_ne!(status, ReportStatus::Duplicate);
                }
                units
            }));
        }
        let mut per_host = Vec::new();
        for task in tasks {
            per_host.push(task.await.expect("host task"));
        }
        for units in &per_host {
            let mut distinct = units.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                units.len(),
                "invariant 1: a host got a unit twice"
            );
        }
        let status = store.job_status(job).await.expect("status");
        assert_eq!(
            (status.state.as_str(), status.units_done),
            ("done", UNITS as u32),
            "{status:?}"
        );
        // Hosts turn trusted on the way (adaptive replication): units they
        // got alone have one valid result, the rest exactly a quorum.
        let alone = status.units_unreplicated;
        assert_eq!(
            status.results_valid,
            2 * (UNITS as u32 - alone) + alone,
            "exactly a quorum per replicated unit: {status:?}"
        );
        let board = store.leaderboard("users", 100).await.expect("leaderboard");
        let credit: f64 = board.entries.iter().map(|e| e.total_credit).sum();
        let valid: u64 = board.entries.iter().map(|e| e.valid_results).sum();
        assert!(
            valid >= 2 * u64::from(UNITS as u32 - alone)
                && valid <= u64::from(status.results_valid),
            "credited results {valid} of {status:?}"
        );
        assert!(
            (credit - status.credit_granted).abs() < 1e-9,
            "{credit} vs {}",
            status.credit_granted
        );
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn an_idle_host_waiting_for_work_gets_a_job_submitted_meanwhile() {
    for backend in backends().await {
        let store = backend.store.clone();
        let host = attach(&store, "patient").await;
        let waiting = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .request_work_waiting(host, 1, None, std::time::Duration::from_secs(30))
                    .await
            })
        };
        // Nothing to hand out yet: the request is held, not answered empty.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "an empty answer was not held");
        submit(&store, 1, (1, 1, 1), 600).await;
        let assignments = waiting.await.expect("task").expect("request work");
        assert_eq!(assignments.len(), 1, "the waiting host got the new unit");
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn manifests_commit_to_chunk_lists_and_replicas_are_known_to_the_tracker_filter() {
    for backend in backends().await {
        let store = &backend.store;
        submit(store, 1, (2, 2, 2), 600).await;
        let (a, b, c) = (
            attach(store, "a").await,
            attach(store, "b").await,
            attach(store, "c").await,
        );
        let first = take_one(store, a).await.expect("a's replica");
        take_one(store, b).await.expect("b's replica");
        let module = first.module.expect("module");
        let stored = store
            .blobs
            .read(&cobble_core::BlobHash::from_slice(&module.hash).expect("hash"))
            .await
            .expect("module bytes");
        assert_eq!(
            module.chunk_root,
            cobble_core::chunk::ChunkList::of_bytes(&stored)
                .root()
                .to_vec()
        );
        // Invariant 8: the tracker leaves out exactly the unit's replicas.
        let sharing = store
            .hosts_sharing_unit(&first.lease_id)
            .await
            .expect("query");
        assert!(sharing.contains(&a.host_id) && sharing.contains(&b.host_id));
        assert!(!sharing.contains(&c.host_id));
        assert!(
            store
                .hosts_sharing_unit("no such lease")
                .await
                .expect("query")
                .is_empty()
        );
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn hosts_transfer_reports_add_up_in_the_project_totals() {
    for backend in backends().await {
        let store = &backend.store;
        let (a, b) = (attach(store, "a").await, attach(store, "b").await);
        let delta = |from_coordinator, from_peers, served_to_peers| pb::TransferDelta {
            from_coordinator,
            from_peers,
            served_to_peers,
        };
        store
            .add_transfers(a, &delta(100, 0, 700))
            .await
            .expect("a");
        store.add_transfers(b, &delta(0, 700, 0)).await.expect("b");
        store
            .add_transfers(a, &delta(1, 2, 3))
            .await
            .expect("again");
        // An absurd claim is bounded rather than overflowing the sums.
        store
            .add_transfers(b, &delta(u64::MAX, 0, 0))
            .await
            .expect("clamped");
        let stats = store.transfer_stats().await.expect("stats");
        assert_eq!(stats.from_peers, 702);
        assert_eq!(stats.served_to_peers, 703);
        assert_eq!(stats.from_coordinator, 101 + (1 << 50));
        assert_eq!(
            stats.hosts.first().map(|h| h.host_id),
            Some(a.host_id),
            "biggest sharer first"
        );
        // A sharer who did not allow their name is listed without it.
        let private = store
            .register_host(&pb::RegisterHostRequest {
                account: "quiet-quinn".into(),
                host_name: "quinns-desktop".into(),
                ..Default::default()
            })
            .await
            .expect("attach");
        let quiet = store
            .authenticate_host(private.host_id, &private.host_key)
            .await
            .expect("credentials");
        store
            .add_transfers(quiet, &delta(0, 0, 5))
            .await
            .expect("q");
        let stats = store.transfer_stats().await.expect("stats");
        let listed = stats
            .hosts
            .iter()
            .find(|h| h.host_id == private.host_id)
            .expect("listed");
        assert_eq!(listed.host_name, format!("host-{}", private.host_id));
        assert_eq!(listed.account, format!("anonymous-{}", private.account_id));
        backend.cleanup().await;
    }
}

/// Uploads nothing refers to are deleted once old enough; a job's module
/// and a reported output are kept, and so is anything younger than the
/// grace period.
#[tokio::test]
async fn unreferenced_blobs_are_collected_and_referenced_ones_kept() {
    for backend in backends().await {
        let store = &backend.store;
        submit(store, 1, (1, 1, 1), 600).await;
        let host = attach(store, "a").await;
        let manifest = take_one(store, host).await.expect("a unit");
        let output = b"an output nobody else has\n";
        report(
            store,
            host,
            &manifest.lease_id,
            success(store, output, 10).await,
        )
        .await
        .expect("report");
        let orphan = store
            .blobs
            .put(b"uploaded, never submitted")
            .await
            .expect("blob");
        let module = cobble_core::BlobHash::of(b"\0asm\x01\0\0\0 pretend module");
        let kept = cobble_core::BlobHash::of(output);

        // Everything is younger than a day: nothing goes.
        let day_ago = cobble_core::now_ms() - 86_400_000;
        assert_eq!(
            store
                .collect_unreferenced_blobs(day_ago)
                .await
                .expect("collect"),
            (0, 0)
        );
        let (count, bytes) = store
            .collect_unreferenced_blobs(cobble_core::now_ms() + 1_000)
            .await
            .expect("collect");
        assert_eq!((count, bytes), (1, 25), "only the orphan goes");
        assert!(!store.blobs.contains(&orphan).await.expect("look up"));
        assert!(
            store.blobs.contains(&module).await.expect("look up"),
            "the job's module stays"
        );
        assert!(
            store.blobs.contains(&kept).await.expect("look up"),
            "a result's output stays"
        );
        backend.cleanup().await;
    }
}

/// With an invitation code set (BOINC's `invite_code`), new accounts need
/// it; hosts of existing accounts attach with their account key alone.
#[tokio::test]
async fn accounts_are_created_by_invitation_when_the_project_says_so() {
    for backend in backends().await {
        let store = backend
            .store
            .clone()
            .with_invite_code(Some("sesame".into()));
        let request = |account: &str, code: &str, key: &str| pb::RegisterHostRequest {
            account: account.into(),
            account_key: key.into(),
            host_name: "box".into(),
            invite_code: code.into(),
            ..Default::default()
        };
        for code in ["", "open sesame", "SESAME"] {
            let refused = store.register_host(&request("mallory", code, "")).await;
            assert!(
                matches!(&refused, Err(Error::PermissionDenied(m)) if m.contains("invitation")),
                "{code:?}: {refused:?}"
            );
        }
        let invited = store
            .register_host(&request("alice", "sesame", ""))
            .await
            .expect("the invited may create an account");
        let key = invited.new_account_key.expect("a new account's key");
        store
            .register_host(&request("alice", "", &key))
            .await
            .expect("a second host of an existing account needs no code");
        let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(store.db.pool())
            .await
            .expect("count");
        assert_eq!(accounts, 1, "refused attempts created nothing");
        backend.cleanup().await;
    }
}

/// First attaches racing on a new team, or on one new account, on every
/// backend: all hosts land in the one team; of two creating one account,
/// one wins and the other is told the account exists, never an internal
/// error (a unique violation, before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_attaches_share_a_new_team_and_one_account() {
    for backend in backends().await {
        let store = &backend.store;
        let attaches = (0..16).map(|index| {
            let store = store.clone();
            async move {
                store
                    .register_host(&pb::RegisterHostRequest {
                        account: format!("racer{index}"),
                        team: "brand-new".into(),
                        host_name: "box".into(),
                        ..Default::default()
                    })
                    .await
            }
        });
        let attached: Vec<_> = futures_join_all(attaches).await;
        assert!(attached.iter().all(Result::is_ok), "{attached:?}");
        let teams: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM teams WHERE name = 'brand-new'")
            .fetch_one(store.db.pool())
            .await
            .expect("count");
        assert_eq!(teams, 1);
        let members: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM accounts a JOIN teams t ON t.id = a.team_id WHERE t.name = 'brand-new'",
        )
        .fetch_one(store.db.pool())
        .await
        .expect("count");
        assert_eq!(members, 16);

        let same = (0..2).map(|_| {
            let store = store.clone();
            async move {
                store
                    .register_host(&pb::RegisterHostRequest {
                        account: "twin".into(),
                        host_name: "box".into(),
                        ..Default::default()
                    })
                    .await
            }
        });
        let results: Vec<_> = futures_join_all(same).await;
        let won = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(won, 1, "{results:?}");
        for result in &results {
            if let Err(error) = result {
                assert!(
                    matches!(error, Error::AlreadyExists(_)),
                    "the loser is told the account exists: {error:?}"
                );
            }
        }
    }
}

/// Runs futures at once on the current runtime and collects their outputs.
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut outputs = Vec::new();
    for task in tasks {
        outputs.push(task.await.expect("task"));
    }
    outputs
}
