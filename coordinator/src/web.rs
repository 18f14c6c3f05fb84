//! The project's web site and its JSON API (`--web-listen`, plain HTTP on
//! its own port: a reverse proxy adds TLS, as for any web site; the gRPC
//! port stays HTTP/2 and TLS only). Server-rendered HTML (askama, checked
//! at compile time, escaped by default), no JavaScript needed.
//!
//! Every page has its JSON twin under `/api/v1/`. Lists and counters are
//! cached for [`FRESH_FOR`]: a page view costs no query most of the time,
//! and BOINC caches its top lists for an hour.

mod dist;
mod jobs;

pub use dist::WorkerDist;

use crate::error::Error;
use crate::store::Store;
use crate::store::site::{
    Board, DayPoint, ListQuery, MAX_PAGE, MAX_PER_PAGE, Profile, ProjectCounters, Ranked,
    RankedPage, Ranking, ServerStatus, Standings,
};
use crate::store::stats_export::EXPORT_FILES;
use askama::Template;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How stale a list or a counter may be.
pub const FRESH_FOR: Duration = Duration::from_secs(10);
const DEFAULT_PER_PAGE: u32 = 25;

/// What the site says about the project, fixed at start.
#[derive(Debug, Clone)]
pub struct SiteInfo {
    pub project: String,
    pub description: String,
    /// The gRPC address volunteers attach to.
    pub coordinator_url: String,
    pub project_key: String,
    /// Where the statistics export is read from.
    pub stats_dir: std::path::PathBuf,
    /// This site's address as volunteers reach it.
    pub site_url: String,
    /// The worker binaries to serve, when the project ships them.
    pub dist: Option<Arc<WorkerDist>>,
}

#[derive(Clone)]
struct Site {
    store: Store,
    info: Arc<SiteInfo>,
    started: Instant,
    counters: Arc<Cached<ProjectCounters>>,
    status: Arc<Cached<ServerStatus>>,
    /// Each board's credit order, for profiles' ranks.
    standings: Arc<[Cached<Standings>; 3]>,
    lists: Arc<ListCache>,
}

/// Pages of lists by their query, with when each was read.
type ListCache = Mutex<HashMap<String, (Instant, Arc<RankedPage>)>>;

/// One value, recomputed when older than [`FRESH_FOR`]. One request
/// recomputes it while the others are served the value it replaces, so an
/// expiry under load costs one query, not one per waiting request.
struct Cached<T> {
    value: Mutex<Option<(Instant, Arc<T>)>>,
    loading: tokio::sync::Mutex<()>,
}

