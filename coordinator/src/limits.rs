//! Abuse limits in front of every service (BOINC's server has years of
//! these; a public Cobble project needs them from the start): requests per
//! IP, a stricter rate for RegisterHost, a penalty box for an address that
//! keeps failing authentication, requests per host, connections per IP and
//! streams per connection. An honest worker's calls must keep succeeding
//! while one address floods the coordinator (`cargo xtask bench flood`).

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// How long an address that kept failing authentication is refused.
pub const PENALTY: Duration = Duration::from_secs(60);
const REGISTER_PATH: &str = "/cobble.v1.WorkerService/RegisterHost";

/// The operator's limits; 0 turns one off.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitConfig {
    /// Requests per second one IP address may make (bursts of twice as
    /// many); more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 500)]
    pub max_requests_per_ip_per_sec: u32,
    /// RegisterHost calls (new hosts and accounts) per minute per IP.
    #[arg(long, default_value_t = 60)]
    pub max_registrations_per_ip_per_min: u32,
    /// Failed authentications per minute per IP before the address is
    /// refused everything for a minute.
    #[arg(long, default_value_t = 30)]
    pub max_auth_failures_per_ip_per_min: u32,
    /// Requests per second one attached host may make.
    #[arg(long, default_value_t = 200)]
    pub max_requests_per_host_per_sec: u32,
    /// Connections one IP address may hold open; more are closed at once.
    #[arg(long, default_value_t = 128)]
    pub max_connections_per_ip: u32,
    /// Concurrent HTTP/2 streams (calls) per connection.
    #[arg(long, default_value_t = 64)]
    pub max_streams_per_connection: u32,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(
    per_period: u32,
    period: Duration,
    burst: u32,
) -> Option<DefaultKeyedRateLimiter<K>> {
    let burst = NonZeroU32::new(burst.max(per_period))?;
    let quota = Quota::with_period(period / per_period.max(1))?.allow_burst(burst);
    (per_period > 0).then(|| RateLimiter::keyed(quota))
}

/// The limits' state, shared by every connection.
pub struct Limits {
    config: LimitConfig,
    per_ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    registrations: Option<DefaultKeyedRateLimiter<IpAddr>>,
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    per_host: Option<DefaultKeyedRateLimiter<i64>>,
    penalty_box: Mutex<HashMap<IpAddr, Instant>>,
    connections: Mutex<HashMap<IpAddr, u32>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("config", &self.config)
            .finish()
    }
}

impl Limits {
    pub fn new(config: &LimitConfig) -> Arc<Limits> {
        let second = Duration::from_secs(1);
        let minute = Duration::from_secs(60);
        Arc::new(Limits {
            per_ip: limiter(
                config.max_requests_per_ip_per_sec,
                second,
                config.max_requests_per_ip_per_sec.saturating_mul(2),
            ),
            registrations: limiter(
                config.max_registrations_per_ip_per_min,
                minute,
                config.max_registrations_per_ip_per_min,
            ),
            failures: limiter(
                config.max_auth_failures_per_ip_per_min,
                minute,
                config.max_auth_failures_per_ip_per_min,
            ),
            per_host: limiter(
                config.max_requests_per_host_per_sec,
                second,
                config.max_requests_per_host_per_sec.saturating_mul(2),
            ),
            penalty_box: Mutex::default(),
            connections: Mutex::default(),
            config: config.clone(),
        })
    }

    /// No limits at all: for embedding and for tests not about limits.
    pub fn off() -> Arc<Limits> {
        Limits::new(&LimitConfig {
            max_requests_per_ip_per_sec: 0,
            max_registrations_per_ip_per_min: 0,
            max_auth_failures_per_ip_per_min: 0,
            max_requests_per_host_per_sec: 0,
            max_connections_per_ip: 0,
            max_streams_per_connection: 0,
        })
    }

    pub fn max_streams_per_connection(&self) -> Option<u32> {
        Some(self.config.max_streams_per_connection).filter(|n| *n > 0)
    }

    /// Whether a call from `ip` to `path` may go ahead.
    fn admit(&self, ip: IpAddr, path: &str) -> Result<(), tonic::Status> {
        if let Some(until) = self.penalty(ip) {
            return Err(tonic::Status::resource_exhausted(format!(
                "{ip} failed authentication too often; refused for {} s more",
                until.saturating_duration_since(Instant::now()).as_secs() + 1
            )));
        }
        if let Some(per_ip) = &self.per_ip
            && per_ip.check_key(&ip).is_err()
        {
            return Err(tonic::Status::resource_exhausted(format!(
                "{ip} makes more than {} requests per second; slow down",
                self.config.max_requests_per_ip_per_sec
            )));
        }
        if path == REGISTER_PATH
            && let Some(registrations) = &self.registrations
            && registrations.check_key(&ip).is_err()
        {
            return Err(tonic::Status::resource_exhausted(format!(
                "{ip} registers more than {} hosts per minute; try again later",
                self.config.max_registrations_per_ip_per_min
            )));
        }
        Ok(())
    }

    fn penalty(&self, ip: IpAddr) -> Option<Instant> {
        let mut boxed = self.penalty_box.lock().unwrap_or_else(|p| p.into_inner());
        match boxed.get(&ip) {
            Some(until) if *until > Instant::now() => Some(*until),
            Some(_) => {
                boxed.remove(&ip);
                None
            }
            None => None,
        }
    }

