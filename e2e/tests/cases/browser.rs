//! The web site and the volunteer's local page in a real browser (headless
//! Chromium through WebDriver), after a real job computed by real workers:
//! what a visitor sees and clicks, not only what the server sends.
//! Screenshots are kept in `target/screenshots/` as the run's artifacts.

use cobble_e2e::browser::{Browser, screenshot_dir};
use cobble_e2e::{Coordinator, start_worker_with, wait_until, write_job};
use cobble_worker::activity::SuspendReason;
use serde_json::Value;
use std::time::Duration;

/// Reloads `url` until `ready` holds of the browser (lists are cached for
/// up to 10 s).
fn reload_until(browser: &Browser, url: &str, mut ready: impl FnMut(&Browser) -> bool) -> bool {
    wait_until(Duration::from_secs(30), || {
        browser.goto(url);
        ready(browser)
    })
}

/// The names in the first table's name column, in page order.
fn listed_names(browser: &Browser) -> Vec<String> {
    browser
        .find_all("table tbody tr td:nth-child(2) a")
        .iter()
        .map(|a| browser.text(a))
        .collect()
}

/// Opens the local page and holds it still: it reloads itself every 5 s
/// unless someone is typing, and a reload between finding a button or a
/// field and using it would leave a stale reference.
fn open_still(browser: &Browser, page: &str) {
    browser.goto(page);
    browser.execute("editing = true; return null;");
}

