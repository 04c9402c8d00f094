//! The HTTP data path: one request from accept to response.
//!
//! ```text
//! request ─▶ load runtime (Arc, kept to the end) ─▶ route (host, path)
//!         ─▶ pick target (weighted round robin) ─▶ rewrite (hop-by-hop out,
//!            X-Forwarded-*, X-Request-Id, Host) ─▶ call (pooled connection,
//!            bodies streamed both ways) ─▶ response (hop-by-hop out)
//! ```
//!
//! Every failure becomes a response in one place, [`error_response`]: a
//! JSON body `{"error", "requestId"}` with 404 (no route), 502 (backend
//! unreachable or broken), 503 (no configuration yet) or 504 (backend too
//! slow), and an `X-Nio-Error` header naming the cause.

use crate::metrics::Metrics;
use crate::runtime::RuntimeSlot;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the proxy answers with: the backend's streamed body, or our own.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Time to connect to a target.
    pub connect_timeout: Duration,
    /// Time from sending the request to the backend's response headers.
    pub response_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
        }
    }
}

pub struct Proxy {
    runtime: Arc<RuntimeSlot>,
    client: Client<HttpConnector, Incoming>,
    metrics: Arc<Metrics>,
    /// While draining, HTTP/1.1 responses carry `Connection: close` so
    /// clients move to other data planes.
    draining: Arc<AtomicBool>,
    opts: ProxyOptions,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_NIO_ERROR: HeaderName = HeaderName::from_static("x-nio-error");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Why a request did not reach a backend response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    NotConfigured,
    NoRoute,
    BadRequest,
    Unreachable,
    Timeout,
}

impl ProxyError {
    fn status(self) -> StatusCode {
        match self {
            ProxyError::NotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::Unreachable => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn code(self) -> &'static str {
        match self {
            ProxyError::NotConfigured => "not-configured",
            ProxyError::NoRoute => "no-route",
            ProxyError::BadRequest => "bad-request",
            ProxyError::Unreachable => "backend-unreachable",
            ProxyError::Timeout => "backend-timeout",
        }
    }

    fn message(self) -> &'static str {
        match self {
            ProxyError::NotConfigured => "the gateway has no configuration yet",
            ProxyError::NoRoute => "no route matches this host and path",
            ProxyError::BadRequest => "the request cannot be forwarded",
            ProxyError::Unreachable => "the backend could not be reached or failed",
            ProxyError::Timeout => "the backend did not answer in time",
        }
    }
}

/// The one function that turns a failure into a response.
pub fn error_response(err: ProxyError, request_id: &HeaderValue) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": err.message(),
        "requestId": request_id.to_str().unwrap_or_default(),
    });
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = err.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_NIO_ERROR.clone(), HeaderValue::from_static(err.code()));
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    resp
}

impl Proxy {
    pub fn new(
        runtime: Arc<RuntimeSlot>,
        metrics: Arc<Metrics>,
        draining: Arc<AtomicBool>,
        opts: ProxyOptions,
    ) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(opts.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Proxy {
            runtime,
            client,
            metrics,
            draining,
            opts,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, client: SocketAddr) -> Response<ProxyBody> {
        let http1 = req.version() <= Version::HTTP_11;
        let mut resp = self.route_and_forward(req, client).await;
        if http1 && self.draining.load(Ordering::Relaxed) {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    async fn route_and_forward(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = request_id(req.headers());
        let Some(runtime) = self.runtime.load_full() else {
            return error_response(ProxyError::NotConfigured, &request_id);
        };
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or("");
        let Some(m) = runtime.router.find(host, req.uri().path()) else {
            self.metrics.unrouted.fetch_add(1, Ordering::Relaxed);
            return error_response(ProxyError::NoRoute, &request_id);
        };
        let route = m.route.clone();
        let prefix_len = if route.strip_path {
            m.prefix.trim_end_matches('/').len()
        } else {
            0
        };
        let target = route.backend.pick();

        let resp = match self
            .forward(req, client, target, prefix_len, &request_id)
            .await
        {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
                resp.map(Either::Left)
            }
            Err(e) => {
                self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                if e != ProxyError::BadRequest {
                    tracing::warn!(route = %route.name, target = %target.url, error = e.code(), request_id = ?request_id, "backend call failed");
                }
                error_response(e, &request_id)
            }
        };
        route
            .stats
            .record(resp.status().as_u16(), started.elapsed().as_micros() as u64);
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        client: SocketAddr,
        target: &crate::upstream::Target,
        strip: usize,
        request_id: &HeaderValue,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let original_host = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| {
                parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
            });
        let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let pq = if strip > 0 {
            let rest = &pq[strip.min(pq.len())..];
            if rest.starts_with('/') {
                rest.parse::<PathAndQuery>()
            } else {
                format!("/{rest}").parse::<PathAndQuery>()
            }
        } else {
            pq.parse::<PathAndQuery>()
        }
        .map_err(|_| ProxyError::BadRequest)?;
        parts.uri = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(target.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|_| ProxyError::BadRequest)?;
        parts.version = Version::HTTP_11;

        let h = &mut parts.headers;
        strip_hop_by_hop(h);
        h.insert(header::HOST, target.host_header.clone());
        h.insert(X_REQUEST_ID.clone(), request_id.clone());
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        if let Some(v) = original_host.and_then(|o| HeaderValue::from_str(&o).ok()) {
            h.insert(X_FORWARDED_HOST.clone(), v);
        }
        append_forwarded_for(h, client);

        let call = self.client.request(Request::from_parts(parts, body));
        match tokio::time::timeout(self.opts.response_timeout, call).await {
            Err(_) => Err(ProxyError::Timeout),
            Ok(Err(e)) => {
                tracing::debug!(error = ?e, "upstream error");
                Err(ProxyError::Unreachable)
            }
            Ok(Ok(resp)) => Ok(resp),
        }
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
    let id: u128 = rand::random();
    let mut buf = [0u8; 32];
    let hex = b"0123456789abcdef";
    for (i, byte) in id.to_be_bytes().iter().enumerate() {
        buf[2 * i] = hex[(byte >> 4) as usize];
        buf[2 * i + 1] = hex[(byte & 0xf) as usize];
    }
    // Only hex digits: always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

fn append_forwarded_for(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_string();
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, "10.0.0.1:5".parse().unwrap());
        append_forwarded_for(&mut h, "[::1]:5".parse().unwrap());
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, ::1");
    }
}
