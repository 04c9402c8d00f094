//! The gRPC side of events: data-plane reports in (`Telemetry.Report`),
//! the feed out (`EventFeed.Subscribe`), and the fleet-wide metrics built
//! from the reports' counters.

use crate::events::{self, EventLog, Filter, Stop};
use crate::fleet::Fleet;
use crate::pki::Pki;
use crate::quotas::UsageChange;
use crate::sync::{client_identity, has_join_token, Shutdown};
use crate::tokens::{bearer, Token};
use nio_proto::v1::event_feed_server::EventFeed;
use nio_proto::v1::telemetry_server::Telemetry;
use nio_proto::v1::{DataPlaneReport, Event, ReportAck, SubscribeRequest};
use std::fmt::Write;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

type Out<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// Makes a future that resolves when the control plane shuts down: open
/// report and feed streams end then, so the server can stop.
pub type Stopping = Arc<dyn Fn() -> Shutdown + Send + Sync>;

pub struct TelemetryService {
    pub log: Arc<EventLog>,
    pub quotas: Arc<crate::quotas::Quotas>,
    pub fleet: Arc<Fleet>,
    pub pki: Option<Arc<Pki>>,
    pub join_token: Token,
    pub stopping: Stopping,
}

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type ReportStream = Out<ReportAck>;

    async fn report(
        &self,
        request: Request<Streaming<DataPlaneReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        // Who may report: as for ConfigSync.Sync.
        let identity = match &self.pki {
            Some(pki) => Some(client_identity(pki, &request)?.id),
            None if has_join_token(&self.join_token, &request) => None,
            None => return Err(Status::unauthenticated("join token missing or wrong")),
        };
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        let (log, fleet, quotas) = (self.log.clone(), self.fleet.clone(), self.quotas.clone());
        let mut stopping = (self.stopping)();
        tokio::spawn(async move {
            // Quota usage other data planes reported, sent on to this one
            // between its own reports (gathered for PUSH_DELAY).
            let mut changes = quotas.subscribe();
            let mut pending: Vec<Arc<UsageChange>> = Vec::new();
            let mut push_at: Option<tokio::time::Instant> = None;
            // This stream's data plane, run and acknowledged events, once
            // it reported.
            let mut reporter: Option<(String, String, u64)> = None;
            loop {
                let report = tokio::select! {
                    () = &mut stopping => {
                        let _ = tx.send(Err(Status::unavailable("control plane shutting down"))).await;
                        return;
                    }
                    m = inbound.message() => match m {
                        Ok(Some(report)) => report,
                        _ => return,
                    },
                    change = changes.recv() => {
                        match change {
                            Ok(c) if reporter.as_ref().is_some_and(|(dp, _, _)| *dp != c.from) => {
                                pending.push(c);
                                push_at.get_or_insert_with(|| tokio::time::Instant::now() + PUSH_DELAY);
                            }
                            // Lagged: the next report's answer has it all.
                            _ => {}
                        }
                        continue;
                    }
                    () = sleep_until_some(push_at) => {
                        push_at = None;
                        let Some((dp, run, next)) = reporter.clone() else { continue };
                        let batch = std::mem::take(&mut pending);
                        let q = quotas.clone();
                        let state = tokio::task::spawn_blocking(move || q.pushed(&dp, &run, &batch)).await;
                        if let Ok(Ok(state)) = state {
                            let ack = ReportAck { next_event: next, quotas: Some(state) };
                            if tx.send(Ok(ack)).await.is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                };
                if identity.as_ref().is_some_and(|id| *id != report.data_plane) {
                    let _ = tx
                        .send(Err(Status::permission_denied(
                            "a data plane reports under its own id only",
                        )))
                        .await;
                    return;
                }
                let dp = report.data_plane.clone();
                let metrics = report.metrics.unwrap_or_default();
                let newly_dropped = fleet.reported(&dp, metrics, report.dropped_events);
                let (log2, quotas2) = (log.clone(), quotas.clone());
                let (run, first, batch) = (report.run, report.first_event, report.events);
                let usage = report.quota_usage;
                let (dp2, run2) = (dp.clone(), run.clone());
                let stored = tokio::task::spawn_blocking(move || {
                    let next = log2.append_report(&dp2, &run, first, batch)?;
                    Ok::<_, crate::store::StoreError>((next, quotas2.record(&dp2, &run, &usage)?))
                })
                .await;
                let (next, quota_state) = match stored {
                    Ok(Ok(stored)) => stored,
                    _ => {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "the event log cannot store; retry",
                            )))
                            .await;
                        return;
                    }
                };
                if newly_dropped > 0 {
                    let mut alert = events::alert(
                        "events-dropped",
                        "warning",
                        &dp,
                        format!(
                            "data plane {dp} dropped {newly_dropped} events (its buffer was full)"
                        ),
                    );
                    alert.data_plane = dp.clone();
                    if let Some(nio_proto::v1::event::Kind::Alert(a)) = &mut alert.kind {
                        a.labels.insert("dropped".into(), newly_dropped.to_string());
                    }
                    log.append(vec![alert]);
                }
                reporter = Some((dp, run2, next));
                let ack = ReportAck {
                    next_event: next,
                    quotas: Some(quota_state),
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// How long usage other data planes reported is gathered before it is
/// sent on to a data plane (bounds the messages per data plane to 10 a
/// second).
const PUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub struct FeedService {
    pub log: Arc<EventLog>,
    pub admin_token: Token,
    pub feed_token: Token,
    /// Events a consumer may fall behind before it is cut off.
    pub max_lag: u64,
    pub stopping: Stopping,
}

/// Events queued for one consumer.
const CONSUMER_QUEUE: usize = 1024;

#[tonic::async_trait]
impl EventFeed for FeedService {
    type SubscribeStream = Out<Event>;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let presented = bearer(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes()),
        );
        if !presented.is_some_and(|t| self.admin_token.matches(t) || self.feed_token.matches(t)) {
            return Err(Status::unauthenticated(
                "the event feed needs authorization: Bearer <admin token or feed token>",
            ));
        }
        let req = request.into_inner();
        let filter = Filter::from(&req);
        filter.check().map_err(Status::invalid_argument)?;
        let (tx, rx) = mpsc::channel(CONSUMER_QUEUE);
        let (log, max_lag) = (self.log.clone(), self.max_lag);
        let stopping = (self.stopping)();
        tokio::spawn(async move {
            let sender = tx.clone();
            let follow = events::follow(&log, &filter, req.from_sequence, max_lag, |e| {
                let tx = sender.clone();
                async move { tx.send(Ok(e)).await.is_ok() }
            });
            let stop = tokio::select! {
                stop = follow => stop,
                () = stopping => {
                    let _ = tx.try_send(Err(Status::unavailable("control plane shutting down; resume later")));
                    return;
                }
            };
            if let Stop::TooSlow { resume, behind } = stop {
                tracing::warn!(behind, resume, "event feed consumer too slow; cut off");
                let _ = tx.try_send(Err(Status::resource_exhausted(format!(
                    "consumer too slow: {behind} events behind; subscribe again with from_sequence={resume}"
                ))));
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Fleet-wide counters from the data planes' last reports, in Prometheus
/// text format: per data plane, route and status class, and a latency
/// histogram per route summed over the fleet.
pub fn render_fleet_metrics(fleet: &Fleet, out: &mut String) {
    let reports = fleet.reports();
    let _ = writeln!(
        out,
        "# HELP nio_fleet_requests_total Requests served by the fleet, by data plane, route and status class.\n# TYPE nio_fleet_requests_total counter"
    );
    let mut histograms: std::collections::BTreeMap<&str, (Vec<u64>, u64)> = Default::default();
    let mut bytes = String::new();
    for (dp, m) in &reports {
        for r in &m.routes {
            let _ = writeln!(
                bytes,
                "nio_fleet_body_bytes_total{{data_plane=\"{dp}\",route=\"{}\",direction=\"in\"}} {}\nnio_fleet_body_bytes_total{{data_plane=\"{dp}\",route=\"{}\",direction=\"out\"}} {}",
                r.route, r.bytes_in, r.route, r.bytes_out
            );
            for (i, n) in r.by_class.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "nio_fleet_requests_total{{data_plane=\"{dp}\",route=\"{}\",code=\"{}xx\"}} {n}",
                    r.route,
                    i + 1
                );
            }
            let h = histograms.entry(r.route.as_str()).or_default();
            if h.0.len() < r.latency_buckets.len() {
                h.0.resize(r.latency_buckets.len(), 0);
            }
            for (i, n) in r.latency_buckets.iter().enumerate() {
                h.0[i] += n;
            }
            h.1 += r.duration_us;
        }
    }
    let _ = writeln!(
        out,
        "# HELP nio_fleet_apikey_requests_total Requests each API key authenticated, by data plane.\n# TYPE nio_fleet_apikey_requests_total counter"
    );
    for (dp, m) in &reports {
        for k in &m.api_keys {
            let _ = writeln!(
                out,
                "nio_fleet_apikey_requests_total{{data_plane=\"{dp}\",apikey=\"{}\"}} {}",
                k.name, k.requests
            );
        }
    }
    for (metric, help, failures) in [
        (
            "nio_fleet_target_requests_total",
            "Requests sent to each backend target, by data plane.",
            false,
        ),
        (
            "nio_fleet_target_failures_total",
            "Failed requests to each backend target, by data plane.",
            true,
        ),
    ] {
        let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} counter");
        for (dp, m) in &reports {
            for t in &m.targets {
                let value = if failures { t.failures } else { t.requests };
                let _ = writeln!(
                    out,
                    "{metric}{{data_plane=\"{dp}\",backend=\"{}\",target=\"{}\"}} {value}",
                    t.backend,
                    t.target.replace('"', "")
                );
            }
        }
    }
    let _ = write!(
        out,
        "# HELP nio_fleet_body_bytes_total Body bytes the fleet received (in) and sent (out), by data plane and route.\n# TYPE nio_fleet_body_bytes_total counter\n{bytes}"
    );
    let _ = writeln!(
        out,
        "# HELP nio_fleet_request_duration_seconds Time to serve requests across the fleet, by route.\n# TYPE nio_fleet_request_duration_seconds histogram"
    );
    for (route, (buckets, micros)) in &histograms {
        nio_proto::write_latency_histogram(
            out,
            "nio_fleet_request_duration_seconds",
            route,
            buckets,
            *micros,
        );
    }
}
