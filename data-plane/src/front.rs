//! Our own HTTP/1.1 server for the common request: HTTP/1.1, a target in
//! origin form, no body (no `Content-Length` other than `0`, no
//! `Transfer-Encoding`), no `Upgrade`, `Expect` or `TE`.
//!
//! hyper's server connection is a dispatcher built for every kind of
//! message, polled through several state machines. Here the connection's
//! task reads a head, parses it with `httparse`, calls the proxy, and
//! writes the answer's head and body itself, the head and a small body in
//! one write. With the head scan it makes unnecessary (below) and one
//! idle timer per connection, a small proxied GET went from 35,900 to
//! 30,700 instructions (docs/benchmarks.md, fifth round).
//!
//! Every request it does not take goes to hyper, and so does the rest of
//! its connection: [`serve`] returns the connection with the bytes it read
//! ([`Rewind`]) and the caller serves it with hyper's `auto` builder, which
//! then sees exactly the bytes a client sent. So HTTP/1.0, request bodies
//! (`100-continue`, chunked, lengths), upgrades (WebSocket, h2c), HTTP/2
//! (its preface is not an HTTP/1 head), absolute-form targets, heads with
//! more header fields than hyper's limit, heads hyper refuses, and heads
//! larger than `max_head` keep hyper's behaviour, answers and limits
//! unchanged. The raw-byte checks of [`crate::validate::Scan`] are paused
//! while this server reads: it takes no head they could refuse (see
//! [`parse`]), and on a hand-over the scan resumes with the bytes read, so
//! its verdicts reach the proxy for every request hyper serves.
//!
//! What this server does as hyper's did: header names are lowercased on
//! the way in and written as they are on the way out (an answer's
//! [`Wire`] fields, a backend's as they came, after its map's); a `date`
//! is added when the answer has none (formatted once a second per thread); an
//! answer without `Content-Length` gets one when its body's size is known
//! and is chunked otherwise; `HEAD`, `204` and `304` answers have no body;
//! `Connection: close` from either side ends the connection after the
//! answer (and is added when the client asked for it); a body that fails
//! or ends short of its length closes the connection; pipelined requests
//! are answered in order; a client that closes its connection while its
//! answer is prepared or streamed cancels it (the read side is watched
//! meanwhile, and bytes of a next request are kept); a connection waiting
//! for its next request is closed after `idle`, and at once when the
//! server stops (a request in flight is answered first). `CONNECT` goes to
//! hyper, and so does the HTTP/2 preface on a new connection (after HTTP/1
//! requests it closes the connection, as hyper's HTTP/1 server refused it).

use crate::body::ClientBody;
use crate::validate::{has_token, parse_decimal, Scan};
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

/// Most header fields this server parses in a head; a head with more goes
/// to hyper (with its own limit).
const MAX_FIELDS: usize = 100;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 8 * 1024;
/// Body bytes copied next to the head (or the previous frames) instead of
/// written on their own.
const COPY_LIMIT: usize = 16 * 1024;
/// Largest write buffer kept between requests.
const KEEP_BUFFER: usize = 64 * 1024;

/// What a connection may send and how long it may stay quiet.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Header fields per head (at most [`MAX_FIELDS`] here).
    pub max_headers: usize,
    /// A head larger than this goes to hyper, for the scanner's 431 (or
    /// hyper's own limit, if it never ends).
    pub max_head: usize,
    /// How long a connection may wait for its next request.
    pub idle: Duration,
}

/// An answer's header fields as the lines they go out as (`name:
/// value\r\n` each), written after the fields of the answer's map. The
/// proxy passes a backend's fields on this way, as they came, instead of
/// building a map of them only to write it out again.
#[derive(Debug, Clone, Default)]
pub struct Wire {
    pub fields: Bytes,
    /// A `date` is among them.
    pub date: bool,
    /// So is the one `content-length`, a number: the body's length (or,
    /// for `HEAD`, the length it would have).
    pub length: bool,
    /// Written as `x-request-id` after them: the proxy's, which the
    /// fields do not carry.
    pub request_id: Option<HeaderValue>,
}

