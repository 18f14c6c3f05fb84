//! The volunteer's local page (as Folding@home's on 127.0.0.1:7396): what
//! this computer is doing for the project, and Pause and Resume buttons.
//!
//! Only this computer may use it: it listens on loopback, answers only
//! requests addressed to a loopback name (so a web site that rebinds its
//! DNS name to 127.0.0.1 is refused), and a request that changes anything
//! must carry the token this page handed out when it was drawn, which no
//! other page can read: a cross-site form cannot pause the worker.

use crate::status::Status;
use askama::Template;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Clone)]
struct Page {
    data_dir: PathBuf,
    paused: Arc<AtomicBool>,
    token: Arc<String>,
}

/// The page's router; `paused` is the activity monitor's switch.
pub fn router(data_dir: PathBuf, paused: Arc<AtomicBool>) -> axum::Router {
    let page = Page {
        data_dir,
        paused,
        token: Arc::new(cobble_core::random_token()),
    };
    axum::Router::new()
        .route("/", get(show))
        .route("/status.json", get(status_json))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
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
    let status = crate::status::read(&page.data_dir).ok();
    let paused = page.paused.load(Ordering::Relaxed);
    let state = match (&status, paused) {
        (_, true) => "Paused by you: units wait until you resume.".to_string(),
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
    let page_html = LocalPage {
        coordinator: &coordinator,
        state,
        token: &page.token,
        cards,
        units,
    };
    match page_html.render() {
        Ok(html) => Html(html).into_response(),
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

async fn pause(page: State<Page>, headers: HeaderMap, action: Form<Action>) -> Response {
    switch(page, headers, action, true)
}

async fn resume(page: State<Page>, headers: HeaderMap, action: Form<Action>) -> Response {
    switch(page, headers, action, false)
}

/// Pause (`paused` true) or Resume, for the page's own requests only.
fn switch(
    State(page): State<Page>,
    headers: HeaderMap,
    Form(action): Form<Action>,
    paused: bool,
) -> Response {
    if let Err(why) = permitted(&page, &headers, &action) {
        return refused(why);
    }
    page.paused.store(paused, Ordering::Relaxed);
    tracing::info!(paused, "switched from the local page");
    Redirect::to("/").into_response()
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
