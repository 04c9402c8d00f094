//! Our own HTTP/1.1 client for the common exchange: a request without a
//! body (GET, HEAD, DELETE...) to an HTTP/1 target, answered with a body
//! framed by `Content-Length`, chunked, or the end of the connection.
//!
//! hyper's client runs each connection as a task of its own and hands
//! requests and responses to it over channels; for a small request that
//! machinery cost about a quarter of the proxy's instructions (see
//! docs/benchmarks.md). Here the request's own task writes the head and
//! reads the answer, and the response body owns the connection until it
//! has read the body to its end, then puts it back on its target's idle
//! stack. Requests with a body, upgrades, `TE: trailers` and HTTP/2 keep
//! hyper's client ([`super::conn`] chooses).
//!
//! What it accepts from a backend is what hyper accepts: at most
//! [`MAX_HEADERS`] header fields in a head of at most [`MAX_HEAD`] bytes;
//! a `Content-Length` that is a number (a list of equal ones too); chunk
//! sizes in hex with CRLF line ends (extensions and trailers are read and
//! dropped, within [`MAX_CHUNK_LINE`] and [`MAX_HEAD`]); no
//! `Transfer-Encoding` in an HTTP/1.0 answer. Anything else is an error (a
//! 502 for the client) and the connection is closed. Interim answers
//! (`100 Continue`, `103 Early Hints`) are skipped. Unlike hyper, an
//! HTTP/1.0 answer is never followed by another request on its
//! connection (`Connection: keep-alive` or not).
//!
//! For a request with nothing after it that reads or changes header
//! fields, the proxy asks for less: the fields it adds come as
//! [`RequestHead::added`] lines, written after the map's, and the answer's
//! fields come back as [`Wire`] lines for our own server to write as they
//! are (see `docs/data-path.md`).

use crate::front::{field, Wire};
use crate::validate::{has_token, parse_decimal};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use http_body::{Frame, SizeHint};
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Most header fields in a response head.
pub const MAX_HEADERS: usize = 100;
/// Largest response head (hyper's default buffer limit), and largest
/// trailer section.
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// Longest chunk-size line, extensions included.
pub const MAX_CHUNK_LINE: usize = 16 * 1024;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// A connection as the connector opens it (TCP, or TLS over TCP).
pub type Stream = TokioIo<MaybeHttpsStream<TokioIo<TcpStream>>>;

/// One HTTP/1.1 connection to a target, with what was read past the last
/// response (nothing, between well-behaved exchanges). Always boxed: a
/// TLS stream is large, and the connection moves with the response body
/// through several layers.
pub struct Conn {
    io: Stream,
    buf: BytesMut,
    /// The head of the request being sent, kept for its capacity.
    head: Vec<u8>,
    /// Where each header field of the last response head is.
    spans: Vec<Span>,
    /// The deadline of the response head being awaited. One timer for the
    /// connection's life, moved for each exchange: moving a registered
    /// tokio timer later is an atomic update, where arming a new one per
    /// request costs a trip through the timer wheel (a visible share of a
    /// small request). When its old deadline passes, the driver sees the
    /// new one and waits on. (Between exchanges it may still hold the
    /// waker of the last request's task: one spurious wake-up at most.)
    timer: Pin<Box<Sleep>>,
}

/// Offsets of a header field's name and value in a response head.
#[derive(Clone, Copy)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

impl Span {
    fn name(&self) -> std::ops::Range<usize> {
        let (at, len) = self.name;
        at as usize..(at + len) as usize
    }

    fn value(&self) -> std::ops::Range<usize> {
        let (at, len) = self.value;
        at as usize..(at + len) as usize
    }
}

/// Where a connection goes back when its response has been read: its
/// target's idle stack (shared with [`super::conn::Conns`]).
pub type Home = Arc<Mutex<Vec<Idle>>>;

