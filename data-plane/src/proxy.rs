//! The HTTP data path: one request from accept to response.
//!
//! ```text
//! request ─▶ load runtime (Arc, kept to the end)
//!         ─▶ route (host, path, then method/header/query conditions)
//!         ─▶ rewrite (path, Host, hop-by-hop out, X-Forwarded-*/Forwarded,
//!            X-Request-Id, the route's request header rules)
//!         ─▶ pick target (LB policy over available targets; backups last)
//!         ─▶ call (pooled connection; connect and request timeouts)
//!               └─ connection failure, or 502/503 to a bodiless idempotent
//!                  request: back off, retry on another target
//!         ─▶ response (hop-by-hop out, response header rules, X-Request-Id;
//!            body streamed with an idle timeout; 101 → tunnel)
//!         ─▶ access log line when the body is done
//! ```
//!
//! Every failure becomes a response in one place, [`error_response`]: a
//! JSON body `{"error", "requestId"}` with the status of [`ProxyError`]
//! and an `X-Nio-Error` header naming the cause.

use crate::access_log::{millis, AccessLog, Record, Sink};
use crate::body::{BoxError, ClientBody, Counters, DownBody, Replay, UpBody, Upstream};
use crate::forwarded::{Peer, TrustedProxies};
use crate::front::{Answer, Wire};
use crate::metrics::Metrics;
use crate::plugins::{self, Chain, Denial, Flow};
use crate::route::{CompiledRoute, HostRule};
use crate::runtime::Runtime;
use crate::runtime::RuntimeSlot;
use crate::tls::TlsConn;
use crate::upstream::balance::hash_key;
use crate::upstream::conn::{own_client_takes, NOT_OWN_CLIENTS};
use crate::upstream::h1::RequestHead;
use crate::upstream::health::{ms_at, now_ms, Outcome};
use crate::upstream::BackendPool;
use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use nio_proto::model::{ClientAuth, PathPattern, RouteTls};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What the proxy answers with. (Its variants differ in size; boxing the
/// large one would cost an allocation per proxied answer.)
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    /// The backend's body, streamed, and the backend's fields if they are
    /// not in the answer's map.
    Backend(DownBody<Exchange>, Option<Wire>),
    /// One the gateway wrote.
    Local(Full<Bytes>),
    /// The backend's body, transformed (compressed).
    Transformed(UnsyncBoxBody<Bytes, BoxError>),
}

impl Answer for ProxyBody {
    fn wire(&self) -> Option<&Wire> {
        match self {
            ProxyBody::Backend(_, wire) => wire.as_ref(),
            _ => None,
        }
    }
}

