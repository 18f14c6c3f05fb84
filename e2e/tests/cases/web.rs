//! The project's web site, over real HTTP from a real coordinator, after a
//! real job computed by real workers: the home page's counters and join
//! command, the ranked lists agreeing with `cobble leaderboard --json`,
//! names a volunteer chose as HTML shown escaped, the server status, the
//! JSON API, and the answers to bad requests.

use cobble_e2e::{
    Coordinator, HttpAnswer, http_get, http_request, start_worker_with, wait_until, write_job,
};
use serde_json::Value;
use std::time::Duration;

/// A volunteer who names themselves as a script, and a team likewise.
const SCRIPT_NAME: &str = "<script>alert(1)</script>";
const HTML_TEAM: &str = "<img src=x onerror=alert(2)>";

fn json(answer: &HttpAnswer) -> Value {
    assert!(
        answer.content_type.starts_with("application/json"),
        "{answer:?}"
    );
    serde_json::from_str(&answer.body).unwrap_or_else(|e| panic!("{e}: {}", answer.body))
}

/// The page's text with askama's numeric entities for `<` and `>` read
/// as the named ones: either is escaped.
fn escaped(body: &str) -> String {
    body.replace("&#60;", "&lt;").replace("&#62;", "&gt;")
}

fn names(entries: &Value) -> Vec<(u64, String)> {
    entries
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["rank"].as_u64().expect("rank"),
                e["name"].as_str().expect("name").to_string(),
            )
        })
        .collect()
}