    /// Counts a failed authentication; past the limit, the address goes in
    /// the penalty box.
    fn auth_failed(&self, ip: IpAddr) {
        if let Some(failures) = &self.failures
            && failures.check_key(&ip).is_err()
        {
            tracing::warn!(%ip, "too many failed authentications; refusing the address for {PENALTY:?}");
            self.penalty_box
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ip, Instant::now() + PENALTY);
        }
    }

    /// Whether an authenticated host may make another call now.
    pub fn admit_host(&self, host_id: i64) -> Result<(), crate::Error> {
        match &self.per_host {
            Some(per_host) if per_host.check_key(&host_id).is_err() => {
                Err(crate::Error::ResourceExhausted(format!(
                    "host {host_id} makes more than {} requests per second; slow down",
                    self.config.max_requests_per_host_per_sec
                )))
            }
            _ => Ok(()),
        }
    }

    /// Takes a connection slot for `ip`, or None when it holds its limit.
    pub fn connection(self: &Arc<Self>, ip: IpAddr) -> Option<ConnectionSlot> {
        let limit = self.config.max_connections_per_ip;
        let mut open = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_default();
        if limit > 0 && *count >= limit {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Forgets idle keys, so a flood of addresses cannot grow the maps.
    pub fn forget_idle(&self) {
        for limiter in [&self.per_ip, &self.registrations, &self.failures]
            .into_iter()
            .flatten()
        {
            limiter.retain_recent();
        }
        if let Some(per_host) = &self.per_host {
            per_host.retain_recent();
        }
        let now = Instant::now();
        self.penalty_box
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, until| *until > now);
    }
}

/// A connection counted against its address until dropped.
pub struct ConnectionSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The tower layer that applies [`Limits`] to every call.
#[derive(Clone)]
pub struct LimitLayer(pub Arc<Limits>);

impl<S> tower::Layer<S> for LimitLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limits: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Limited<S> {
    inner: S,
    limits: Arc<Limits>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Limited<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Plaintext connections carry TcpConnectInfo; ours over TLS, the
        // TLS wrapper of it.
        let extensions = request.extensions();
        let ip = extensions
            .get::<TcpConnectInfo>()
            .or_else(|| {
                extensions
                    .get::<TlsConnectInfo<TcpConnectInfo>>()
                    .map(TlsConnectInfo::get_ref)
            })
            .and_then(TcpConnectInfo::remote_addr)
            .map(|address| address.ip());
        if let Some(ip) = ip
            && let Err(status) = self.limits.admit(ip, request.uri().path())
        {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        // The service that was polled ready serves this call; a clone
        // stands in for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limits = self.limits.clone();
        Box::pin(async move {
            let response = inner.call(request).await?;
            let unauthenticated = response
                .headers()
                .get("grpc-status")
                .is_some_and(|code| code.as_bytes() == b"16");
            if unauthenticated && let Some(ip) = ip {
                limits.auth_failed(ip);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LimitConfig {
        LimitConfig {
            max_requests_per_ip_per_sec: 5,
            max_registrations_per_ip_per_min: 2,
            max_auth_failures_per_ip_per_min: 3,
            max_requests_per_host_per_sec: 4,
            max_connections_per_ip: 2,
            max_streams_per_connection: 8,
        }
    }

    #[test]
    fn each_limit_holds_per_address_and_host() {
        let limits = Limits::new(&config());
        let (mallory, honest): (IpAddr, IpAddr) = (
            "10.0.0.66".parse().expect("ip"),
            "10.0.0.7".parse().expect("ip"),
        );
        // Bursts of twice the rate, then refused; another address is not.
        let admitted = (0..50)
            .filter(|_| limits.admit(mallory, "/x").is_ok())
            .count();
        assert!((10..=11).contains(&admitted), "{admitted}");
        assert!(limits.admit(honest, "/x").is_ok());
        // Registrations: stricter.
        let other: IpAddr = "10.0.0.8".parse().expect("ip");
        let registered = (0..5)
            .filter(|_| limits.admit(other, REGISTER_PATH).is_ok())
            .count();
        assert_eq!(registered, 2);
        // Failed authentications: past the limit, the address is boxed.
        let guesser: IpAddr = "10.0.0.9".parse().expect("ip");
        for _ in 0..4 {
            limits.auth_failed(guesser);
        }
        let refused = limits.admit(guesser, "/x").expect_err("boxed");
        assert!(
            refused.message().contains("failed authentication"),
            "{refused:?}"
        );
        assert!(limits.admit(honest, "/x").is_ok());
        // Hosts.
        let host_calls = (0..20).filter(|_| limits.admit_host(3).is_ok()).count();
        assert_eq!(host_calls, 8);
        assert!(limits.admit_host(4).is_ok());
        // Connections: two per address, given back when dropped.
        let first = limits.connection(mallory).expect("first");
        let _second = limits.connection(mallory).expect("second");
        assert!(limits.connection(mallory).is_none());
        assert!(limits.connection(honest).is_some());
        drop(first);
        assert!(limits.connection(mallory).is_some());
        limits.forget_idle();
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let limits = Limits::off();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        assert!((0..10_000).all(|_| limits.admit(ip, REGISTER_PATH).is_ok()));
        assert!((0..10_000).all(|_| limits.admit_host(1).is_ok()));
        let held: Vec<_> = (0..1_000).filter_map(|_| limits.connection(ip)).collect();
        assert_eq!(held.len(), 1_000);
        assert_eq!(limits.max_streams_per_connection(), None);
    }
}