/// A body the gateway wrote itself.
fn local(bytes: Bytes) -> ProxyBody {
    ProxyBody::Local(Full::new(bytes))
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::pin::Pin;
        use std::task::Poll;
        match self.get_mut() {
            ProxyBody::Backend(b, _) => Pin::new(b).poll_frame(cx),
            ProxyBody::Local(b) => match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            ProxyBody::Transformed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Backend(b, _) => b.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
            ProxyBody::Transformed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ProxyBody::Backend(b, _) => b.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
            ProxyBody::Transformed(b) => b.size_hint(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProxyOptions {
    /// Peers whose `X-Forwarded-*`/`Forwarded` headers are believed.
    pub trusted_proxies: TrustedProxies,
    /// Where access-log lines go (default: off).
    pub access_log: Sink,
    /// Request validation and connection limits.
    pub limits: crate::validate::Limits,
    /// The port in redirects to HTTPS (`tls.redirectHttp`); `None`: the
    /// HTTPS listener's, or 443 without one.
    pub https_port: Option<u16>,
}

pub struct Proxy {
    runtime: Arc<RuntimeSlot>,
    metrics: Arc<Metrics>,
    /// While draining, HTTP/1.1 responses carry `Connection: close` so
    /// clients move to other data planes.
    draining: Arc<AtomicBool>,
    opts: ProxyOptions,
    access_log: Arc<AccessLog>,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_NIO_ERROR: HeaderName = HeaderName::from_static("x-nio-error");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
pub(crate) static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Why a request did not get a backend's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    NotConfigured,
    NoRoute,
    BadRequest,
    /// The client's request body broke or stalled before it was sent.
    RequestBody,
    /// The request body went over the route's `bodySizeLimit`.
    PayloadTooLarge,
    /// Every target is down, ejected, or behind an open circuit breaker.
    NoHealthyTarget,
    Unreachable,
    Timeout,
    /// Refused by request validation before routing (connection closed).
    Invalid(crate::validate::Rejection),
    /// `--max-requests` requests in flight (503 with `Retry-After`).
    Overloaded,
}

impl ProxyError {
    fn status(self) -> StatusCode {
        match self {
            ProxyError::NotConfigured | ProxyError::NoHealthyTarget | ProxyError::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Invalid(r) => r.status(),
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest | ProxyError::RequestBody => StatusCode::BAD_REQUEST,
            ProxyError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Unreachable => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            ProxyError::NotConfigured => "not-configured",
            ProxyError::NoRoute => "no-route",
            ProxyError::BadRequest => "bad-request",
            ProxyError::RequestBody => "request-body-failed",
            ProxyError::PayloadTooLarge => "body-too-large",
            ProxyError::NoHealthyTarget => "no-healthy-target",
            ProxyError::Unreachable => "backend-unreachable",
            ProxyError::Timeout => "backend-timeout",
            ProxyError::Invalid(r) => r.code(),
            ProxyError::Overloaded => "overloaded",
        }
    }

    fn message(self) -> &'static str {
        match self {
            ProxyError::NotConfigured => "the gateway has no configuration yet",
            ProxyError::NoRoute => "no route matches this request",
            ProxyError::BadRequest => "the request cannot be forwarded",
            ProxyError::RequestBody => "the request body could not be read in full",
            ProxyError::PayloadTooLarge => "the request body is too large for this route",
            ProxyError::NoHealthyTarget => "no healthy target is available for this backend",
            ProxyError::Unreachable => "the backend could not be reached or failed",
            ProxyError::Timeout => "the backend did not answer in time",
            ProxyError::Invalid(r) => r.message(),
            ProxyError::Overloaded => "the gateway is handling too many requests; retry later",
        }
    }
}

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// A trace id: 32 lowercase hex digits.
struct TraceId([u8; 32]);

impl TraceId {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

thread_local! {
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// 128 random bits for a request id or a trace or span id. These must be
/// unique, not secret (clients and backends see them), so each thread
/// draws them from a small fast generator seeded once from its
/// cryptographic one (which cost 120 instructions more per request).
fn random_id() -> u128 {
    IDS.with_borrow_mut(|ids| ids.random())
}

/// Writes `bytes` as lowercase hex into `out` (twice their length).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[(byte >> 4) as usize];
        pair[1] = HEX[(byte & 0xf) as usize];
    }
}

/// W3C Trace Context: the request joins the trace it carries (same trace
/// id and flags, the gateway's own span id as the parent the backend
/// sees), or starts one (sampled). `tracestate` passes through untouched.
/// Returns the trace id. The header is written in place (no `format!`: it
/// is on every request).
fn traceparent(headers: &mut HeaderMap) -> TraceId {
    // One lookup for reading and writing the field.
    let entry = headers.entry(&TRACEPARENT);
    let current = match &entry {
        Entry::Occupied(e) => Some(e.get()),
        Entry::Vacant(_) => None,
    };
    let (value, trace) = trace_context(current);
    if let Ok(v) = HeaderValue::from_bytes(&value) {
        match entry {
            Entry::Occupied(mut e) => {
                e.insert(v);
            }
            Entry::Vacant(e) => {
                e.insert(v);
            }
        }
    }
    trace
}

/// The `traceparent` a request goes on with, given the one it came with,
/// and its trace id.
fn trace_context(current: Option<&HeaderValue>) -> ([u8; 55], TraceId) {
    // 00-<trace id: 32>-<span id: 16>-<flags: 2>
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let incoming = current.and_then(|v| v.to_str().ok()).and_then(|v| {
        let mut parts = v.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, n: usize| {
            s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let valid = hex(version, 2)
            && version != "ff"
            && (version != "00" || parts.next().is_none())
            && hex(trace, 32)
            && trace.bytes().any(|b| b != b'0')
            && hex(parent, 16)
            && parent.bytes().any(|b| b != b'0')
            && hex(flags, 2);
        valid.then_some((trace, flags))
    });
    match incoming {
        Some((trace, flags)) => {
            value[3..35].copy_from_slice(trace.as_bytes());
            value[53..55].copy_from_slice(flags.as_bytes());
        }
        None => hex_into(&mut value[3..35], &random_id().max(1).to_be_bytes()),
    }
    hex_into(
        &mut value[36..52],
        &(random_id() as u64).max(1).to_be_bytes(),
    );
    let mut trace = [0u8; 32];
    trace.copy_from_slice(&value[3..35]);
    (value, TraceId(trace))
}

/// An error and its sources, `outer: inner: innermost`.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The one function that turns a failure into a response.
pub fn error_response(err: ProxyError, request_id: &HeaderValue) -> Response<ProxyBody> {
    let extra = match err {
        // The framing of what follows on the connection is in doubt.
        ProxyError::Invalid(_) => vec![(header::CONNECTION, HeaderValue::from_static("close"))],
        ProxyError::Overloaded => vec![(header::RETRY_AFTER, HeaderValue::from_static("1"))],
        _ => Vec::new(),
    };
    gateway_error(err.status(), err.code(), err.message(), request_id, &extra)
}

/// A plugin's refusal, in the same format.
pub fn denial_response(d: &Denial, request_id: &HeaderValue) -> Response<ProxyBody> {
    gateway_error(
        d.status,
        d.reason.as_str(),
        &d.message,
        request_id,
        &d.headers,
    )
}

/// Every gateway error: a JSON body with the request id, and `X-Nio-Error`.
fn gateway_error(
    status: StatusCode,
    code: &'static str,
    message: &str,
    request_id: &HeaderValue,
    extra: &[(HeaderName, HeaderValue)],
) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": message,
        "requestId": request_id.to_str().unwrap_or_default(),
    });
    let mut resp = Response::new(local(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_NIO_ERROR.clone(), HeaderValue::from_static(code));
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    for (n, v) in extra {
        h.append(n.clone(), v.clone());
    }
    resp
}

/// Why the plugins stopped a request.
enum Stop {
    Deny(Denial),
    Answer(Response<Bytes>),
}

/// One request in flight to one target; dropped when the response body is
/// done (or the client went away): ends the in-flight count and writes the
/// access-log line.
pub struct Exchange {
    pool: Arc<BackendPool>,
    target: u32,
    /// The HTTP/1 connection the exchange used, given back to the pool
    /// when the exchange ends.
    conn: Option<crate::upstream::conn::Lease>,
    log: Option<(Box<Record>, Arc<AccessLog>)>,
    counters: Option<Arc<Counters>>,
    /// The route's counters, for the bytes the exchange moved.
    stats: Option<Arc<crate::metrics::RouteStats>>,
}

impl Exchange {
    fn new(pool: Arc<BackendPool>, target: u32) -> Exchange {
        if let Some(t) = pool.target(target) {
            t.state.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        Exchange {
            pool,
            target,
            conn: None,
            log: None,
            counters: None,
            stats: None,
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.conns.put(self.target, conn);
        }
        if let Some(t) = self.pool.target(self.target) {
            t.state.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        let bytes = self.counters.as_ref().map(|c| {
            (
                c.bytes_in.load(Ordering::Relaxed),
                c.bytes_out.load(Ordering::Relaxed),
            )
        });
        if let (Some(stats), Some((bytes_in, bytes_out))) = (&self.stats, bytes) {
            let c = stats.counters();
            c.bytes_in.fetch_add(bytes_in, Ordering::Relaxed);
            c.bytes_out.fetch_add(bytes_out, Ordering::Relaxed);
        }
        if let Some((mut record, log)) = self.log.take() {
            if let Some((bytes_in, bytes_out)) = bytes {
                record.bytes_in = bytes_in;
                record.bytes_out = bytes_out;
            }
            log.send(record);
        }
    }
}

/// What the proxy knows about a request besides the request itself.
struct Ctx {
    request_id: HeaderValue,
    peer: Arc<Peer>,
    /// The client: the peer, or who trusted proxies say it is.
    client_ip: IpAddr,
    /// The `Host` header or `:authority`.
    host: Option<HeaderValue>,
    /// The TLS connection the request came on; `None` for plain HTTP.
    tls: Option<Arc<TlsConn>>,
    /// The access-log record, until it is handed to the response body.
    log: Option<LogStart>,
    /// When the backend's answer came (a clock reading shared by the
    /// target's health, the log and the route's latency).
    answered: Option<Instant>,
}

/// What the log needs to know about a request, taken before its parts are
/// moved into the upstream request.
struct LogStart {
    record: Box<Record>,
    counters: Arc<Counters>,
    sink: Arc<AccessLog>,
}

impl Proxy {
    pub fn new(
        runtime: Arc<RuntimeSlot>,
        metrics: Arc<Metrics>,
        draining: Arc<AtomicBool>,
        opts: ProxyOptions,
        access_log: Arc<AccessLog>,
    ) -> Proxy {
        Proxy {
            runtime,
            metrics,
            draining,
            opts,
            access_log,
        }
    }

    /// Whether an HTTP/1 answer should close its connection because the
    /// data plane is draining (an upgraded one is no longer HTTP).
    pub fn closes_for_drain(&self, resp: &Response<ProxyBody>) -> bool {
        resp.status() != StatusCode::SWITCHING_PROTOCOLS && self.draining.load(Ordering::Relaxed)
    }

    /// The answer when `--max-requests` are in flight: 503 with
    /// `Retry-After`, counted.
    pub fn overloaded<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        self.metrics
            .overloaded_requests
            .fetch_add(1, Ordering::Relaxed);
        error_response(ProxyError::Overloaded, &request_id(req.headers()))
    }

    /// Counts a request head that took longer than the header read timeout.
    pub fn header_timed_out(&self) {
        self.metrics.header_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a response whose connection was not kept alive because the
    /// data plane is near its limits.
    pub fn keepalive_shed(&self) {
        self.metrics.keepalive_shed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an HTTPS connection whose handshake failed.
    pub fn tls_handshake_failed(&self) {
        self.metrics
            .tls_handshake_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed at accept by `--max-connections`.
    pub fn connection_refused(&self) {
        self.metrics
            .refused_connections
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Answers one request from a client at `peer`. (Awaited directly by
    /// the server: every async level between them copies this future, a
    /// few KiB, as it starts.)
    pub async fn serve(
        &self,
        mut req: Request<ClientBody>,
        peer: Arc<Peer>,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = request_id(req.headers());
        let client_ip = self
            .opts
            .trusted_proxies
            .client_ip(peer.addr, req.headers());
        let host_value = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).ok(),
            None => req.headers().get(header::HOST).cloned(),
        };
        let host = host_value
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let tls = req.extensions_mut().remove::<Arc<TlsConn>>();
        // The access-log record is only started when something will read
        // it: a refusal below, or a route that logs or samples events.
        let mut ctx = Ctx {
            request_id,
            peer,
            client_ip,
            host: host_value.clone(),
            tls,
            log: None,
            answered: None,
        };
        if let Err(r) = crate::validate::check(&mut req, &self.opts.limits) {
            self.metrics
                .rejected_requests
                .fetch_add(1, Ordering::Relaxed);
            return self.fail_unrouted(ProxyError::Invalid(r), ctx, &req, started);
        }
        let Some(runtime) = self.runtime.load_full() else {
            return self.fail_unrouted(ProxyError::NotConfigured, ctx, &req, started);
        };
        // `/public/../admin` would match a route on `/public` and reach the
        // backend as `/admin`: refused rather than normalised, so what is
        // routed is what the backend sees.
        if has_dot_segments(req.uri().path()) {
            return self.fail_unrouted(ProxyError::BadRequest, ctx, &req, started);
        }
        let query = req.uri().query();
        let found = runtime.router.find(host, req.uri().path(), |r| {
            r.accepts(req.method(), req.headers(), query)
        });
        let Some(m) = found else {
            self.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
            return self.fail_unrouted(ProxyError::NoRoute, ctx, &req, started);
        };
        let route = m.route.clone();
        let write_line = self.access_log.writes_lines() && route.access_log;
        let emit_event = route.sample_event();
        if write_line || emit_event {
            let mut l = self.log_start(&req, &ctx, started);
            l.record.route = Some(route.name.clone());
            l.record.write_line = write_line;
            l.record.emit_event = emit_event;
            ctx.log = Some(l);
        }
        if *route.tls != RouteTls::default() {
            if let Some(stop) = self.route_tls(&route, &mut req, ctx.tls.as_deref(), host) {
                return self.stopped(stop, &route, ctx, started);
            }
        }
        let on_upgrade = upgrade_requested(&req).then(|| hyper::upgrade::on(&mut req));
        let (mut parts, body) = req.into_parts();
        // Hop-by-hop headers go before the plugins run, so a client's
        // `Connection: nio-client-id` cannot remove what a plugin sets.
        forwardable_headers(&mut parts.headers, on_upgrade.is_some());
        let mut state = plugins::State::default();
        if !(runtime.global.is_empty() && route.plugins.is_empty()) {
            let stopped = self
                .run_plugins(&runtime, &route, &mut parts, &mut state, &ctx)
                .await;
            if let (Some(l), Some(c)) = (&mut ctx.log, &state.consumer) {
                l.record.consumer = Some(c.clone());
            }
            if let Some(stop) = stopped {
                return self.stopped(stop, &route, ctx, started);
            }
        }
        let resp = self
            .forward(
                &mut parts,
                body,
                &route,
                &runtime.global,
                m.pattern,
                on_upgrade,
                &mut ctx,
                &mut state,
            )
            .await;
        let (resp, done) = match resp {
            Ok(resp) => (resp, ctx.answered),
            Err(e) => {
                self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                if e != ProxyError::BadRequest {
                    tracing::warn!(route = %route.name, backend = %route.backend.name, error = e.code(), request_id = ?ctx.request_id, "backend call failed");
                }
                (self.fail(e, ctx), None)
            }
        };
        let took = done
            .unwrap_or_else(Instant::now)
            .saturating_duration_since(started);
        route
            .stats
            .record(resp.status().as_u16(), took.as_micros() as u64);
        resp
    }

    /// The answer when a plugin or the route's TLS requirements stopped a
    /// request: a denial in the gateway's error format, or the answer as is.
    fn stopped(
        &self,
        stop: Stop,
        route: &CompiledRoute,
        ctx: Ctx,
        started: Instant,
    ) -> Response<ProxyBody> {
        let resp = match stop {
            Stop::Deny(d) => {
                route.stats.denied(d.reason);
                // The event feed hooks in here (a denial event).
                let resp = denial_response(&d, &ctx.request_id);
                self.local_answer(resp, Some(d.reason.as_str()), ctx)
            }
            Stop::Answer(resp) => {
                let (mut parts, body) = resp.into_parts();
                parts
                    .headers
                    .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
                self.local_answer(Response::from_parts(parts, local(body)), None, ctx)
            }
        };
        route
            .stats
            .record(resp.status().as_u16(), started.elapsed().as_micros() as u64);
        resp
    }

    /// A route's TLS requirements: plain HTTP redirected to HTTPS, and the
    /// client certificate its `clientAuth` asks for, whose subject is
    /// passed on in `clientSubjectHeader` (what a client sent in that
    /// header is always removed).
    fn route_tls(
        &self,
        route: &CompiledRoute,
        req: &mut Request<ClientBody>,
        tls: Option<&TlsConn>,
        host: &str,
    ) -> Option<Stop> {
        if route.tls.redirect_http && tls.is_none() {
            let host = crate::router::strip_port(host);
            let port = match self.opts.https_port.unwrap_or(443) {
                443 => String::new(),
                p => format!(":{p}"),
            };
            let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let status = if matches!(*req.method(), Method::GET | Method::HEAD) {
                StatusCode::MOVED_PERMANENTLY
            } else {
                StatusCode::PERMANENT_REDIRECT
            };
            let location = HeaderValue::from_str(&format!("https://{host}{port}{pq}")).ok()?;
            let mut resp = Response::new(Bytes::new());
            *resp.status_mut() = status;
            resp.headers_mut().insert(header::LOCATION, location);
            return Some(Stop::Answer(resp));
        }
        let ca = route.tls.client_ca.as_deref()?;
        let cert = tls.and_then(|t| t.client.as_ref());
        let verified = match cert {
            Some(c) => c.verified_by(ca),
            None => route.tls.client_auth == ClientAuth::Optional,
        };
        if !verified {
            let message = match cert {
                Some(_) => "the client certificate is not issued by the CA this route trusts",
                None => "this route requires a client certificate (mutual TLS over HTTPS)",
            };
            return Some(Stop::Deny(Denial::new(
                StatusCode::FORBIDDEN,
                plugins::Reason::ClientCertificate,
                message,
            )));
        }
        if let Some(name) = route.client_subject_header.as_deref() {
            let headers = req.headers_mut();
            headers.remove(name);
            if let Some(v) = cert.and_then(|c| HeaderValue::from_bytes(c.subject.as_bytes()).ok()) {
                headers.insert(name.clone(), v);
            }
        }
        None
    }

    /// The access-log record of a request, from what is known before it
    /// is routed.
    fn log_start(&self, req: &Request<ClientBody>, ctx: &Ctx, started: Instant) -> LogStart {
        let host = ctx.host.as_ref().and_then(|h| h.to_str().ok());
        let client_certificate = ctx
            .tls
            .as_ref()
            .and_then(|t| t.client.as_ref())
            .map(|c| c.subject.clone());
        LogStart {
            record: Box::new(Record {
                time: SystemTime::now(),
                request_id: ctx.request_id.to_str().unwrap_or_default().to_string(),
                client: ctx.client_ip,
                method: req.method().to_string(),
                host: host.unwrap_or_default().to_string(),
                path: req.uri().path().to_string(),
                protocol: protocol(req.version()),
                route: None,
                target: None,
                status: 0,
                error: None,
                attempts: 0,
                bytes_in: 0,
                bytes_out: 0,
                upstream_ms: None,
                duration_ms: 0.0,
                client_certificate,
                consumer: None,
                trace_id: None,
                started,
                write_line: self.access_log.writes_lines(),
                emit_event: true,
            }),
            counters: Arc::default(),
            sink: self.access_log.clone(),
        }
    }

    /// An error response for a request refused before it was routed,
    /// logged.
    fn fail_unrouted(
        &self,
        err: ProxyError,
        mut ctx: Ctx,
        req: &Request<ClientBody>,
        started: Instant,
    ) -> Response<ProxyBody> {
        ctx.log = Some(self.log_start(req, &ctx, started));
        self.fail(err, ctx)
    }

    /// An error response, logged.
    fn fail(&self, err: ProxyError, ctx: Ctx) -> Response<ProxyBody> {
        let resp = error_response(err, &ctx.request_id);
        self.local_answer(resp, Some(err.code()), ctx)
    }

    /// A response the gateway made (an error, a denial, a plugin's answer),
    /// logged.
    fn local_answer(
        &self,
        resp: Response<ProxyBody>,
        error: Option<&'static str>,
        ctx: Ctx,
    ) -> Response<ProxyBody> {
        if let Some(mut l) = ctx.log {
            l.record.status = resp.status().as_u16();
            l.record.error = error;
            l.record.bytes_in = l.counters.bytes_in.load(Ordering::Relaxed);
            l.sink.send(l.record);
        }
        resp
    }

    /// The request side of the global and route plugins, phase by phase;
    /// `Some` when one of them stopped the request.
    async fn run_plugins(
        &self,
        runtime: &Arc<Runtime>,
        route: &CompiledRoute,
        parts: &mut http::request::Parts,
        state: &mut plugins::State,
        ctx: &Ctx,
    ) -> Option<Stop> {
        let mut pctx = plugins::Ctx {
            method: &parts.method,
            uri: &parts.uri,
            headers: &mut parts.headers,
            client_ip: ctx.client_ip,
            tls: ctx.tls.as_deref(),
            route,
            runtime,
            state,
        };
        for plugin in Chain::merged(&runtime.global, &route.plugins) {
            let mut flow = plugin.on_request(&mut pctx);
            let mut waited = false;
            loop {
                match flow {
                    Flow::Continue => break,
                    // What the plugin waited for is there now: it looks at
                    // the request again (once; a second wait just decides).
                    Flow::Later(f) => {
                        flow = match f.await {
                            Flow::Continue if !waited => plugin.on_request(&mut pctx),
                            other => other,
                        };
                        waited = true;
                    }
                    Flow::Deny(d) => return Some(Stop::Deny(d)),
                    Flow::Answer(resp) => return Some(Stop::Answer(resp)),
                }
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        parts: &mut http::request::Parts,
        body: ClientBody,
        route: &CompiledRoute,
        global: &Chain,
        pattern: &PathPattern,
        on_upgrade: Option<hyper::upgrade::OnUpgrade>,
        ctx: &mut Ctx,
        state: &mut plugins::State,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (request_id, host) = (&ctx.request_id, ctx.host.as_ref());
        let log = &mut ctx.log;
        let pool = &route.backend;
        let spec = &pool.spec;
        let key = match &spec.load_balancing.hash_on {
            Some(on) => hash_on(on, &parts.headers, ctx.client_ip),
            None => 0,
        };
        let pq = match route.rewrite(pattern, parts.uri.path(), parts.uri.query()) {
            Some(rewritten) => rewritten
                .parse::<PathAndQuery>()
                .map_err(|_| ProxyError::BadRequest)?,
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        // A secret that came in the query does not go on.
        let pq = match &state.drop_query_param {
            Some(name) => crate::route::without_query_param(pq.as_str(), name)
                .parse::<PathAndQuery>()
                .map_err(|_| ProxyError::BadRequest)?,
            None => pq,
        };
        let method = parts.method.clone();
        let headers = &mut parts.headers;
        if pool.version == Version::HTTP_11 {
            join_cookies(headers);
        }
        // A request of our own server that our own client sends, with no
        // header rule after this point: the fields the gateway adds where
        // the client sent none (request id, forwarding headers,
        // traceparent) are written into its head, not inserted into its
        // map (each insertion hashed, and the map grown).
        let direct = body.is_none()
            && pool.version == Version::HTTP_11
            && route.request_headers.is_empty()
            && method != Method::CONNECT;
        // One pass over the names instead of a hashed lookup for each.
        let mut carries = [false; 4];
        if direct {
            for name in headers.keys() {
                carries[0] |= *name == X_REQUEST_ID;
                carries[1] |= *name == TRACEPARENT;
                carries[2] |= crate::forwarded::is_forwarding(name);
                // `own_client_takes`, in the same pass.
                carries[3] |= NOT_OWN_CLIENTS.contains(name);
            }
        }
        let [has_id, has_trace, has_forwarding, not_ours] = carries;
        let direct = direct && !not_ours;
        let id_added = direct && !has_id;
        let fresh = (direct && !has_forwarding).then(|| ctx.peer.fresh(host));
        let trace_added = direct && !has_trace;
        if !(id_added && fresh.is_some() && trace_added) {
            // Room for what is inserted below: one growth, not several.
            headers.reserve(6);
        }
        if !id_added {
            headers.insert(X_REQUEST_ID.clone(), request_id.clone());
        }
        if fresh.is_none() {
            self.opts.trusted_proxies.apply(headers, &ctx.peer, host);
        }
        let (trace_value, trace_id) = if trace_added {
            let (value, id) = trace_context(None);
            (Some(value), id)
        } else {
            (None, traceparent(headers))
        };
        if let Some(l) = log.as_mut() {
            l.record.trace_id = Some(trace_id.as_str().to_string());
        }
        // At most six: the request id, four forwarding fields, traceparent.
        let mut added = [(&X_REQUEST_ID, &b""[..]); 6];
        let fields = id_added
            .then(|| (&X_REQUEST_ID, request_id.as_bytes()))
            .into_iter()
            .chain(
                fresh
                    .iter()
                    .flat_map(|f| f.fields())
                    .map(|(name, v)| (name, v.as_bytes())),
            )
            .chain(trace_value.as_ref().map(|v| (&TRACEPARENT, &v[..])));
        let n = added
            .iter_mut()
            .zip(fields)
            .map(|(slot, f)| *slot = f)
            .count();
        let added = &added[..n];
        match route.host_rule() {
            HostRule::Target => {}
            HostRule::Preserve => {
                if let Some(h) = host {
                    headers.insert(header::HOST, h.clone());
                }
            }
            HostRule::Override(h) => {
                headers.insert(header::HOST, h.clone());
            }
        }
        route.request_headers.apply(headers);
        // A client of our own server (the only one without a body here)
        // can get the backend's fields as they came, when no plugin or
        // header rule reads or changes them.
        let wire = body.is_none()
            && global.is_empty()
            && route.plugins.is_empty()
            && route.response_headers.is_empty();

        let has_body = body
            .as_ref()
            .is_some_and(|b| !http_body::Body::is_end_stream(b));
        let counters = match log.as_ref() {
            Some(l) => Some(l.counters.clone()),
            None => has_body.then(Arc::default),
        };
        let retries = spec.retries.max_retries;
        let (body, mut replay) =
            UpBody::request(body, spec.timeouts.idle, counters.as_ref(), retries > 0);
        let mut body = body.limited(state.max_body);
        let mut tried = [0u32; 12];
        let mut attempts = 0usize;
        loop {
            let sent = Instant::now();
            let Some(index) = pool.pick(key, &tried[..attempts], ms_at(sent)) else {
                return Err(ProxyError::NoHealthyTarget);
            };
            tried[attempts.min(tried.len() - 1)] = index;
            attempts += 1;
            let Some(target) = pool.target(index) else {
                return Err(ProxyError::NoHealthyTarget);
            };
            let bodyless = body.is_empty();
            let may_retry = attempts <= retries as usize && (bodyless || replay.is_some());
            let host = (matches!(route.host_rule(), HostRule::Target)
                || (pool.version != Version::HTTP_2 && !parts.headers.contains_key(header::HOST)))
            .then_some(&target.host_header);
            let mut exchange = Exchange::new(pool.clone(), index);
            let timeouts = (spec.timeouts.request, spec.timeouts.idle);
            let result = if direct
                || (pool.version == Version::HTTP_11
                    && bodyless
                    && own_client_takes(&method, &parts.headers))
            {
                // Our own client borrows the head: nothing to copy for a
                // retry. Its connection goes home with the response body
                // (no lease to give back). Bodiless: the request timeout
                // runs from now, on the connection's own timer.
                let deadline = tokio::time::Instant::from_std(sent) + timeouts.0;
                let head = RequestHead {
                    method: &method,
                    target: pq.as_str(),
                    headers: &parts.headers,
                    added,
                    host,
                    wire,
                };
                let result = pool.conns.send_own(index, &head, deadline).await;
                result.map(|r| r.map(|resp| (resp, None)))
            } else {
                // (A direct request always takes the branch above.)
                debug_assert!(added.is_empty());
                // HTTP/1 requests carry the origin form (`/path?query`),
                // HTTP/2 ones the scheme and authority too.
                let uri = if pool.version == Version::HTTP_2 {
                    Uri::builder()
                        .scheme(target.scheme.clone())
                        .authority(target.authority.clone())
                        .path_and_query(pq.clone())
                        .build()
                        .map_err(|_| ProxyError::BadRequest)?
                } else {
                    Uri::from(pq.clone())
                };
                let mut up = Request::new(body);
                *up.method_mut() = method.clone();
                *up.uri_mut() = uri;
                *up.version_mut() = pool.version;
                *up.headers_mut() = if may_retry {
                    parts.headers.clone()
                } else {
                    std::mem::take(&mut parts.headers)
                };
                if let Some(host) = host {
                    up.headers_mut().insert(header::HOST, host.clone());
                }
                let call = pool.conns.send(index, up);
                let body = counters.as_deref().filter(|_| !bodyless);
                // Boxed: hyper's call and its timeout are several KiB,
                // which would make every request's future (moved a few
                // times per request) that much larger.
                Box::pin(until_response(call, timeouts.0, timeouts.1, body)).await
            };
            let next_body = |replay: &Option<Replay>| -> Option<(UpBody, Option<Replay>)> {
                if !may_retry {
                    return None;
                }
                match replay {
                    None => Some((UpBody::empty(spec.timeouts.idle), None)),
                    Some(r) => r.take().map(|b| {
                        let (body, replay) =
                            UpBody::request(Some(b), spec.timeouts.idle, counters.as_ref(), true);
                        (body.limited(state.max_body), replay)
                    }),
                }
            };
            let err = match result {
                None => {
                    pool.record(index, Outcome::Failed, now_ms());
                    ProxyError::Timeout
                }
                Some(Err(e)) => {
                    // The client's own body failing is not the target's fault.
                    if let Some(c) = counters.as_deref() {
                        if c.too_large.load(Ordering::Relaxed) {
                            route.stats.denied(plugins::Reason::BodyTooLarge);
                            return Err(ProxyError::PayloadTooLarge);
                        }
                        if c.client_failed.load(Ordering::Relaxed) {
                            return Err(ProxyError::RequestBody);
                        }
                    }
                    pool.record(index, Outcome::Failed, now_ms());
                    if e.is_connect() {
                        // Refused, unresolvable, or a TLS handshake that
                        // failed (e.g. "invalid peer certificate:
                        // UnknownIssuer"): the cause is in the chain.
                        tracing::warn!(backend = %pool.name, target = %target.url, error = %error_chain(&e), "cannot connect to the target");
                    } else {
                        tracing::debug!(error = ?e, target = %target.url, "upstream error");
                    }
                    // A connection that failed before the request left is
                    // always safe to retry; one that broke after, only for
                    // an idempotent request without a body (a pooled
                    // connection the target had just closed, say).
                    if e.is_connect() || (bodyless && idempotent(&method)) {
                        if let Some((b, r)) = next_body(&replay) {
                            (body, replay) = (b, r);
                            backoff(spec.retries.backoff, attempts).await;
                            continue;
                        }
                    }
                    if timed_out(&e) {
                        ProxyError::Timeout
                    } else {
                        ProxyError::Unreachable
                    }
                }
                // A response framed two ways (Content-Length and
                // Transfer-Encoding) cannot be passed on safely: 502, and
                // the connection is not reused (its body is never read).
                Some(Ok((resp, _))) if ambiguous_framing(resp.headers()) => {
                    pool.record(index, Outcome::Failed, now_ms());
                    tracing::warn!(target = %target.url, "backend response framed by both Content-Length and Transfer-Encoding; answered 502");
                    ProxyError::Unreachable
                }
                Some(Ok((mut resp, conn))) => {
                    exchange.conn = conn;
                    let status = resp.status().as_u16();
                    let answered = Instant::now();
                    ctx.answered = Some(answered);
                    pool.record(index, Outcome::Answered(status), ms_at(answered));
                    if spec.retries.statuses.contains(&status) && bodyless && idempotent(&method) {
                        if let Some((b, r)) = next_body(&replay) {
                            drop(resp);
                            (body, replay) = (b, r);
                            backoff(spec.retries.backoff, attempts).await;
                            continue;
                        }
                    }
                    if let Some(l) = log.take() {
                        let mut record = l.record;
                        record.target = Some(target.url.clone());
                        record.status = status;
                        record.attempts = attempts as u32;
                        record.upstream_ms = Some(millis(answered - sent));
                        exchange.log = Some((record, l.sink));
                        exchange.counters = Some(l.counters);
                        exchange.stats = Some(route.stats.clone());
                    }
                    if status == 101 {
                        if let Some(client) = on_upgrade {
                            let backend = hyper::upgrade::on(&mut resp);
                            tokio::spawn(tunnel(client, backend, exchange, spec.timeouts.idle));
                            let (mut parts, _) = resp.into_parts();
                            parts
                                .headers
                                .insert(X_REQUEST_ID.clone(), request_id.clone());
                            return Ok(Response::from_parts(parts, local(Bytes::new())));
                        }
                    }
                    let (mut parts, mut body) = resp.into_parts();
                    let mut wire = match &mut body {
                        Upstream::Own(b) => b.take_wire(),
                        Upstream::Hyper(_) => None,
                    };
                    // The wire form's fields are what the client gets; the
                    // map is empty (and stays unallocated).
                    if let Some(wire) = &mut wire {
                        wire.request_id = Some(request_id.clone());
                    } else {
                        strip_hop_by_hop(&mut parts.headers);
                        for plugin in Chain::merged(global, &route.plugins) {
                            plugin.on_response(state, &mut parts);
                        }
                        route.response_headers.apply(&mut parts.headers);
                        parts
                            .headers
                            .insert(X_REQUEST_ID.clone(), request_id.clone());
                    }
                    parts.version = Version::HTTP_11;
                    let counters = exchange.counters.clone();
                    let body = DownBody::response(body, exchange, spec.timeouts.idle, counters);
                    let body = match state.encoding {
                        Some(encoding) => ProxyBody::Transformed(plugins::compress(body, encoding)),
                        None => ProxyBody::Backend(body, wire),
                    };
                    return Ok(Response::from_parts(parts, body));
                }
            };
            if let Some(l) = log.as_mut() {
                l.record.target = Some(target.url.clone());
                l.record.attempts = attempts as u32;
            }
            return Err(err);
        }
    }
}

/// The response to `call`, or `None` when it took longer than `timeout`
/// counted from the end of the request body (`body`: its counters; `None`
/// for a bodiless request, counted from now). While the body streams, its
/// idle timeout guards against stalls instead.
async fn until_response<F: std::future::Future>(
    call: F,
    timeout: Duration,
    idle: Duration,
    body: Option<&Counters>,
) -> Option<F::Output> {
    let started = now_ms();
    tokio::pin!(call);
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(out) = tokio::time::timeout_at(deadline, &mut call).await {
            return Some(out);
        }
        let body = body?;
        let sent = body.request_sent_ms.load(Ordering::Relaxed);
        let (since, limit) = if sent != 0 {
            (sent, timeout)
        } else {
            // Still uploading: give up if the backend stopped taking the
            // body (backpressure means nothing else would notice).
            let progress = body.request_progress_ms.load(Ordering::Relaxed);
            (progress.max(started), idle)
        };
        let waited = Duration::from_millis(now_ms().saturating_sub(since));
        if waited >= limit {
            return None;
        }
        deadline = tokio::time::Instant::now() + (limit - waited).min(timeout);
    }
}

/// Both upgraded halves, copied until both sides have closed (a side that
/// finishes sending half-closes the other), or until nothing crossed in
/// either direction for `idle`.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    exchange: Exchange,
    idle: Duration,
) {
    let (client, backend) = match tokio::join!(client, backend) {
        (Ok(c), Ok(b)) => (TokioIo::new(c), TokioIo::new(b)),
        (c, b) => {
            tracing::debug!(client = ?c.err(), backend = ?b.err(), "upgrade failed");
            return;
        }
    };
    let last = AtomicU64::new(now_ms());
    let (client_read, client_write) = tokio::io::split(client);
    let (backend_read, backend_write) = tokio::io::split(backend);
    let both = async {
        tokio::join!(
            pipe(client_read, backend_write, &last),
            pipe(backend_read, client_write, &last)
        )
    };
    let watchdog = async {
        loop {
            tokio::time::sleep(idle).await;
            if now_ms().saturating_sub(last.load(Ordering::Relaxed)) >= idle.as_millis() as u64 {
                return;
            }
        }
    };
    tokio::select! {
        (up, down) = both => {
            if let Some(counters) = &exchange.counters {
                counters.bytes_in.fetch_add(up, Ordering::Relaxed);
                counters.bytes_out.fetch_add(down, Ordering::Relaxed);
            }
        }
        () = watchdog => tracing::debug!(?idle, "upgraded connection idle; closed"),
    }
}

/// Copies one direction of a tunnel; returns the bytes copied.
async fn pipe(
    mut from: impl tokio::io::AsyncRead + Unpin,
    mut to: impl tokio::io::AsyncWrite + Unpin,
    last: &AtomicU64,
) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
                total += n as u64;
                last.store(now_ms(), Ordering::Relaxed);
            }
        }
    }
    let _ = to.shutdown().await;
    total
}

/// Pause before a retry: the base doubled per attempt, with jitter, at most 2s.
async fn backoff(base: Duration, attempt: usize) {
    let exp = base.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let cap = exp.min(Duration::from_secs(2));
    let jitter = rand::random::<f64>() * 0.5 + 0.5;
    tokio::time::sleep(cap.mul_f64(jitter)).await;
}

/// Both `Content-Length` and `Transfer-Encoding`, or `Content-Length`
/// values that disagree.
fn ambiguous_framing(headers: &HeaderMap) -> bool {
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let first = lengths.next();
    (first.is_some() && headers.contains_key(header::TRANSFER_ENCODING))
        || lengths.any(|v| Some(v) != first)
}

/// Whether a path could mean another path to the backend than the one
/// routed: `.` or `..` segments (also percent-encoded, or hidden behind a
/// `;` path parameter as in `..;`), or encoded separators (`%2F`, `%5C`)
/// and backslashes, which some servers turn into `/` before resolving dots.
fn has_dot_segments(path: &str) -> bool {
    // Every case below needs a '.', a '%' or a backslash: most paths have none
    // (and the full check costs a lowercase copy and a copy per segment).
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || path.contains('\\') {
        return true;
    }
    lower.split('/').any(|seg| {
        let seg = seg.split(';').next().unwrap_or(seg).replace("%2e", ".");
        seg == "." || seg == ".."
    })
}

/// HTTP/2 clients may split `Cookie` into one header per cookie; HTTP/1.1
/// servers expect one line (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Methods that may be sent twice with the same effect (RFC 9110 §9.2.2).
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        source = err.source();
    }
    false
}