#[test]
fn the_site_shows_the_project_its_volunteers_and_its_status() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start_with(
        dir,
        &[
            "--project-name",
            "Prime Hunt",
            "--project-description",
            "Counting primes <fast>",
        ],
    );
    let site = coordinator
        .web_url
        .clone()
        .expect("the banner names the site");
    let job = coordinator.submit(&write_job(
        dir,
        cobble_unit_artifacts::PRIMES,
        "primes.wasm",
        "name = \"p\"\nmodule = \"primes.wasm\"\nargs = [\"{start}\", \"{end}\"]\n\
         [split]\nrange = { start = 0, end = 60000, per_unit = 10000 }\n",
    ));
    let named = ["--public-name"];
    let _workers = [
        start_worker_with(
            "cobble-worker",
            &coordinator,
            &dir.join("w1"),
            SCRIPT_NAME,
            &["--team", HTML_TEAM, "--public-name"],
        ),
        start_worker_with(
            "cobble-worker",
            &coordinator,
            &dir.join("w2"),
            "bob",
            &named,
        ),
        start_worker_with(
            "cobble-worker",
            &coordinator,
            &dir.join("w3"),
            "carol",
            &named,
        ),
        // One who did not allow their name: anonymous in public.
        start_worker_with(
            "cobble-worker",
            &coordinator,
            &dir.join("w4"),
            "secret-sam",
            &[],
        ),
    ];
    let (done, status) = coordinator.wait_done(&job, Duration::from_secs(180));
    assert!(done, "{status}");

    // The local page's "credit today": all of bob's credit came today.
    let mut bob = None;
    let today_is_all = wait_until(Duration::from_secs(30), || {
        bob = cobble_e2e::worker_status(&dir.join("w2"));
        bob.as_ref().is_some_and(|s| {
            s.credit.as_ref().is_some_and(|c| {
                c.total > 0.0 && s.credit_today.is_some_and(|t| (t - c.total).abs() < 1e-9)
            })
        })
    });
    assert!(today_is_all, "{bob:?}");

    // The lists are cached for up to 10 s: wait for them to show everyone.
    let cli: Value =
        serde_json::from_str(&coordinator.cli_ok(&["leaderboard", "--json"])).expect("json");
    let expected = names(&cli["entries"]);
    assert_eq!(expected.len(), 4, "{cli}");
    assert!(
        expected.iter().any(|(_, n)| n.starts_with("anonymous-"))
            && !cli.to_string().contains("secret-sam"),
        "a volunteer without consent is anonymous on the leaderboard: {cli}"
    );
    let mut listed = Value::Null;
    let agreed = wait_until(Duration::from_secs(15), || {
        listed = json(&http_get(&site, "/api/v1/users?per_page=100"));
        names(&listed["entries"]) == expected
    });
    assert!(agreed, "site {listed} against cli {cli}");
    assert_eq!(listed["total"], 4);
    for (mine, theirs) in listed["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(cli["entries"].as_array().into_iter().flatten())
    {
        let close = |field: &str| {
            (mine[field].as_f64().unwrap_or(-1.0) - theirs[field].as_f64().unwrap_or(-2.0)).abs()
                < 1e-6
        };
        assert!(close("total_credit"), "{mine} against {theirs}");
        assert_eq!(mine["valid_results"], theirs["valid_results"]);
    }

    // The users page: every name, escaped, never as markup.
    let page = http_get(&site, "/users");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page.content_type.starts_with("text/html"), "{page:?}");
    assert!(
        escaped(&page.body).contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{}",
        page.body
    );
    assert!(
        !page.body.contains(SCRIPT_NAME),
        "a name rendered as markup"
    );
    assert!(!page.body.contains(HTML_TEAM), "a team rendered as markup");
    assert!(page.body.contains("bob") && page.body.contains("carol"));
    assert!(!page.body.contains("secret-sam") && page.body.contains("anonymous-"));
    let by_rac = http_get(&site, "/users?sort=rac&page=1");
    assert_eq!(by_rac.status, 200);
    let teams = http_get(&site, "/teams");
    assert!(
        escaped(&teams.body).contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{}",
        teams.body
    );
    let hosts = json(&http_get(&site, "/api/v1/hosts?sort=rac"));
    assert_eq!(
        hosts["entries"].as_array().map(Vec::len),
        Some(4),
        "{hosts}"
    );
    assert!(!hosts.to_string().contains("secret-sam"), "{hosts}");
    // A private name is not found by guessing it.
    let guessed = json(&http_get(&site, "/api/v1/users?q=secret"));
    assert_eq!(guessed["total"], 0, "{guessed}");

    // A search ranks a row among everyone, not among the matches.
    let found = json(&http_get(&site, "/api/v1/users?q=ScRiPt"));
    let rank_in_all = expected
        .iter()
        .find(|(_, name)| name == SCRIPT_NAME)
        .map(|(rank, _)| *rank);
    assert_eq!(
        names(&found["entries"]),
        vec![(rank_in_all.expect("listed"), SCRIPT_NAME.to_string())]
    );
    // LIKE's wildcards are taken as they are.
    let none = json(&http_get(&site, "/api/v1/users?q=%25"));
    assert_eq!(none["total"], 0, "{none}");

    // The home page: the project, its figures, how to join.
    let home = http_get(&site, "/");
    assert_eq!(home.status, 200);
    assert!(home.body.contains("Prime Hunt"));
    assert!(escaped(&home.body).contains("Counting primes &lt;fast&gt;"));
    assert!(home.body.contains(&format!(
        "cobble-worker install --coordinator {} --user YOUR_NAME",
        coordinator.url
    )));
    let project = json(&http_get(&site, "/api/v1/project"));
    assert_eq!(project["name"], "Prime Hunt");
    assert!(
        project["counters"]["total_credit"].as_f64() > Some(0.0),
        "{project}"
    );
    assert_eq!(project["counters"]["users"], 4, "totals count everyone");

    // The server status, as a page and as JSON.
    let status_page = http_get(&site, "/status");
    assert_eq!(status_page.status, 200);
    assert!(
        status_page.body.contains("units done"),
        "{}",
        status_page.body
    );
    let status = json(&http_get(&site, "/api/v1/status"));
    let units: Vec<(String, u64)> =
        serde_json::from_value(status["units_by_state"].clone()).expect("pairs");
    assert_eq!(units, vec![("done".to_string(), 6)], "{status}");
    let sweeper = status["loops"][0].clone();
    assert!(sweeper[1].as_i64() > Some(0), "the sweeper ran: {status}");

    // Bad requests: a clear answer with the right status, never a 500.
    for (path, expected) in [
        ("/nowhere", 404),
        ("/users/1/extra", 404),
        ("/users?page=0", 400),
        ("/users?page=-1", 400),
        ("/users?page=abc", 400),
        ("/users?page=99999999999", 400),
        ("/users?per_page=1000", 400),
        ("/users?sort=name", 400),
        ("/users?page=500", 200),
    ] {
        let answer = http_get(&site, path);
        assert_eq!(answer.status, expected, "{path}: {answer:?}");
        assert!(answer.content_type.starts_with("text/html"), "{path}");
    }
    let long = format!("/users?q={}", "a".repeat(10_000));
    let refused = http_get(&site, &long);
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.body.contains("at most 100 characters"),
        "{}",
        refused.body
    );
    for (path, expected) in [
        ("/api/v1/nowhere", 404),
        ("/api/v1/users?page=0", 400),
        ("/api/v1/users?per_page=-5", 400),
    ] {
        let answer = http_get(&site, path);
        assert_eq!(answer.status, expected, "{path}: {answer:?}");
        let body = json(&answer);
        assert_eq!(body["status"], expected);
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let beyond = json(&http_get(&site, "/api/v1/users?page=500"));
    assert_eq!(beyond["entries"].as_array().map(Vec::len), Some(0));
    assert_eq!(beyond["total"], 4);

    // From the list to a user's page, to their host's and their team's.
    let top = &listed["entries"][0];
    let user_path = format!("/users/{}", top["id"]);
    assert!(
        page.body.contains(&format!("href=\"{user_path}\"")),
        "{}",
        page.body
    );
    let user = http_get(&site, &user_path);
    assert_eq!(user.status, 200, "{user:?}");
    assert!(user.body.contains("Credit over time"));
    assert!(
        user.body.matches("class=\"day\"").count() >= 1,
        "a point for today: {}",
        user.body
    );
    let profile = json(&http_get(&site, &format!("/api/v1{user_path}")));
    assert_eq!(profile["rank"], 1);
    assert_eq!(profile["name"], top["name"]);
    let history = profile["history"].as_array().expect("history");
    assert!(
        history
            .last()
            .is_some_and(|p| p["total_credit"] == top["total_credit"])
    );
    let host_id = profile["members"][0]["id"]
        .as_i64()
        .expect("the user's host");
    let host = json(&http_get(&site, &format!("/api/v1/hosts/{host_id}")));
    assert_eq!(host["link"]["id"], top["id"], "the host's owner: {host}");
    let outcomes: Vec<&str> = host["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter_map(|r| r["outcome"].as_str())
        .collect();
    assert!(outcomes.contains(&"valid"), "{host}");
    let host_page = http_get(&site, &format!("/hosts/{host_id}"));
    assert!(host_page.body.contains("Latest results") && host_page.body.contains("valid"));
    let scripted = listed["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == SCRIPT_NAME)
        .expect("listed");
    let scripted_page = http_get(&site, &format!("/users/{}", scripted["id"]));
    assert!(
        !scripted_page.body.contains(SCRIPT_NAME),
        "a name rendered as markup"
    );
    let team_id = json(&http_get(
        &site,
        &format!("/api/v1/users/{}", scripted["id"]),
    ))["link"]["id"]
        .as_i64()
        .expect("a team");
    let team = http_get(&site, &format!("/teams/{team_id}"));
    assert_eq!(team.status, 200);
    assert!(escaped(&team.body).contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!team.body.contains(HTML_TEAM) && !team.body.contains(SCRIPT_NAME));
    for path in ["/users/999999", "/users/abc", "/hosts/-1", "/teams/1e9"] {
        let answer = http_get(&site, path);
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
        assert!(answer.body.contains("There is no"), "{path}");
    }
    let missing = http_get(&site, "/api/v1/hosts/999999");
    assert_eq!(missing.status, 404);
    assert_eq!(json(&missing)["status"], 404);

    // The statistics export, on demand beside the running server, read
    // with a real XML parser: totals equal the site's, the private name
    // is nowhere, the script name is text.
    // The leader wrote one at start, before anyone attached.
    let at_start = http_get(&site, "/stats/tables.xml");
    assert_eq!(at_start.status, 200, "{at_start:?}");
    let export = coordinator.admin(&["export-stats"]);
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let tables = http_get(&site, "/stats/tables.xml");
    assert_eq!(tables.status, 200);
    assert!(tables.content_type.starts_with("application/xml"));
    assert!(
        tables.body.contains("<nusers_total>4</nusers_total>"),
        "{}",
        tables.body
    );
    let users_gz = http_get(&site, "/stats/user.gz");
    assert_eq!(users_gz.status, 200);
    assert_eq!(users_gz.content_type, "application/gzip");
    for path in [
        "/stats/../researcher.token",
        "/stats/project.key",
        "/stats/%2e%2e",
    ] {
        assert_eq!(http_get(&site, path).status, 404, "{path}");
    }
    let check = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/stats_check.py"
        ))
        .arg(coordinator.data_dir.join("stats"))
        .output()
        .expect("python3");
    let facts = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "the export does not parse: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        facts.contains("users 4\n") && facts.contains("hosts 4\n"),
        "{facts}"
    );
    let exported_credit: f64 = facts
        .lines()
        .find_map(|l| l.strip_prefix("user_credit "))
        .and_then(|v| v.parse().ok())
        .expect("a credit sum");
    let site_credit = project["counters"]["total_credit"]
        .as_f64()
        .expect("credit");
    assert!(
        (exported_credit - site_credit).abs() < 1e-3,
        "{facts} against {project}"
    );
    assert!(
        facts.contains(&format!("user_name {SCRIPT_NAME}")),
        "{facts}"
    );
    assert!(
        !facts.contains("secret-sam"),
        "a private name was exported: {facts}"
    );

    // Prometheus metrics: the calls the workers made, the figures.
    let metrics = http_get(&site, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.content_type.starts_with("text/plain"),
        "{metrics:?}"
    );
    let value = |prefix: &str| -> f64 {
        metrics
            .body
            .lines()
            .find_map(|l| l.strip_prefix(prefix)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{prefix} missing from:\n{}", metrics.body))
    };
    // Long polls still waiting are counted when they answer.
    assert!(
        value(
            "cobble_rpc_requests_total{method=\"/cobble.v1.WorkerService/RequestWork\",code=\"0\"}"
        ) >= 1.0
    );
    assert!(
        value(
            "cobble_rpc_requests_total{method=\"/cobble.v1.WorkerService/RegisterHost\",code=\"0\"}"
        ) == 4.0,
        "four volunteers attached"
    );
    assert_eq!(value("cobble_units{state=\"done\"}"), 6.0);
    assert!(
        value("cobble_blob_bytes_served") > 0.0,
        "the module was served"
    );
    assert!(value("cobble_credit") > 0.0);
    assert!(metrics.body.contains("cobble_rpc_duration_seconds_bucket"));
    assert!(
        metrics
            .body
            .contains("cobble_db_pool_connections{state=\"idle\"}")
    );
}

