//! Request validation: what the gateway refuses before routing.
//!
//! A proxy that forwards what it does not understand the way the backend
//! understands it is a request-smuggling vector. hyper already refuses most
//! malformed HTTP/1 (see docs/security.md for the list and the status of
//! each), but it *frames and accepts* some ambiguous requests — a request
//! with both `Content-Length` and `Transfer-Encoding`, say, has its
//! `Content-Length` silently removed before the proxy sees it. So the
//! checks come in two parts:
//!
//! - [`Scan`] wraps each client connection and reads the raw bytes of every
//!   HTTP/1 request head as the server reads them ([`crate::front`], or
//!   hyper for what that one hands over), following the body framing to
//!   find the next head, and judges what the header map no longer shows:
//!   both lengths, duplicate or malformed `Content-Length`, codings other
//!   than a final `chunked`, obs-fold, whitespace before the colon, empty
//!   names, control characters in values. Its verdict reaches the request
//!   as a [`HeadVerdict`] extension. It also answers 408 to a request head
//!   that takes longer than the header read timeout.
//! - [`check`], called once at the top of the proxy, turns a verdict into a
//!   [`Rejection`] and checks what the parsed request shows: missing or
//!   duplicate `Host`, an over-long target (414), underscores in header
//!   names (dropped or refused), and strips a client's `Upgrade: h2c`.
//!
//! Every rejection is answered by the proxy's single error function with
//! `Connection: close`, and nothing is sent upstream.

use http::header::{self, HeaderName};
use http::{Request, StatusCode, Version};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What to do with a request header whose name contains `_` (some backends
/// treat `X_User` like `X-User`, which lets a client spoof a header the
/// gateway sets or strips).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Underscores {
    /// Remove such headers before forwarding (the default).
    #[default]
    Drop,
    /// Answer 400.
    Reject,
}

impl FromStr for Underscores {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "drop" => Ok(Underscores::Drop),
            "reject" => Ok(Underscores::Reject),
            other => Err(format!("\"{other}\": expected drop or reject")),
        }
    }
}

/// Limits on what clients may send and how many may do it at once.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Request line plus headers, in bytes (HTTP/1: 431 above; HTTP/2: the
    /// advertised max header list size).
    pub max_header_bytes: usize,
    /// Header fields per request (431 above).
    pub max_headers: usize,
    /// Length of the request target (414 above).
    pub max_uri_length: usize,
    pub underscores: Underscores,
    /// How long a client has to send a whole request head once it started
    /// one (408 after); idle keep-alive connections are closed a second
    /// later.
    pub header_read_timeout: Duration,
    /// Open client connections per listener; more are closed at accept.
    pub max_connections: usize,
    /// Requests being handled at once; more are answered 503.
    pub max_requests: usize,
    /// HTTP/2 streams per connection.
    pub h2_max_concurrent_streams: u32,
    /// Resident memory (bytes) above which requests are shed with 503;
    /// above 80 % of it keep-alive is turned off. 0: no watermark.
    pub memory_limit: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 60 * 1024,
            max_headers: 100,
            max_uri_length: 8 * 1024,
            underscores: Underscores::Drop,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_requests: 10_000,
            h2_max_concurrent_streams: 100,
            memory_limit: 0,
        }
    }
}

/// Why a request was refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Both `Content-Length` and `Transfer-Encoding`.
    AmbiguousLength,
    /// `Content-Length` repeated, empty, signed, not decimal…
    BadContentLength,
    /// `Transfer-Encoding` whose final coding is not `chunked`.
    BadTransferEncoding,
    /// `Transfer-Encoding` with codings besides `chunked`.
    UnsupportedTransferEncoding,
    /// obs-fold, whitespace before the colon, an empty or invalid name,
    /// control characters in a value.
    BadHeader,
    MissingHost,
    DuplicateHost,
    UriTooLong,
    /// A request head over `max_header_bytes`.
    HeadersTooLarge,
    /// A header name with `_`, with `--header-underscores reject`.
    Underscore,
}