/// HTTP/1.1 `Connection: upgrade` with an `Upgrade` header (WebSockets).
fn upgrade_requested<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The consistent-hash key: the header or cookie named by the Backend, or
/// the client's address (also when the header or cookie is missing).
fn hash_on(on: &nio_proto::model::HashOn, headers: &HeaderMap, client_ip: IpAddr) -> u64 {
    if let Some(name) = &on.header {
        if let Some(v) = headers.get(name.as_str()) {
            return hash_key(v.as_bytes());
        }
    }
    if let Some(name) = &on.cookie {
        if let Some(v) = cookie(headers, name) {
            return hash_key(v.as_bytes());
        }
    }
    match client_ip {
        IpAddr::V4(ip) => hash_key(&ip.octets()),
        IpAddr::V6(ip) => hash_key(&ip.octets()),
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// Keeps a sane client-supplied id (so traces join up), otherwise makes one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let ok =
            !v.is_empty() && v.len() <= 128 && v.as_bytes().iter().all(|b| b.is_ascii_graphic());
        if ok {
            return v.clone();
        }
    }
    let id = random_id();
    let mut buf = [0u8; 32];
    hex_into(&mut buf, &id.to_be_bytes());
    // Only hex digits: always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// The request's headers as they may go upstream: hop-by-hop ones out,
/// except `TE: trailers` (gRPC needs it) and, for an upgrade, the
/// `Connection: upgrade` + `Upgrade` pair.
fn forwardable_headers(headers: &mut HeaderMap, upgrade: bool) {
    let upgrade = upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    let wants_trailers = headers
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    strip_hop_by_hop(headers);
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, upgrade);
    }
}

