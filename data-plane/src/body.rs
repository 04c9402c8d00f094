//! Bodies as the proxy streams them, frame by frame, never buffered whole:
//! hyper only asks for the next frame when the other side took the last
//! one, so a slow reader slows the writer (backpressure) instead of
//! filling memory.
//!
//! Both directions get an idle timeout (no frame for `idle` cuts the
//! exchange) and optional byte counting for the access log. The request
//! body can be held for a retry until its first frame is read: once
//! streaming has begun it can no longer be sent again.

use crate::upstream::health::now_ms;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bytes that crossed the proxy for one request (for the access log), and
/// when the request body was sent in full (the request timeout starts
/// then: a long upload is not a slow backend).
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// [`now_ms`] when the request body ended; 0 while it streams.
    pub request_sent_ms: AtomicU64,
    /// [`now_ms`] when the backend last took a piece of the request body.
    pub request_progress_ms: AtomicU64,
    /// The client's side of the request body failed (broken, stalled): the
    /// backend is not to blame.
    pub client_failed: AtomicBool,
    /// The request body went over its size limit.
    pub too_large: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body is larger than {0} bytes")]
pub struct TooLarge(pub u64);

#[derive(Debug, thiserror::Error)]
#[error("no data for {0:?} (idle timeout)")]
pub struct IdleTimeout(pub Duration);

/// A request's body as the proxy receives it: none for a request read by
/// our own HTTP/1 server ([`crate::front`], which only takes requests
/// without a body), or hyper's.
pub type ClientBody = Option<Incoming>;

/// Where a request body comes from.
#[derive(Debug)]
pub enum Source {
    Empty,
    Direct(Incoming),
    /// Held in `slot` until first read, so a failed attempt that never
    /// read it can hand it to the next attempt.
    Held {
        slot: Arc<Mutex<Option<Incoming>>>,
        taken: Option<Incoming>,
    },
}

/// A request body that may be retried: take it back with [`Replay::take`]
/// after an attempt failed.
#[derive(Debug, Clone)]
pub struct Replay(Arc<Mutex<Option<Incoming>>>);

impl Replay {
    /// The body, if no attempt started reading it.
    pub fn take(&self) -> Option<Incoming> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A body with an idle timeout and byte counting around `inner`.
#[derive(Debug)]
pub struct Streamed<B> {
    inner: B,
    idle: Duration,
    /// When the body started waiting for data: read from the clock at the
    /// first wait after progress (`None` until then), not on every frame.
    waiting_since: Option<Instant>,
    /// Armed the first time the body has to wait for data.
    timer: Option<Pin<Box<Sleep>>>,
    counters: Option<Arc<Counters>>,
    /// The request (client to backend) direction.
    up: bool,
    /// Request bodies: the most bytes allowed, and how many went by.
    limit: Option<u64>,
    seen: u64,
}

/// Request body sent upstream.
pub type UpBody = Streamed<Source>;

impl<B> Streamed<B> {
    fn wrap(inner: B, idle: Duration, counters: Option<Arc<Counters>>, up: bool) -> Self {
        Streamed {
            inner,
            idle,
            waiting_since: None,
            timer: None,
            counters,
            up,
            limit: None,
            seen: 0,
        }
    }
}

impl UpBody {
    /// No body (health probes, bodiless requests).
    pub fn empty(idle: Duration) -> UpBody {
        Streamed::wrap(Source::Empty, idle, None, true)
    }

    /// Refuses bodies longer than `limit` bytes (an error mid-stream).
    pub fn limited(mut self, limit: Option<u64>) -> UpBody {
        self.limit = limit;
        self
    }

    /// `body` sent as is; with `replay`, held until read so a retry can
    /// take it back.
    pub fn request(
        body: ClientBody,
        idle: Duration,
        counters: Option<&Arc<Counters>>,
        replay: bool,
    ) -> (UpBody, Option<Replay>) {
        let counters = counters.cloned();
        let body = match body {
            Some(body) if !body.is_end_stream() => body,
            _ => return (Streamed::wrap(Source::Empty, idle, counters, true), None),
        };
        if !replay {
            return (
                Streamed::wrap(Source::Direct(body), idle, counters, true),
                None,
            );
        }
        let slot = Arc::new(Mutex::new(Some(body)));
        let source = Source::Held {
            slot: slot.clone(),
            taken: None,
        };
        (
            Streamed::wrap(source, idle, counters, true),
            Some(Replay(slot)),
        )
    }