impl<T> Cached<T> {
    fn new() -> Self {
        Cached {
            value: Mutex::new(None),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<(Instant, Arc<T>)> {
        self.value.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    async fn get<F>(&self, load: F) -> Result<Arc<T>, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let stale = match self.current() {
            Some((at, value)) if at.elapsed() < FRESH_FOR => return Ok(value),
            other => other.map(|(_, value)| value),
        };
        let _loading = match (self.loading.try_lock(), stale) {
            (Ok(guard), _) => guard,
            // Someone is loading it: the previous value will do.
            (Err(_), Some(stale)) => return Ok(stale),
            // Nothing to serve yet: wait for the first load, then use it.
            (Err(_), None) => {
                let guard = self.loading.lock().await;
                if let Some((at, value)) = self.current()
                    && at.elapsed() < FRESH_FOR
                {
                    return Ok(value);
                }
                guard
            }
        };
        let value = Arc::new(load.await?);
        *self.value.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((Instant::now(), value.clone()));
        Ok(value)
    }
}

/// The router: pages, their JSON twins, and a 404 for the rest.
pub fn router(store: Store, info: SiteInfo) -> axum::Router {
    let site = Site {
        store,
        info: Arc::new(info),
        started: Instant::now(),
        counters: Arc::new(Cached::new()),
        status: Arc::new(Cached::new()),
        standings: Arc::new([Cached::new(), Cached::new(), Cached::new()]),
        lists: Arc::default(),
    };
    axum::Router::new()
        .route("/", get(home))
        .route("/status", get(status_page))
        .route("/stats/{file}", get(stats_file))
        .route("/metrics", get(metrics))
        .route("/install.sh", get(dist::install_script))
        .route("/dist/{file}", get(dist::file))
        .route("/jobs/{id}", get(jobs::job_page))
        .route("/jobs/{id}/units/{index}/stdout", get(jobs::stdout))
        .route("/jobs/{id}/units/{index}/files/{*name}", get(jobs::file))
        .route("/api/v1/jobs/{id}", get(jobs::job_json))
        .route("/login", get(jobs::login_page).post(jobs::login))
        .route("/logout", get(jobs::logout))
        .route("/{board}", get(list_page))
        .route("/{board}/{id}", get(profile_page))
        .route("/api/v1/project", get(project_json))
        .route("/api/v1/status", get(status_json))
        .route("/api/v1/{board}", get(list_json))
        .route("/api/v1/{board}/{id}", get(profile_json))
        .fallback(not_found)
        .with_state(site)
}

/// Serves the site on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, router: axum::Router) {
    if let Err(error) = axum::serve(listener, router).await {
        tracing::error!(%error, "the web site stopped");
    }
}

/// A failed page or API call: its status and a message for people.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
    json: bool,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            json: false,
        }
    }

    fn from_error(error: Error) -> Self {
        let status =
            StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if status.is_server_error() {
            tracing::error!(%error, "a web page failed");
            "the server could not answer now; try again in a moment".to_string()
        } else {
            error.to_string()
        };
        Failure::new(status, message)
    }

    fn into_json(mut self) -> Self {
        self.json = true;
        self
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    status: u16,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    site: Chrome<'a>,
    heading: &'a str,
    message: &'a str,
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        if self.json {
            let body = ErrorBody {
                error: &self.message,
                status: self.status.as_u16(),
            };
            return (self.status, Json(body)).into_response();
        }
        let heading = self.status.canonical_reason().unwrap_or("Error");
        let page = ErrorPage {
            site: Chrome::plain(),
            heading,
            message: &self.message,
        };
        match page.render() {
            Ok(html) => (self.status, Html(html)).into_response(),
            Err(_) => (self.status, self.message).into_response(),
        }
    }
}

/// What every page's frame shows.
struct Chrome<'a> {
    project: &'a str,
    version: &'static str,
}

impl<'a> Chrome<'a> {
    fn of(info: &'a SiteInfo) -> Self {
        Chrome {
            project: &info.project,
            version: env!("CARGO_PKG_VERSION"),
        }
    }

    fn plain() -> Self {
        Chrome {
            project: "Cobble",
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

fn render(page: impl Template) -> Result<Html<String>, Failure> {
    page.render().map(Html).map_err(|error| {
        tracing::error!(%error, "rendering a page failed");
        Failure::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the page could not be drawn",
        )
    })
}

async fn not_found() -> Failure {
    Failure::new(StatusCode::NOT_FOUND, "There is no page at this address.")
}

struct Counter {
    value: String,
    label: &'static str,
}

#[derive(Template)]
#[template(path = "home.html")]
struct HomePage<'a> {
    site: Chrome<'a>,
    description: &'a str,
    counters: Vec<Counter>,
    join_command: String,
    project_key: &'a str,
    downloads: Vec<Download>,
}

struct Download {
    name: String,
    href: String,
    size: String,
}

#[derive(Serialize)]
struct ProjectJson<'a> {
    name: &'a str,
    description: &'a str,
    coordinator: &'a str,
    project_key: &'a str,
    join_command: String,
    /// The install script's address, when the project ships binaries.
    install_script: Option<String>,
    counters: &'a ProjectCounters,
}

impl Site {
    /// What the home page tells a volunteer to run: the install script
    /// when the project ships binaries, else the worker's own install.
    fn join_command(&self) -> String {
        if self.info.dist.is_some() {
            format!(
                "curl -fsSL {}/install.sh | sh -s -- --user YOUR_NAME",
                self.info.site_url.trim_end_matches('/')
            )
        } else {
            format!(
                "cobble-worker install --coordinator {} --user YOUR_NAME",
                self.info.coordinator_url
            )
        }
    }

