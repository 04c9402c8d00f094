//! Counters kept by the data plane and rendered for Prometheus on the ops
//! listener. The request path only does relaxed atomic increments on
//! counters it already holds (a route's [`RouteStats`] lives in its
//! compiled route; its counters are allocated by the route's first
//! request, so a large table of idle routes costs little). Reports and
//! `/metrics` read the routes' counters from the runtime now serving; there
//! is no registry of routes beside it.

use crate::plugins::Reason;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use nio_proto::LATENCY_BUCKETS_MS;

/// Per-route counters, kept across snapshots while the route exists.
/// Empty until the route's first request: the counters are 296 bytes, and
/// most routes of a large table may never see one.
#[derive(Debug, Default)]
pub struct RouteStats(OnceLock<Box<Counters>>);

/// What an idle route reports.
static IDLE: Counters = Counters {
    by_class: [const { AtomicU64::new(0) }; 5],
    duration_us: AtomicU64::new(0),
    latency: [const { AtomicU64::new(0) }; LATENCY_BUCKETS_MS.len() + 1],
    denials: [const { AtomicU64::new(0) }; Reason::ALL.len()],
    bytes_in: AtomicU64::new(0),
    bytes_out: AtomicU64::new(0),
};

impl RouteStats {
    /// The counters to count in (made by the first call).
    pub fn counters(&self) -> &Counters {
        self.0.get_or_init(Box::default)
    }

    /// The counters to read: zeros while the route has seen no request.
    pub fn read(&self) -> &Counters {
        self.0.get().map_or(&IDLE, |c| c)
    }

    /// Whether the route has seen a request. Reports and `/metrics` list
    /// only these: a table of 100,000 routes, most of them idle, would
    /// otherwise send 100,000 rows of zeros every report (about 260 bytes
    /// per route while it is built, and as much again on the control
    /// plane for every data plane) and give Prometheus a million series
    /// that never move.
    pub fn active(&self) -> bool {
        self.0.get().is_some()
    }