/// An answer's body, which may carry [`Wire`] fields.
pub trait Answer: Body<Data = Bytes> + Unpin {
    fn wire(&self) -> Option<&Wire> {
        None
    }
}

/// How a connection left this server.
pub enum Ended<S> {
    /// Closed: by either side, after an error, idle, or stopped.
    Closed,
    /// It sent a request this server does not take: serve the rest with
    /// hyper, starting with what was read already (the scan resumed).
    HandOff(Rewind<Scan<S>>),
}

/// Serves HTTP/1.1 requests on `io` with `handler` until the connection
/// ends, `stop` changes, or a request this server does not take arrives.
/// The scan of `io` is paused meanwhile (see [`Scan`]); this server keeps
/// the head deadline instead: a head not complete within
/// [`Scan::head_timeout`] of its first byte closes the connection, with a
/// 408 if it was the first.
pub async fn serve<S, H, F, B>(
    mut io: Scan<S>,
    settings: Settings,
    mut handler: H,
    stop: &mut watch::Receiver<bool>,
) -> Ended<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<ClientBody>) -> F,
    F: Future<Output = Response<B>>,
    B: Answer,
{
    io.pause();
    let mut buf = BytesMut::with_capacity(READ_SIZE);
    let mut out = Vec::with_capacity(1024);
    let mut spans = Vec::new();
    let mut answered = 0u64;
    // One timer per connection, moved only when it fires before the time
    // it stands for or must fire sooner: arming a tokio timer for every
    // request cost more than parsing its head.
    let mut timer = Box::pin(tokio::time::sleep(settings.idle));
    loop {
        // When the connection must have sent a whole head: `idle` after it
        // went quiet, or the head deadline from a head's first byte.
        let mut until = Instant::now() + settings.idle;
        let mut partial = false;
        let (req, mut close) = loop {
            if !buf.is_empty() {
                match parse(&mut buf, &mut spans, settings) {
                    Parsed::Request(req, close) => break (req, close),
                    Parsed::Partial if buf.len() <= settings.max_head => {
                        if !partial {
                            partial = true;
                            until = Instant::now() + io.head_timeout();
                            if timer.deadline() > until {
                                timer.as_mut().reset(until);
                            }
                        }
                    }
                    // HTTP/2's preface after HTTP/1 requests: hyper's
                    // HTTP/1 server refused it; so do we.
                    Parsed::Other if answered > 0 && buf.starts_with(b"PRI * HTTP/2.0") => {
                        return Ended::Closed;
                    }
                    Parsed::Partial | Parsed::Other => {
                        io.resume(&buf, answered);
                        return Ended::HandOff(Rewind {
                            pre: buf.freeze(),
                            io,
                        });
                    }
                }
            }
            let between = buf.is_empty();
            buf.reserve(READ_SIZE);
            // The read is polled first: a stop or the timer only registers
            // when there is nothing to read yet.
            let read = tokio::select! {
                biased;
                read = io.read_buf(&mut buf) => read,
                () = &mut timer => {
                    if Instant::now() < until {
                        timer.as_mut().reset(until);
                        continue;
                    }
                    if partial {
                        if let Some(answer) = io.head_timed_out(answered) {
                            let _ = io.write_all(answer).await;
                            let _ = tokio::time::timeout(settings.idle, io.shutdown()).await;
                        }
                    }
                    return Ended::Closed;
                }
                _ = stop.changed(), if between => return Ended::Closed,
            };
            // The end of the stream or an error: a partial head goes with
            // the connection.
            if !matches!(read, Ok(n) if n > 0) {
                return Ended::Closed;
            }
        };
        answered += 1;
        let head = req.method() == Method::HEAD;
        let answer = handler(req);
        tokio::pin!(answer);
        let answer = poll_fn(|cx| match answer.as_mut().poll(cx) {
            Poll::Ready(resp) => Poll::Ready(Some(resp)),
            Poll::Pending if gone(&mut io, &mut buf, settings.max_head, cx) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        })
        .await;
        // The client left: what it asked for is dropped (cancelling the
        // backend call), as hyper does.
        let Some(resp) = answer else {
            return Ended::Closed;
        };
        out.clear();
        let framing = write_head(&mut out, &resp, head, &mut close);
        let body = resp.into_body();
        let written = send_body(&mut io, &mut buf, &mut out, body, framing, settings).await;
        if !matches!(written, Ok(true)) {
            return Ended::Closed;
        }
        if out.capacity() > KEEP_BUFFER {
            out = Vec::with_capacity(1024);
        }
        if close || stop.has_changed().unwrap_or(true) {
            let _ = tokio::time::timeout(settings.idle, io.shutdown()).await;
            return Ended::Closed;
        }
    }
}