/// A job's page: its progress for anyone, its outputs for its researcher
/// only (signed in with the token, or a bearer token for scripts), images
/// previewed inline, anything else a download that runs nothing.
#[test]
fn a_job_page_shows_progress_to_all_and_outputs_to_its_researcher() {
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = temp.path();
    let coordinator = Coordinator::start(dir);
    let site = coordinator.web_url.clone().expect("the site");
    let one_unit = |name: &str, file: &str, text: &str| {
        format!(
            "name = \"{name}\"\nmodule = \"probe.wasm\"\nargs = [\"write\", \"/output/{file}\", \"{text}\"]\n\
             [split]\nrange = {{ start = 0, end = 1, per_unit = 1 }}\n\
             [replication]\nmin_quorum = 1\ntarget_results = 1\n"
        )
    };
    let image_job = coordinator.submit(&write_job(
        &dir.join("image"),
        cobble_unit_artifacts::SANDBOX_PROBE,
        "probe.wasm",
        &one_unit("tile", "tile.png", "not-really-a-png"),
    ));
    let page_job = coordinator.submit(&write_job(
        &dir.join("page"),
        cobble_unit_artifacts::SANDBOX_PROBE,
        "probe.wasm",
        &one_unit("page", "page.html", "<script>alert(3)</script>"),
    ));
    // A plot that carries a script, as a hostile unit's could.
    let plot_job = coordinator.submit(&write_job(
        &dir.join("plot"),
        cobble_unit_artifacts::SANDBOX_PROBE,
        "probe.wasm",
        &one_unit(
            "plot",
            "plot.svg",
            "<svg xmlns='http://www.w3.org/2000/svg'><script>alert(4)</script></svg>",
        ),
    ));
    let _worker = start_worker_with("cobble-worker", &coordinator, &dir.join("w"), "ada", &[]);
    for job in [&image_job, &page_job, &plot_job] {
        let (done, status) = coordinator.wait_done(job, Duration::from_secs(120));
        assert!(done, "{status}");
    }
    let job_path = format!("/jobs/{image_job}");
    let file_path = format!("{job_path}/units/0/files/tile.png");

    // Anyone: the progress, no outputs.
    let public = http_get(&site, &job_path);
    assert_eq!(public.status, 200, "{public:?}");
    assert!(
        public.body.contains("<strong>100%</strong>"),
        "{}",
        public.body
    );
    assert!(public.body.contains("Sign in with your researcher token"));
    assert!(!public.body.contains(&file_path));
    assert_eq!(http_get(&site, &file_path).status, 401);
    let api = json(&http_get(&site, &format!("/api/v1{job_path}")));
    assert_eq!(
        (api["state"].as_str(), api["units_done"].as_u64()),
        (Some("done"), Some(1))
    );
    assert!(api["outputs"].is_null(), "{api}");

    // Signing in: a wrong token is refused, the right one sets a cookie
    // and returns to the job, never to another site.
    let form = |token: &str, next: &str| format!("token={token}&next={next}");
    let form_type = [("Content-Type", "application/x-www-form-urlencoded")];
    let refused = http_request(&site, "POST", "/login", &form_type, &form("nope", "/"));
    assert_eq!(refused.status, 401);
    assert!(refused.header("set-cookie").is_none());
    let token = coordinator.researcher_token();
    let signed_in = http_request(
        &site,
        "POST",
        "/login",
        &form_type,
        &form(&token, &job_path),
    );
    assert_eq!(signed_in.status, 303, "{signed_in:?}");
    assert_eq!(
        signed_in.header("location").as_deref(),
        Some(job_path.as_str())
    );
    let cookie = signed_in.header("set-cookie").expect("a cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let offsite = http_request(
        &site,
        "POST",
        "/login",
        &form_type,
        &form(&token, "//evil.example/"),
    );
    assert_eq!(offsite.header("location").as_deref(), Some("/"));
    let session = cookie.split(';').next().expect("name=value").to_string();
    let with_cookie = [("Cookie", session.as_str())];

    // The researcher: links, the image inline, the bytes with safe headers.
    let own = http_request(&site, "GET", &job_path, &with_cookie, "");
    assert!(
        own.body
            .contains(&format!("<img class=\"preview\" src=\"{file_path}\"")),
        "{}",
        own.body
    );
    let image = http_request(&site, "GET", &file_path, &with_cookie, "");
    assert_eq!(image.status, 200);
    assert_eq!(image.content_type, "image/png");
    assert_eq!(image.body, "not-really-a-png");
    assert_eq!(
        image.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    let stdout = http_request(
        &site,
        "GET",
        &format!("{job_path}/units/0/stdout"),
        &with_cookie,
        "",
    );
    assert_eq!((stdout.status, stdout.body.as_str()), (200, "wrote\n"));
    let html = http_request(
        &site,
        "GET",
        &format!("/jobs/{page_job}/units/0/files/page.html"),
        &with_cookie,
        "",
    );
    assert_eq!(html.status, 200);
    assert_eq!(html.content_type, "application/octet-stream");
    assert_eq!(
        html.header("content-disposition").as_deref(),
        Some("attachment")
    );
    assert!(
        html.header("content-security-policy")
            .is_some_and(|p| p.starts_with("sandbox"))
    );
    // An SVG is previewed, and opened directly it runs nothing: the
    // sandbox without allow-scripts, and no source allowed for scripts.
    let plot_page = http_request(&site, "GET", &format!("/jobs/{plot_job}"), &with_cookie, "");
    let plot_path = format!("/jobs/{plot_job}/units/0/files/plot.svg");
    assert!(
        plot_page
            .body
            .contains(&format!("<img class=\"preview\" src=\"{plot_path}\"")),
        "{}",
        plot_page.body
    );
    let plot = http_request(&site, "GET", &plot_path, &with_cookie, "");
    assert_eq!(
        (plot.status, plot.content_type.as_str()),
        (200, "image/svg+xml")
    );
    let policy = plot.header("content-security-policy").unwrap_or_default();
    assert!(
        policy.starts_with("sandbox;")
            && !policy.contains("allow-scripts")
            && policy.contains("default-src 'none'")
            && !policy.contains("script-src"),
        "{policy}"
    );
    let bearer = format!("Bearer {token}");
    let scripted = http_request(
        &site,
        "GET",
        &format!("/api/v1{job_path}"),
        &[("Authorization", bearer.as_str())],
        "",
    );
    let scripted = json(&scripted);
    assert_eq!(
        scripted["outputs"][0]["files"][1]["href"],
        file_path.as_str(),
        "{scripted}"
    );

    // Another researcher may not; nonsense is a 404, never a file.
    let added = coordinator.admin(&["researcher", "add", "bea"]);
    let other = String::from_utf8_lossy(&added.stdout)
        .split_whitespace()
        .find(|w| w.len() >= 32 && w.bytes().all(|b| b.is_ascii_alphanumeric()))
        .expect("a token")
        .to_string();
    let other_bearer = format!("Bearer {other}");
    let foreign = http_request(
        &site,
        "GET",
        &file_path,
        &[("Authorization", other_bearer.as_str())],
        "",
    );
    assert_eq!(foreign.status, 403, "{foreign:?}");
    let bad_token = http_request(
        &site,
        "GET",
        &job_path,
        &[("Cookie", "cobble_token=forged")],
        "",
    );
    assert_eq!(bad_token.status, 401);
    for path in [
        "/jobs/999999".to_string(),
        "/jobs/abc".to_string(),
        format!("{job_path}/units/7/stdout"),
        format!("{job_path}/units/x/stdout"),
        format!("{job_path}/units/0/files/..%2F..%2Fresearcher.token"),
        format!("{job_path}/units/0/files/missing.png"),
    ] {
        let answer = http_request(&site, "GET", &path, &with_cookie, "");
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
    }
}