impl Rejection {
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::UnsupportedTransferEncoding => StatusCode::NOT_IMPLEMENTED,
            Rejection::UriTooLong => StatusCode::URI_TOO_LONG,
            Rejection::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Rejection::AmbiguousLength => "ambiguous-length",
            Rejection::BadContentLength => "bad-content-length",
            Rejection::BadTransferEncoding => "bad-transfer-encoding",
            Rejection::UnsupportedTransferEncoding => "unsupported-transfer-encoding",
            Rejection::BadHeader => "bad-header",
            Rejection::MissingHost => "missing-host",
            Rejection::DuplicateHost => "duplicate-host",
            Rejection::UriTooLong => "uri-too-long",
            Rejection::HeadersTooLarge => "headers-too-large",
            Rejection::Underscore => "underscore-in-header-name",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Rejection::AmbiguousLength => {
                "the request has both Content-Length and Transfer-Encoding; send only one"
            }
            Rejection::BadContentLength => {
                "Content-Length must appear once, as a decimal number of bytes"
            }
            Rejection::BadTransferEncoding => {
                "Transfer-Encoding must end with chunked (and is not allowed in HTTP/1.0)"
            }
            Rejection::UnsupportedTransferEncoding => {
                "only Transfer-Encoding: chunked is supported"
            }
            Rejection::BadHeader => {
                "a header line is malformed (folded, whitespace before the colon, empty name, or control characters in the value)"
            }
            Rejection::MissingHost => "an HTTP/1.1 request needs a Host header",
            Rejection::DuplicateHost => "the request has more than one Host header",
            Rejection::UriTooLong => "the request target is too long",
            Rejection::HeadersTooLarge => "the request headers are too large",
            Rejection::Underscore => {
                "header names with underscores are refused by this gateway; use hyphens"
            }
        }
    }
}

/// The connection scanner's verdict on a request head, put in the request's
/// extensions before the proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadVerdict(pub Option<Rejection>);

static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The checks on a parsed request; fixes what is fixed rather than refused
/// (underscored names dropped, `Upgrade: h2c` removed).
pub fn check<B>(req: &mut Request<B>, limits: &Limits) -> Result<(), Rejection> {
    if let Some(HeadVerdict(Some(r))) = req.extensions_mut().remove::<HeadVerdict>() {
        return Err(r);
    }
    if req.version() <= Version::HTTP_11 {
        let hosts = req.headers().get_all(header::HOST).iter().count();
        if hosts > 1 {
            return Err(Rejection::DuplicateHost);
        }
        if hosts == 0 && req.version() == Version::HTTP_11 {
            return Err(Rejection::MissingHost);
        }
    }
    let target_len = match req.uri().path_and_query() {
        Some(pq) if req.uri().authority().is_none() => pq.as_str().len(),
        _ => req.uri().to_string().len(),
    };
    if target_len > limits.max_uri_length {
        return Err(Rejection::UriTooLong);
    }
    if req.headers().keys().any(|n| n.as_str().contains('_')) {
        if limits.underscores == Underscores::Reject {
            return Err(Rejection::Underscore);
        }
        let names: Vec<HeaderName> = req
            .headers()
            .keys()
            .filter(|n| n.as_str().contains('_'))
            .cloned()
            .collect();
        for n in names {
            req.headers_mut().remove(&n);
        }
    }
    // A client's h2c upgrade would give it an HTTP/2 connection to the
    // backend behind the gateway's back: never forwarded.
    let h2c = req
        .headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("h2c"));
    if h2c {
        req.headers_mut().remove(header::UPGRADE);
        req.headers_mut().remove(&HTTP2_SETTINGS);
    }
    Ok(())
}

/// A head's number on its connection, its request line, and the verdict.
type Judged = (u64, Vec<u8>, Option<Rejection>);

/// Told each head's verdict: its number (1-based), its request line, and
/// the refusal if any.
pub type OnVerdict<'a> = dyn FnMut(u64, &[u8], Option<Rejection>) + 'a;

/// What the scanner and the service share on one connection.
#[derive(Debug, Default)]
pub struct ConnFacts {
    /// Verdicts by head number (1-based), with the method and target seen.
    verdicts: Mutex<VecDeque<Judged>>,
    /// Requests handed to the service so far.
    served: AtomicU64,
}

impl ConnFacts {
    /// The verdict for the next HTTP/1 request on this connection, if the
    /// scanner followed the connection that far. HTTP/1 requests on one
    /// connection reach the service in order, one at a time.
    pub fn next_verdict(&self, method: &str, target: &str) -> Option<HeadVerdict> {
        let n = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        let mut v = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        while v.front().is_some_and(|(seq, _, _)| *seq < n) {
            v.pop_front();
        }
        match v.front() {
            Some((seq, line, _)) if *seq == n && line_matches(line, method, target) => {
                v.pop_front().map(|(_, _, r)| HeadVerdict(r))
            }
            _ => None,
        }
    }

