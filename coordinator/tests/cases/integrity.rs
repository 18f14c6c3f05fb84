//! Result integrity under sabotage, on every backend: what a cheater with a
//! stock client tried against quorum 2 must now fail, and adaptive
//! replication, spot-checks and punitive validation must catch a host that
//! turns bad after earning trust.

use super::store::{
    FUEL_LIMIT, attach, backends, backends_with, credit_of, report, submit, success, take_one,
    test_policy,
};
use cobble_coordinator::Error;
use cobble_coordinator::integrity::Policy;
use cobble_coordinator::store::{HostIdentity, ReportStatus, Store};
use cobble_proto::v1::{self as pb, report_request::Outcome};
use std::collections::HashSet;

async fn take(store: &Store, host: HostIdentity, slots: u32) -> Vec<pb::Manifest> {
    let key = store.signing_key().verifying_key();
    store
        .request_work(host, slots)
        .await
        .expect("request work")
        .iter()
        .map(|a| cobble_core::manifest::verify(a, &key).expect("signed"))
        .collect()
}

/// The right answer for a unit: its first argument, echoed.
fn answer_of(manifest: &pb::Manifest) -> Vec<u8> {
    format!("{}\n", manifest.args.first().map_or("", String::as_str)).into_bytes()
}

#[tokio::test]
async fn two_fresh_accounts_asking_back_to_back_share_no_unit() {
    // The default policy, as shipped: replicas spaced in time.
    let policy = Policy {
        spot_check_untrusted: 0.0,
        ..Policy::default()
    };
    for backend in backends_with(&policy).await {
        let store = &backend.store;
        submit(store, 6, (2, 2, 5), 600).await;
        let (mallory, trudy) = (attach(store, "mallory").await, attach(store, "trudy").await);
        let first = take(store, mallory, 16).await;
        let second = take(store, trudy, 16).await;
        let units: HashSet<i64> = first.iter().map(|m| m.unit_id).collect();
        assert!(
            second.iter().all(|m| !units.contains(&m.unit_id)),
            "back-to-back askers hold both replicas of a unit"
        );
        // New hosts with no valid result get few units.
        assert!(
            first.len() <= 2 && second.len() <= 2,
            "{} {}",
            first.len(),
            second.len()
        );
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn one_host_holds_only_what_its_cpus_justify() {
    for backend in backends().await {
        let store = &backend.store;
        submit(store, 64, (1, 1, 3), 600).await;
        let attached = store
            .register_host(&pb::RegisterHostRequest {
                account: "hoarder".into(),
                host_name: "one-cpu".into(),
                cpus: 1,
                ..Default::default()
            })
            .await
            .expect("attach");
        let hoarder = store
            .authenticate_host(attached.host_id, &attached.host_key)
            .await
            .expect("credentials");
        let mut held = 0;
        for _ in 0..5 {
            held += take(store, hoarder, u32::MAX).await.len();
        }
        assert_eq!(held, 2, "a new one-CPU host holds at most two units");
        let status = store.job_status(1).await.expect("status");
        assert_eq!(status.results_in_progress, 2);
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn fuel_claimed_above_the_limit_is_an_invalid_result() {
    for backend in backends().await {
        let store = &backend.store;
        let job = submit(store, 1, (2, 2, 5), 600).await;
        let (mallory, trudy) = (attach(store, "mallory").await, attach(store, "trudy").await);
        let (alice, bob) = (attach(store, "alice").await, attach(store, "bob").await);
        let m = take_one(store, mallory).await.expect("unit");
        let t = take_one(store, trudy).await.expect("replica");
        let greedy = success(store, b"42\n", u64::MAX).await;
        for (host, lease) in [(mallory, &m.lease_id), (trudy, &t.lease_id)] {
            assert_eq!(
                report(store, host, lease, greedy.clone()).await.ok(),
                Some(ReportStatus::Accepted)
            );
        }
        let status = store.job_status(job).await.expect("status");
        assert_eq!(
            (status.units_done, status.credit_granted),
            (0, 0.0),
            "{status:?}"
        );
        // Honest hosts finish the unit; the liars get nothing.
        for host in [alice, bob] {
            let manifest = take_one(store, host).await.expect("new replicas");
            let honest = success(store, b"42\n", 3_000_000_000).await;
            report(store, host, &manifest.lease_id, honest)
                .await
                .expect("report");
        }
        let status = store.job_status(job).await.expect("status");
        assert_eq!((status.state.as_str(), status.results_valid), ("done", 2));
        assert_eq!(credit_of(store, "mallory").await, (0.0, 0));
        assert_eq!(credit_of(store, "alice").await, (3.0, 1));
        assert!(status.credit_granted <= 2.0 * FUEL_LIMIT as f64 / 1e9);
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn output_names_must_be_plain_and_a_refusal_loses_nothing() {
    for backend in backends().await {
        let store = &backend.store;
        let job = submit(store, 1, (1, 1, 3), 600).await;
        let host = attach(store, "mallory").await;
        let manifest = take_one(store, host).await.expect("unit");
        let good = success(store, b"7\n", 1_000_000).await;
        let blob = match &good.outcome {
            Some(Outcome::Success(s)) => s.stdout.clone(),
            _ => None,
        };
        for name in [
            "../../pwned",
            "/etc/passwd",
            "nul\0byte",
            "a/../../b",
            "",
            "line\nbreak",
        ] {
            let mut bad = good.clone();
            if let Some(Outcome::Success(s)) = &mut bad.outcome {
                s.files = vec![pb::OutputFile {
                    name: name.into(),
                    blob: blob.clone(),
                }];
            }
            let refused = report(store, host, &manifest.lease_id, bad).await;
            assert!(
                matches!(&refused, Err(Error::InvalidArgument(m)) if m.contains("plain")),
                "{name:?}: {refused:?}"
            );
        }
        let mut twice = good.clone();
        if let Some(Outcome::Success(s)) = &mut twice.outcome {
            let file = pb::OutputFile {
                name: "out.txt".into(),
                blob: blob.clone(),
            };
            s.files = vec![file.clone(), file];
        }
        assert!(matches!(
            report(store, host, &manifest.lease_id, twice).await,
            Err(Error::InvalidArgument(_))
        ));
        // The lease is untouched: the honest report still goes through.
        assert_eq!(
            report(store, host, &manifest.lease_id, good).await.ok(),
            Some(ReportStatus::Accepted)
        );
        let results = store.job_results(job).await.expect("results");
        assert_eq!(results.units[0].state, "done");
        backend.cleanup().await;
    }
}

#[tokio::test]
async fn always_failing_hosts_stop_getting_work() {
    for backend in backends().await {
        let store = &backend.store;
        submit(store, 200, (1, 1, 3), 600).await;
        let host = attach(store, "broken").await;
        let error = pb::ReportRequest {
            lease_id: String::new(),
            outcome: Some(Outcome::ClientError(pb::ClientError {
                kind: "trap".into(),
                message: "always".into(),
            })),
        };
        let mut taken = 0;
        for _ in 0..100 {
            let Some(manifest) = take_one(store, host).await else {
                break;
            };
            taken += 1;
            report(store, host, &manifest.lease_id, error.clone())
                .await
                .expect("report");
        }
        // Quota 64, halved with each error: the host runs dry within the day.
        assert!(taken < 16, "an always-failing host took {taken} units");
        assert!(take_one(store, host).await.is_none());
        backend.cleanup().await;
    }
}

/// Whether the cheater's wrong answer has been paid (after a passed check).
async fn cheated_paid(store: &Store, unit_id: Option<i64>) -> bool {
    let Some(unit_id) = unit_id else {
        return false;
    };
    let paid: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM results WHERE unit_id = $1 AND credit = 'granted'",
    )
    .bind(unit_id)
    .fetch_one(store.db.pool())
    .await
    .expect("count");
    paid > 0
}

/// Whether a unit has more than one result (the test peeks; hosts cannot).
async fn replicated(store: &Store, unit_id: i64) -> bool {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM results WHERE unit_id = $1")
        .bind(unit_id)
        .fetch_one(store.db.pool())
        .await
        .expect("count");
    count > 1
}

/// A host earns trust, is given units alone, slips one wrong answer in
/// among them, is paid for it after passing a check, and is then caught:
/// every unit it returned alone is verified again, the wrong canonical
/// result is replaced and its credit taken back.
#[tokio::test]
async fn a_host_that_turns_bad_after_earning_trust_is_caught_and_undone() {
    // Checks often enough that the script's steps come within the job.
    let policy = Policy {
        trust_after: 2,
        spot_check_trusted: 0.3,
        ..test_policy()
    };
    const UNITS: i64 = 80;
    for backend in backends_with(&policy).await {
        let store = &backend.store;
        let job = submit(store, UNITS, (2, 2, 8), 600).await;
        let tricky = attach(store, "tricky").await;
        let honest = [
            attach(store, "h1").await,
            attach(store, "h2").await,
            attach(store, "h3").await,
        ];
        // 0: honest until it has cheated alone; 1: honest until paid for
        // it; 2: wrong on the next replicated unit; 3: honest again.
        let mut phase = 0;
        let mut cheated_unit = None;
        for _ in 0..2_000 {
            if store.job_status(job).await.expect("status").state == "done" {
                break;
            }
            if let Some(manifest) = take_one(store, tricky).await {
                let alone = !replicated(store, manifest.unit_id).await;
                let wrong = match phase {
                    0 if alone => {
                        cheated_unit = Some(manifest.unit_id);
                        phase = 1;
                        true
                    }
                    2 if !alone => {
                        phase = 3;
                        true
                    }
                    _ => false,
                };
                let stdout = if wrong {
                    b"wrong\n".to_vec()
                } else {
                    answer_of(&manifest)
                };
                let request = success(store, &stdout, 1_000_000_000).await;
                report(store, tricky, &manifest.lease_id, request)
                    .await
                    .expect("report");
            }
            for host in honest {
                if let Some(manifest) = take_one(store, host).await {
                    let request = success(store, &answer_of(&manifest), 1_000_000_000).await;
                    report(store, host, &manifest.lease_id, request)
                        .await
                        .expect("report");
                }
            }
            store
                .release_deferred_credit()
                .await
                .expect("pay deferred credit");
            if phase == 1 && cheated_paid(store, cheated_unit).await {
                phase = 2;
            }
        }
        assert_eq!(phase, 3, "the script did not run to its end");
        let status = store.job_status(job).await.expect("status");
        assert_eq!(status.state, "done", "{status:?}");
        assert!(status.credit_revoked > 0.0, "{status:?}");
        let results = store.job_results(job).await.expect("results");
        for unit in &results.units {
            let stdout = unit.stdout.as_ref().expect("stdout");
            let bytes = store
                .blobs
                .read(&cobble_core::BlobHash::from_slice(&stdout.hash).expect("hash"))
                .await
                .expect("blob");
            assert_eq!(
                bytes,
                format!("{}\n", unit.args[0]).into_bytes(),
                "unit {} has a wrong canonical result",
                unit.index
            );
        }
        let cheated = cheated_unit.expect("cheated alone");
        let verified: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM results WHERE unit_id = $1 AND validate_state = 'valid'",
        )
        .bind(cheated)
        .fetch_one(store.db.pool())
        .await
        .expect("count");
        assert!(
            verified >= 2,
            "the cheated unit was verified again by a quorum"
        );
        let caught: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM results WHERE host_id = $1 AND validate_state = 'invalid'",
        )
        .bind(tricky.host_id)
        .fetch_one(store.db.pool())
        .await
        .expect("count");
        assert_eq!(caught, 2, "the cheated unit and the one it was caught on");
        backend.cleanup().await;
    }
}

/// A researcher's known answers (`[spot_check]`): a known-answer unit goes
/// to several hosts like any other, each result is judged at once against
/// the answer (even after the job is done), a wrong one catches its host,
/// a right one earns credit capped at the known fuel, and the unit never
/// shows among the job's results.
#[tokio::test]
async fn known_answer_units_check_every_host_that_gets_one() {
    use super::store::job_spec;
    for backend in backends().await {
        let store = &backend.store;
        let answer = b"known\n";
        let answer_ref = pb::BlobRef {
            hash: blake3::hash(answer).as_bytes().to_vec(),
            size: answer.len() as u64,
            chunk_root: Vec::new(),
        };
        let mut spec = job_spec(store, 1, (2, 2, 4), 600, None).await;
        spec.known_answers = vec![pb::KnownAnswer {
            args: vec!["known".into()],
            digest: cobble_core::output::digest(&answer_ref, &[]).to_vec(),
            fuel: 2_000_000_000,
        }];
        spec.known_answer_copies = 3;
        let (job, units) = store
            .submit_job(&spec, &super::store::owner(store).await)
            .await
            .expect("submit");
        assert_eq!(units, 1, "known-answer units are not the job's units");

        let hosts = [
            attach(store, "honest-a").await,
            attach(store, "honest-b").await,
            attach(store, "cheater").await,
        ];
        let mut held = Vec::new();
        for host in hosts {
            for manifest in take(store, host, 2).await {
                held.push((host, manifest));
            }
        }
        let known: Vec<_> = held.iter().filter(|(_, m)| m.args == ["known"]).collect();
        assert_eq!(known.len(), 3, "every host got a copy: {held:?}");
        // Honest hosts first: the job's unit completes, and with it the job.
        for (host, manifest) in held.iter().filter(|(h, _)| h.host_id != hosts[2].host_id) {
            // A claim above the known fuel earns no more than it.
            let fuel = if manifest.args == ["known"] {
                5_000_000_000
            } else {
                1_000_000_000
            };
            let request = success(store, &answer_of(manifest), fuel).await;
            report(store, *host, &manifest.lease_id, request)
                .await
                .expect("report");
        }
        let status = store.job_status(job).await.expect("status");
        assert_eq!(status.state, "done", "{status:?}");
        let (cheater, cheat) = known
            .iter()
            .find(|(h, _)| h.host_id == hosts[2].host_id)
            .expect("the cheater's copy");
        let wrong = success(store, b"not the answer\n", 1_000_000_000).await;
        report(store, *cheater, &cheat.lease_id, wrong)
            .await
            .expect("a late report is still judged");

        let status = store.job_status(job).await.expect("status");
        assert_eq!(
            (
                status.known_answer_passed,
                status.known_answer_failed,
                status.units_total
            ),
            (2, 1, 1),
            "{status:?}"
        );
        let results = store.job_results(job).await.expect("results");
        assert_eq!(results.units.len(), 1, "{results:?}");
        let expected = cobble_coordinator::credit::for_fuel(1_000_000_000)
            + cobble_coordinator::credit::for_fuel(2_000_000_000);
        let (credit, valid) = credit_of(store, "honest-a").await;
        assert!(
            (credit - expected).abs() < 1e-9 && valid == 2,
            "{credit} {valid}"
        );
        assert_eq!(credit_of(store, "cheater").await, (0.0, 0));
        // Caught: the cheater's quota is cut like any invalid result's.
        let quota: i64 = sqlx::query_scalar("SELECT daily_quota FROM hosts WHERE id = $1")
            .bind(cheater.host_id)
            .fetch_one(store.db.pool())
            .await
            .expect("quota");
        assert!(
            quota < Policy::default().initial_daily_quota as i64,
            "{quota}"
        );
        backend.cleanup().await;
    }
}

/// Colluders start as new hosts, and two of them can hold one unit before
/// anyone has a record. Their agreement is not enough while a proven host
/// is about: the unit gets one more result, kept for proven hosts, and the
/// colluders' answer does not become canonical.
#[tokio::test]
async fn an_agreement_of_new_hosts_only_waits_for_a_proven_host() {
    let policy = Policy {
        proven_after: 1,
        proven_replica_window_ms: 60_000,
        trust_after: 1_000,
        ..test_policy()
    };
    for backend in backends_with(&policy).await {
        let store = &backend.store;
        submit(store, 3, (2, 2, 6), 600).await;
        // Before anyone has a record, two colluders take both replicas of
        // one unit, and two honest hosts both replicas of another.
        let colluders = [attach(store, "c1").await, attach(store, "c2").await];
        let mut forged = Vec::new();
        for host in colluders {
            forged.push((host, take_one(store, host).await.expect("a replica")));
        }
        assert_eq!(
            forged[0].1.unit_id, forged[1].1.unit_id,
            "further replicas go first"
        );
        let honest = [attach(store, "p").await, attach(store, "q").await];
        for host in honest {
            let manifest = take_one(store, host).await.expect("a replica");
            let request = success(store, &answer_of(&manifest), 1_000_000_000).await;
            report(store, host, &manifest.lease_id, request)
                .await
                .expect("report");
        }
        // Now proven, p takes the last unit: a proven host is active.
        take_one(store, honest[0]).await.expect("the third unit");
        let colluded_unit = forged[0].1.unit_id;
        for (host, manifest) in &forged {
            let request = success(store, b"forged\n", 1_000_000_000).await;
            report(store, *host, &manifest.lease_id, request)
                .await
                .expect("report");
        }
        let unit_state: String = sqlx::query_scalar("SELECT state FROM units WHERE id = $1")
            .bind(colluded_unit)
            .fetch_one(store.db.pool())
            .await
            .expect("unit");
        assert_eq!(unit_state, "pending", "two new hosts alone decided a unit");
        // The confirming replica is kept for proven hosts: a newcomer gets
        // the other unit's replica, q the confirmation.
        let newcomer = attach(store, "new").await;
        let held = take(store, newcomer, 2).await;
        assert!(
            held.iter().all(|m| m.unit_id != colluded_unit),
            "a new host got the confirming replica: {held:?}"
        );
        let confirming = take(store, honest[1], 2).await;
        let confirm = confirming
            .iter()
            .find(|m| m.unit_id == colluded_unit)
            .expect("a proven host gets the confirming replica");
        let request = success(store, &answer_of(confirm), 1_000_000_000).await;
        report(store, honest[1], &confirm.lease_id, request)
            .await
            .expect("report");
        let canonical: Option<i64> =
            sqlx::query_scalar("SELECT canonical_result_id FROM units WHERE id = $1")
                .bind(colluded_unit)
                .fetch_one(store.db.pool())
                .await
                .expect("unit");
        assert_eq!(
            canonical, None,
            "the forged answer must not become canonical"
        );
        backend.cleanup().await;
    }
}
