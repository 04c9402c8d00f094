//! Backend pools: the targets of one Backend, the connections to them, and
//! the state that decides which target takes a request.
//!
//! A pool is built when a Backend's spec first appears or changes, and is
//! shared by every runtime compiled while the spec stays the same — so its
//! connection pool, load-balancing position, breakers and health survive
//! configuration swaps. Dropping the last runtime that uses it stops its
//! health checks.
//!
//! Layout: [`balance`] (the policies), [`health`] (breaker, outlier
//! detection, probe results), [`conn`] (the connections to the targets),
//! this file (the pool, picking, probing).

pub mod balance;
pub mod conn;
pub mod h1;
pub mod health;

use crate::body::UpBody;
use crate::tls::BackendTlsSources;
use balance::{Balancer, Targets};
use conn::Conns;
use health::{now_ms, Condition, Outcome, TargetState};
use http::uri::{Authority, Scheme, Uri};
use http::{HeaderValue, Method, Request, Version};
use hyper_rustls::{FixedServerNameResolver, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use nio_proto::model::{parse_target_url, BackendSpec, HealthCheck, Protocol};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

#[derive(Debug)]
pub struct Target {
    pub url: String,
    /// `https` for TLS targets.
    pub scheme: Scheme,
    pub authority: Authority,
    /// The Host header sent to this target (its host and port).
    pub host_header: HeaderValue,
    pub backup: bool,
    pub state: TargetState,
}

#[derive(Debug)]
pub struct BackendPool {
    pub name: String,
    pub spec: BackendSpec,
    /// The Certificates its TLS was built from.
    pub tls_sources: BackendTlsSources,
    pub targets: Vec<Target>,
    primaries: Balancer,
    backups: Balancer,
    /// Open and idle connections to the targets, by target index.
    pub conns: Conns,
    /// The HTTP version requests to the targets carry.
    pub version: Version,
    /// Replaced by a newer pool (its Backend changed or went away): its
    /// health checks stop even while old requests still hold it.
    retired: AtomicBool,
}

impl BackendPool {
    /// Builds the pool and, when the spec asks for it, starts its health
    /// checks (they stop when the pool is dropped).
    pub fn new(
        name: &str,
        spec: &BackendSpec,
        tls_sources: BackendTlsSources,
    ) -> Result<Arc<BackendPool>, String> {
        let mut targets = Vec::with_capacity(spec.targets.len());
        for (i, t) in spec.targets.iter().enumerate() {
            let bad = |e: String| format!("spec.targets[{i}].url: {e}");
            let addr = parse_target_url(&t.url).map_err(bad)?;
            let authority: Authority = addr.authority.parse().map_err(|e| bad(format!("{e}")))?;
            let host_header =
                HeaderValue::from_str(&addr.authority).map_err(|e| bad(format!("{e}")))?;
            targets.push(Target {
                scheme: if addr.tls {
                    Scheme::HTTPS
                } else {
                    Scheme::HTTP
                },
                url: t.url.clone(),
                authority,
                host_header,
                backup: t.backup,
                state: TargetState::default(),
            });
        }
        if targets.is_empty() {
            return Err("spec.targets: no targets".into());
        }
        let tier = |backup: bool| {
            let members: Vec<(u32, u32, &str)> = spec
                .targets
                .iter()
                .enumerate()
                .filter(|(_, t)| t.backup == backup)
                .map(|(i, t)| (i as u32, t.weight, t.url.as_str()))
                .collect();
            Balancer::new(spec.load_balancing.policy, &members)
        };
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(spec.timeouts.connect));
        http.enforce_http(false);
        let tls = crate::tls::client_config(&spec.tls, &tls_sources)?;
        if spec.tls.dangerously_skip_verify {
            tracing::warn!(backend = %name, "dangerouslySkipVerify: certificates of this Backend's https:// targets are NOT verified; use only for development");
        }
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = match &spec.tls.server_name {
            Some(n) => {
                let n = rustls_pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| format!("spec.tls.serverName: {e}"))?;
                connector.with_server_name_resolver(FixedServerNameResolver::new(n))
            }
            None => connector,
        };
        let (version, connector) = match spec.protocol {
            Protocol::Http1 => (
                Version::HTTP_11,
                connector.enable_http1().wrap_connector(http),
            ),
            Protocol::Http2 => (
                Version::HTTP_2,
                connector.enable_http2().wrap_connector(http),
            ),
        };
        let addresses: Vec<(Scheme, Authority)> = targets
            .iter()
            .map(|t| (t.scheme.clone(), t.authority.clone()))
            .collect();
        let conns = Conns::new(connector, version == Version::HTTP_2, &addresses)?;
        let pool = Arc::new(BackendPool {
            name: name.to_string(),
            spec: spec.clone(),
            tls_sources,
            primaries: tier(false),
            backups: tier(true),
            targets,
            conns,
            version,
            retired: AtomicBool::new(false),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(close_idle_loop(Arc::downgrade(&pool)));
            if let Some(hc) = &spec.health_check {
                for index in 0..pool.targets.len() {
                    rt.spawn(probe_loop(Arc::downgrade(&pool), index, hc.clone()));
                }
            }
        }
        Ok(pool)
    }

    /// A target for this request: the primaries by the Backend's policy,
    /// and only when none is available the backups. Targets in `tried` are
    /// avoided while another is available. `None`: nothing available (all
    /// down, ejected or with an open breaker) at `now` ([`now_ms`]).
    pub fn pick(&self, key: u64, tried: &[u32], now: u64) -> Option<u32> {
        let view = View { pool: self, now };
        for balancer in [&self.primaries, &self.backups] {
            if balancer.is_empty() {
                continue;
            }
            if let Some(i) = balancer.pick(&view, key, tried) {
                return Some(i);
            }
            // A retry may go back to a target it tried rather than fail.
            if !tried.is_empty() {
                if let Some(i) = balancer.pick(&view, key, &[]) {
                    return Some(i);
                }
            }
        }
        None
    }

    /// Records how a request to `target` ended at `now` ([`now_ms`]), and
    /// logs a change of state.
    pub fn record(&self, target: u32, outcome: Outcome, now: u64) {
        let Some(t) = self.targets.get(target as usize) else {
            return;
        };
        let may_eject = || {
            let cap = self
                .spec
                .outlier_detection
                .as_ref()
                .map_or(0, |o| o.max_ejected_percent as usize);
            let ejected = self
                .targets
                .iter()
                .filter(|t| t.state.is_ejected(now))
                .count();
            (ejected + 1) * 100 <= cap * self.targets.len()
        };
        let changed = t.state.record(
            outcome,
            now,
            &self.spec.circuit_breaker,
            self.spec.outlier_detection.as_ref(),
            may_eject,
        );
        if let Some(condition) = changed {
            log_change(&self.name, &t.url, condition);
        }
    }

    pub fn target(&self, index: u32) -> Option<&Target> {
        self.targets.get(index as usize)
    }

    /// Stops the health checks: a newer runtime no longer uses this pool.
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Closes the pool's connections that stayed idle too long, while it is in
/// use; a retired pool's idle connections are closed at the next round.
async fn close_idle_loop(pool: Weak<BackendPool>) {
    let mut tick = tokio::time::interval(conn::IDLE_TIMEOUT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let retired = pool.retired.load(std::sync::atomic::Ordering::Relaxed);
        pool.conns.close_idle(retired);
        if retired {
            return;
        }
    }
}

fn log_change(backend: &str, target: &str, condition: Condition) {
    match condition {
        Condition::Up => tracing::info!(backend, target, "target is back in the pool"),
        other => {
            tracing::warn!(
                backend,
                target,
                state = other.as_str(),
                "target taken out of the pool"
            );
            let alert = match other {
                Condition::CircuitOpen => "circuit-opened",
                Condition::Unhealthy => "health-check-failed",
                _ => "target-ejected",
            };
            crate::events::alert(
                alert,
                "warning",
                format!("{backend}/{target}"),
                format!(
                    "target {target} of backend {backend} is out of the pool: {}",
                    other.as_str()
                ),
            );
        }
    }
}

/// Per-target gauges and counters for `/metrics`.
pub fn render_metrics(pools: &imbl::HashMap<String, Arc<BackendPool>>, out: &mut String) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut pools: Vec<_> = pools.values().collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    let now = now_ms();
    type Read = fn(&Target, u64) -> u64;
    let metrics: [(&str, &str, &str, Read); 4] = [
        (
            "nio_backend_target_up",
            "gauge",
            "1 when the target takes requests; 0 when unhealthy, ejected or its circuit is open.",
            |t, now| u64::from(t.state.condition(now) == Condition::Up),
        ),
        (
            "nio_backend_target_in_flight",
            "gauge",
            "Requests in flight to the target.",
            |t, _| u64::from(t.state.in_flight.load(Relaxed)),
        ),
        (
            "nio_backend_target_requests_total",
            "counter",
            "Requests sent to the target.",
            |t, _| t.state.requests.load(Relaxed),
        ),
        (
            "nio_backend_target_failures_total",
            "counter",
            "Requests to the target that failed to connect, broke or timed out.",
            |t, _| t.state.failures.load(Relaxed),
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for pool in &pools {
            for t in &pool.targets {
                let _ = writeln!(
                    out,
                    "{name}{{backend=\"{}\",target=\"{}\"}} {}",
                    pool.name,
                    t.url,
                    value(t, now)
                );
            }
        }
    }
}

/// The pool as a balancer sees it, at one instant.
struct View<'a> {
    pool: &'a BackendPool,
    now: u64,
}

