//! The volunteer's local page (as Folding@home's on 127.0.0.1:7396): what
//! this computer is doing for the project; Pause, Resume and "Finish
//! current units, then stop"; and the computing preferences, editable, with
//! the same checks and messages as `prefs.toml`.
//!
//! Only this computer may use it: it listens on loopback, answers only
//! requests addressed to a loopback name (so a web site that rebinds its
//! DNS name to 127.0.0.1 is refused), and a request that changes anything
//! must carry the token this page handed out when it was drawn, which no
//! other page can read: a cross-site form cannot pause the worker.

use crate::activity::Controls;
use crate::prefs::{FIELDS, Prefs};
use crate::status::Status;
use askama::Template;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// What the page works on.
pub struct Setup {
    pub data_dir: PathBuf,
    /// The activity monitor's switches.
    pub controls: Controls,
    /// The worker's `--pref` overrides: they win over the file, so the
    /// page says so beside each.
    pub overrides: Vec<String>,
}

#[derive(Clone)]
struct Page {
    data_dir: PathBuf,
    controls: Controls,
    overrides: Arc<Vec<String>>,
    token: Arc<String>,
}

/// The page's router.
pub fn router(setup: Setup) -> axum::Router {
    let page = Page {
        data_dir: setup.data_dir,
        controls: setup.controls,
        overrides: Arc::new(setup.overrides),
        token: Arc::new(cobble_core::random_token()),
    };
    axum::Router::new()
        .route("/", get(show))
        .route("/status.json", get(status_json))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .route("/finish", post(finish))
        .route("/prefs", post(save_prefs))
        .with_state(page)
}

/// Serves the page until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router) {
    if let Err(error) = axum::serve(listener, router).await {
        tracing::warn!(%error, "the local page stopped");
    }
}

/// Whether the request names this computer: `127.0.0.1`, `[::1]` or
/// `localhost`, with any port.
fn addressed_locally(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(name, "127.0.0.1" | "[::1]" | "localhost")
}

fn refused(message: &str) -> Response {
    (StatusCode::FORBIDDEN, message.to_string()).into_response()
}

#[derive(Template)]
#[template(path = "local.html")]
struct LocalPage<'a> {
    coordinator: &'a str,
    state: String,
    token: &'a str,
    cards: Vec<(String, &'static str)>,
    units: Vec<UnitRow>,
    prefs: Vec<PrefRow>,
    /// What saving the preferences did, or why it did not.
    prefs_message: String,
    prefs_error: bool,
}

struct PrefRow {
    name: &'static str,
    help: &'static str,
    value: String,
    /// The value `--pref` gave at start, which wins over this one.
    overridden: Option<String>,
}

struct UnitRow {
    name: String,
    state: String,
    percent: u32,
    left: String,
}

async fn show(State(page): State<Page>, headers: HeaderMap) -> Response {
    if !addressed_locally(&headers) {
        return refused("This page answers only to this computer's own address.");
    }
    let values = match Prefs::load(&page.data_dir, &[]) {
        Ok(prefs) => prefs.values(),
        // The file is broken: show the defaults and say why.
        Err(error) => return draw(&page, Prefs::default().values(), error.to_string(), true),
    };
    draw(&page, values, String::new(), false)
}