    /// Records a refusal (a head without one needs no record: no verdict
    /// is no refusal).
    fn push(&self, seq: u64, line: &[u8], verdict: Option<Rejection>) {
        if verdict.is_none() {
            return;
        }
        let mut v = self.verdicts.lock().unwrap_or_else(|p| p.into_inner());
        v.push_back((seq, line.to_vec(), verdict));
        // A client cannot make this grow: the scanner runs only under
        // hyper (our server pauses it), which reads one request at a time;
        // cap it anyway.
        while v.len() > 64 {
            v.pop_front();
        }
    }
}

/// The request line `METHOD SP target SP version` starts with what hyper
/// parsed (a safety net against the scanner losing track of framing).
fn line_matches(line: &[u8], method: &str, target: &str) -> bool {
    let mut parts = line.split(|b| *b == b' ').filter(|p| !p.is_empty());
    parts.next() == Some(method.as_bytes()) && parts.next() == Some(target.as_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// Lost track (HTTP/2, an upgrade, something hyper refuses anyway):
    /// look no further.
    Off,
}

/// How the request after a head is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// The connection may stop being HTTP/1 after this head (CONNECT,
    /// Upgrade) or will be closed (a rejection).
    Stop,
}

/// Judges one raw request head (request line and header lines, the final
/// empty line optional). Public for the fuzz target and tests.
///
/// One pass over the bytes with a class table (it runs on every request;
/// the tests check it against a plainer line-by-line version).
pub fn judge_head(head: &[u8]) -> (Option<Rejection>, Framing) {
    let first_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let mut facts = HeadFacts::new(&head[..first_end]);
    let mut i = first_end + 1;
    while i < head.len() {
        // A line: `start..end`, then its `\n` (or the end of the head).
        let start = i;
        let mut colon = None;
        let mut bad = false;
        // The name, up to the colon (or a control character)...
        while i < head.len() {
            let b = head[i];
            let class = CLASS[b as usize];
            if class & CTL != 0 {
                break;
            }
            if b == b':' {
                colon = Some(i);
                i += 1;
                break;
            }
            bad |= class & TOKEN == 0;
            i += 1;
        }
        // ...then the rest of the line, control characters stopping the
        // tight loop: the line's end, or a refusal.
        loop {
            i += until_ctl(&head[i.min(head.len())..]);
            match head.get(i) {
                None | Some(b'\n') => break,
                Some(b'\r') if head.get(i + 1) == Some(&b'\n') => break,
                Some(_) => {
                    bad = true;
                    i += 1;
                }
            }
        }
        let end = i;
        // Past the `\n` (and a `\r` before it).
        i += if head.get(i) == Some(&b'\r') { 2 } else { 1 };
        if end == start {
            break;
        }
        match colon {
            // obs-fold (a line starting with SP/HT), a control character,
            // a name that is not a token, an empty name, no colon.
            Some(colon) if !bad && colon > start => {
                facts.field(&head[start..colon], trim(&head[colon + 1..end]));
            }
            _ => facts.bad_header = true,
        }
    }
    facts.verdict()
}

/// Where the first control character of `s` is (`s.len()` if none),
/// eight bytes at a time: a header value rarely has one.
fn until_ctl(s: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES * 0x80;
    let is_ctl = |b: &u8| CLASS[*b as usize] & CTL != 0;
    let mut i = 0;
    while let Some(word) = s.get(i..i + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let w = u64::from_ne_bytes(bytes);
        // Any byte below 0x20, or equal to 0x7f (exact as a yes/no).
        let low = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
        let x = w ^ (ONES * 0x7f);
        let del = x.wrapping_sub(ONES) & !x & HIGHS;
        if low | del != 0 {
            // A candidate (a tab is one too): look byte by byte.
            if let Some(k) = word.iter().position(is_ctl) {
                return i + k;
            }
        }
        i += 8;
    }
    i + s[i..].iter().position(is_ctl).unwrap_or(s.len() - i)
}

