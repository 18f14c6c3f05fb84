//! Job pages: `/jobs/ID` (public, as GetJobStatus is: progress, units
//! and results by state, an estimate of the time left, the last error),
//! its outputs for the job's researcher (as GetJobResults: the token, and
//! the job theirs), inline previews of images, and the sign-in that
//! carries the token in a browser: a cookie only this site reads
//! (HttpOnly, SameSite=Strict), or `Authorization: Bearer` for scripts.

use super::{Chrome, Counter, Failure, Site, amount, render, span, whole};
use crate::error::Error;
use crate::store::Researcher;
use askama::Template;
use axum::Json;
use axum::body::Body;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use cobble_core::BlobHash;
use cobble_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio_stream::StreamExt;

const TOKEN_COOKIE: &str = "cobble_token";
/// Pieces a download is read and sent in.
const DOWNLOAD_PIECE: u64 = 1 << 20;
/// Images previewed inline on one page at most.
const MAX_PREVIEWS: usize = 24;

/// The researcher a request carries, if any: a bearer token, else the
/// sign-in cookie. A token that is wrong is an error, not an anonymous
/// visit, so a script learns its token is bad.
async fn researcher(site: &Site, headers: &HeaderMap) -> Result<Option<Researcher>, Failure> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("cobble_token="));
    let Some(token) = bearer.or(cookie) else {
        return Ok(None);
    };
    match site.store.researcher_by_token(token.trim()).await {
        Ok(researcher) => Ok(Some(researcher)),
        Err(Error::Unauthenticated(_) | Error::NotFound(_)) => Err(Failure::new(
            StatusCode::UNAUTHORIZED,
            "That researcher token is not valid here (revoked, or of another project). Sign in again.",
        )),
        Err(error) => Err(Failure::from_error(error)),
    }
}

fn job_id(text: &str) -> Result<i64, Failure> {
    text.parse().map_err(|_| {
        Failure::new(
            StatusCode::NOT_FOUND,
            format!("There is no job {text:?} here."),
        )
    })
}

#[derive(Serialize)]
pub(super) struct JobJson {
    id: i64,
    name: String,
    state: String,
    progress: f64,
    units_total: u32,
    units_pending: u32,
    units_done: u32,
    units_errored: u32,
    results_in_progress: u32,
    results_valid: u32,
    results_invalid: u32,
    results_timed_out: u32,
    results_client_error: u32,
    credit_granted: f64,
    created_ms: i64,
    finished_ms: Option<i64>,
    /// Seconds left at the pace so far, while running.
    eta_s: Option<u64>,
    last_unit_error: String,
    /// The validated outputs, for the job's researcher only (null else).
    outputs: Option<Vec<UnitOutputs>>,
}

#[derive(Serialize)]
pub(super) struct UnitOutputs {
    index: u32,
    /// The job's reduce unit: its output is the assembled result.
    reduce: bool,
    args: String,
    files: Vec<OutputLink>,
}

#[derive(Serialize)]
pub(super) struct OutputLink {
    name: String,
    href: String,
    size: u64,
    #[serde(skip)]
    size_text: String,
    #[serde(skip)]
    image: bool,
}

/// The time left at the pace so far: done units over the time since
/// submission, for the units not yet done.
fn eta(status: &pb::JobStatus, now: i64) -> Option<Duration> {
    let done = u64::from(status.units_done + status.units_errored);
    let left = u64::from(status.units_total).saturating_sub(done);
    if status.state != "running" || done == 0 || left == 0 {
        return None;
    }
    let elapsed = (now - status.created_ms).max(1) as u64;
    Some(Duration::from_millis(elapsed.saturating_mul(left) / done))
}

/// A job's status, and its outputs when `researcher` may see them.
async fn job(
    site: &Site,
    id: &str,
    headers: &HeaderMap,
) -> Result<(pb::JobStatus, Option<Vec<UnitOutputs>>), Failure> {
    let id = job_id(id)?;
    let status = site.store.job_status(id).await.map_err(|e| match e {
        Error::NotFound(_) => {
            Failure::new(StatusCode::NOT_FOUND, format!("There is no job {id} here."))
        }
        other => Failure::from_error(other),
    })?;
    let Some(researcher) = researcher(site, headers).await? else {
        return Ok((status, None));
    };
    site.store
        .authorize_job(&researcher, id)
        .await
        .map_err(Failure::from_error)?;
    let results = site
        .store
        .job_results(id)
        .await
        .map_err(Failure::from_error)?;
    let mut previews = 0;
    // The reduce unit's output, the job's assembled result, comes first
    // (and so gets its preview, whatever the units wrote).
    let mut done: Vec<&pb::UnitResult> =
        results.units.iter().filter(|u| u.state == "done").collect();
    done.sort_by_key(|u| !u.reduce);
    let outputs = done
        .into_iter()
        .map(|unit| {
            let mut files = Vec::new();
            if let Some(stdout) = &unit.stdout {
                files.push(link(id, unit.index, "stdout", stdout.size, &mut previews));
            }
            for file in &unit.files {
                let size = file.blob.as_ref().map_or(0, |b| b.size);
                files.push(link(id, unit.index, &file.name, size, &mut previews));
            }
            UnitOutputs {
                index: unit.index,
                reduce: unit.reduce,
                args: unit.args.join(" "),
                files,
            }
        })
        .collect();
    Ok((status, Some(outputs)))
}