/// A connection waiting for the next request.
pub struct Idle {
    pub conn: Box<Conn>,
    /// [`super::health::now_ms`] when it came back.
    pub since: u64,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection failed while the answer was read.
    #[error("the connection failed while the answer was read")]
    Io(#[from] io::Error),
    /// The connection failed or closed before any byte of the answer
    /// came: on a reused connection, the target had closed it while it
    /// was idle.
    #[error("the connection closed before the response")]
    Closed(#[source] Option<io::Error>),
    #[error("invalid response from the backend: {0}")]
    Invalid(&'static str),
    /// No response head before the deadline.
    #[error("no response before the deadline")]
    TimedOut,
}

impl Conn {
    pub fn new(io: Stream) -> Box<Conn> {
        Box::new(Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            spans: Vec::new(),
            // Set before each exchange.
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
        })
    }

    /// Whether the target closed the connection (or sent something nobody
    /// asked for) while it was idle: one read that must find nothing yet.
    /// It costs no system call unless the socket was reported readable,
    /// and sees what a TLS layer holds already decrypted.
    pub fn stale(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut probe);
        Pin::new(&mut self.io)
            .poll_read(&mut cx, &mut probe)
            .is_ready()
    }

    /// Sends a request without a body and reads the head of its answer,
    /// [`Error::TimedOut`] if it is not there by `deadline` (the connection
    /// is then dropped: a late answer must not reach the next request).
    /// The answer's body reads from this connection, and puts it back
    /// `home` once read to its end, if it can be reused.
    pub async fn exchange(
        mut self: Box<Self>,
        req: &RequestHead<'_>,
        home: &Home,
        deadline: Instant,
    ) -> Result<Response<Body>, Error> {
        let method = req.method;
        self.head.clear();
        let close = write_head(&mut self.head, req);
        self.timer.as_mut().reset(deadline);
        let Conn {
            io, head, timer, ..
        } = &mut *self;
        let write = async {
            io.write_all(head).await?;
            io.flush().await
        };
        let sent = before(timer, pin!(write)).await.ok_or(Error::TimedOut)?;
        sent.map_err(|e| Error::Closed(Some(e)))?;
        let mut received = false;
        loop {
            let conn = &mut *self;
            // (Nothing to parse before the first read, usually.)
            let head = if conn.buf.is_empty() {
                None
            } else {
                parse_head(&mut conn.buf, &mut conn.spans, method, req.wire)?
            };
            match head {
                Some(Head::Interim) => continue,
                Some(Head::Final(resp, framing, reuse, wire)) => {
                    let mut body = Body {
                        conn: Some(self),
                        framing,
                        reuse: reuse && !close,
                        home: home.clone(),
                        wire,
                    };
                    // An empty body: the connection can go home already.
                    body.check_done();
                    return Ok(resp.map(|()| body));
                }
                None => {}
            }
            let Conn { io, buf, timer, .. } = &mut *self;
            let read = poll_fn(|cx| poll_read_more(io, buf, cx));
            match before(timer, pin!(read)).await {
                None => return Err(Error::TimedOut),
                Some(Ok(0)) if received => {
                    return Err(Error::Invalid(
                        "the connection closed in the middle of the response head",
                    ))
                }
                Some(Ok(0)) => return Err(Error::Closed(None)),
                Some(Ok(_)) => received = true,
                Some(Err(e)) if received => return Err(e.into()),
                Some(Err(e)) => return Err(Error::Closed(Some(e))),
            }
        }
    }
}

/// `f`'s output, unless `timer` fires first (`None`).
fn before<'a, T>(
    timer: &'a mut Pin<Box<Sleep>>,
    mut f: Pin<&'a mut impl Future<Output = T>>,
) -> impl Future<Output = Option<T>> + 'a {
    poll_fn(move |cx| match f.as_mut().poll(cx) {
        Poll::Ready(out) => Poll::Ready(Some(out)),
        Poll::Pending => timer.as_mut().poll(cx).map(|()| None),
    })
}