    /// Whether a retry may send this body again: it has none.
    pub fn is_empty(&self) -> bool {
        matches!(self.inner, Source::Empty)
    }
}

/// A response body as a backend sends it: through hyper's client, or our
/// own ([`crate::upstream::h1`]).
#[derive(Debug)]
pub enum Upstream {
    Hyper(Incoming),
    Own(crate::upstream::h1::Body),
}

/// Response body from a backend, sent to the client. `guard` is dropped
/// when the body ends or the client goes away (in-flight counts, the
/// access-log line).
pub type DownBody<G> = Streamed<Guarded<G>>;

#[derive(Debug)]
pub struct Guarded<G> {
    body: Upstream,
    _guard: G,
}

impl<G> DownBody<G> {
    pub fn response(
        body: Upstream,
        guard: G,
        idle: Duration,
        counters: Option<Arc<Counters>>,
    ) -> Self {
        Streamed::wrap(
            Guarded {
                body,
                _guard: guard,
            },
            idle,
            counters,
            false,
        )
    }
}

/// The frame source under a [`Streamed`] body.
pub trait Frames {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>;
    fn end(&self) -> bool;
    fn hint(&self) -> SizeHint;
}

impl Frames for Incoming {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(self).poll_frame(cx).map_err(Into::into)
    }
    fn end(&self) -> bool {
        Body::is_end_stream(self)
    }
    fn hint(&self) -> SizeHint {
        Body::size_hint(self)
    }
}

impl Frames for Upstream {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Upstream::Hyper(b) => b.poll_next(cx),
            Upstream::Own(b) => b.poll_frame(cx).map_err(Into::into),
        }
    }
    fn end(&self) -> bool {
        match self {
            Upstream::Hyper(b) => b.end(),
            Upstream::Own(b) => b.is_end_stream(),
        }
    }
    fn hint(&self) -> SizeHint {
        match self {
            Upstream::Hyper(b) => b.hint(),
            Upstream::Own(b) => b.size_hint(),
        }
    }
}

impl Frames for Source {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Source::Empty => Poll::Ready(None),
            Source::Direct(b) => b.poll_next(cx),
            Source::Held { slot, taken } => {
                if taken.is_none() {
                    *taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
                }
                match taken {
                    Some(b) => b.poll_next(cx),
                    // Taken back by a retry: this attempt was abandoned.
                    None => Poll::Ready(None),
                }
            }
        }
    }
    fn end(&self) -> bool {
        match self {
            Source::Empty => true,
            Source::Direct(b) => b.end(),
            Source::Held { taken, .. } => taken.as_ref().is_some_and(Frames::end),
        }
    }
    fn hint(&self) -> SizeHint {
        match self {
            Source::Empty => SizeHint::with_exact(0),
            Source::Direct(b) => b.hint(),
            Source::Held { slot, taken } => match taken {
                Some(b) => b.hint(),
                None => slot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map_or_else(SizeHint::default, Frames::hint),
            },
        }
    }
}

impl<G> Frames for Guarded<G> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.body.poll_next(cx)
    }
    fn end(&self) -> bool {
        self.body.end()
    }
    fn hint(&self) -> SizeHint {
        self.body.hint()
    }
}

impl<B> Streamed<B> {
    fn mark_sent(&self) {
        if let (Some(c), true) = (&self.counters, self.up) {
            c.request_sent_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    /// The client side of a request body failed.
    fn client_failed(&self) {
        if let (Some(c), true) = (&self.counters, self.up) {
            c.client_failed.store(true, Ordering::Relaxed);
        }
    }
}

impl<B: Frames + Unpin> Body for Streamed<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting_since = None;
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                this.seen += len;
                if let Some(c) = &this.counters {
                    if this.up {
                        c.bytes_in.fetch_add(len, Ordering::Relaxed);
                        c.request_progress_ms.store(now_ms(), Ordering::Relaxed);
                    } else {
                        c.bytes_out.fetch_add(len, Ordering::Relaxed);
                    }
                }
                if let Some(limit) = this.limit.filter(|l| this.seen > *l) {
                    if let Some(c) = &this.counters {
                        c.too_large.store(true, Ordering::Relaxed);
                    }
                    return Poll::Ready(Some(Err(Box::new(TooLarge(limit)))));
                }
                // hyper stops asking once the body says it has ended.
                if this.inner.end() {
                    this.mark_sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.mark_sent();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.client_failed();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => {
                // The idle time counts from the first wait after the last
                // frame. The timer is only moved when it fires: a busy
                // stream costs a clock read per wait, not a timer update.
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let deadline = since + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                loop {
                    ready!(timer.as_mut().poll(cx));
                    if deadline <= Instant::now() {
                        this.client_failed();
                        return Poll::Ready(Some(Err(Box::new(IdleTimeout(this.idle)))));
                    }
                    timer.as_mut().reset(deadline);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.end()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.hint()
    }
}