fn link(job: i64, unit: u32, name: &str, size: u64, previews: &mut usize) -> OutputLink {
    let href = if name == "stdout" {
        format!("/jobs/{job}/units/{unit}/stdout")
    } else {
        format!(
            "/jobs/{job}/units/{unit}/files/{}",
            super::percent_encode(name)
        )
    };
    let image = is_image(name) && *previews < MAX_PREVIEWS;
    if image {
        *previews += 1;
    }
    OutputLink {
        name: name.to_string(),
        href,
        size,
        size_text: bytes(size),
        image,
    }
}

fn is_image(name: &str) -> bool {
    content_type(name).starts_with("image/")
}

/// Images, shown inline, and text; all else is a download. An SVG may hold
/// scripts: in an `<img>` a browser runs none, and opened directly it is
/// served under `sandbox; default-src 'none'` (see `output`), so
/// none runs either, in any origin.
fn content_type(name: &str) -> &'static str {
    let extension = name.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match extension.as_str() {
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        _ if name == "stdout" => "text/plain; charset=utf-8",
        "txt" | "csv" | "tsv" | "log" | "json" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

pub(super) fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage<'a> {
    site: Chrome<'a>,
    id: i64,
    name: &'a str,
    state: &'a str,
    percent: u32,
    eta: String,
    counters: Vec<Counter>,
    last_error: &'a str,
    outputs: Option<Vec<UnitOutputs>>,
}