/// The page, with `values` in the preferences form.
fn draw(
    page: &Page,
    values: Vec<(&'static str, String)>,
    prefs_message: String,
    prefs_error: bool,
) -> Response {
    let status = crate::status::read(&page.data_dir).ok();
    let paused = page.controls.paused.load(Ordering::Relaxed);
    let finishing = page.controls.finishing.load(Ordering::Relaxed);
    let in_hand = status.as_ref().map_or(0, |s| s.tasks.len());
    let state = match (&status, paused) {
        (_, true) => "Paused by you: units wait until you resume.".to_string(),
        (_, false) if finishing && in_hand == 0 => {
            "Finished: no new work until you resume.".to_string()
        }
        (_, false) if finishing => {
            format!("Finishing the {in_hand} unit(s) in hand, then stopping: no new work.")
        }
        (
            Some(Status {
                suspended: Some(reason),
                ..
            }),
            _,
        ) => {
            format!("Waiting: {reason}.")
        }
        (Some(_), false) => "Computing when there is work.".to_string(),
        (None, false) => "Starting.".to_string(),
    };
    let now = cobble_core::now_ms();
    let (coordinator, cards, units) = match &status {
        Some(status) => {
            let credit = status.credit.as_ref();
            let cards = vec![
                (
                    status
                        .credit_today
                        .map_or("-".into(), |today| format!("{today:.2}")),
                    "credit today (since 00:00 UTC)",
                ),
                (
                    credit.map_or("-".into(), |c| format!("{:.2}", c.total)),
                    "credit in total",
                ),
                (
                    credit.map_or("-".into(), |c| format!("{:.2}", c.recent_average)),
                    "recent average credit (a day)",
                ),
                (
                    credit.map_or("-".into(), |c| c.valid_results.to_string()),
                    "valid results",
                ),
                (
                    megabytes(status.transfers.served_to_peers),
                    "shared with other volunteers",
                ),
                (
                    megabytes(status.transfers.downloaded_from_peers),
                    "received from other volunteers",
                ),
            ];
            let units = status
                .tasks
                .iter()
                .map(|task| {
                    let percent = (task.progress.unwrap_or(0.0).clamp(0.0, 1.0) * 100.0) as u32;
                    let left_ms = task.deadline_ms - now;
                    UnitRow {
                        name: format!("job {} unit {}", task.job_id, task.unit_id),
                        state: format!("{:?}", task.state).to_lowercase(),
                        percent,
                        left: if left_ms > 0 {
                            format!("due in {} min", left_ms / 60_000)
                        } else {
                            String::new()
                        },
                    }
                })
                .collect();
            (status.coordinator.clone(), cards, units)
        }
        None => (String::from("a Cobble project"), Vec::new(), Vec::new()),
    };
    let prefs = values
        .into_iter()
        .zip(FIELDS)
        .map(|((name, value), (_, help))| PrefRow {
            name,
            help,
            value,
            overridden: page.overrides.iter().rev().find_map(|o| {
                let (key, value) = o.split_once('=')?;
                (key.trim() == name).then(|| value.trim().to_string())
            }),
        })
        .collect();
    let page_html = LocalPage {
        coordinator: &coordinator,
        state,
        token: &page.token,
        cards,
        units,
        prefs,
        prefs_message,
        prefs_error,
    };
    let status = if prefs_error {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    match page_html.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

async fn status_json(State(page): State<Page>, headers: HeaderMap) -> Response {
    if !addressed_locally(&headers) {
        return refused("This page answers only to this computer's own address.");
    }
    match crate::status::read(&page.data_dir) {
        Ok(status) => axum::Json(status).into_response(),
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error).into_response(),
    }
}

#[derive(Deserialize)]
struct Action {
    token: Option<String>,
}

/// Checks a state-changing request: addressed to this computer, carrying
/// the page's token.
fn permitted(page: &Page, headers: &HeaderMap, action: &Action) -> Result<(), &'static str> {
    if !addressed_locally(headers) {
        return Err("This page answers only to this computer's own address.");
    }
    match &action.token {
        Some(token) if token.as_str() == page.token.as_str() => Ok(()),
        _ => Err(
            "This request did not come from the worker's own page (no or a wrong token): nothing was changed.",
        ),
    }
}

/// The buttons: what each sets.
#[derive(Debug, Clone, Copy)]
enum Button {
    Pause,
    /// Clears both Pause and Finish.
    Resume,
    Finish,
}

async fn pause(page: State<Page>, headers: HeaderMap, action: Form<Action>) -> Response {
    press(page, headers, action, Button::Pause)
}

async fn resume(page: State<Page>, headers: HeaderMap, action: Form<Action>) -> Response {
    press(page, headers, action, Button::Resume)
}

async fn finish(page: State<Page>, headers: HeaderMap, action: Form<Action>) -> Response {
    press(page, headers, action, Button::Finish)
}

/// A button, for the page's own requests only.
fn press(
    State(page): State<Page>,
    headers: HeaderMap,
    Form(action): Form<Action>,
    button: Button,
) -> Response {
    if let Err(why) = permitted(&page, &headers, &action) {
        return refused(why);
    }
    let (paused, finishing) = (&page.controls.paused, &page.controls.finishing);
    match button {
        Button::Pause => paused.store(true, Ordering::Relaxed),
        Button::Resume => {
            paused.store(false, Ordering::Relaxed);
            finishing.store(false, Ordering::Relaxed);
        }
        Button::Finish => finishing.store(true, Ordering::Relaxed),
    }
    tracing::info!(?button, "pressed on the local page");
    Redirect::to("/").into_response()
}

/// Saves the form to `prefs.toml` when every value passes the file's own
/// checks; otherwise shows the form again as sent, with the message, and
/// writes nothing.
async fn save_prefs(
    State(page): State<Page>,
    headers: HeaderMap,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Response {
    let token = pairs
        .iter()
        .find(|(key, _)| key == "token")
        .map(|(_, value)| value.clone());
    if let Err(why) = permitted(&page, &headers, &Action { token }) {
        return refused(why);
    }
    let fields: Vec<(String, String)> = pairs
        .into_iter()
        .filter(|(key, _)| key != "token")
        .collect();
    let sent = |fields: &[(String, String)]| -> Vec<(&'static str, String)> {
        FIELDS
            .iter()
            .map(|(name, _)| {
                let value = fields
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                (*name, value)
            })
            .collect()
    };
    let prefs = match Prefs::from_fields(&fields, "the preferences you entered") {
        Ok(prefs) => prefs,
        Err(error) => return draw(&page, sent(&fields), format!("Not saved: {error}"), true),
    };
    let path = page.data_dir.join(crate::prefs::FILE_NAME);
    if let Err(error) = cobble_core::durable::replace(
        &path,
        prefs.to_toml().as_bytes(),
        cobble_core::durable::How::PUBLIC,
    ) {
        return draw(
            &page,
            sent(&fields),
            format!("Not saved: cannot write {}: {error}", path.display()),
            true,
        );
    }
    // The command line's --pref still wins, as it does at start.
    match Prefs::load(&page.data_dir, &page.overrides) {
        Ok(effective) => page.controls.apply(effective),
        Err(error) => tracing::warn!(%error, "saved preferences do not combine with --pref"),
    }
    tracing::info!(path = %path.display(), "preferences saved from the local page");
    draw(
        &page,
        prefs.values(),
        format!(
            "Saved to {}. When to compute (idle time, CPU use, batteries, hours) applies now; the number of CPUs, memory, disk, work buffer and sharing limits apply when the worker restarts.",
            path.display()
        ),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_answered() {
        let with_host = |host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, host.parse().expect("header"));
            addressed_locally(&headers)
        };
        for local in [
            "127.0.0.1:7396",
            "localhost:7396",
            "[::1]:7396",
            "localhost",
        ] {
            assert!(with_host(local), "{local}");
        }
        for other in [
            "evil.example:7396",
            "127.0.0.1.evil.example",
            "10.0.0.2:7396",
        ] {
            assert!(!with_host(other), "{other}");
        }
        assert!(!addressed_locally(&HeaderMap::new()));
    }
}