/// What the rules need from a head's request line and fields.
#[derive(Default)]
struct HeadFacts {
    http10: bool,
    connect: bool,
    cl_values: usize,
    cl_bad: bool,
    cl: u64,
    codings: Vec<Vec<u8>>,
    te: bool,
    hosts: usize,
    upgrade: bool,
    conn_upgrade: bool,
    bad_header: bool,
}

impl HeadFacts {
    fn new(request_line: &[u8]) -> HeadFacts {
        let request_line = request_line.strip_suffix(b"\r").unwrap_or(request_line);
        HeadFacts {
            http10: request_line.ends_with(b"HTTP/1.0"),
            connect: request_line.starts_with(b"CONNECT "),
            ..HeadFacts::default()
        }
    }

    /// A well-formed field (`value` trimmed).
    fn field(&mut self, name: &[u8], value: &[u8]) {
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                for v in value.split(|b| *b == b',') {
                    self.cl_values += 1;
                    match parse_decimal(trim(v)) {
                        Some(n) => self.cl = n,
                        None => self.cl_bad = true,
                    }
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.te = true;
                self.codings.extend(
                    value
                        .split(|b| *b == b',')
                        .map(|c| trim(c).to_ascii_lowercase()),
                );
            }
            4 if name.eq_ignore_ascii_case(b"host") => self.hosts += 1,
            7 if name.eq_ignore_ascii_case(b"upgrade") => self.upgrade = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                self.conn_upgrade |= value
                    .split(|b| *b == b',')
                    .any(|t| trim(t).eq_ignore_ascii_case(b"upgrade"));
            }
            _ => {}
        }
    }

    fn verdict(&self) -> (Option<Rejection>, Framing) {
        let te = self.te;
        let rejection = if self.bad_header {
            Some(Rejection::BadHeader)
        } else if te && self.cl_values > 0 {
            Some(Rejection::AmbiguousLength)
        } else if self.cl_bad || self.cl_values > 1 {
            Some(Rejection::BadContentLength)
        } else if te && (self.http10 || self.codings.last().map(Vec::as_slice) != Some(b"chunked"))
        {
            Some(Rejection::BadTransferEncoding)
        } else if te && self.codings.len() != 1 {
            Some(Rejection::UnsupportedTransferEncoding)
        } else if self.hosts > 1 {
            Some(Rejection::DuplicateHost)
        } else if self.hosts == 0 && !self.http10 {
            Some(Rejection::MissingHost)
        } else {
            None
        };
        let framing = if rejection.is_some() || self.connect || (self.upgrade && self.conn_upgrade)
        {
            Framing::Stop
        } else if te {
            Framing::Chunked
        } else {
            Framing::Length(self.cl)
        };
        (rejection, framing)
    }
}

/// Byte classes of a header line: a token character (allowed in a name),
/// a control character (never allowed: below 0x20 but HT, and DEL).
const TOKEN: u8 = 1;
const CTL: u8 = 2;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        if TCHAR[b] {
            t[b] |= TOKEN;
        }
        if (b < 0x20 && b != 0x09) || b == 0x7f {
            t[b] |= CTL;
        }
        b += 1;
    }
    t
};

/// RFC 9110 token characters, by byte (one lookup per byte of every
/// header name).
static TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `1*DIGIT`, no sign, no spaces, no hex; `None` past 19 digits (which
/// always fit in a u64). Folded by hand: `str::parse` cost 150
/// instructions more per proxied request.
pub(crate) fn parse_decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Whether a comma-separated header value lists `token` (any case).
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Follows the HTTP/1 byte stream of one connection: request heads and the
/// bodies between them.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    /// The head (or chunk-size/trailer line) read so far.
    buf: Vec<u8>,
    heads: u64,
    max_head: usize,
}

/// Chunk-size and trailer lines longer than this: hyper refuses them.
const MAX_LINE: usize = 4096;

impl Scanner {
    pub fn new(max_head: usize) -> Scanner {
        Scanner {
            state: State::Head,
            buf: Vec::new(),
            heads: 0,
            max_head,
        }
    }

    /// True while part of a request head has arrived but not all of it.
    pub fn in_partial_head(&self) -> bool {
        self.state == State::Head && !self.buf.is_empty()
    }