// Returned once per head and matched at once: boxing the request would
// cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A request this server takes, and whether the client asked to close.
    Request(Request<ClientBody>, bool),
    /// Not a whole head yet.
    Partial,
    /// Anything else: hyper's.
    Other,
}

/// Where a header field's name and value are in the head.
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

/// Takes the head at the front of `buf` if it is a request of ours;
/// `spans` is scratch space kept by the connection.
///
/// Ours are exactly the heads the scanner would not refuse: httparse
/// refuses what the scanner judges malformed (obs-fold, whitespace before
/// the colon, empty names, control characters), and the rest goes to
/// hyper with the scan resumed: any `Transfer-Encoding`, a
/// `Content-Length` other than one `0`, and heads over `max_head`.
fn parse(buf: &mut BytesMut, spans: &mut Vec<Span>, settings: Settings) -> Parsed {
    // Left uninitialised: httparse writes the fields it returns.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let fields = &mut fields[..settings.max_headers.min(MAX_FIELDS)];
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        fields,
    ) {
        // (Offsets in the head must fit in a u32.)
        Ok(httparse::Status::Complete(len)) if len <= settings.max_head.min(u32::MAX as usize) => {
            len
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        _ => return Parsed::Other,
    };
    let (Some(1), Some(method), Some(target)) = (parsed.version, parsed.method, parsed.path) else {
        return Parsed::Other;
    };
    if !target.starts_with('/') {
        return Parsed::Other;
    }
    // CONNECT is a tunnel: hyper's (it answers 2xx without framing and
    // closes).
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        (start as u32, (start + s.len()) as u32)
    };
    let target = at(target.as_bytes());
    spans.clear();
    let (mut close, mut length) = (false, false);
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        let ours = if name.eq_ignore_ascii_case(b"content-length") {
            !std::mem::replace(&mut length, true) && field.value == b"0"
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_token(field.value, b"close");
            !has_token(field.value, b"upgrade")
        } else {
            !(name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"upgrade")
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"te"))
        };
        if !ours {
            return Parsed::Other;
        }
        spans.push(Span {
            name: at(name),
            value: at(field.value),
        });
    }
    let head = buf.split_to(len).freeze();
    let range = |(from, to): (u32, u32)| from as usize..to as usize;
    let Ok(uri) = Uri::from_maybe_shared(head.slice(range(target))) else {
        return rewound(buf, &head);
    };
    // Room for what the proxy adds (request id, forwarding headers,
    // traceparent): growing the map would rehash every field.
    let mut headers = HeaderMap::with_capacity(spans.len() + 8);
    for span in spans.iter() {
        let name = HeaderName::from_bytes(&head[range(span.name)]);
        match (
            name,
            HeaderValue::from_maybe_shared(head.slice(range(span.value))),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => return rewound(buf, &head),
        }
    }
    let mut req = Request::new(None);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Parsed::Request(req, close)
}

/// Puts a head taken from `buf` back in front of it, for hyper: a target,
/// name or value `http` refuses after `httparse` took it (not expected;
/// hyper answers it as it always did).
fn rewound(buf: &mut BytesMut, head: &[u8]) -> Parsed {
    let rest = buf.split();
    buf.extend_from_slice(head);
    buf.extend_from_slice(&rest);
    Parsed::Other
}

/// How an answer's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
}