pub(super) async fn job_page(
    State(site): State<Site>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Html<String>, Failure> {
    let (status, outputs) = job(&site, &id, &headers).await?;
    let percent = (status.progress.clamp(0.0, 1.0) * 100.0).floor() as u32;
    let eta = eta(&status, cobble_core::now_ms())
        .map(|left| format!("about {} left", span(left)))
        .unwrap_or_default();
    let mut counters: Vec<Counter> = [
        (status.units_total, "units"),
        (status.units_done, "units done"),
        (status.units_pending, "units pending"),
        (status.units_errored, "units given up"),
        (status.results_in_progress, "results in progress"),
        (status.results_valid, "valid results"),
        (status.results_invalid, "invalid results"),
        (status.results_client_error, "results that failed on a host"),
        (status.results_timed_out, "results timed out"),
    ]
    .into_iter()
    .map(|(n, label)| Counter {
        value: whole(u64::from(n)),
        label,
    })
    .collect();
    counters.push(Counter {
        value: amount(status.credit_granted),
        label: "credit granted",
    });
    render(JobPage {
        site: Chrome::of(&site.info),
        id: status.job_id,
        name: &status.name,
        state: &status.state,
        percent,
        eta,
        counters,
        last_error: &status.last_unit_error,
        outputs,
    })
}

pub(super) async fn job_json(
    State(site): State<Site>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<JobJson>, Failure> {
    let (status, outputs) = job(&site, &id, &headers)
        .await
        .map_err(Failure::into_json)?;
    let eta_s = eta(&status, cobble_core::now_ms()).map(|d| d.as_secs());
    Ok(Json(JobJson {
        id: status.job_id,
        name: status.name,
        state: status.state,
        progress: status.progress,
        units_total: status.units_total,
        units_pending: status.units_pending,
        units_done: status.units_done,
        units_errored: status.units_errored,
        results_in_progress: status.results_in_progress,
        results_valid: status.results_valid,
        results_invalid: status.results_invalid,
        results_timed_out: status.results_timed_out,
        results_client_error: status.results_client_error,
        credit_granted: status.credit_granted,
        created_ms: status.created_ms,
        finished_ms: (status.finished_ms > 0).then_some(status.finished_ms),
        eta_s,
        last_unit_error: status.last_unit_error,
        outputs,
    }))
}

/// A unit's validated stdout.
pub(super) async fn stdout(
    State(site): State<Site>,
    Path((id, index)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    output(&site, (&id, &index), None, &headers).await
}

/// A unit's validated output file, by name.
pub(super) async fn file(
    State(site): State<Site>,
    Path((id, index, name)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    output(&site, (&id, &index), Some(&name), &headers).await
}

/// One validated output of a unit: its stdout (`file` None), or a file.
async fn output(
    site: &Site,
    (id, index): (&str, &str),
    file: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, Failure> {
    let id = job_id(id)?;
    let missing = || Failure::new(StatusCode::NOT_FOUND, "There is no such output.");
    let index: i64 = index.parse().map_err(|_| missing())?;
    let name = file.unwrap_or("stdout");
    let researcher = researcher(site, headers).await?.ok_or_else(|| {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            format!("Outputs are for the job's researcher: sign in at /login?next=/jobs/{id}."),
        )
    })?;
    site.store
        .authorize_job(&researcher, id)
        .await
        .map_err(Failure::from_error)?;
    let unit = site
        .store
        .unit_result(id, index)
        .await
        .map_err(Failure::from_error)?
        .filter(|u| u.state == "done")
        .ok_or_else(missing)?;
    let blob = match file {
        None => unit.stdout,
        Some(name) => unit
            .files
            .into_iter()
            .find(|f| f.name == name)
            .and_then(|f| f.blob),
    }
    .ok_or_else(missing)?;
    let hash = BlobHash::from_slice(&blob.hash).map_err(|e| Failure::from_error(e.into()))?;
    site.store
        .audit(&researcher.name, "download", Some(id), &hash.to_hex())
        .await
        .map_err(Failure::from_error)?;
    let body = match site
        .store
        .small_blob(&hash)
        .await
        .map_err(Failure::from_error)?
    {
        Some(bytes) => Body::from(bytes),
        None => Body::from_stream(
            site.store
                .blobs
                .pieces(hash, blob.size, DOWNLOAD_PIECE)
                .map(|piece| piece.map(|(_, data)| data)),
        ),
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Whatever a unit wrote, it runs nothing in the site's origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; img-src 'self'"),
    );
    if !is_image(name) && file.is_some() {
        headers.insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    Ok(response)
}

#[derive(Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    site: Chrome<'a>,
    next: &'a str,
    message: &'a str,
}

/// Where to go after signing in: a path of this site, never elsewhere.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path) if path.starts_with('/') && !path.starts_with("//") && !path.contains('\\') => {
            path
        }
        _ => "/",
    }
}

pub(super) async fn login_page(
    State(site): State<Site>,
    Query(query): Query<LoginQuery>,
) -> Result<Html<String>, Failure> {
    render(LoginPage {
        site: Chrome::of(&site.info),
        next: local_path(query.next.as_deref()),
        message: "",
    })
}

pub(super) async fn login(State(site): State<Site>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim();
    let next = local_path(form.next.as_deref()).to_string();
    let valid_shape = !token.is_empty()
        && token.len() <= 200
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let known = valid_shape && site.store.researcher_by_token(token).await.is_ok();
    if !known {
        let page = render(LoginPage {
            site: Chrome::of(&site.info),
            next: &next,
            message: "That token is not a researcher token of this project.",
        });
        return (StatusCode::UNAUTHORIZED, page).into_response();
    }
    let cookie =
        format!("{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=2592000");
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

pub(super) async fn logout() -> Response {
    let mut response = Redirect::to("/").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("cobble_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_returns_only_to_this_site() {
        assert_eq!(local_path(Some("/jobs/3")), "/jobs/3");
        for elsewhere in ["//evil.example", "https://evil.example", "/\\evil", "jobs"] {
            assert_eq!(local_path(Some(elsewhere)), "/", "{elsewhere}");
        }
        assert_eq!(local_path(None), "/");
    }

    #[test]
    fn images_are_shown_inline_and_pages_never() {
        assert!(is_image("tile.PNG") && is_image("a.jpeg") && is_image("sweep.svg"));
        for other in ["page.html", "page.xhtml", "x.pgm", "stdout", "noext"] {
            assert!(!is_image(other), "{other}");
        }
        assert_eq!(content_type("page.html"), "application/octet-stream");
    }

    #[test]
    fn the_estimate_follows_the_pace_so_far() {
        let status = pb::JobStatus {
            state: "running".into(),
            units_total: 10,
            units_done: 2,
            created_ms: 0,
            ..Default::default()
        };
        assert_eq!(eta(&status, 60_000), Some(Duration::from_secs(240)));
        let done = pb::JobStatus {
            state: "done".into(),
            ..status
        };
        assert_eq!(eta(&done, 60_000), None);
    }
}