    /// Request heads completed so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Feeds bytes read from the client; calls `verdict` for each complete
    /// head with its number, request line and verdict.
    pub fn feed(&mut self, mut data: &[u8], verdict: &mut OnVerdict<'_>) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => {
                    // Empty lines before a request line are skipped (as
                    // httparse does).
                    if self.buf.is_empty() {
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let (taken, done) = take_head(&self.buf, data);
                    let (head, rest) = data.split_at(taken);
                    data = rest;
                    if done && self.buf.is_empty() {
                        // The whole head came in this read (the usual
                        // case): judged where it lies, not copied first.
                        if !self.head_done(head, verdict) {
                            return;
                        }
                        continue;
                    }
                    self.buf.extend_from_slice(head);
                    if self.buf.len() > 2 * self.max_head {
                        // hyper answers 431 (its read buffer is full).
                        self.state = State::Off;
                        self.buf = Vec::new();
                        return;
                    }
                    if done {
                        let head = std::mem::take(&mut self.buf);
                        if !self.head_done(&head, verdict) {
                            return;
                        }
                    }
                }
                State::Body(n) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    self.state = if k == n {
                        State::Head
                    } else {
                        State::Body(n - k)
                    };
                }
                State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let Some(line) = self.take_line(&mut data) else {
                        continue;
                    };
                    self.state = match self.state {
                        State::ChunkSize => match chunk_size(&line) {
                            Some(0) => State::Trailers,
                            Some(n) => State::ChunkData(n),
                            None => State::Off,
                        },
                        State::ChunkEnd if line.is_empty() => State::ChunkSize,
                        State::Trailers if line.is_empty() => State::Head,
                        State::Trailers => State::Trailers,
                        _ => State::Off,
                    };
                }
                State::ChunkData(n) => {
                    let k = (data.len() as u64).min(n);
                    data = &data[k as usize..];
                    self.state = if k == n {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(n - k)
                    };
                }
            }
        }
    }

    /// Judges a complete head and moves on to what follows it; `false`
    /// when the scan stops here.
    fn head_done(&mut self, head: &[u8], verdict: &mut OnVerdict<'_>) -> bool {
        if head.len() > 2 * self.max_head {
            // hyper answers 431 (its read buffer is full).
            self.state = State::Off;
            return false;
        }
        if self.heads == 0 && head.starts_with(b"PRI * HTTP/2.0") {
            self.state = State::Off; // the HTTP/2 preface
            return false;
        }
        self.heads += 1;
        let (mut rejection, mut framing) = judge_head(head);
        // hyper's own limit (its read buffer, set larger) is only checked
        // between reads: this one is exact.
        if head.len() > self.max_head {
            rejection = Some(Rejection::HeadersTooLarge);
            framing = Framing::Stop;
        }
        let line_end = head
            .iter()
            .position(|b| *b == b'\r' || *b == b'\n')
            .unwrap_or(head.len());
        verdict(self.heads, &head[..line_end], rejection);
        self.state = match framing {
            Framing::Length(0) => State::Head,
            Framing::Length(n) => State::Body(n),
            Framing::Chunked => State::ChunkSize,
            Framing::Stop => State::Off,
        };
        true
    }

    /// A whole line (without CRLF) once its `\n` arrived; `None` (all of
    /// `data` consumed) before.
    fn take_line(&mut self, data: &mut &[u8]) -> Option<Vec<u8>> {
        let end = data.iter().position(|b| *b == b'\n');
        let taken = end.unwrap_or(data.len());
        self.buf.extend_from_slice(&data[..taken]);
        *data = &data[(taken + 1).min(data.len())..];
        // The same limit whether the line came in one read or many.
        if self.buf.len() > MAX_LINE {
            self.state = State::Off;
            self.buf = Vec::new();
            return None;
        }
        end?;
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(line)
    }
}

/// How many bytes of `data` belong to the head that `buf` started, and
/// whether the head is complete (an empty line: `\n\n` or `\n\r\n`).
fn take_head(buf: &[u8], data: &[u8]) -> (usize, bool) {
    // The byte `back` places before `data[i]`, reaching into the last bytes
    // already held (a terminator can be split across reads).
    let before = |i: usize, back: usize| -> Option<u8> {
        match i.checked_sub(back) {
            Some(j) => Some(data[j]),
            None => (buf.len() + i).checked_sub(back).map(|j| buf[j]),
        }
    };
    // Only line ends can complete a head: jump from one to the next rather
    // than carrying state through every byte.
    let mut from = 0;
    while let Some(offset) = memchr::memchr(b'\n', &data[from..]) {
        let i = from + offset;
        let prev1 = before(i, 1);
        if prev1 == Some(b'\n') || (prev1 == Some(b'\r') && before(i, 2) == Some(b'\n')) {
            return (i + 1, true);
        }
        from = i + 1;
    }
    (data.len(), false)
}

