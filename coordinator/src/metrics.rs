//! Prometheus metrics, served in the text format at the web site's
//! `/metrics` (prometheus-client). Calls are counted and timed by a tower
//! layer on the gRPC server; the project's figures (units and results by
//! state, credit, backlog) are read from the database when scraped, at
//! most every 10 s like the site's pages.
//!
//! Label values are bounded: a method is a real one (a call the server
//! answered UNIMPLEMENTED is counted as "unknown"), so no caller can grow
//! the registry by inventing paths.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Call {
    method: String,
    /// The gRPC status code when the answer carried it in its headers
    /// (every error a handler returns); "0" otherwise.
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Method {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoopName {
    name: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the coordinator exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    calls: Family<Call, Counter>,
    durations: Family<Method, Histogram, fn() -> Histogram>,
    units: Family<State, Gauge>,
    results: Family<State, Gauge>,
    validation_backlog: Gauge,
    results_validated_24h: Gauge,
    credit: FloatGauge,
    blob_bytes_served: Gauge,
    peer_bytes: Gauge,
    pool: Family<State, Gauge>,
    loop_age: Family<LoopName, FloatGauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn call_histogram() -> Histogram {
    // 1 ms to about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Metrics {
            registry: Mutex::new(Registry::with_prefix("cobble")),
            calls: Family::default(),
            durations: Family::new_with_constructor(call_histogram),
            units: Family::default(),
            results: Family::default(),
            validation_backlog: Gauge::default(),
            results_validated_24h: Gauge::default(),
            credit: FloatGauge::default(),
            blob_bytes_served: Gauge::default(),
            peer_bytes: Gauge::default(),
            pool: Family::default(),
            loop_age: Family::default(),
        };
        {
            let mut registry = metrics.registry.lock().unwrap_or_else(|p| p.into_inner());
            registry.register(
                "rpc_requests",
                "gRPC calls answered, by method and status code",
                metrics.calls.clone(),
            );
            registry.register(
                "rpc_duration_seconds",
                "Time to a gRPC call's response headers, by method",
                metrics.durations.clone(),
            );
            registry.register("units", "Work units by state", metrics.units.clone());
            registry.register("results", "Results by state", metrics.results.clone());
            registry.register(
                "validation_backlog",
                "Units waiting for the validator daemon",
                metrics.validation_backlog.clone(),
            );
            registry.register(
                "results_validated_24h",
                "Results validated in the last 24 hours",
                metrics.results_validated_24h.clone(),
            );
            registry.register(
                "credit",
                "Credit granted to all users, in all",
                metrics.credit.clone(),
            );
            registry.register(
                "blob_bytes_served",
                "Blob bytes this process sent to workers (downloads and seed chunks)",
                metrics.blob_bytes_served.clone(),
            );
            registry.register(
                "peer_bytes",
                "Input bytes hosts report they received from each other",
                metrics.peer_bytes.clone(),
            );
            registry.register(
                "db_pool_connections",
                "Database connections of this process, idle or in use",
                metrics.pool.clone(),
            );
            registry.register(
                "loop_last_run_age_seconds",
                "Seconds since each background loop last ran in this process",
                metrics.loop_age.clone(),
            );
        }
        metrics
    }
}