impl Targets for View<'_> {
    fn load(&self, index: u32) -> u32 {
        self.pool.targets[index as usize]
            .state
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn available(&self, index: u32) -> bool {
        self.pool.targets[index as usize]
            .state
            .available(self.now, &self.pool.spec.circuit_breaker)
    }

    fn usable(&self, index: u32) -> bool {
        self.pool.targets[index as usize]
            .state
            .try_use(self.now, &self.pool.spec.circuit_breaker)
    }
}

/// Probes one target every `interval` while its pool lives.
async fn probe_loop(pool: Weak<BackendPool>, index: usize, hc: HealthCheck) {
    let mut tick = tokio::time::interval(hc.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        if pool.retired.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let ok = probe(&pool, index, &hc).await;
        let target = &pool.targets[index];
        if let Some(condition) = target.state.record_probe(ok, &hc) {
            log_change(&pool.name, &target.url, condition);
        }
    }
}

async fn probe(pool: &BackendPool, index: usize, hc: &HealthCheck) -> bool {
    let target = &pool.targets[index];
    let uri = match pool.version {
        Version::HTTP_2 => Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query(hc.path.as_str())
            .build(),
        _ => Uri::try_from(hc.path.as_str()).map_err(http::Error::from),
    };
    let Ok(uri) = uri else {
        return false;
    };
    let mut req = Request::new(UpBody::empty(hc.timeout));
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = pool.version;
    req.headers_mut()
        .insert(http::header::HOST, target.host_header.clone());
    req.headers_mut().insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("nio-health-check"),
    );
    // The probe's connection is not given back (its body is not read).
    match tokio::time::timeout(hc.timeout, pool.conns.send(index as u32, req)).await {
        Ok(Ok((resp, _))) => hc.expects(resp.status().as_u16()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> BackendSpec {
        serde_json::from_value(json).unwrap()
    }

    #[tokio::test]
    async fn backups_only_when_primaries_are_out() {
        let pool = BackendPool::new(
            "b",
            &spec(serde_json::json!({
                "targets": [
                    {"url": "http://127.0.0.1:1"},
                    {"url": "http://127.0.0.1:2", "backup": true}
                ],
                "circuitBreaker": {"consecutiveFailures": 1, "openFor": "1h"}
            })),
            BackendTlsSources::default(),
        )
        .unwrap();
        assert!((0..10).all(|_| pool.pick(0, &[], now_ms()) == Some(0)));
        pool.record(0, Outcome::Failed, now_ms());
        assert!((0..10).all(|_| pool.pick(0, &[], now_ms()) == Some(1)));
        assert_eq!(pool.target(1).unwrap().host_header, "127.0.0.1:2");
    }
}