    async fn counters(&self) -> Result<Arc<ProjectCounters>, Failure> {
        self.counters
            .get(self.store.project_counters())
            .await
            .map_err(Failure::from_error)
    }

    async fn status(&self) -> Result<Arc<ServerStatus>, Failure> {
        self.status
            .get(self.store.server_status())
            .await
            .map_err(Failure::from_error)
    }

    async fn list(&self, query: &ListQuery) -> Result<Arc<RankedPage>, Failure> {
        let key = format!("{query:?}");
        if let Some((at, page)) = self
            .lists
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            && at.elapsed() < FRESH_FOR
        {
            return Ok(page.clone());
        }
        let page = Arc::new(
            self.store
                .ranked(query)
                .await
                .map_err(Failure::from_error)?,
        );
        let mut lists = self.lists.lock().unwrap_or_else(|p| p.into_inner());
        // Searches are many and each is asked rarely: the cache stays small.
        if lists.len() > 1000 {
            lists.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
        }
        lists.insert(key, (Instant::now(), page.clone()));
        Ok(page)
    }
}

async fn home(State(site): State<Site>) -> Result<Html<String>, Failure> {
    let counters = site.counters().await?;
    render(HomePage {
        site: Chrome::of(&site.info),
        description: &site.info.description,
        counters: vec![
            Counter {
                value: whole(counters.hosts_active_24h),
                label: "hosts active in the last 24 h",
            },
            Counter {
                value: whole(counters.results_unsent),
                label: "results ready to send",
            },
            Counter {
                value: whole(counters.results_in_progress),
                label: "results in progress",
            },
            Counter {
                value: whole(counters.results_validated_24h),
                label: "results validated in the last 24 h",
            },
            Counter {
                value: amount(counters.total_credit),
                label: "total credit",
            },
            Counter {
                value: amount(counters.cores_busy),
                label: "cores' worth of computing (from RAC)",
            },
        ],
        join_command: site.join_command(),
        project_key: &site.info.project_key,
        downloads: site
            .info
            .dist
            .iter()
            .flat_map(|dist| dist.files())
            .map(|file| Download {
                name: file.name.clone(),
                href: format!("/dist/{}", file.name),
                size: jobs::bytes(file.size),
            })
            .collect(),
    })
}

async fn project_json(State(site): State<Site>) -> Result<Json<serde_json::Value>, Failure> {
    let counters = site.counters().await.map_err(Failure::into_json)?;
    let body = ProjectJson {
        name: &site.info.project,
        description: &site.info.description,
        coordinator: &site.info.coordinator_url,
        project_key: &site.info.project_key,
        join_command: site.join_command(),
        install_script: site
            .info
            .dist
            .as_ref()
            .map(|_| format!("{}/install.sh", site.info.site_url.trim_end_matches('/'))),
        counters: &counters,
    };
    serde_json::to_value(body)
        .map(Json)
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_json())
}

/// A list's query string, every field taken as text so that a bad value
/// gets its own message rather than a generic rejection.
#[derive(Debug, Deserialize)]
struct ListParams {
    sort: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
    q: Option<String>,
}

fn list_query(board: &str, params: &ListParams) -> Result<ListQuery, Failure> {
    let board = Board::parse(board)
        .ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, "There is no page at this address."))?;
    let bad = |m: String| Failure::new(StatusCode::BAD_REQUEST, m);
    let ranking = match params.sort.as_deref().filter(|s| !s.is_empty()) {
        None => Ranking::Credit,
        Some(text) => Ranking::parse(text)
            .ok_or_else(|| bad(format!("sort is \"credit\" or \"rac\", not {text:?}")))?,
    };
    let number = |name: &str, value: &Option<String>, default: u32, most: u32| match value
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        None => Ok(default),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=most).contains(n))
            .ok_or_else(|| bad(format!("{name} runs from 1 to {most}, not {text:?}"))),
    };
    Ok(ListQuery {
        board,
        ranking,
        page: number("page", &params.page, 1, MAX_PAGE)?,
        per_page: number("per_page", &params.per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE)?,
        search: params.q.clone().unwrap_or_default().trim().to_string(),
    })
}

struct Row {
    rank: u64,
    href: String,
    name: String,
    detail: String,
    total_credit: String,
    recent_average_credit: String,
    valid_results: String,
}