/// One of [`HOP_BY_HOP`] or `Transfer-Encoding`: a string match (on the
/// length first) rather than nine comparisons, for every header of every
/// message.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "upgrade"
            | "transfer-encoding"
    )
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names is cheaper
    // than nine removals, each hashing its name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_joined_or_started() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(
            traceparent(&mut h).as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let sent = h["traceparent"].to_str().unwrap();
        assert!(sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "our own span id: {sent}"
        );
        assert!(sent.ends_with("-01"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            let mut h = HeaderMap::new();
            h.insert("traceparent", HeaderValue::from_static(bad));
            let trace = traceparent(&mut h);
            assert_eq!(trace.as_str().len(), 32);
            assert!(!bad.contains(trace.as_str()), "{bad}: a new trace");
        }
        let mut h = HeaderMap::new();
        let trace = traceparent(&mut h);
        assert_eq!(h["traceparent"].len(), 55, "{}", trace.as_str());
        assert_eq!(
            &h["traceparent"].as_bytes()[3..35],
            trace.as_str().as_bytes()
        );
    }

    #[test]
    fn hop_by_hop_names_are_recognised() {
        assert!(HOP_BY_HOP.iter().all(is_hop_by_hop));
        assert!(is_hop_by_hop(&header::TRANSFER_ENCODING));
        for other in [header::HOST, header::USER_AGENT, header::CONTENT_LENGTH] {
            assert!(!is_hop_by_hop(&other), "{other}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        let id = request_id(&h);
        assert_eq!(id.len(), 32);
        assert_ne!(request_id(&h), id);
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_ne!(request_id(&h), "has space");
    }

    #[test]
    fn dot_segments_and_cookie_crumbs() {
        for bad in [
            "/a/../b",
            "/..",
            "/a/./b",
            "/a/%2E%2e/b",
            "/a/.%2e",
            "/%2e",
            "/docs/..;/admin",
            "/docs/..%2fadmin",
            "/docs/..\\admin",
            "/a%2Fb",
        ] {
            assert!(has_dot_segments(bad), "{bad}");
        }
        for ok in ["/", "/a/b", "/a/..b", "/.well-known/x", "/a/b.."] {
            assert!(!has_dot_segments(ok), "{ok}");
        }
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
    }

    #[test]
    fn cookies_and_hash_keys() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; session=xyz; b=2"),
        );
        assert_eq!(cookie(&h, "session"), Some("xyz"));
        assert_eq!(cookie(&h, "nope"), None);
        let on = nio_proto::model::HashOn {
            cookie: Some("session".into()),
            ..Default::default()
        };
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(hash_on(&on, &h, ip), hash_key(b"xyz"));
        assert_eq!(
            hash_on(&on, &HeaderMap::new(), ip),
            hash_key(&[10, 0, 0, 1])
        );
    }
}