/// Writes the status line and header fields into `out`, adding `date`,
/// the framing and `connection: close` where needed; sets `close` if the
/// answer says so.
fn write_head<B: Answer>(
    out: &mut Vec<u8>,
    resp: &Response<B>,
    head: bool,
    close: &mut bool,
) -> Framing {
    let status = resp.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match resp.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    let mut length = None;
    let mut close_sent = false;
    for (name, value) in resp.headers() {
        if *name == header::CONTENT_LENGTH {
            // Written once below (a backend may repeat it; the proxy has
            // refused differing values already).
            length = length.or(parse_decimal(value.as_bytes()));
            continue;
        } else if *name == header::TRANSFER_ENCODING {
            // Framed below: chunked unless the length is known.
            continue;
        } else if *name == header::CONNECTION && has_token(value.as_bytes(), b"close") {
            *close = true;
            close_sent = true;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let wire = resp.body().wire();
    let mut date = false;
    // A length among the wire fields is the body's: written already.
    let mut length_sent = false;
    if let Some(wire) = wire {
        out.extend_from_slice(&wire.fields);
        if let Some(id) = &wire.request_id {
            field(out, b"x-request-id", id.as_bytes());
        }
        date = wire.date;
        length_sent = wire.length && length.is_none();
    }
    if !date && !resp.headers().contains_key(header::DATE) {
        DATE.with_borrow_mut(|date| field(out, b"date", date.now()));
    }
    if *close && !close_sent {
        field(out, b"connection", b"close");
    }
    let no_content = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // HEAD: the length the body would have, when known; never chunked.
    let length = match length {
        Some(n) => Some(n),
        None if no_content && !length_sent => None,
        None => resp
            .body()
            .size_hint()
            .exact()
            .filter(|n| length_sent || !head || *n > 0),
    };
    if let (Some(n), false) = (length, length_sent) {
        field(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    }
    let framing = match length {
        _ if head || no_content => Framing::None,
        Some(n) => Framing::Length(n),
        None => {
            field(out, b"transfer-encoding", b"chunked");
            Framing::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// One header field line, `name: value` and CRLF.
pub(crate) fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reads ahead while an answer is prepared or waits for its body, as hyper
/// does: `true` once the client closed or broke its connection. Bytes that
/// come meanwhile (pipelined requests) stay in `buf`, up to `max`.
fn gone<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    max: usize,
    cx: &mut Context<'_>,
) -> bool {
    while buf.len() < max {
        if buf.capacity() - buf.len() < READ_SIZE / 8 {
            buf.reserve(READ_SIZE);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, buf) {
            Poll::Ready(Ok(n)) if n > 0 => {}
            Poll::Ready(_) => return true,
            Poll::Pending => return false,
        }
    }
    false
}

/// What the body gave when asked.
enum Next<B: Body> {
    Frame(Option<Result<http_body::Frame<B::Data>, B::Error>>),
    /// Nothing yet: write what is gathered before waiting.
    Flush,
    /// The client left while the body had nothing to give.
    Gone,
}

/// Writes `out` (the head) and the body. `Ok(false)`: the body failed or
/// did not match its length, or the client left, so the connection must
/// close.
async fn send_body<S, B>(
    io: &mut S,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    mut body: B,
    framing: Framing,
    settings: Settings,
) -> io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Body<Data = Bytes> + Unpin,
{
    let mut sent = 0u64;
    let whole = loop {
        if framing == Framing::None || body.is_end_stream() {
            break true;
        }
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(Next::<B>::Flush),
            Poll::Pending if gone(io, buf, settings.max_head, cx) => Poll::Ready(Next::Gone),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Next::Frame(frame)),
        })
        .await;
        let data = match next {
            Next::Flush => {
                io.write_all(out).await?;
                out.clear();
                continue;
            }
            Next::Gone => return Ok(false),
            Next::Frame(None) => break true,
            Next::Frame(Some(Err(_))) => break false,
            // Trailers are dropped, as hyper does for a client that did not
            // send `TE: trailers` (those go to hyper).
            Next::Frame(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if !data.is_empty() => data,
                _ => continue,
            },
        };
        sent += data.len() as u64;
        if let Framing::Length(n) = framing {
            if sent > n {
                break false;
            }
        } else {
            // (Writing to a Vec cannot fail.)
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if data.len() <= COPY_LIMIT {
            out.extend_from_slice(&data);
        } else {
            write_both(io, out, &data).await?;
            out.clear();
        }
        if framing == Framing::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= KEEP_BUFFER {
            io.write_all(out).await?;
            out.clear();
        }
    };
    let whole = whole
        && match framing {
            Framing::Length(n) => sent == n,
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n\r\n");
                true
            }
            Framing::None => true,
        };
    // What was gathered goes out even when the body failed: the client
    // then sees a short answer and a closed connection, as with hyper.
    if !out.is_empty() {
        io.write_all(out).await?;
    }
    io.flush().await?;
    Ok(whole)
}

/// Writes `a` then `b`, in one system call when both fit.
async fn write_both<S: AsyncWrite + Unpin>(io: &mut S, a: &[u8], b: &[u8]) -> io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = io
            .write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    io.write_all(b).await
}

/// The `date` value, formatted again when the second changes.
struct Date {
    second: u64,
    text: [u8; 29],
}

thread_local! {
    static DATE: RefCell<Date> = const { RefCell::new(Date { second: u64::MAX, text: [b' '; 29] }) };
}

impl Date {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if second != self.second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == self.text.len() {
                self.text.copy_from_slice(text.as_bytes());
                self.second = second;
            }
        }
        &self.text
    }
}