impl Row {
    /// A ranked entry as a table row, linking to its page on `board`.
    fn of(entry: &Ranked, board: Board) -> Row {
        Row {
            rank: entry.rank,
            href: format!("/{}/{}", board.name(), entry.id),
            name: entry.name.clone(),
            detail: entry.detail.clone(),
            total_credit: amount(entry.total_credit),
            recent_average_credit: amount(entry.recent_average_credit),
            valid_results: whole(entry.valid_results),
        }
    }
}

#[derive(Template)]
#[template(path = "list.html")]
struct ListPage<'a> {
    site: Chrome<'a>,
    kind: &'static str,
    heading: &'static str,
    detail_heading: &'static str,
    sort: &'static str,
    query: &'a str,
    by_credit: String,
    by_rac: String,
    rows: Vec<Row>,
    page: u32,
    pages: u64,
    total: u64,
    previous: Option<String>,
    next: Option<String>,
}

/// The link to another page of the same list.
fn list_link(query: &ListQuery, ranking: Ranking, page: u32) -> String {
    let mut link = format!(
        "/{}?sort={}&page={page}",
        query.board.name(),
        ranking.name()
    );
    if query.per_page != DEFAULT_PER_PAGE {
        link.push_str(&format!("&per_page={}", query.per_page));
    }
    if !query.search.is_empty() {
        link.push_str("&q=");
        link.push_str(&percent_encode(&query.search));
    }
    link
}

async fn list_page(
    State(site): State<Site>,
    Path(board): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Html<String>, Failure> {
    let query = list_query(&board, &params)?;
    let page = site.list(&query).await?;
    let pages = page.total.div_ceil(u64::from(query.per_page)).max(1);
    let (heading, detail_heading) = match query.board {
        Board::Users => ("Top users", "Team"),
        Board::Teams => ("Top teams", ""),
        Board::Hosts => ("Top hosts", "Owner"),
    };
    render(ListPage {
        site: Chrome::of(&site.info),
        kind: query.board.name(),
        heading,
        detail_heading,
        sort: query.ranking.name(),
        query: &query.search,
        by_credit: list_link(&query, Ranking::Credit, 1),
        by_rac: list_link(&query, Ranking::Rac, 1),
        rows: page
            .entries
            .iter()
            .map(|e| Row::of(e, query.board))
            .collect(),
        page: query.page,
        pages,
        total: page.total,
        previous: (query.page > 1).then(|| list_link(&query, query.ranking, query.page - 1)),
        next: (u64::from(query.page) < pages)
            .then(|| list_link(&query, query.ranking, query.page + 1)),
    })
}

async fn list_json(
    State(site): State<Site>,
    Path(board): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<RankedPage>, Failure> {
    let query = list_query(&board, &params).map_err(Failure::into_json)?;
    let page = site.list(&query).await.map_err(Failure::into_json)?;
    Ok(Json((*page).clone()))
}

/// The profile asked for, or a 404 that says what was not found.
async fn profile_of(site: &Site, board: &str, id: &str) -> Result<Profile, Failure> {
    let board = Board::parse(board)
        .ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, "There is no page at this address."))?;
    let missing = || {
        let what = match board {
            Board::Users => "user",
            Board::Teams => "team",
            Board::Hosts => "host",
        };
        Failure::new(
            StatusCode::NOT_FOUND,
            format!("There is no {what} {id:?} here."),
        )
    };
    let id: i64 = id.parse().map_err(|_| missing())?;
    let slot = match board {
        Board::Users => 0,
        Board::Teams => 1,
        Board::Hosts => 2,
    };
    let standings = site.standings[slot]
        .get(site.store.standings(board))
        .await
        .map_err(Failure::from_error)?;
    site.store
        .profile(board, id, &standings)
        .await
        .map_err(Failure::from_error)?
        .ok_or_else(missing)
}

struct LinkView {
    href: String,
    name: String,
}

struct ResultView {
    id: i64,
    unit: String,
    outcome: &'static str,
    credit: String,
    reported: String,
}

