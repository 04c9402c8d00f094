//! Connections to one Backend's targets, reused across requests.
//!
//! HTTP/1: per target a stack of idle connections, the most recently used
//! on top (it is the likeliest to still be open and warm). A request takes
//! one, or opens a new one; the connection goes back when the exchange that
//! borrowed it ends (its response body finished), if it is still open.
//! Requests without a body go through our own client ([`super::h1`]), on
//! connections of their own; the others (and upgrades) through hyper's.
//! HTTP/2: per target one shared connection, multiplexed.
//!
//! Targets are addressed by their index in the pool, so taking a connection
//! hashes nothing; the hot path allocates nothing and awaits no boxed
//! future (only opening a connection does, in the connector). Idle
//! connections are closed after [`IDLE_TIMEOUT`]; at most [`MAX_IDLE`] are
//! kept per target. Each target has its own short-held lock.
//!
//! It must not: decide which target takes a request (`balance`), or retry
//! on another target (the proxy does, after counting the failure).

use crate::body::{BoxError, UpBody, Upstream};
use crate::upstream::h1;
use crate::upstream::health::now_ms;
use http::uri::{Authority, Scheme, Uri};
use http::{header, HeaderMap, Method, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;
use tower_service::Service;

/// How long an unused connection stays open.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per target; more are closed when they come back.
pub const MAX_IDLE: usize = 1024;

pub type Connector = HttpsConnector<HttpConnector>;
/// An HTTP/1 connection lent to one exchange: give it back with
/// [`Conns::put`] when the response body has been read.
pub type Lease = http1::SendRequest<UpBody>;

/// Why a call got no response.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection: refused, unresolvable, timed out, TLS handshake.
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or answered.
    #[error("upstream connection failed")]
    Http(#[source] hyper::Error),
    /// The same, on a connection of our own client.
    #[error("upstream connection failed")]
    Own(#[source] h1::Error),
}

impl CallError {
    /// The request never left: always safe to send again.
    pub fn is_connect(&self) -> bool {
        matches!(self, CallError::Connect(_))
    }
}

struct Idle {
    tx: Lease,
    /// [`now_ms`] when it came back.
    since: u64,
}

struct Slot {
    /// Where connections to this target are opened (scheme and authority).
    connect_uri: Uri,
    idle: Mutex<Vec<Idle>>,
    /// Idle connections of our own client (bodiless requests).
    own: h1::Home,
    shared: Mutex<Option<http2::SendRequest<UpBody>>>,
}

pub struct Conns {
    connector: Connector,
    http2: bool,
    slots: Box<[Slot]>,
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns")
            .field("http2", &self.http2)
            .field("targets", &self.slots.len())
            .finish()
    }
}

impl Conns {
    /// `targets`: each target's scheme and authority, by index.
    pub fn new(
        connector: Connector,
        http2: bool,
        targets: &[(Scheme, Authority)],
    ) -> Result<Conns, String> {
        let slots = targets
            .iter()
            .map(|(scheme, authority)| {
                let connect_uri = Uri::builder()
                    .scheme(scheme.clone())
                    .authority(authority.clone())
                    .path_and_query("/")
                    .build()
                    .map_err(|e| format!("target {authority}: {e}"))?;
                Ok(Slot {
                    connect_uri,
                    idle: Mutex::new(Vec::new()),
                    own: h1::Home::default(),
                    shared: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Conns {
            connector,
            http2,
            slots: slots.into_boxed_slice(),
        })
    }

    /// Sends `req` to target `index` on a pooled connection, or a new one.
    /// With the response comes the HTTP/1 connection it used, to be given
    /// back with [`Conns::put`] once the response body is read.
    pub async fn send(
        &self,
        index: u32,
        mut req: Request<UpBody>,
    ) -> Result<(Response<Upstream>, Option<Lease>), CallError> {
        let Some(slot) = self.slots.get(index as usize) else {
            return Err(CallError::Connect("no such target".into()));
        };
        if self.http2 {
            let resp = self.send_http2(slot, req).await?;
            return Ok((resp.map(Upstream::Hyper), None));
        }
        if own_client_takes(req.method(), req.headers()) && req.body().is_empty() {
            let (parts, _) = req.into_parts();
            let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
            // The caller keeps the deadline here.
            let unbounded = Instant::now() + Duration::from_secs(365 * 86_400);
            let head = h1::RequestHead {
                method: &parts.method,
                target,
                headers: &parts.headers,
                added: &[],
                host: None,
                wire: false,
            };
            let sent = self.send_own(index, &head, unbounded);
            let resp = sent
                .await
                .unwrap_or(Err(CallError::Own(h1::Error::TimedOut)))?;
            return Ok((resp, None));
        }
        loop {
            let (mut tx, reused) = match take_idle(slot) {
                Some(tx) => (tx, true),
                // Boxed: opening is rare, and its future (connector,
                // handshake) would otherwise make every request's future
                // larger, and that is moved and copied on each request.
                None => (Box::pin(self.open_http1(slot)).await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp.map(Upstream::Hyper), Some(tx))),
                Err(mut e) => match e.take_message() {
                    // A pooled connection that closed (or was not ready)
                    // before the request went out: the request is intact,
                    // another connection takes it.
                    Some(back) if reused => req = back,
                    _ => return Err(CallError::Http(e.into_error())),
                },
            }
        }
    }

    /// A request without a body through our own client (see
    /// [`own_client_takes`]), its head borrowed; `host` replaces the
    /// request's `Host`. When a reused connection turns out closed before
    /// any answer came (the target closed it while it was idle, in the
    /// same instant), a safe request (GET, HEAD, OPTIONS, TRACE) is sent
    /// once more on a new connection without counting a failure; anything
    /// else is left to the proxy's counted retries. `None` when no
    /// response head came by `deadline` (the connection is dropped).
    pub async fn send_own(
        &self,
        index: u32,
        head: &h1::RequestHead<'_>,
        deadline: Instant,
    ) -> Option<Result<Response<Upstream>, CallError>> {
        let Some(slot) = self.slots.get(index as usize) else {
            return Some(Err(CallError::Connect("no such target".into())));
        };
        let safe = matches!(
            *head.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
        );
        let result = match take_own(slot) {
            Some(conn) => match conn.exchange(head, &slot.own, deadline).await {
                Err(h1::Error::Closed(_)) if safe => None,
                other => Some(other),
            },
            None => None,
        };
        let result = match result {
            Some(result) => result,
            None => {
                // (A new connection's own timer takes over once it is open.)
                let opened = tokio::time::timeout_at(deadline, Box::pin(self.open_own(slot)));
                let conn = match opened.await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => return Some(Err(e)),
                    Err(_) => return None,
                };
                conn.exchange(head, &slot.own, deadline).await
            }
        };
        match result {
            Err(h1::Error::TimedOut) => None,
            result => Some(
                result
                    .map(|resp| resp.map(Upstream::Own))
                    .map_err(CallError::Own),
            ),
        }
    }

    async fn open_own(&self, slot: &Slot) -> Result<Box<h1::Conn>, CallError> {
        Ok(h1::Conn::new(TokioIo::new(self.open(slot).await?)))
    }

    /// Gives a connection back after its exchange, unless it closed (the
    /// backend said `Connection: close`, the body broke, an upgrade).
    pub fn put(&self, index: u32, tx: Lease) {
        if tx.is_closed() {
            return;
        }
        let Some(slot) = self.slots.get(index as usize) else {
            return;
        };
        let mut idle = lock(&slot.idle);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                tx,
                since: now_ms(),
            });
        }
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] (or all
    /// of them with `all`), and forgets closed ones.
    pub fn close_idle(&self, all: bool) {
        let now = now_ms();
        for slot in self.slots.iter() {
            lock(&slot.idle).retain(|i| !all && !i.tx.is_closed() && !expired(i.since, now));
            lock(&slot.own).retain(|i| !all && !expired(i.since, now));
            if all {
                lock(&slot.shared).take();
            }
        }
    }

    async fn open(&self, slot: &Slot) -> Result<<Connector as Service<Uri>>::Response, CallError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(CallError::Connect)?;
        connector
            .call(slot.connect_uri.clone())
            .await
            .map_err(CallError::Connect)
    }

    async fn open_http1(&self, slot: &Slot) -> Result<Lease, CallError> {
        let io = self.open(slot).await?;
        let (tx, conn) = http1::handshake(io)
            .await
            .map_err(|e| CallError::Connect(e.into()))?;
        tokio::spawn(async move {
            // Upgrades (101) hand the connection to the tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(tx)
    }

    async fn open_http2(&self, slot: &Slot) -> Result<http2::SendRequest<UpBody>, CallError> {
        let io = self.open(slot).await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| CallError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *lock(&slot.shared) = Some(tx.clone());
        Ok(tx)
    }

    async fn send_http2(
        &self,
        slot: &Slot,
        mut req: Request<UpBody>,
    ) -> Result<Response<Incoming>, CallError> {
        loop {
            let shared = lock(&slot.shared)
                .as_ref()
                .filter(|tx| !tx.is_closed())
                .cloned();
            let (mut tx, reused) = match shared {
                Some(tx) => (tx, true),
                None => (Box::pin(self.open_http2(slot)).await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => {
                        lock(&slot.shared).take();
                        req = back;
                    }
                    _ => return Err(CallError::Http(e.into_error())),
                },
            }
        }
    }
}

/// Whether our own client takes an HTTP/1 request without a body: not an
/// upgrade, not asking for trailers (hyper's client handles those).
pub fn own_client_takes(method: &Method, headers: &HeaderMap) -> bool {
    method != Method::CONNECT && !NOT_OWN_CLIENTS.iter().any(|n| headers.contains_key(n))
}

/// The request fields that leave a request to hyper's client.
pub const NOT_OWN_CLIENTS: [header::HeaderName; 2] = [header::UPGRADE, header::TE];

/// The most recently returned idle connection of our own client that is
/// still open.
fn take_own(slot: &Slot) -> Option<Box<h1::Conn>> {
    let now = now_ms();
    loop {
        // Checked (and, if closed, dropped) outside the lock.
        let mut idle = lock(&slot.own).pop()?;
        if !expired(idle.since, now) && !idle.conn.stale() {
            return Some(idle.conn);
        }
    }
}

/// The most recently returned open connection that can take a request now.
fn take_idle(slot: &Slot) -> Option<Lease> {
    let now = now_ms();
    let mut idle = lock(&slot.idle);
    let mut busy = Vec::new();
    let found = loop {
        let Some(i) = idle.pop() else {
            break None;
        };
        if i.tx.is_closed() || expired(i.since, now) {
            continue;
        }
        if i.tx.is_ready() {
            break Some(i.tx);
        }
        // Back before its connection noticed the end of the response (a
        // race between threads): it will be ready soon, keep it.
        busy.push(i);
    };
    if !busy.is_empty() {
        idle.splice(0..0, busy);
    }
    found
}

fn expired(since: u64, now: u64) -> bool {
    now.saturating_sub(since) >= IDLE_TIMEOUT.as_millis() as u64
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use crate::body::Upstream;
    use crate::upstream::{BackendPool, BackendTlsSources};
    use http::{HeaderMap, HeaderValue, Method};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::time::Instant;

    /// What a test backend does after its answers on a connection.
    #[derive(Clone, Copy, PartialEq)]
    enum Then {
        /// Closes it at once.
        Close,
        /// Closes it when the next request comes.
        CloseOnNext,
        /// Reads what comes and never answers.
        Stall,
    }

    /// A backend that answers `answers[i]` requests on its i-th
    /// connection (keep-alive, `ok` each time), then does `then`. It
    /// counts the connections it accepted.
    async fn backend(answers: Vec<usize>, then: Then) -> (u16, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let i = count.fetch_add(1, Ordering::SeqCst);
                let answers = answers.get(i).copied().unwrap_or(usize::MAX);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut answered = 0;
                    let mut seen = Vec::new();
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if answered == answers && then == Then::Stall {
                                continue;
                            }
                            if answered == answers {
                                return;
                            }
                            answered += 1;
                            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            conn.write_all(ok).await.unwrap();
                            if then == Then::Close && answered == answers {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (port, accepted)
    }

    fn pool(port: u16) -> Arc<BackendPool> {
        let spec = serde_json::from_value(serde_json::json!({
            "targets": [{"url": format!("http://127.0.0.1:{port}")}]
        }))
        .unwrap();
        BackendPool::new("b", &spec, BackendTlsSources::default()).unwrap()
    }

    /// One call through our own client; the body read to its end.
    async fn call(pool: &BackendPool, method: Method) -> Result<Vec<u8>, String> {
        call_within(pool, method, Duration::from_secs(10)).await
    }

    async fn call_within(
        pool: &BackendPool,
        method: Method,
        timeout: Duration,
    ) -> Result<Vec<u8>, String> {
        let host = HeaderValue::from_static("b.test");
        let deadline = Instant::now() + timeout;
        let headers = HeaderMap::new();
        let head = super::h1::RequestHead {
            method: &method,
            target: "/",
            headers: &headers,
            added: &[],
            host: Some(&host),
            wire: false,
        };
        let resp = pool
            .conns
            .send_own(0, &head, deadline)
            .await
            .ok_or("timed out")?
            .map_err(|e| crate::proxy::error_chain(&e))?;
        let Upstream::Own(mut body) = resp.into_body() else {
            panic!("not our own client");
        };
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| body.poll_frame(cx)).await {
            out.extend_from_slice(frame.map_err(|e| e.to_string())?.data_ref().unwrap());
        }
        Ok(out)
    }

    #[tokio::test]
    async fn connections_are_reused_and_closed_ones_skipped() {
        // The first connection answers twice, then is closed while idle.
        let (port, accepted) = backend(vec![2], Then::Close).await;
        let pool = pool(port);
        for _ in 0..2 {
            assert_eq!(call(&pool, Method::GET).await.unwrap(), b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "kept alive");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Whatever the method: a connection seen closed is not used.
        assert_eq!(call(&pool, Method::POST).await.unwrap(), b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_closed_under_a_request_is_retried_once_if_safe() {
        // Each connection answers once, then closes on the next request
        // (as a target that timed it out at that instant would).
        let (port, accepted) = backend(vec![1, 1, 1, 1], Then::CloseOnNext).await;
        let pool = pool(port);
        assert_eq!(call(&pool, Method::GET).await.unwrap(), b"ok");
        // Reused, found closed by the request: sent again on a new one.
        assert_eq!(call(&pool, Method::GET).await.unwrap(), b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // Not safe to send twice: the failure is the proxy's to handle.
        let err = call(&pool, Method::DELETE).await.unwrap_err();
        assert!(err.contains("closed before the response"), "{err}");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_response_late_for_its_deadline_drops_its_connection() {
        // Each connection answers once, then never again.
        let (port, accepted) = backend(vec![1, 1], Then::Stall).await;
        let pool = pool(port);
        let short = Duration::from_millis(200);
        assert_eq!(call_within(&pool, Method::GET, short).await.unwrap(), b"ok");
        // The connection's timer moves later: its earlier registration
        // does not end the wait.
        let started = Instant::now();
        let later = Duration::from_millis(600);
        assert_eq!(
            call_within(&pool, Method::GET, later).await.unwrap_err(),
            "timed out"
        );
        assert!(started.elapsed() >= later, "{:?}", started.elapsed());
        // That connection is gone: the next request opens another...
        assert_eq!(call(&pool, Method::GET).await.unwrap(), b"ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        // ...whose timer moves earlier, and ends the wait.
        assert_eq!(
            call_within(&pool, Method::GET, short).await.unwrap_err(),
            "timed out"
        );
    }
}