/// A chunk-size line: hex digits, then optional `;extensions`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let end = line
        .iter()
        .position(|b| *b == b';' || *b == b' ' || *b == b'\t')
        .unwrap_or(line.len());
    let hex = &line[..end];
    if hex.is_empty() || hex.len() > 15 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// A client connection with its request heads scanned (see the module
/// docs) and a deadline on each head.
///
/// Paused while [`crate::front`] serves the connection: the heads it takes
/// need no scan (it hands any head the scanner could refuse to hyper, see
/// its docs), and it keeps its own head deadline. On a hand-over it
/// [resumes](Scan::resume) the scan with the bytes it had read.
pub struct Scan<S> {
    inner: S,
    scanner: Scanner,
    paused: bool,
    facts: Arc<ConnFacts>,
    timeout: Duration,
    /// Armed at a head's first byte, cleared when it is complete.
    deadline: Option<Pin<Box<Sleep>>>,
    timed_out: bool,
    /// Counts heads that took too long (for /metrics).
    on_timeout: Option<Box<dyn Fn() + Send + Sync>>,
}

impl<S> Scan<S> {
    pub fn new(inner: S, limits: &Limits, facts: Arc<ConnFacts>) -> Scan<S> {
        Scan {
            inner,
            scanner: Scanner::new(limits.max_header_bytes),
            paused: false,
            facts,
            timeout: limits.header_read_timeout,
            deadline: None,
            timed_out: false,
            on_timeout: None,
        }
    }

    pub fn on_timeout(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_timeout = Some(Box::new(f));
        self
    }

    /// Stops scanning (and the head deadline) until [`Scan::resume`].
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Scans again from here: `heads` requests were served while paused,
    /// and `read` are the bytes read after them, which the next reader
    /// gets first.
    pub fn resume(&mut self, read: &[u8], heads: u64) {
        self.paused = false;
        self.scanner.heads = heads;
        self.feed(read);
    }

    /// How long a request head may take.
    pub fn head_timeout(&self) -> Duration {
        self.timeout
    }

    /// A head took longer than [`Scan::head_timeout`] while paused: counts
    /// it, and gives the answer to write if no request was answered on
    /// the connection yet (none can be half-written then).
    pub fn head_timed_out(&self, answered: u64) -> Option<&'static [u8]> {
        if let Some(f) = &self.on_timeout {
            f();
        }
        (answered == 0).then_some(TIMEOUT_RESPONSE)
    }

    fn feed(&mut self, data: &[u8]) {
        let facts = &self.facts;
        self.scanner.feed(data, &mut |seq, line, r| {
            facts.push(seq, line, r);
        });
        if self.scanner.in_partial_head() {
            if self.deadline.is_none() {
                self.deadline = Some(Box::pin(tokio::time::sleep(self.timeout)));
            }
        } else {
            self.deadline = None;
        }
    }
}