#[derive(Template)]
#[template(path = "profile.html")]
struct ProfilePage<'a> {
    site: Chrome<'a>,
    board: &'static str,
    board_title: &'static str,
    name: &'a str,
    facts: Vec<Counter>,
    link_label: &'static str,
    link: Option<LinkView>,
    chart: String,
    members_title: &'static str,
    members: Vec<Row>,
    results: Vec<ResultView>,
}

async fn profile_page(
    State(site): State<Site>,
    Path((board, id)): Path<(String, String)>,
) -> Result<Html<String>, Failure> {
    let profile = profile_of(&site, &board, &id).await?;
    let (board_title, link_label, members_title, member_board) = match profile.board {
        Board::Users => ("Top users", "Team", "Hosts", Board::Hosts),
        Board::Teams => ("Top teams", "", "Members", Board::Users),
        Board::Hosts => ("Top hosts", "Owner", "", Board::Hosts),
    };
    let mut facts = vec![
        Counter {
            value: format!("#{}", whole(profile.rank)),
            label: "rank by total credit",
        },
        Counter {
            value: amount(profile.total_credit),
            label: "total credit",
        },
        Counter {
            value: amount(profile.recent_average_credit),
            label: "recent average credit",
        },
        Counter {
            value: whole(profile.valid_results),
            label: "valid results",
        },
        Counter {
            value: date(profile.created_ms.div_euclid(86_400_000)),
            label: "joined",
        },
    ];
    if let (Some(cpus), Some(os)) = (profile.cpus, &profile.os) {
        facts.push(Counter {
            value: format!("{cpus} CPUs"),
            label: "processors",
        });
        if !os.is_empty() {
            facts.push(Counter {
                value: os.clone(),
                label: "operating system",
            });
        }
    }
    render(ProfilePage {
        site: Chrome::of(&site.info),
        board: profile.board.name(),
        board_title,
        name: &profile.name,
        facts,
        link_label,
        link: profile.link.as_ref().map(|l| LinkView {
            href: format!("/{}/{}", l.board.name(), l.id),
            name: l.name.clone(),
        }),
        chart: chart(&profile.history),
        members_title,
        members: profile
            .members
            .iter()
            .map(|e| Row::of(e, member_board))
            .collect(),
        results: profile
            .results
            .iter()
            .map(|r| ResultView {
                id: r.result_id,
                unit: format!("job {} / unit {}", r.job_id, r.unit_index),
                outcome: r.outcome,
                credit: amount(r.credit),
                reported: r
                    .reported_ms
                    .map_or_else(String::new, |ms| date(ms.div_euclid(86_400_000))),
            })
            .collect(),
    })
}

async fn profile_json(
    State(site): State<Site>,
    Path((board, id)): Path<(String, String)>,
) -> Result<Json<Profile>, Failure> {
    Ok(Json(
        profile_of(&site, &board, &id)
            .await
            .map_err(Failure::into_json)?,
    ))
}

/// The credit-over-time chart, drawn on the server: each day's total as a
/// point, joined by lines. Only numbers and fixed text go into it.
fn chart(points: &[DayPoint]) -> String {
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        return String::new();
    };
    const WIDTH: f64 = 640.0;
    const HEIGHT: f64 = 220.0;
    const LEFT: f64 = 70.0;
    const BOTTOM: f64 = 30.0;
    const TOP: f64 = 15.0;
    const RIGHT: f64 = 20.0;
    let start = first.day.min(last.day - 1);
    let span = (last.day - start).max(1) as f64;
    let top = points
        .iter()
        .map(|p| p.total_credit)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE)
        * 1.1;
    let x = |day: i64| LEFT + (day - start) as f64 / span * (WIDTH - LEFT - RIGHT);
    let y = |credit: f64| TOP + (1.0 - credit / top) * (HEIGHT - TOP - BOTTOM);
    let line: Vec<String> = points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.day), y(p.total_credit)))
        .collect();
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"Total credit by day\">"
    );
    let base = HEIGHT - BOTTOM;
    svg.push_str(&format!(
        "<line x1=\"{LEFT}\" y1=\"{base}\" x2=\"{}\" y2=\"{base}\" stroke=\"#c9d1dd\"/>\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{base}\" stroke=\"#c9d1dd\"/>",
        WIDTH - RIGHT
    ));
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5b6574\">{}</text>\
         <text x=\"{}\" y=\"{base}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5b6574\">0</text>",
        LEFT - 6.0,
        TOP + 8.0,
        amount(top / 1.1),
        LEFT - 6.0
    ));
    svg.push_str(&format!(
        "<text x=\"{LEFT}\" y=\"{}\" font-size=\"11\" fill=\"#5b6574\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5b6574\">{}</text>",
        HEIGHT - 10.0,
        date(start),
        WIDTH - RIGHT,
        HEIGHT - 10.0,
        date(last.day)
    ));
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#2f6fde\" stroke-width=\"2\" points=\"{}\"/>",
        line.join(" ")
    ));
    for p in points {
        svg.push_str(&format!(
            "<circle class=\"day\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#2f6fde\"><title>{}: {}</title></circle>",
            x(p.day),
            y(p.total_credit),
            date(p.day),
            amount(p.total_credit)
        ));
    }
    svg.push_str("</svg>");
    svg
}