/// Reads what the socket has into `buf`; 0 at the end of the stream.
fn poll_read_more(
    io: &mut Stream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_SIZE / 4 {
        buf.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// What goes in a request head.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The origin form: path and query.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// Fields written after those of `headers`: what the proxy adds,
    /// without inserting it into the map.
    pub added: &'a [(&'a HeaderName, &'a [u8])],
    /// Sent as `Host` instead of the one in `headers`.
    pub host: Option<&'a HeaderValue>,
    /// The answer's fields may come as [`Wire`] fields (with an empty
    /// map): for a client of our own server, when nothing (a plugin, a
    /// header rule) reads or changes them on the way.
    pub wire: bool,
}

/// The request line and header fields, in one buffer (one write). As
/// hyper does, a `Transfer-Encoding` (which a route's header rules could
/// set) is not sent with a request that has no body. Returns whether the
/// request says `Connection: close` (the connection is then not reused).
fn write_head(out: &mut Vec<u8>, req: &RequestHead<'_>) -> bool {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = req.host.map(|h| (&HOST, h));
    let others = req
        .headers
        .iter()
        .filter(|(name, _)| req.host.is_none() || *name != HOST);
    let mut close = false;
    for (name, value) in host.into_iter().chain(others) {
        if name == TRANSFER_ENCODING {
            continue;
        }
        close |= name == CONNECTION && has_token(value.as_bytes(), b"close");
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    for (name, value) in req.added {
        field(out, name.as_str().as_bytes(), value);
    }
    out.extend_from_slice(b"\r\n");
    close
}

// Returned once per head and matched at once: boxing the answer would
// cost an allocation per exchange.
#[allow(clippy::large_enum_variant)]
enum Head {
    /// A 1xx answer other than 101, consumed: the real one follows.
    Interim,
    /// The answer, how its body is framed, whether the connection can
    /// take another request afterwards, and its fields for the client if
    /// they are not in the answer's map.
    Final(Response<()>, Framing, bool, Option<Wire>),
}

/// Parses a response head from the front of `buf`, removing it: `None`
/// while incomplete. With `wire`, the fields a client may get come back as
/// [`Wire`] fields when they can (see [`wire_fields`]), and the map is
/// empty.
fn parse_head(
    buf: &mut BytesMut,
    spans: &mut Vec<Span>,
    method: &Method,
    wire: bool,
) -> Result<Option<Head>, Error> {
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(Error::Invalid("response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Invalid("too many header fields"))
        }
        Err(_) => return Err(Error::Invalid("malformed response head")),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("invalid status"))?;
    if status.is_informational() {
        if code == 101 {
            return Err(Error::Invalid("101 Switching Protocols without an upgrade"));
        }
        buf.advance(len);
        return Ok(Some(Head::Interim));
    }
    let version = if resp.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each field is in the head, so that the values can share the
    // head's bytes once it is split off.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| ((s.as_ptr() as usize - base) as u32, s.len() as u32);
    spans.clear();
    spans.extend(resp.headers.iter().map(|f| Span {
        name: at(f.name.as_bytes()),
        value: at(f.value),
    }));
    let head = buf.split_to(len).freeze();
    let mut length: Option<u64> = None;
    let mut lengths = 0;
    let mut chunked = None;
    let mut close = version == Version::HTTP_10;
    // For the wire form: whether a field is left out, and whether one
    // needs more than that.
    let (mut date, mut dropped, mut naming) = (false, false, false);
    for span in spans.iter() {
        let value = &head[span.value()];
        match role(&head[span.name()]) {
            Role::Length => {
                // `5`, or a list of equal values (`5, 5`), over any number
                // of fields.
                for n in value.split(|&b| b == b',') {
                    let n = parse_length(n.trim_ascii())?;
                    if length.is_some_and(|l| l != n) {
                        return Err(Error::Invalid("conflicting Content-Length values"));
                    }
                    length = Some(n);
                    lengths += 1;
                }
            }
            Role::Coding => {
                if version == Version::HTTP_10 {
                    return Err(Error::Invalid("Transfer-Encoding in an HTTP/1.0 response"));
                }
                // Only the last coding counts: chunked must come last.
                let last = value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                dropped = true;
            }
            Role::Connection => {
                close |= has_token(value, b"close");
                naming |= wire && names_fields(value);
                dropped = true;
            }
            Role::Dropped => dropped = true,
            Role::Date => date = true,
            Role::Other => {}
        }
    }
    // The wire form leaves fields out, nothing more: a `Connection`
    // naming other fields, a length repeated or listed, or a length and a
    // coding together (which the proxy refuses) take the map's way.
    let wire =
        (wire && !naming && lengths <= 1 && !(length.is_some() && chunked.is_some())).then(|| {
            Wire {
                fields: wire_fields(&head, spans, len, dropped),
                date,
                length: lengths == 1,
                request_id: None,
            }
        });
    let mut headers = HeaderMap::new();
    if wire.is_none() {
        // Room for the request id the proxy adds, without a rehash.
        headers.reserve(spans.len() + 2);
        for span in spans.iter() {
            let name = HeaderName::from_bytes(&head[span.name()])
                .map_err(|_| Error::Invalid("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(span.value()))
                .map_err(|_| Error::Invalid("invalid header value"))?;
            headers.append(name, value);
        }
    }
    let bodiless = *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = match (bodiless, chunked, length) {
        (true, _, _) => Framing::Length(0),
        (false, Some(true), _) => Framing::Chunked(Chunk::Size),
        // A coding other than chunked last: the body ends with the
        // connection.
        (false, Some(false), _) => Framing::Close,
        (false, None, Some(n)) => Framing::Length(n),
        (false, None, None) => Framing::Close,
    };
    let reuse = !close && !matches!(framing, Framing::Close);
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.version_mut() = version;
    *resp.headers_mut() = headers;
    Ok(Some(Head::Final(resp, framing, reuse, wire)))
}

/// What a response header field is to the exchange and to the client.
enum Role {
    Length,
    Coding,
    Connection,
    /// Hop-by-hop (not the client's), or the request id (the proxy sets
    /// its own).
    Dropped,
    Date,
    Other,
}

/// A field's [`Role`] by its name, compared on the length first.
fn role(name: &[u8]) -> Role {
    let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
    match name.len() {
        4 if is(b"date") => Role::Date,
        10 if is(b"connection") => Role::Connection,
        14 if is(b"content-length") => Role::Length,
        17 if is(b"transfer-encoding") => Role::Coding,
        2 if is(b"te") => Role::Dropped,
        7 if is(b"trailer") || is(b"upgrade") => Role::Dropped,
        10 if is(b"keep-alive") => Role::Dropped,
        12 if is(b"x-request-id") => Role::Dropped,
        16 if is(b"proxy-connection") => Role::Dropped,
        18 if is(b"proxy-authenticate") => Role::Dropped,
        19 if is(b"proxy-authorization") => Role::Dropped,
        _ => Role::Other,
    }
}

/// Whether a `Connection` value names fields other than `close` and
/// `keep-alive` (which would then be hop-by-hop too).
fn names_fields(value: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| {
        let t = t.trim_ascii();
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
    })
}

/// The fields of a parsed head (`spans` in `head`, `len` bytes) that a
/// client gets, as wire lines: hop-by-hop fields, the request id (the
/// proxy sets its own) and `Transfer-Encoding` (the server frames the
/// body itself) left out. httparse has checked the names (tokens) and
/// values (no control characters but tab) as `http` would.
///
/// When none is `dropped` and every line ends right after its value with
/// CRLF, they are the head's own bytes; otherwise each kept field is
/// written as `name: value` into a buffer of its own.
fn wire_fields(head: &Bytes, spans: &[Span], len: usize, dropped: bool) -> Bytes {
    let (Some(first), Some(last)) = (spans.first(), spans.last()) else {
        return Bytes::new();
    };
    // Each line ends right after its value, and the next begins there.
    let tight = !dropped
        && spans
            .windows(2)
            .all(|w| w[0].value().end + 2 == w[1].name().start)
        && last.value().end + 4 == len
        && spans
            .iter()
            .all(|s| !s.value().is_empty() && head.get(s.value().end) == Some(&b'\r'));
    if tight {
        return head.slice(first.name().start..last.value().end + 2);
    }
    let mut out = Vec::with_capacity(len);
    for span in spans {
        let name = &head[span.name()];
        if matches!(role(name), Role::Other | Role::Length | Role::Date) {
            field(&mut out, name, &head[span.value()]);
        }
    }
    Bytes::from(out)
}

fn parse_length(v: &[u8]) -> Result<u64, Error> {
    parse_decimal(v).ok_or(Error::Invalid("invalid Content-Length"))
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    /// Bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Bytes left in the current chunk.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields up to an empty line (bytes
    /// of them so far).
    Trailers(usize),
}

/// A response body read from its connection.
pub struct Body {
    /// `None` once the body has ended (the connection went home or was
    /// closed).
    conn: Option<Box<Conn>>,
    framing: Framing,
    reuse: bool,
    home: Home,
    /// The answer's fields for the client, when not in its map.
    wire: Option<Wire>,
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("h1::Body")
            .field("framing", &self.framing)
            .finish()
    }
}

impl Body {
    /// At the end of the body, the connection goes home if it can be
    /// reused and nothing unasked followed the response.
    fn check_done(&mut self) {
        if !matches!(self.framing, Framing::Length(0) | Framing::Done) {
            return;
        }
        self.framing = Framing::Done;
        let Some(conn) = self.conn.take() else {
            return;
        };
        if self.reuse && conn.buf.is_empty() {
            let mut idle = self.home.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < super::conn::MAX_IDLE {
                let since = super::health::now_ms();
                idle.push(Idle { conn, since });
            }
        }
    }

    pub fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    /// The answer's [`Wire`] fields, if they are not in its map.
    pub fn take_wire(&mut self) -> Option<Wire> {
        self.wire.take()
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match step(&mut self.framing, &mut conn.buf) {
                Err(e) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Ok(Some(data)) => {
                    self.check_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if self.framing == Framing::Done => {
                    self.check_done();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
            }
            match poll_read_more(&mut conn.io, &mut conn.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Ok(0)) if self.framing == Framing::Close => {
                    self.conn = None;
                    self.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    self.conn = None;
                    return Poll::Ready(Some(Err(Error::Invalid(
                        "the connection closed before the end of the body",
                    ))));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }
}

/// Decodes what `buf` holds: the next piece of body, or `None` when more
/// bytes are needed (or the body ended: `framing` is then `Done`).
fn step(framing: &mut Framing, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
    loop {
        match *framing {
            Framing::Done | Framing::Length(0) => {
                *framing = Framing::Done;
                return Ok(None);
            }
            Framing::Length(n) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                *framing = Framing::Length(n - take as u64);
                return Ok(Some(buf.split_to(take).freeze()));
            }
            Framing::Close => {
                if buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(buf.split().freeze()));
            }
            Framing::Chunked(Chunk::Data(0)) => *framing = Framing::Chunked(Chunk::DataEnd),
            Framing::Chunked(Chunk::Data(n)) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                *framing = Framing::Chunked(Chunk::Data(n - take as u64));
                return Ok(Some(buf.split_to(take).freeze()));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Invalid("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Size) => {
                let Some(line) = take_line(buf, MAX_CHUNK_LINE)? else {
                    return Ok(None);
                };
                let size = parse_chunk_size(&line)?;
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers(0)
                } else {
                    Chunk::Data(size)
                });
            }
            Framing::Chunked(Chunk::Trailers(seen)) => {
                let Some(line) = take_line(buf, MAX_HEAD - seen)? else {
                    return Ok(None);
                };
                *framing = if line.is_empty() {
                    Framing::Done
                } else {
                    Framing::Chunked(Chunk::Trailers(seen + line.len() + 2))
                };
            }
        }
    }
}

/// A CRLF-terminated line of at most `max` bytes from the front of `buf`
/// (without the CRLF); a CR anywhere else is an error.
fn take_line(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Error> {
    let Some(end) = buf.iter().take(max).position(|&b| b == b'\n') else {
        return if buf.len() >= max {
            Err(Error::Invalid("chunked framing: a line too long"))
        } else {
            Ok(None)
        };
    };
    if end == 0 || buf[end - 1] != b'\r' || buf[..end - 1].contains(&b'\r') {
        return Err(Error::Invalid("chunked framing: a line not ended by CRLF"));
    }
    let mut line = buf.split_to(end + 1);
    line.truncate(end - 1);
    Ok(Some(line))
}

/// A chunk-size line: hex digits, then optional whitespace, then nothing
/// or `;extensions`.
fn parse_chunk_size(line: &[u8]) -> Result<u64, Error> {
    let invalid = Error::Invalid("invalid chunk size");
    let end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(end);
    let rest = rest.trim_ascii_start();
    if digits.is_empty() || digits.len() > 15 || !(rest.is_empty() || rest[0] == b';') {
        return Err(invalid);
    }
    let mut size = 0u64;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return Err(invalid),
        };
        size = size * 16 + u64::from(v);
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_of(framing: Framing, wire: &[u8], pieces: usize) -> Result<(Vec<u8>, Framing), Error> {
        // Fed in `pieces` parts, as reads would deliver them.
        let mut framing = framing;
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let step_len = wire.len().div_ceil(pieces.max(1)).max(1);
        for part in wire.chunks(step_len) {
            buf.extend_from_slice(part);
            while let Some(data) = step(&mut framing, &mut buf)? {
                out.extend_from_slice(&data);
            }
        }
        Ok((out, framing))
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire = b"5;ext=1\r\nhello\r\nA\r\n, world!!!\r\n0\r\nX-Trailer: t\r\n\r\n";
        for pieces in 1..wire.len() {
            let (body, framing) = body_of(Framing::Chunked(Chunk::Size), wire, pieces).unwrap();
            assert_eq!(body, b"hello, world!!!");
            assert_eq!(framing, Framing::Done);
        }
    }

    #[test]
    fn bad_chunked_framing_is_an_error() {
        for wire in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"\r\n",
            b"5 junk\r\nhello\r\n0\r\n\r\n",
            b"5;a=\rb\r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                body_of(Framing::Chunked(Chunk::Size), wire, 1).is_err(),
                "{wire:?}"
            );
        }
    }

    #[test]
    fn length_framing_stops_at_the_length() {
        let (body, framing) = body_of(Framing::Length(5), b"hello", 3).unwrap();
        assert_eq!((body.as_slice(), framing), (&b"hello"[..], Framing::Done));
    }

    fn head(wire: &[u8], method: &Method) -> Result<Option<Head>, Error> {
        parse_head(&mut BytesMut::from(wire), &mut Vec::new(), method, false)
    }

    /// A final answer's head: the response, its framing, and reuse.
    fn final_head(wire: &[u8], method: &Method) -> (Response<()>, Framing, bool) {
        match head(wire, method) {
            Ok(Some(Head::Final(resp, framing, reuse, _))) => (resp, framing, reuse),
            _ => panic!("not a final head: {wire:?}"),
        }
    }

    /// The wire fields of an answer, or `None` when it takes the map's way.
    fn wire_of(head: &[u8]) -> Option<(String, bool, bool)> {
        match parse_head(
            &mut BytesMut::from(head),
            &mut Vec::new(),
            &Method::GET,
            true,
        ) {
            Ok(Some(Head::Final(resp, _, _, wire))) => wire.map(|w| {
                assert!(resp.headers().is_empty());
                (
                    String::from_utf8(w.fields.to_vec()).unwrap(),
                    w.date,
                    w.length,
                )
            }),
            _ => panic!("not a final head: {head:?}"),
        }
    }

    #[test]
    fn the_wire_form_leaves_out_every_hop_by_hop_field_the_map_does() {
        let names = crate::proxy::HOP_BY_HOP
            .iter()
            .chain([&http::header::TRANSFER_ENCODING]);
        for name in names {
            let upper = name.as_str().to_ascii_uppercase();
            for n in [name.as_str(), upper.as_str()] {
                let kept = matches!(role(n.as_bytes()), Role::Other | Role::Length | Role::Date);
                assert!(!kept, "{n} would reach the client");
            }
        }
    }

    #[test]
    fn wire_fields_leave_out_what_the_client_must_not_get() {
        let of =
            |h: &[u8]| wire_of(h).map(|(f, date, length)| (f.as_str().to_owned(), date, length));
        // As they came (the head's own bytes), case and repeats kept.
        assert_eq!(
            of(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\nSet-Cookie: a\r\nset-cookie: b\r\n\r\nok"),
            Some(("Content-Length: 2\r\nDate: x\r\nSet-Cookie: a\r\nset-cookie: b\r\n".into(), true, true))
        );
        // Hop-by-hop fields, the coding and the backend's request id out.
        assert_eq!(
            of(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nKeep-Alive: 5\r\nTransfer-Encoding: chunked\r\n\
                 X-Request-Id: b\r\nUpgrade: h2c\r\nTrailer: x\r\nX-A:1\r\n\r\n0\r\n\r\n"),
            Some(("X-A: 1\r\n".into(), false, false))
        );
        // Bare LF line ends: written again with CRLF.
        assert_eq!(
            of(b"HTTP/1.1 204 No Content\nX-A: 1\nX-B: \n\n"),
            Some(("X-A: 1\r\nX-B: \r\n".into(), false, false))
        );
        assert_eq!(
            of(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Some((String::new(), false, false))
        );
        // The map's way: fields named by Connection, lengths listed or
        // repeated, a length with a coding.
        for head in [
            &b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(of(head), None, "{head:?}");
        }
    }

    #[test]
    fn response_heads() {
        let (resp, framing, reuse) = final_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello",
            &Method::GET,
        );
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().get_all("x-a").iter().count(), 2);
        assert_eq!((framing, reuse), (Framing::Length(5), true));

        let (_, framing, reuse) = final_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n",
            &Method::GET,
        );
        assert_eq!((framing, reuse), (Framing::Chunked(Chunk::Size), false));

        // HEAD answers and 204/304 have no body whatever they say.
        let (_, framing, _) = final_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            &Method::HEAD,
        );
        assert_eq!(framing, Framing::Length(0));

        // No length: until the connection closes, which is then not reused.
        let (_, framing, reuse) = final_head(b"HTTP/1.0 200 OK\r\n\r\n", &Method::GET);
        assert_eq!((framing, reuse), (Framing::Close, false));

        assert!(matches!(
            head(b"HTTP/1.1 100 Continue\r\n\r\n", &Method::GET),
            Ok(Some(Head::Interim))
        ));
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\nContent-Le", &Method::GET),
            Ok(None)
        ));
        let (_, framing, _) = final_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nContent-Length: 5\r\n\r\n",
            &Method::GET,
        );
        assert_eq!(framing, Framing::Length(5));
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(head(bad, &Method::GET).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn request_heads() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("client.test"));
        headers.append("x-a", HeaderValue::from_static("1"));
        let mut head = RequestHead {
            method: &Method::GET,
            target: "/a?b=c",
            headers: &headers,
            added: &[],
            host: None,
            wire: false,
        };
        let mut out = Vec::new();
        write_head(&mut out, &head);
        assert_eq!(
            out,
            b"GET /a?b=c HTTP/1.1\r\nhost: client.test\r\nx-a: 1\r\n\r\n"
        );
        let target = HeaderValue::from_static("b.test:8080");
        head.host = Some(&target);
        out.clear();
        write_head(&mut out, &head);
        assert_eq!(
            out,
            b"GET /a?b=c HTTP/1.1\r\nhost: b.test:8080\r\nx-a: 1\r\n\r\n"
        );

        // No Transfer-Encoding without a body; `Connection: close` is said.
        let mut headers = HeaderMap::new();
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("connection", HeaderValue::from_static("Close"));
        head.headers = &headers;
        out.clear();
        assert!(write_head(&mut out, &head));
        assert_eq!(
            out,
            b"GET /a?b=c HTTP/1.1\r\nhost: b.test:8080\r\nconnection: Close\r\n\r\n"
        );
    }
}