#[test]
fn a_visitor_sees_the_leaderboard_profiles_and_a_finished_job() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start_with(dir, &["--project-name", "Prime Hunt"]);
    let site = coordinator.site();
    let job = coordinator.submit(&write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        "name = \"primes\"\nmodule = \"primes.wasm\"\nargs = [\"{start}\", \"{end}\"]\n\
         [split]\nrange = { start = 0, end = 80000, per_unit = 10000 }\n",
    ));
    let _workers: Vec<_> = [
        ("ada", "pioneers"),
        ("grace", "pioneers"),
        ("linus", "kernel"),
    ]
    .iter()
    .map(|(user, team)| {
        start_worker_with(
            "cobble-worker",
            &coordinator,
            &dir.join(user),
            user,
            &["--team", team, "--public-name"],
        )
    })
    .collect();
    // A small Mandelbrot zoom whose reduce unit assembles the PNG.
    let zoom = coordinator.submit(&write_job(
        &dir.join("zoom"),
        cobble_unit_artifacts::MANDELBROT,
        "mandelbrot.wasm",
        "name = \"zoom\"\nmodule = \"mandelbrot.wasm\"\n\
         args = [\"render\", \"{index}\", \"2\", \"2\", \"160\", \"120\", \"-0.7436\", \"0.1318\", \"0.00003\", \"400\"]\n\
         [split]\nrange = { start = 0, end = 4, per_unit = 1 }\n\
         [reduce]\nargs = [\"assemble\", \"/input\", \"2\", \"2\", \"/output/zoom.png\"]\n",
    ));
    for job in [&job, &zoom] {
        let (done, status) = coordinator.wait_done(job, Duration::from_secs(240));
        assert!(done, "{status}");
    }
    let cli: Value =
        serde_json::from_str(&coordinator.cli_ok(&["leaderboard", "--json"])).expect("json");
    let expected: Vec<String> = cli["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(expected.len(), 3, "{cli}");

    let browser = Browser::start();
    let shots = screenshot_dir();

    // The users page lists them in the leaderboard's order.
    let users = format!("{site}/users");
    let mut shown = Vec::new();
    assert!(
        reload_until(&browser, &users, |b| {
            shown = listed_names(b);
            shown == expected
        }),
        "the users page shows {shown:?}, the leaderboard {expected:?}"
    );
    browser.screenshot(&shots.join("users.png"));

    // Clicking the first opens their page, whose chart has a point for the
    // day they earned credit (today).
    let first = browser.find("table tbody tr td:nth-child(2) a");
    browser.click(&first);
    let url = browser.wait_for_url(|u| u.contains("/users/"));
    assert!(url.contains("/users/"), "{url}");
    assert_eq!(browser.text_of("h1").as_deref(), Some(expected[0].as_str()));
    let points = browser.find_all(".chart svg circle.day");
    assert_eq!(points.len(), 1, "one day of credit, one point");
    browser.screenshot(&shots.join("user.png"));

    // Their team's page lists its members: ada and grace.
    let team_link = browser.find_all("main a[href^='/teams/']");
    let team_link = team_link.first().expect("the user page links the team");
    browser.click(team_link);
    let url = browser.wait_for_url(|u| u.contains("/teams/"));
    assert!(url.contains("/teams/"), "{url}");
    let team_name = browser.text_of("h1").unwrap_or_default();
    let mut members = listed_names(&browser);
    members.sort();
    let mut expected_members: Vec<&str> = match team_name.as_str() {
        "pioneers" => vec!["ada", "grace"],
        "kernel" => vec!["linus"],
        other => panic!("unexpected team {other}"),
    };
    expected_members.sort();
    assert_eq!(members, expected_members, "members of {team_name}");
    browser.screenshot(&shots.join("team.png"));

    // The job page: 100%, and its progress bar full.
    let job_page = format!("{site}/jobs/{job}");
    browser.goto(&job_page);
    let bar = browser.find("[role=progressbar]");
    assert_eq!(
        browser.property(&bar, "ariaValueNow").as_str(),
        Some("100"),
        "{}",
        browser.source()
    );
    assert!(browser.text(&browser.find("main")).contains("100%"));
    browser.screenshot(&shots.join("job.png"));

    // The researcher signs in with their token and sees the Mandelbrot
    // job's assembled picture (the reduce unit's output) load.
    browser.goto(&format!("{site}/login?next=/jobs/{zoom}"));
    browser.fill(
        &browser.find("input[name=token]"),
        &coordinator.researcher_token(),
    );
    browser.click(&browser.find("form button[type=submit]"));
    let url = browser.wait_for_url(|u| u.ends_with(&format!("/jobs/{zoom}")));
    assert!(url.ends_with(&format!("/jobs/{zoom}")), "{url}");
    let preview = browser.wait_for("img.preview[alt^='zoom.png']");
    let loaded = wait_until(Duration::from_secs(10), || {
        browser
            .property(&preview, "naturalWidth")
            .as_u64()
            .is_some_and(|w| w > 0)
    });
    assert!(
        loaded,
        "the assembled PNG did not load: {}",
        browser.source()
    );
    assert_eq!(
        browser.property(&preview, "naturalWidth").as_u64(),
        Some(160)
    );
    assert_eq!(
        browser.property(&preview, "naturalHeight").as_u64(),
        Some(120)
    );
    browser.screenshot(&shots.join("job-mandelbrot.png"));

    // On a phone's width the navigation and the list still fit.
    browser.phone(390, 844);
    browser.goto(&users);
    let overflow = browser
        .execute("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        .as_bool();
    assert_eq!(
        overflow,
        Some(true),
        "the users page scrolls sideways on a phone"
    );
    browser.screenshot(&shots.join("users-phone.png"));
}

#[test]
fn the_local_page_pause_button_stops_the_unit_and_resume_restarts_it() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let worker_dir = dir.join("volunteer");
    let (_worker, page) = cobble_e2e::worker_busy_with_local_page(&coordinator, dir, &worker_dir);
    let status = || cobble_e2e::worker_status(&worker_dir);

    let browser = Browser::start();
    open_still(&browser, &page);
    browser.screenshot(&screenshot_dir().join("local-running.png"));
    let body = browser.text_of("body").unwrap_or_default();
    assert!(
        body.contains("credit today") && body.contains("credit in total"),
        "{body}"
    );
    let button = |label: &str| {
        browser
            .find_all("button")
            .into_iter()
            .find(|b| browser.text(b) == label)
            .unwrap_or_else(|| panic!("no {label} button:\n{}", browser.source()))
    };
    browser.click(&button("Pause"));
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
    open_still(&browser, &page);
    assert!(
        browser
            .text_of(".state")
            .unwrap_or_default()
            .starts_with("Paused by you"),
        "{}",
        browser.source()
    );
    browser.screenshot(&screenshot_dir().join("local-paused.png"));

    browser.click(&button("Resume"));
    assert!(
        wait_until(Duration::from_secs(10), || status()
            .is_some_and(|s| s.suspended.is_none())),
        "not resumed: {:?}",
        status()
    );
    assert!(
        wait_until(Duration::from_secs(20), || progress() > held),
        "the unit did not go on after Resume"
    );

    // Preferences: a value prefs.toml would refuse is refused with its
    // message and nothing is written; a good one is saved.
    let prefs_file = worker_dir.join("prefs.toml");
    open_still(&browser, &page);
    browser.fill(&browser.find("input[name=disk_max_used_gb]"), "0");
    browser.click(&button("Save preferences"));
    let mut message = String::new();
    wait_until(Duration::from_secs(10), || {
        message = browser.text_of(".message").unwrap_or_default();
        !message.is_empty()
    });
    assert!(
        message.contains("disk_max_used_gb = 0: must be at least 0.05 (50 MB)"),
        "{message}"
    );
    assert!(!prefs_file.exists(), "a refused form wrote prefs.toml");
    let kept = browser.property(&browser.find("input[name=disk_max_used_gb]"), "value");
    assert_eq!(kept.as_str(), Some("0"), "the form keeps what was typed");
    browser.fill(&browser.find("input[name=disk_max_used_gb]"), "5");
    browser.click(&button("Save preferences"));
    wait_until(Duration::from_secs(10), || {
        message = browser.text_of(".message").unwrap_or_default();
        message.starts_with("Saved to")
    });
    assert!(message.starts_with("Saved to"), "{message}");
    browser.screenshot(&screenshot_dir().join("local-prefs-saved.png"));
    let saved = std::fs::read_to_string(&prefs_file).expect("prefs.toml written");
    assert!(saved.contains("disk_max_used_gb = 5.0"), "{saved}");
    let checked = std::process::Command::new(cobble_e2e::binary("cobble-worker"))
        .args(["prefs", "--data-dir"])
        .arg(&worker_dir)
        .output()
        .expect("cobble-worker prefs");
    assert!(
        String::from_utf8_lossy(&checked.stdout).contains("disk_max_used_gb = 5.0"),
        "the saved file reads back through the worker's own parser"
    );

    // Finish, then stop: the units in hand are completed and reported, and
    // no other unit is fetched, though the job has more.
    open_still(&browser, &page);
    let in_hand: std::collections::BTreeSet<i64> = status()
        .map(|s| s.tasks.iter().map(|t| t.unit_id).collect())
        .unwrap_or_default();
    browser.click(&button("Finish, then stop"));
    assert!(
        wait_until(Duration::from_secs(10), || status()
            .is_some_and(|s| s.finishing)),
        "cobble-worker status does not say finishing"
    );
    let mut seen = in_hand.clone();
    let drained = wait_until(Duration::from_secs(180), || {
        let tasks = status().map(|s| s.tasks).unwrap_or_default();
        seen.extend(tasks.iter().map(|t| t.unit_id));
        tasks.is_empty()
    });
    assert!(drained, "the units in hand did not finish: {:?}", status());
    std::thread::sleep(Duration::from_secs(3));
    seen.extend(
        status()
            .iter()
            .flat_map(|s| s.tasks.iter().map(|t| t.unit_id)),
    );
    // A request in flight at the click may still bring a unit or two.
    assert!(
        seen.len() <= in_hand.len() + 2,
        "units fetched after Finish: {seen:?} against {in_hand:?} in hand"
    );
    open_still(&browser, &page);
    assert!(
        browser
            .text_of(".state")
            .unwrap_or_default()
            .starts_with("Finished"),
        "{}",
        browser.text_of(".state").unwrap_or_default()
    );
    browser.screenshot(&screenshot_dir().join("local-finished.png"));
}