    pub fn denied(&self, reason: Reason) {
        self.counters().denials[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record(&self, status: u16, micros: u64) {
        self.counters().record(status, micros);
    }
}

#[derive(Debug, Default)]
pub struct Counters {
    /// Responses by status class: index 0 = 1xx … 4 = 5xx.
    pub by_class: [AtomicU64; 5],
    /// Sum of request durations (microseconds), for the mean latency.
    pub duration_us: AtomicU64,
    /// Requests per latency bucket (not cumulative; the last is +Inf).
    pub latency: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    /// Requests refused by a plugin, by reason.
    pub denials: [AtomicU64; Reason::ALL.len()],
    /// Body bytes from clients and to clients (requests with an access-log
    /// record or an event; others are not measured).
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Counters {
    fn record(&self, status: u16, micros: u64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.duration_us.fetch_add(micros, Ordering::Relaxed);
        let bucket = LATENCY_BUCKETS_MS.partition_point(|ms| ms * 1000 < micros);
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// The histogram as Prometheus wants it: cumulative counts per bucket.
    fn cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.latency
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect()
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Requests that matched no route.
    pub unrouted: AtomicU64,
    /// Requests answered 502/504 because the backend failed.
    pub upstream_errors: AtomicU64,
    pub snapshots_applied: AtomicU64,
    /// Updates applied from a full snapshot / from a delta.
    pub full_updates: AtomicU64,
    pub delta_updates: AtomicU64,
    pub snapshots_refused: AtomicU64,
    pub revision: AtomicU64,
    /// 1 while the sync stream to the control plane is open.
    pub sync_connected: AtomicU64,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: AtomicU64,
    /// Responses sent with `Connection: close` because the data plane was
    /// above 80 % of its connection or request limit.
    pub keepalive_shed: AtomicU64,
    /// Requests refused by request validation (malformed or ambiguous).
    pub rejected_requests: AtomicU64,
    /// Requests answered 503 because `--max-requests` were in flight.
    pub overloaded_requests: AtomicU64,
    /// Connections closed at accept because `--max-connections` were open.
    pub refused_connections: AtomicU64,
    /// Connections closed (408) because the request head was too slow.
    pub header_timeouts: AtomicU64,
    /// HTTPS connections whose TLS handshake failed or timed out.
    pub tls_handshake_failures: AtomicU64,
}

impl Metrics {
    /// The counters of `routes` (by name, in name order) for the control
    /// plane's fleet-wide view.
    pub fn report<'a>(
        &self,
        routes: impl Iterator<Item = (&'a str, &'a RouteStats)>,
    ) -> nio_proto::v1::DataPlaneMetrics {
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        nio_proto::v1::DataPlaneMetrics {
            routes: routes
                .filter(|(_, s)| s.active())
                .map(|(name, s)| (name, s.read()))
                .map(|(name, s)| nio_proto::v1::RouteMetrics {
                    route: name.to_string(),
                    by_class: s.by_class.iter().map(g).collect(),
                    duration_us: g(&s.duration_us),
                    latency_buckets: s.cumulative(),
                    bytes_in: g(&s.bytes_in),
                    bytes_out: g(&s.bytes_out),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Prometheus text exposition format, with the counters of `routes`
    /// (by name, in name order).
    pub fn render<'a>(&self, routes: impl Iterator<Item = (&'a str, &'a RouteStats)>) -> String {
        let mut out = String::with_capacity(1024);
        let g = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP nio_requests_total Requests served, by route and status class."
        );
        let _ = writeln!(out, "# TYPE nio_requests_total counter");
        let routes: Vec<(&str, &RouteStats)> = routes.filter(|(_, s)| s.active()).collect();
        for (name, stats) in &routes {
            for (i, c) in stats.read().by_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "nio_requests_total{{route=\"{name}\",code=\"{}xx\"}} {}",
                    i + 1,
                    g(c)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP nio_request_duration_seconds Time to serve requests, by route.\n# TYPE nio_request_duration_seconds histogram"
        );
        for (name, stats) in &routes {
            // One read: the count and the sum from the same counters.
            let stats = stats.read();
            nio_proto::write_latency_histogram(
                &mut out,
                "nio_request_duration_seconds",
                name,
                &stats.cumulative(),
                g(&stats.duration_us),
            );
        }
        for (metric, help, read) in [
            (
                "nio_request_body_bytes_total",
                "Request body bytes received from clients, by route.",
                (|s: &Counters| &s.bytes_in) as fn(&Counters) -> &AtomicU64,
            ),
            (
                "nio_response_body_bytes_total",
                "Response body bytes sent to clients, by route.",
                |s| &s.bytes_out,
            ),
        ] {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
            for (name, stats) in &routes {
                let _ = writeln!(
                    out,
                    "{metric}{{route=\"{name}\"}} {}",
                    g(read(stats.read()))
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP nio_plugin_denials_total Requests refused by a plugin, by route and reason.\n# TYPE nio_plugin_denials_total counter"
        );
        for (name, stats) in &routes {
            for reason in Reason::ALL {
                let n = g(&stats.read().denials[reason.index()]);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "nio_plugin_denials_total{{route=\"{name}\",reason=\"{}\"}} {n}",
                        reason.as_str()
                    );
                }
            }
        }
        for (metric, kind, help, value) in [
            (
                "nio_unrouted_requests_total",
                "counter",
                "Requests that matched no route (404).",
                g(&self.unrouted),
            ),
            (
                "nio_upstream_errors_total",
                "counter",
                "Requests that failed at the backend (502/504).",
                g(&self.upstream_errors),
            ),
            (
                "nio_snapshots_applied_total",
                "counter",
                "Configuration snapshots applied.",
                g(&self.snapshots_applied),
            ),
            (
                "nio_sync_full_updates_total",
                "counter",
                "Updates received as a full snapshot.",
                g(&self.full_updates),
            ),
            (
                "nio_sync_delta_updates_total",
                "counter",
                "Updates received as a delta.",
                g(&self.delta_updates),
            ),
            (
                "nio_snapshots_refused_total",
                "counter",
                "Configuration snapshots refused (NACK).",
                g(&self.snapshots_refused),
            ),
            (
                "nio_keepalive_shed_total",
                "counter",
                "Responses with Connection: close because the data plane was near its connection or request limit.",
                g(&self.keepalive_shed),
            ),
            (
                "nio_access_log_dropped_total",
                "counter",
                "Access-log lines dropped because the writer fell behind.",
                g(&self.access_log_dropped),
            ),
            (
                "nio_rejected_requests_total",
                "counter",
                "Requests refused by request validation (400/414/431/501).",
                g(&self.rejected_requests),
            ),
            (
                "nio_overloaded_requests_total",
                "counter",
                "Requests answered 503 because --max-requests were in flight.",
                g(&self.overloaded_requests),
            ),
            (
                "nio_refused_connections_total",
                "counter",
                "Connections closed at accept because --max-connections were open.",
                g(&self.refused_connections),
            ),
            (
                "nio_header_timeouts_total",
                "counter",
                "Connections closed because a request head was not received in time.",
                g(&self.header_timeouts),
            ),
            (
                "nio_tls_handshake_failures_total",
                "counter",
                "HTTPS connections whose TLS handshake failed or timed out.",
                g(&self.tls_handshake_failures),
            ),
            (
                "nio_quota_usage_dropped_total",
                "counter",
                "Quota usage not yet counted by the control plane, dropped because a key had too many windows waiting.",
                g(&crate::quota::DROPPED_WINDOWS),
            ),
            (
                "nio_quota_fleet_size",
                "gauge",
                "Data planes reporting, as the control plane last said (rateLimit plugins divide their limit by it).",
                crate::quota::fleet_size(),
            ),
            (
                "nio_config_revision",
                "gauge",
                "Revision of the configuration being served.",
                g(&self.revision),
            ),
            (
                "nio_sync_connected",
                "gauge",
                "1 while the stream to the control plane is open.",
                g(&self.sync_connected),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {metric} {help}\n# TYPE {metric} {kind}\n{metric} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Routes appear in reports and in `/metrics` from their first request.
    #[test]
    fn idle_routes_are_not_listed() {
        let metrics = Metrics::default();
        let (busy, idle) = (RouteStats::default(), RouteStats::default());
        let routes = || [("busy", &busy), ("idle", &idle)].into_iter();
        busy.record(200, 1_500);
        let reported: Vec<_> = metrics
            .report(routes())
            .routes
            .into_iter()
            .map(|r| r.route)
            .collect();
        assert_eq!(reported, ["busy"]);
        let text = metrics.render(routes());
        assert!(
            text.contains("nio_requests_total{route=\"busy\",code=\"2xx\"} 1"),
            "{text}"
        );
        assert!(!text.contains("idle"), "{text}");
        idle.denied(Reason::ALL[0]);
        assert_eq!(metrics.report(routes()).routes.len(), 2);
    }
}
