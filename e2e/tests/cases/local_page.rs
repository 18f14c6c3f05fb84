//! The volunteer's local page, end to end: a real worker computing a real
//! unit serves its page on loopback; Pause stops the unit (seen through
//! `cobble-worker status`, as the volunteer would) and Resume restarts it.
//! A request without the page's token, or addressed to another name (a
//! site that rebound its DNS name to 127.0.0.1), changes nothing.

use cobble_e2e::{Coordinator, http_request, start_worker_with, submit_folding_job, wait_until};
use cobble_worker::activity::SuspendReason;
use cobble_worker::tasks::TaskState;
use std::time::Duration;

#[test]
fn the_local_page_pauses_and_resumes_only_for_its_own_page() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let worker_dir = dir.join("volunteer");
    let worker = start_worker_with("cobble-worker", &coordinator, &worker_dir, "owner", &[]);
    // A unit of a few seconds, to pause in the middle.
    submit_folding_job(
        &coordinator,
        dir,
        ["HPHPPHHPHPPHPHHPPHPH", "0", "12", "15000000"],
        12,
        "deadline_s = 600\nfuel = 1000000000000",
    );
    let mut page = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            page = worker
                .log_text()
                .lines()
                .find_map(|l| l.split("local page at ").nth(1))
                .map(|url| url.trim().trim_end_matches('/').to_string())
                .unwrap_or_default();
            !page.is_empty()
        }),
        "no local page in the log: {}",
        worker.log_text()
    );
    let status = || cobble_e2e::worker_status(&worker_dir);
    let running =
        || status().is_some_and(|s| s.tasks.iter().any(|t| t.state == TaskState::Running));
    assert!(
        wait_until(Duration::from_secs(60), running),
        "no unit started"
    );

    let address = page.trim_start_matches("http://").to_string();
    let local = [("Host", address.as_str())];
    let shown = http_request(&page, "GET", "/", &local, "");
    assert_eq!(shown.status, 200, "{shown:?}");
    assert!(
        shown.body.contains("Pause") && shown.body.contains("job "),
        "{}",
        shown.body
    );
    let token = shown
        .body
        .split("name=\"token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's token")
        .to_string();
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    fn with<'a>(
        form: &[(&'a str, &'a str)],
        extra: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        let mut headers = form.to_vec();
        headers.extend_from_slice(extra);
        headers
    }

    // Forged: no token, a wrong one, the right one under another name.
    let cases = [
        (with(&form, &local), String::new()),
        (with(&form, &local), "token=guess".to_string()),
        (
            with(&form, &[("Host", "evil.example")]),
            format!("token={token}"),
        ),
    ];
    for (headers, body) in &cases {
        let answer = http_request(&page, "POST", "/pause", headers, body);
        assert_eq!(answer.status, 403, "{body}: {answer:?}");
    }
    let rebound = http_request(&page, "GET", "/", &[("Host", "evil.example:80")], "");
    assert_eq!(rebound.status, 403, "a rebound name reads nothing");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        status().is_some_and(|s| s.suspended.is_none()),
        "a forged request paused the worker"
    );

    // The page's own Pause, then Resume.
    let paused = http_request(
        &page,
        "POST",
        "/pause",
        &with(&form, &local),
        &format!("token={token}"),
    );
    assert_eq!(paused.status, 303, "{paused:?}");
    assert!(
        wait_until(Duration::from_secs(10), || status()
            .is_some_and(|s| s.suspended == Some(SuspendReason::Paused))),
        "cobble-worker status does not say paused: {:?}",
        status()
    );
    let progress = || {
        status()
            .and_then(|s| s.tasks.iter().find_map(|t| t.progress))
            .unwrap_or(0.0)
    };
    let held = progress();
    std::thread::sleep(Duration::from_secs(2));
    assert!(progress() <= held + 1e-9, "the unit moved while paused");
    let resumed = http_request(
        &page,
        "POST",
        "/resume",
        &with(&form, &local),
        &format!("token={token}"),
    );
    assert_eq!(resumed.status, 303);
    assert!(
        wait_until(Duration::from_secs(30), || status()
            .is_some_and(|s| s.suspended.is_none())
            && progress() > held),
        "the unit did not go on after Resume: {:?}",
        status()
    );
}