/// What a scrape reads from the store and the process.
#[derive(Debug, Default)]
pub struct Figures {
    pub units_by_state: Vec<(String, u64)>,
    pub results_by_state: Vec<(String, u64)>,
    pub validation_backlog: u64,
    pub results_validated_24h: u64,
    pub credit: f64,
    pub blob_bytes_served: u64,
    pub peer_bytes: u64,
    pub pool_size: u32,
    pub pool_idle: usize,
    /// Seconds since each loop's last run here, if it ran.
    pub loop_ages: Vec<(&'static str, Option<f64>)>,
}

fn as_gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Metrics {
    /// The text exposition, with `figures` as of this scrape.
    pub fn render(&self, figures: &Figures) -> String {
        for (family, rows) in [
            (&self.units, &figures.units_by_state),
            (&self.results, &figures.results_by_state),
        ] {
            for (state, n) in rows {
                family
                    .get_or_create(&State {
                        state: state.clone(),
                    })
                    .set(as_gauge(*n));
            }
        }
        self.validation_backlog
            .set(as_gauge(figures.validation_backlog));
        self.results_validated_24h
            .set(as_gauge(figures.results_validated_24h));
        self.credit.set(figures.credit);
        self.blob_bytes_served
            .set(as_gauge(figures.blob_bytes_served));
        self.peer_bytes.set(as_gauge(figures.peer_bytes));
        let idle = as_gauge(figures.pool_idle as u64);
        for (state, n) in [
            ("idle", idle),
            ("in_use", (i64::from(figures.pool_size) - idle).max(0)),
        ] {
            self.pool
                .get_or_create(&State {
                    state: state.into(),
                })
                .set(n);
        }
        for (name, age) in &figures.loop_ages {
            self.loop_age
                .get_or_create(&LoopName {
                    name: (*name).into(),
                })
                .set(age.unwrap_or(f64::NAN));
        }
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        text
    }

    fn record(&self, method: String, code: String, seconds: f64) {
        self.durations
            .get_or_create(&Method {
                method: method.clone(),
            })
            .observe(seconds);
        self.calls.get_or_create(&Call { method, code }).inc();
    }
}

/// The tower layer that counts and times every gRPC call.
#[derive(Clone)]
pub struct MetricsLayer(pub Arc<Metrics>);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = Measured<S>;

    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Measured<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let started = Instant::now();
            let response = inner.call(request).await?;
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u8>().ok())
                .unwrap_or(0);
            // UNIMPLEMENTED: a path that is no method of ours, whatever
            // the caller made up.
            let method = if code == 12 || path.len() > 100 {
                "unknown".to_string()
            } else {
                path
            };
            metrics.record(method, code.to_string(), started.elapsed().as_secs_f64());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric() {
        let metrics = Metrics::default();
        metrics.record(
            "/cobble.v1.WorkerService/RequestWork".into(),
            "0".into(),
            0.004,
        );
        let text = metrics.render(&Figures {
            units_by_state: vec![("done".into(), 6)],
            loop_ages: vec![("validators", Some(1.5)), ("garbage", None)],
            pool_size: 8,
            pool_idle: 3,
            ..Figures::default()
        });
        for line in [
            "cobble_rpc_requests_total{method=\"/cobble.v1.WorkerService/RequestWork\",code=\"0\"} 1",
            "cobble_units{state=\"done\"} 6",
            "cobble_db_pool_connections{state=\"in_use\"} 5",
            "cobble_loop_last_run_age_seconds{name=\"validators\"} 1.5",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(
            text.contains("cobble_rpc_duration_seconds_bucket"),
            "{text}"
        );
    }

    /// Made-up paths are counted under one label, not one each.
    #[tokio::test]
    async fn invented_methods_do_not_grow_the_registry() {
        use tower::{Layer, Service};
        let metrics = Arc::new(Metrics::default());
        let unimplemented = tower::service_fn(|_: http::Request<()>| async {
            http::Response::builder()
                .header("grpc-status", "12")
                .body(())
                .map_err(|e| e.to_string())
        });
        let mut service = MetricsLayer(metrics.clone()).layer(unimplemented);
        for n in 0..50 {
            let request = http::Request::builder()
                .uri(format!("/cobble.v1.WorkerService/Made{n}Up"))
                .body(())
                .expect("request");
            service.call(request).await.expect("answered");
        }
        let text = metrics.render(&Figures::default());
        assert!(
            text.contains("cobble_rpc_requests_total{method=\"unknown\",code=\"12\"} 50"),
            "{text}"
        );
        assert!(!text.contains("Made"), "{text}");
    }
}