/// `YYYY-MM-DD` of a day since 1970-01-01.
fn date(days: i64) -> String {
    cobble_core::civil_date(days)
}

/// One file of the statistics export, by its fixed name only (no path
/// from the request ever reaches the file system).
async fn stats_file(State(site): State<Site>, Path(file): Path<String>) -> Response {
    let Some(name) = EXPORT_FILES.iter().find(|name| **name == file) else {
        return not_found().await.into_response();
    };
    match tokio::fs::read(site.info.stats_dir.join(name)).await {
        Ok(bytes) => {
            let kind = if name.ends_with(".xml") {
                "application/xml"
            } else {
                "application/gzip"
            };
            ([(axum::http::header::CONTENT_TYPE, kind)], bytes).into_response()
        }
        Err(_) => Failure::new(
            StatusCode::NOT_FOUND,
            "The statistics have not been exported yet; they are written once a day.",
        )
        .into_response(),
    }
}

/// Prometheus metrics (`crate::metrics`), the figures as of this scrape
/// (the database's at most [`FRESH_FOR`] old).
async fn metrics(State(site): State<Site>) -> Result<Response, Failure> {
    let status = site.status().await?;
    let counters = site.counters().await?;
    let transfers = site
        .store
        .transfer_stats()
        .await
        .map_err(Failure::from_error)?;
    let now = cobble_core::now_ms();
    let pool = site.store.db.pool();
    let figures = crate::metrics::Figures {
        units_by_state: status.units_by_state.clone(),
        results_by_state: status.results_by_state.clone(),
        validation_backlog: status.validation_backlog,
        results_validated_24h: counters.results_validated_24h,
        credit: counters.total_credit,
        blob_bytes_served: site.store.blobs.bytes_served(),
        peer_bytes: transfers.from_peers,
        pool_size: pool.size(),
        pool_idle: pool.num_idle(),
        loop_ages: site
            .store
            .loops()
            .last_runs()
            .into_iter()
            .map(|(name, at)| (name, at.map(|at| (now - at).max(0) as f64 / 1000.0)))
            .collect(),
    };
    let text = site.store.metrics().render(&figures);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

struct LoopRow {
    name: &'static str,
    last_run: String,
}

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage<'a> {
    site: Chrome<'a>,
    counters: Vec<Counter>,
    loops: Vec<LoopRow>,
    uptime: String,
    database_latency: String,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    version: &'static str,
    uptime_s: u64,
    #[serde(flatten)]
    status: &'a ServerStatus,
    /// Unix ms of each background loop's last run here (None: never, as on
    /// a coordinator that is not the leader).
    loops: Vec<(&'static str, Option<i64>)>,
}

async fn status_page(State(site): State<Site>) -> Result<Html<String>, Failure> {
    let status = site.status().await?;
    let mut counters = Vec::new();
    for (state, n) in &status.units_by_state {
        counters.push(Counter {
            value: whole(*n),
            label: unit_label(state),
        });
    }
    for (state, n) in &status.results_by_state {
        counters.push(Counter {
            value: whole(*n),
            label: result_label(state),
        });
    }
    counters.extend([
        Counter {
            value: whole(status.validation_backlog),
            label: "units waiting for validation",
        },
        Counter {
            value: whole(status.users_with_recent_credit),
            label: "users with credit this week",
        },
        Counter {
            value: whole(status.hosts_with_recent_credit),
            label: "hosts with credit this week",
        },
    ]);
    let now = cobble_core::now_ms();
    let loops = site
        .store
        .loops()
        .last_runs()
        .into_iter()
        .map(|(name, at)| LoopRow {
            name,
            last_run: match at {
                Some(at) => format!(
                    "{} ago",
                    span(Duration::from_millis((now - at).max(0) as u64))
                ),
                None => "not on this coordinator (another one leads)".to_string(),
            },
        })
        .collect();
    render(StatusPage {
        site: Chrome::of(&site.info),
        counters,
        loops,
        uptime: span(site.started.elapsed()),
        database_latency: format!("{:.1} ms", status.database_latency_ms),
    })
}

async fn status_json(State(site): State<Site>) -> Result<Json<serde_json::Value>, Failure> {
    let status = site.status().await.map_err(Failure::into_json)?;
    let body = StatusJson {
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: site.started.elapsed().as_secs(),
        status: &status,
        loops: site.store.loops().last_runs(),
    };
    serde_json::to_value(body)
        .map(Json)
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_json())
}

