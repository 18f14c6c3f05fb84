//! Researcher accounts over real gRPC: each job belongs to whoever
//! submitted it; only they or an admin cancel it, list its results or
//! download its data; quotas refuse with the figures; revoking a token
//! works at once; the audit log says who did what.

use super::grpc::serve_on_loopback;
use cobble_client::{Connection, Credentials};
use cobble_coordinator::Config;
use cobble_coordinator::store::FIRST_RESEARCHER;
use cobble_proto::v1::{self as pb, job_service_client::JobServiceClient};
use tonic::Code;

fn spec_with_units(module: pb::BlobRef, units: u64) -> pb::JobSpec {
    let mut spec = super::store::one_unit_spec(module, 1_000);
    spec.split = Some(pb::SplitRule {
        rule: Some(pb::split_rule::Rule::Range(pb::RangeSplit {
            start: 0,
            end: units as i64,
            per_unit: 1,
        })),
    });
    spec
}

#[tokio::test]
async fn jobs_belong_to_their_researcher_under_quotas_and_audit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::defaults_in(dir.path());
    let store = cobble_coordinator::start(&config).await.expect("start");
    // The first start made the project's token file the admin account.
    let owner = store
        .researcher_named(FIRST_RESEARCHER)
        .await
        .expect("the first researcher");
    assert!(owner.admin);
    let add = |name: &str, stored: i64, units: i64| {
        let store = store.clone();
        let name = name.to_string();
        async move {
            store
                .add_researcher(&name, false, stored, units)
                .await
                .expect("add")
        }
    };
    let alice_token = add("alice", 0, 0).await;
    let bob_token = add("bob", 0, 0).await;
    let carol_token = add("carol", 1_000, 0).await;
    let dave_token = add("dave", 0, 3).await;
    // Names are checked, and unique.
    for bad in ["", "operator", "with space", &"x".repeat(65), "a/b"] {
        let error = store.add_researcher(bad, false, 0, 0).await.expect_err(bad);
        assert!(error.to_string().contains("researcher name"), "{error}");
    }
    let error = store
        .add_researcher("alice", false, 0, 0)
        .await
        .expect_err("duplicate");
    assert!(error.to_string().contains("exists"), "{error}");
    assert!(store.add_researcher("eve", false, -1, 0).await.is_err());

    let (url, security, stop, server) = serve_on_loopback(config.clone()).await;
    let channel = cobble_client::connect(&url, &security)
        .await
        .expect("connect");
    let as_researcher = |token: &str| {
        Connection::from_channel(channel.clone(), Credentials::Researcher(token.into()))
    };
    let owner_token = std::fs::read_to_string(dir.path().join("researcher.token")).expect("token");
    let (alice, bob, carol, dave, admin) = (
        as_researcher(&alice_token),
        as_researcher(&bob_token),
        as_researcher(&carol_token),
        as_researcher(&dave_token),
        as_researcher(owner_token.trim()),
    );
    let jobs = JobServiceClient::new(channel.clone());

    let module = alice
        .upload_bytes(b"\0asm\x01\0\0\0 alice's module")
        .await
        .expect("alice uploads");
    let job = jobs
        .clone()
        .submit_job(alice.request(pb::SubmitJobRequest {
            spec: Some(spec_with_units(module.clone(), 2)),
        }))
        .await
        .expect("alice submits")
        .into_inner()
        .job_id;

    // Bob may see the status (public) but not cancel, list or download.
    jobs.clone()
        .get_job_status(bob.request(pb::JobRequest { job_id: job }))
        .await
        .expect("status is public");
    let status = jobs
        .clone()
        .cancel_job(bob.request(pb::JobRequest { job_id: job }))
        .await
        .expect_err("bob cancels alice's job");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = jobs
        .clone()
        .get_job_results(bob.request(pb::JobRequest { job_id: job }))
        .await
        .expect_err("bob lists alice's results");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let hash = cobble_core::BlobHash::from_slice(&module.hash).expect("hash");
    let fetched = bob
        .download_verified(&hash, &dir.path().join("stolen"))
        .await
        .expect_err("bob downloads alice's module");
    assert!(
        fetched
            .to_string()
            .contains("not an upload or output of yours"),
        "{fetched}"
    );
    assert!(!dir.path().join("stolen").exists());
    let status = jobs
        .clone()
        .cancel_job(bob.request(pb::JobRequest { job_id: 999 }))
        .await
        .expect_err("no such job");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // Alice and the admin may.
    jobs.clone()
        .get_job_results(alice.request(pb::JobRequest { job_id: job }))
        .await
        .expect("alice lists her results");
    alice
        .download_verified(&hash, &dir.path().join("mine"))
        .await
        .expect("alice downloads her module");
    jobs.clone()
        .get_job_results(admin.request(pb::JobRequest { job_id: job }))
        .await
        .expect("the admin lists any job");

    // Quotas refuse with the figures, before anything is stored.
    let error = carol
        .upload_bytes(&[7u8; 2_000])
        .await
        .expect_err("past carol's stored bytes");
    let text = error.to_string();
    assert!(text.contains("may store 1000"), "{text}");
    assert!(text.contains("2000 bytes"), "{text}");
    carol.upload_bytes(&[7u8; 600]).await.expect("within quota");
    carol
        .upload_bytes(&[7u8; 600])
        .await
        .expect("the same blob again costs nothing");
    assert!(
        carol.upload_bytes(&[8u8; 600]).await.is_err(),
        "600 + 600 > 1000"
    );
    let status = jobs
        .clone()
        .submit_job(dave.request(pb::SubmitJobRequest {
            spec: Some(spec_with_units(module.clone(), 5)),
        }))
        .await
        .expect_err("past dave's units in flight");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("may have 3"), "{status:?}");
    jobs.clone()
        .submit_job(dave.request(pb::SubmitJobRequest {
            spec: Some(spec_with_units(module.clone(), 3)),
        }))
        .await
        .expect("within dave's quota");

    // Alice cancels her own job; then her token is revoked and stops
    // working at once, on a connection that stays open.
    jobs.clone()
        .cancel_job(alice.request(pb::JobRequest { job_id: job }))
        .await
        .expect("alice cancels her job");
    store.revoke_researcher("alice").await.expect("revoke");
    let status = jobs
        .clone()
        .get_job_results(alice.request(pb::JobRequest { job_id: job }))
        .await
        .expect_err("revoked");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    assert!(store.revoke_researcher("alice").await.is_err(), "twice");
    let status = jobs
        .clone()
        .get_job_results(as_researcher("not-a-token").request(pb::JobRequest { job_id: job }))
        .await
        .expect_err("unknown token");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // The audit log: who did what, and nothing that was refused.
    let log = store.audit_log(100).await.expect("audit log");
    let lines: Vec<String> = log
        .iter()
        .rev()
        .map(|e| format!("{} {} {:?}", e.actor, e.action, e.job_id))
        .collect();
    let has = |line: &str| lines.iter().any(|l| l == line);
    assert!(has(&format!("alice submit Some({job})")), "{lines:?}");
    assert!(has(&format!("alice results Some({job})")), "{lines:?}");
    assert!(has(&format!("owner results Some({job})")), "{lines:?}");
    assert!(has(&format!("alice cancel Some({job})")), "{lines:?}");
    assert!(has("alice download None"), "{lines:?}");
    assert!(has("operator researcher_revoke None"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("bob ")), "{lines:?}");
    let listed = store.list_researchers().await.expect("list");
    let carol_row = listed
        .iter()
        .find(|i| i.researcher.name == "carol")
        .expect("carol");
    assert_eq!(carol_row.stored_bytes, 600);
    assert!(
        listed
            .iter()
            .any(|i| i.researcher.name == "alice" && i.revoked_ms.is_some())
    );

    stop.send(()).ok();
    server.await.expect("server task").expect("clean shutdown");
}