/// A connection with bytes already read from it, which reads return first.
pub struct Rewind<S> {
    pre: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pre.is_empty() {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        }
        let n = this.pre.len().min(buf.remaining());
        buf.put_slice(&this.pre.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    write_through!(io);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::validate::{ConnFacts, HeadVerdict, Limits, Rejection};
    use http_body_util::{Full, StreamBody};
    use std::sync::Arc;
    use tokio::io::DuplexStream;

    const SETTINGS: Settings = Settings {
        max_headers: 100,
        max_head: 8192,
        idle: Duration::from_secs(5),
    };

    type Chunks = StreamBody<
        tokio_stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, io::Error>>>,
    >;

    impl Answer for http_body_util::Either<Full<Bytes>, Chunks> {}

    /// What the test handler answers: the method, target and `x-a` in the
    /// body, except for `/chunked` (two frames of unknown total size),
    /// `/long` (more bytes than its `content-length`), `/failing` and `/h`.
    fn answer(req: &Request<ClientBody>) -> Response<http_body_util::Either<Full<Bytes>, Chunks>> {
        use http_body_util::Either;
        let frames = |f: Vec<Result<http_body::Frame<Bytes>, io::Error>>| {
            Either::Right(StreamBody::new(tokio_stream::iter(f)))
        };
        let data = |s: &'static str| Ok(http_body::Frame::data(Bytes::from_static(s.as_bytes())));
        let mut resp = match req.uri().path() {
            "/chunked" => Response::new(frames(vec![data("hello "), data("world")])),
            "/long" => {
                let mut r = Response::new(frames(vec![data("0123456789")]));
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("4"));
                r
            }
            "/failing" => Response::new(frames(vec![data("part"), Err(io::Error::other("boom"))])),
            "/twice" => {
                let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(b"abc"))));
                for _ in 0..2 {
                    r.headers_mut()
                        .append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
                }
                r
            }
            // As the proxy answers HEAD: the backend's length, no body.
            "/h" => {
                let mut r = Response::new(Either::Left(Full::new(Bytes::new())));
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
                r
            }
            _ => Response::new(Either::Left(Full::new(Bytes::from(format!(
                "{} {} {:?}",
                req.method(),
                req.uri(),
                req.headers().get("x-a")
            ))))),
        };
        resp.headers_mut()
            .insert("x-server", HeaderValue::from_static("front"));
        resp
    }

    /// Serves one end of a pipe; the test talks on the other. The handler
    /// takes each request's verdict, as the proxy's does.
    fn start_with(
        limits: &Limits,
        facts: Arc<ConnFacts>,
    ) -> (
        DuplexStream,
        watch::Sender<bool>,
        tokio::task::JoinHandle<Option<Vec<u8>>>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let io = Scan::new(server, limits, facts.clone());
        let (stop_tx, mut stop) = watch::channel(false);
        let task = tokio::spawn(async move {
            let handler = |req: Request<ClientBody>| {
                let target = req.uri().to_string();
                assert_eq!(facts.next_verdict(req.method().as_str(), &target), None);
                let never = req.uri().path() == "/never";
                let resp = answer(&req);
                async move {
                    if never {
                        std::future::pending::<()>().await;
                    }
                    resp
                }
            };
            match serve(io, SETTINGS, handler, &mut stop).await {
                Ended::Closed => None,
                Ended::HandOff(mut rest) => {
                    let mut seen = vec![0; 4096];
                    let n = rest.read(&mut seen).await.unwrap();
                    seen.truncate(n);
                    Some(seen)
                }
            }
        });
        (client, stop_tx, task)
    }

    fn start() -> (
        DuplexStream,
        watch::Sender<bool>,
        tokio::task::JoinHandle<Option<Vec<u8>>>,
    ) {
        start_with(&Limits::default(), Arc::default())
    }

    async fn read_until_closed(client: &mut DuplexStream) -> String {
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        String::from_utf8(all).unwrap()
    }

    /// Reads until what was read contains `until`.
    async fn read_some(client: &mut DuplexStream, until: &str) -> String {
        let mut all = Vec::new();
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&all).contains(until) {
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&all));
            all.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(all).unwrap()
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_on_one_connection() {
        let (mut client, _stop, task) = start();
        client
            .write_all(b"GET /one?q=1 HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\nDELETE /two HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let got = read_some(&mut client, "DELETE /two None").await;
        let first = got.find("GET /one?q=1 Some(\"1\")").unwrap();
        assert!(first < got.find("DELETE /two").unwrap(), "{got}");
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert_eq!(got.matches("content-length: ").count(), 2, "{got}");
        assert!(got.contains("x-server: front\r\n"), "{got}");
        assert!(got.contains("date: "), "{got}");
        assert!(!got.contains("connection: close"), "{got}");
        client.shutdown().await.unwrap();
        assert_eq!(task.await.unwrap(), None);
    }

    #[tokio::test]
    async fn connection_close_is_answered_then_honoured() {
        let (mut client, _stop, task) = start();
        client
            .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut client).await;
        assert!(got.contains("connection: close\r\n"), "{got}");
        assert!(got.ends_with("GET /x None"), "{got}");
        assert_eq!(task.await.unwrap(), None);
    }

    #[tokio::test]
    async fn requests_it_does_not_take_go_to_hyper_with_their_bytes() {
        for req in [
            &b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"[..],
            b"GET /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET /p HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/p HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /p HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            b"GET /p HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            b"GET /p HTTP/1.1\r\nHo st: a\r\n\r\n",
            b"GET /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            b"GET /p HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n",
            b"CONNECT /p HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            let (mut client, _stop, task) = start();
            client.write_all(req).await.unwrap();
            let handed = task.await.unwrap();
            assert_eq!(
                handed.as_deref(),
                Some(req),
                "{}",
                String::from_utf8_lossy(req)
            );
        }
    }

    #[tokio::test]
    async fn a_request_after_answered_ones_is_handed_over_alone() {
        let (mut client, _stop, task) = start();
        let post = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
        let mut both = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        both.extend_from_slice(post);
        client.write_all(&both).await.unwrap();
        let got = read_some(&mut client, "GET /a None").await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert_eq!(task.await.unwrap().as_deref(), Some(&post[..]));
    }

    #[tokio::test]
    async fn bodies_are_framed_as_hyper_frames_them() {
        let (mut client, _stop, task) = start();
        client
            .write_all(b"GET /chunked HTTP/1.1\r\nHost: a\r\n\r\nHEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /end HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let got = read_some(&mut client, "GET /end None").await;
        assert!(
            got.contains(
                "transfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"
            ),
            "{got}"
        );
        // HEAD: the length given, and no body.
        let head = &got[got.find("0\r\n\r\nHTTP/1.1").unwrap() + 5..];
        let head = &head[..head.find("\r\n\r\n").unwrap() + 4];
        assert!(head.contains("content-length: 10\r\n"), "{head}");
        assert!(got[got.find(head).unwrap() + head.len()..].starts_with("HTTP/1.1 200 OK"));
        drop(client);
        assert_eq!(task.await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_body_that_breaks_its_framing_closes_the_connection() {
        for (path, sent) in [("/long", "\r\n\r\n"), ("/failing", "\r\n\r\n4\r\npart\r\n")] {
            let (mut client, _stop, task) = start();
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n"
            );
            client.write_all(req.as_bytes()).await.unwrap();
            let got = read_until_closed(&mut client).await;
            assert!(got.ends_with(sent), "{path}: {got}");
            assert!(!got.contains("/next"), "{path}: {got}");
            assert_eq!(task.await.unwrap(), None);
        }
    }

    #[tokio::test]
    async fn an_idle_connection_closes_when_the_server_stops() {
        let (mut client, stop, task) = start();
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        read_some(&mut client, "GET /a None").await;
        stop.send(true).unwrap();
        assert_eq!(task.await.unwrap(), None);
        assert_eq!(read_until_closed(&mut client).await, "");
    }

    #[tokio::test]
    async fn a_partial_head_waits_and_an_oversized_one_goes_to_hyper() {
        let (mut client, _stop, task) = start();
        client.write_all(b"GET /a HTTP/1.1\r\nHo").await.unwrap();
        tokio::task::yield_now().await;
        client.write_all(b"st: a\r\n\r\n").await.unwrap();
        read_some(&mut client, "GET /a None").await;
        let big = format!("GET /b HTTP/1.1\r\nX-Big: {}", "b".repeat(9000));
        client.write_all(big.as_bytes()).await.unwrap();
        let handed = task.await.unwrap().unwrap();
        assert!(
            big.as_bytes().starts_with(&handed),
            "the handed bytes start the head"
        );
    }

    #[tokio::test]
    async fn the_scan_resumes_for_what_goes_to_hyper() {
        let limits = Limits {
            max_header_bytes: SETTINGS.max_head,
            ..Limits::default()
        };
        for (second, verdict) in [
            (
                "POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_string(),
                Rejection::AmbiguousLength,
            ),
            (
                format!("GET /p HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(8200)),
                Rejection::HeadersTooLarge,
            ),
        ] {
            let facts = Arc::new(ConnFacts::default());
            let (mut client, _stop, task) = start_with(&limits, facts.clone());
            let both = format!("GET /a HTTP/1.1\r\nHost: a\r\n\r\n{second}");
            client.write_all(both.as_bytes()).await.unwrap();
            read_some(&mut client, "GET /a None").await;
            task.await.unwrap().unwrap();
            // The second request is the connection's second head.
            let method = &second[..second.find(' ').unwrap()];
            assert_eq!(
                facts.next_verdict(method, "/p"),
                Some(HeadVerdict(Some(verdict)))
            );
        }
    }

    #[tokio::test]
    async fn a_slow_head_is_answered_408_on_a_new_connection_only() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (mut client, _stop, task) = start_with(&limits, Arc::default());
        client.write_all(b"GET /a HTTP/1.1\r\nHo").await.unwrap();
        let got = read_until_closed(&mut client).await;
        assert!(got.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{got}");
        assert_eq!(task.await.unwrap(), None);

        let (mut client, _stop, task) = start_with(&limits, Arc::default());
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHo")
            .await
            .unwrap();
        let got = read_until_closed(&mut client).await;
        assert!(got.ends_with("GET /a None"), "{got}");
        assert_eq!(task.await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_client_that_leaves_cancels_its_request() {
        let (mut client, _stop, task) = start();
        client
            .write_all(b"GET /never HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        drop(client);
        // The handler never answers: only noticing the close ends this.
        assert_eq!(task.await.unwrap(), None);
    }

    #[tokio::test]
    async fn lengths_are_written_once_and_head_answers_get_one() {
        let (mut client, _stop, task) = start();
        client
            .write_all(b"GET /twice HTTP/1.1\r\nHost: a\r\n\r\nHEAD /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let got = read_until_closed(&mut client).await;
        let (first, second) = got.split_at(got.find("abcHTTP/1.1").unwrap() + 3);
        assert_eq!(first.matches("content-length: 3\r\n").count(), 1, "{first}");
        // The body HEAD would have had: "HEAD /x None", never sent.
        assert!(second.contains("content-length: 12\r\n"), "{second}");
        assert!(second.ends_with("\r\n\r\n"), "{second}");
        assert_eq!(task.await.unwrap(), None);
    }
}
