//! The volunteer's local page against other pages: a real worker computing
//! a real unit serves its page on loopback; a request without the page's
//! token, or addressed to another name (a site that rebound its DNS name
//! to 127.0.0.1), pauses nothing, finishes nothing and writes no
//! preferences. (`browser.rs` clicks the buttons themselves.)

use cobble_e2e::{Coordinator, http_request, wait_until, worker_busy_with_local_page};
use cobble_worker::activity::SuspendReason;
use std::time::Duration;

#[test]
fn the_local_page_obeys_only_its_own_page() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let worker_dir = dir.join("volunteer");
    let (_worker, page) = worker_busy_with_local_page(&coordinator, dir, &worker_dir);
    let status = || cobble_e2e::worker_status(&worker_dir);

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

    // Forged: no token, a wrong one, the right one under another name;
    // against every button and the preferences form.
    let cases = [
        (with(&form, &local), String::new()),
        (with(&form, &local), "token=guess".to_string()),
        (
            with(&form, &[("Host", "evil.example")]),
            format!("token={token}"),
        ),
    ];
    for path in ["/pause", "/finish", "/prefs"] {
        for (headers, token_field) in &cases {
            let body = match path {
                "/prefs" => format!("{token_field}&suspend_cpu_usage=0&disk_max_used_gb=1"),
                _ => token_field.clone(),
            };
            let answer = http_request(&page, "POST", path, headers, &body);
            assert_eq!(answer.status, 403, "{path} {body}: {answer:?}");
        }
    }
    let rebound = http_request(&page, "GET", "/", &[("Host", "evil.example:80")], "");
    assert_eq!(rebound.status, 403, "a rebound name reads nothing");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        status().is_some_and(|s| s.suspended.is_none() && !s.finishing),
        "a forged request paused or stopped the worker: {:?}",
        status()
    );
    assert!(
        !worker_dir.join("prefs.toml").exists(),
        "a forged form wrote the preferences"
    );

    // The page's own token is accepted (the browser test clicks the
    // buttons and watches the unit stop and go on).
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
}