fn unit_label(state: &str) -> &'static str {
    match state {
        "pending" => "units in progress",
        "done" => "units done",
        "error" => "units given up",
        "cancelled" => "units cancelled",
        _ => "units (other)",
    }
}

fn result_label(state: &str) -> &'static str {
    match state {
        "unsent" => "results ready to send",
        "in_progress" => "results in progress",
        "reported" => "results reported",
        "timed_out" => "results timed out",
        "aborted" => "results aborted",
        _ => "results (other)",
    }
}

/// 12,345
fn whole(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 12,345.6: whole above a million, one decimal above 100, three below 1
/// (a new volunteer's first credit is often a fraction).
fn amount(x: f64) -> String {
    if !x.is_finite() || x <= 0.0 {
        return "0".to_string();
    }
    if x >= 1e6 {
        return whole(x.round() as u64);
    }
    if x < 1.0 {
        return format!("{x:.3}");
    }
    if x < 100.0 {
        return format!("{x:.2}");
    }
    let tenths = (x * 10.0).round() as u64;
    format!("{}.{}", whole(tenths / 10), tenths % 10)
}

/// "3 d 4 h", "5 min", "12 s".
fn span(duration: Duration) -> String {
    let s = duration.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86400, s % 86400 / 3600),
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

const _: () = assert!(DEFAULT_PER_PAGE <= MAX_PER_PAGE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_as_people_write_them() {
        assert_eq!(whole(0), "0");
        assert_eq!(whole(1234567), "1,234,567");
        assert_eq!(amount(1234.56), "1,234.6");
        assert_eq!(amount(0.0042), "0.004");
        assert_eq!(amount(42.0), "42.00");
        assert_eq!(amount(f64::NAN), "0");
        assert_eq!(span(Duration::from_secs(90_061)), "1 d 1 h");
    }

    #[test]
    fn dates_follow_the_calendar() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(20_423), "2025-12-01");
        assert_eq!(date(11_016), "2000-02-29");
        assert_eq!(date(-1), "1969-12-31");
    }

    #[test]
    fn a_chart_has_a_point_per_day_and_no_text_from_outside() {
        assert!(chart(&[]).is_empty());
        let svg = chart(&[
            DayPoint {
                day: 20_000,
                total_credit: 1.0,
            },
            DayPoint {
                day: 20_002,
                total_credit: 5.5,
            },
        ]);
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        let one = chart(&[DayPoint {
            day: 20_000,
            total_credit: 0.5,
        }]);
        assert_eq!(one.matches("<circle").count(), 1);
        assert!(!one.contains("NaN") && !one.contains("inf"), "{one}");
    }

    #[test]
    fn search_terms_are_escaped_in_links() {
        assert_eq!(percent_encode("a b&c=<"), "a%20b%26c%3D%3C");
    }
}