const TIMEOUT_RESPONSE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 68\r\nx-nio-error: header-timeout\r\n\r\n{\"error\":\"the request head was not received in time\",\"requestId\":\"\"}";

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Scan<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.paused {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.timed_out {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.feed(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(deadline) = this.deadline.as_mut() else {
                    return Poll::Pending;
                };
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // The head took too long: say so (when no response of ours
                // can be half-written on the wire, i.e. on the first
                // request), then end the connection.
                this.timed_out = true;
                this.deadline = None;
                if let Some(f) = &this.on_timeout {
                    f();
                }
                if this.scanner.heads() == 0 {
                    let _ = Pin::new(&mut this.inner).poll_write(cx, TIMEOUT_RESPONSE);
                    let _ = Pin::new(&mut this.inner).poll_flush(cx);
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Scan<S> {
    write_through!(inner);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn decimals_are_digits_only() {
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b"00042"), Some(42));
        assert_eq!(
            parse_decimal(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"0x1",
            b"1,2",
            b"18446744073709551615",
        ] {
            assert_eq!(
                parse_decimal(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn single_pass_judge_agrees_with_the_line_by_line_one() {
        // Heads built from pieces that matter to the rules, in many
        // combinations, plus every byte value in a name and a value.
        let lines: [&[u8]; 22] = [
            b"Host: a.test",
            b"host:a.test",
            b"Content-Length: 5",
            b"content-length: 5, 5",
            b"Content-Length: -1",
            b"Transfer-Encoding: chunked",
            b"transfer-encoding: gzip, chunked",
            b"Connection: Upgrade",
            b"Upgrade: websocket",
            b" folded",
            b"\tfolded",
            b"NoColon",
            b": empty name",
            b"Bad Name: x",
            b"X-A: a\rb",
            b"X-A: a\x7fb",
            b"X-A: \ta b\t",
            b"X-\xff: x",
            b"X-A: \xff\x80",
            b"\r",
            b"",
            b"X-B:",
        ];
        let mut heads: Vec<Vec<u8>> = Vec::new();
        for first in [
            &b"GET / HTTP/1.1"[..],
            b"GET / HTTP/1.0",
            b"CONNECT a:1 HTTP/1.1",
        ] {
            for (i, a) in lines.iter().enumerate() {
                for b in &lines[i..] {
                    for eol in [&b"\r\n"[..], b"\n"] {
                        let mut h = first.to_vec();
                        for l in [a, b, &&b"Host: x"[..]] {
                            h.extend_from_slice(eol);
                            h.extend_from_slice(l);
                        }
                        h.extend_from_slice(eol);
                        heads.push(h.clone());
                        h.extend_from_slice(eol);
                        heads.push(h);
                    }
                }
            }
        }
        for byte in 0..=255u8 {
            for line in [
                vec![b'X', byte, b':', b' ', b'v'],
                vec![b'X', b':', b' ', byte, b'v'],
            ] {
                let mut h = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
                h.extend_from_slice(&line);
                h.extend_from_slice(b"\r\n\r\n");
                heads.push(h);
            }
        }
        for head in &heads {
            assert_eq!(
                format!("{:?}", judge_head(head)),
                format!("{:?}", judge_head_reference(head)),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    fn judge(head: &str) -> Option<Rejection> {
        judge_head(head.as_bytes()).0
    }

    #[test]
    fn heads_are_judged() {
        let ok = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(judge(ok), None);
        assert_eq!(
            judge("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(Rejection::AmbiguousLength)
        );
        for cl in [
            "+5",
            "0x10",
            "",
            "5, 5",
            "-1",
            "5 5",
            "99999999999999999999",
        ] {
            assert_eq!(
                judge(&format!(
                    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {cl}\r\n\r\n"
                )),
                Some(Rejection::BadContentLength),
                "{cl:?}"
            );
        }
        assert_eq!(
            judge("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Some(Rejection::BadContentLength)
        );
        assert_eq!(
            judge("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
            Some(Rejection::BadTransferEncoding)
        );
        assert_eq!(
            judge("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Some(Rejection::UnsupportedTransferEncoding)
        );
        assert_eq!(
            judge("GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
            Some(Rejection::BadHeader)
        );
        assert_eq!(
            judge("GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n"),
            Some(Rejection::BadHeader)
        );
        assert_eq!(
            judge("GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"),
            Some(Rejection::BadHeader)
        );
        assert_eq!(
            judge("GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n"),
            Some(Rejection::BadHeader)
        );
        assert_eq!(
            judge("GET / HTTP/1.1\r\n\r\n"),
            Some(Rejection::MissingHost)
        );
        assert_eq!(judge("GET / HTTP/1.0\r\n\r\n"), None);
        assert_eq!(
            judge("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Some(Rejection::DuplicateHost)
        );
    }

    #[test]
    fn the_scanner_follows_bodies_to_the_next_head() {
        let stream = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nGET /\r\n0\r\nT: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        // Fed whole and byte by byte, the same verdicts.
        for step in [stream.len(), 1, 3] {
            let mut s = Scanner::new(1024);
            let mut seen = Vec::new();
            for piece in stream.chunks(step) {
                s.feed(piece, &mut |n, line, r| {
                    seen.push((n, String::from_utf8(line.to_vec()).unwrap(), r))
                });
            }
            assert_eq!(
                seen,
                vec![
                    (1, "POST /a HTTP/1.1".to_string(), None),
                    (2, "POST /b HTTP/1.1".to_string(), None),
                    (
                        3,
                        "GET /c HTTP/1.1".to_string(),
                        Some(Rejection::AmbiguousLength)
                    ),
                ],
                "step {step}"
            );
        }
    }

    /// The request_head fuzz target's invariant (verdicts do not depend on
    /// how reads split the bytes), on two inputs that broke it in an early
    /// version: the HTTP/2 preface was only recognised when it arrived in
    /// one read, and an over-long trailer line only stopped the scanner
    /// when it was split.
    #[test]
    fn verdicts_do_not_depend_on_read_boundaries() {
        let long_trailer = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: {}\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(5000)
        );
        for stream in [
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
            long_trailer.as_bytes(),
            // Bare LF and mixed terminators (`\n\n`, `\n\r\n`).
            &b"GET /a HTTP/1.1\nHost: a\n\nGET /b HTTP/1.1\r\nHost: a\n\r\nGET /c HTTP/1.1\r\nHost: a\r\n\r\n"[..],
        ] {
            let run = |step: usize| {
                let mut s = Scanner::new(60 * 1024);
                let mut seen = Vec::new();
                for piece in stream.chunks(step) {
                    s.feed(piece, &mut |n, _, r| seen.push((n, r)));
                }
                seen
            };
            for step in [1, 2, 3, 7] {
                assert_eq!(run(stream.len()), run(step), "pieces of {step}");
            }
        }
    }

    #[test]
    fn verdicts_only_apply_to_the_request_they_were_made_for() {
        let facts = ConnFacts::default();
        facts.push(1, b"GET /x HTTP/1.1", Some(Rejection::BadHeader));
        assert!(facts.next_verdict("GET", "/y").is_none());
        facts.push(2, b"GET /x HTTP/1.1", Some(Rejection::BadHeader));
        assert_eq!(
            facts.next_verdict("GET", "/x").unwrap().0,
            Some(Rejection::BadHeader)
        );
    }

    #[test]
    fn check_fixes_and_refuses() {
        let limits = Limits::default();
        let mut req = Request::builder()
            .uri("/")
            .header("host", "a")
            .header("x_user", "admin")
            .header("upgrade", "h2c")
            .header("http2-settings", "AAA")
            .body(())
            .unwrap();
        check(&mut req, &limits).unwrap();
        assert!(!req.headers().contains_key("x_user"));
        assert!(!req.headers().contains_key("upgrade"));
        assert!(!req.headers().contains_key("http2-settings"));
        let strict = Limits {
            underscores: Underscores::Reject,
            ..Limits::default()
        };
        let mut req = Request::builder()
            .uri("/")
            .header("host", "a")
            .header("x_user", "admin")
            .body(())
            .unwrap();
        assert_eq!(check(&mut req, &strict), Err(Rejection::Underscore));
        let long = format!("/{}", "a".repeat(9000));
        let mut req = Request::builder()
            .uri(long)
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(check(&mut req, &limits), Err(Rejection::UriTooLong));
    }

    #[test]
    fn until_ctl_finds_the_first_control_character() {
        let reference = |s: &[u8]| {
            s.iter()
                .position(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
                .unwrap_or(s.len())
        };
        for b in 0..=255u8 {
            for at in 0..20 {
                for len in [at + 1, 20, 27] {
                    // A tab early on, then `b` at `at`.
                    let mut s = vec![b'a'; len];
                    s[at] = b;
                    s[at / 2] = if at > 1 { b'\t' } else { s[at / 2] };
                    assert_eq!(until_ctl(&s), reference(&s), "{b:#x} at {at} of {len}");
                }
            }
        }
    }

    /// The first, line-by-line way of reading a head's fields: the
    /// reference the single pass of [`judge_head`] is checked against.
    fn judge_head_reference(head: &[u8]) -> (Option<Rejection>, Framing) {
        let mut lines = head
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let mut facts = HeadFacts::new(lines.next().unwrap_or_default());
        for line in lines {
            if line.is_empty() {
                break;
            }
            if line[0] == b' ' || line[0] == b'\t' {
                facts.bad_header = true; // obs-fold
                continue;
            }
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                facts.bad_header = true;
                continue;
            };
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|b| TCHAR[*b as usize]) {
                facts.bad_header = true;
                continue;
            }
            let value = trim(&line[colon + 1..]);
            if value
                .iter()
                .any(|b| (*b < 0x20 && *b != b'\t') || *b == 0x7f)
            {
                facts.bad_header = true;
                continue;
            }
            facts.field(name, value);
        }
        facts.verdict()
    }
}