/// A project from before researcher accounts: on first start its token
/// becomes the admin account and adopts every existing job; a later start
/// does not re-create an account the operator revoked.
#[tokio::test]
async fn the_old_single_token_becomes_the_first_account() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Config::defaults_in(dir.path());
    let store = cobble_coordinator::start(&config).await.expect("start");
    let job = super::store::submit(&store, 1, (1, 1, 1), 600).await;
    // As the database was before: a job with no owner and no accounts.
    for statement in [
        "UPDATE jobs SET researcher_id = NULL",
        "DELETE FROM researchers",
    ] {
        sqlx::query(statement)
            .execute(store.db.pool())
            .await
            .expect(statement);
    }
    store.db.close().await;
    let store = cobble_coordinator::start(&config).await.expect("restart");
    let owner = store
        .researcher_named(FIRST_RESEARCHER)
        .await
        .expect("adopted");
    let token = std::fs::read_to_string(dir.path().join("researcher.token")).expect("token");
    assert_eq!(
        store
            .researcher_by_token(token.trim())
            .await
            .expect("token"),
        owner
    );
    store.authorize_job(&owner, job).await.expect("owns it");
    let alice = {
        let token = store
            .add_researcher("alice", false, 0, 0)
            .await
            .expect("add");
        store.researcher_by_token(&token).await.expect("alice")
    };
    let error = store
        .authorize_job(&alice, job)
        .await
        .expect_err("not hers");
    assert!(error.to_string().contains("another researcher"), "{error}");
    store
        .revoke_researcher(FIRST_RESEARCHER)
        .await
        .expect("revoke");
    store.db.close().await;
    let store = cobble_coordinator::start(&config).await.expect("restart");
    let error = store
        .researcher_by_token(token.trim())
        .await
        .expect_err("stays revoked");
    assert!(error.to_string().contains("revoked"), "{error}");
}
