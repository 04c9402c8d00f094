//! `compression`: gzip or brotli on the way out, when the client accepts it
//! (`Accept-Encoding`), the response is of a compressible type, not already
//! encoded, and not known to be small. The body is compressed as it streams.

use super::{Ctx, Flow, Phase, Plugin, State};
use crate::body::BoxError;
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder};
use async_compression::Level;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::StatusCode;
use http_body::{Body, Frame};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use nio_proto::model::Compression;
use tokio_stream::StreamExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Brotli,
}

impl Encoding {
    fn token(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Brotli => "br",
        }
    }
}

#[derive(Debug)]
pub struct CompressionPlugin {
    /// In order of preference.
    algorithms: Vec<Encoding>,
    min_size: u64,
    types: Vec<String>,
}

impl CompressionPlugin {
    pub fn new(c: &Compression) -> CompressionPlugin {
        CompressionPlugin {
            algorithms: c
                .algorithms
                .iter()
                .filter_map(|a| match a.as_str() {
                    "gzip" => Some(Encoding::Gzip),
                    "br" => Some(Encoding::Brotli),
                    _ => None,
                })
                .collect(),
            min_size: c.min_size,
            types: c.content_types.clone(),
        }
    }
}

/// Whether `accept` (an `Accept-Encoding` value) takes `token` with q > 0.
/// The token's own entry wins over `*` (`gzip;q=0, *` refuses gzip).
fn accepts(accept: &str, token: &str) -> bool {
    let mut named = None;
    let mut any = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(token) {
            named = Some(q > 0.0);
        } else if name == "*" {
            any = Some(q > 0.0);
        }
    }
    named.or(any).unwrap_or(false)
}

impl Plugin for CompressionPlugin {
    fn phase(&self) -> Phase {
        Phase::Transform
    }

    fn on_request(&self, ctx: &mut Ctx<'_>) -> Flow {
        if let Some(accept) = ctx
            .headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
        {
            ctx.state.encoding = self
                .algorithms
                .iter()
                .copied()
                .find(|e| accepts(accept, e.token()));
        }
        Flow::Continue
    }

    fn on_response(&self, state: &mut State, response: &mut http::response::Parts) {
        // One compression per response, whoever lists it twice.
        let Some(encoding) = state.encoding.filter(|_| !state.compressing) else {
            return;
        };
        let h = &response.headers;
        let content_type = h
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let small = h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n < self.min_size);
        let compressible = self
            .types
            .iter()
            .any(|t| content_type.starts_with(t.as_str()));
        // Ranges are of the identity encoding: a compressed 206 would not
        // match its Content-Range.
        let no_body = matches!(
            response.status,
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT
        ) || response.status.is_informational()
            || h.contains_key(header::CONTENT_RANGE);
        if small || !compressible || no_body || h.contains_key(header::CONTENT_ENCODING) {
            state.encoding = None;
            return;
        }
        let h = &mut response.headers;
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.token()),
        );
        h.remove(header::CONTENT_LENGTH);
        h.remove(header::ACCEPT_RANGES);
        h.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        state.compressing = true;
    }
}

/// `body`, compressed as it streams. Trailers are dropped (compressible
/// content types do not carry them).
pub fn compress<B>(body: B, encoding: Encoding) -> UnsyncBoxBody<Bytes, BoxError>
where
    B: Body<Data = Bytes, Error = BoxError> + Send + Unpin + 'static,
{
    let data = BodyStream::new(body).filter_map(data_only);
    let reader = tokio_util::io::StreamReader::new(data);
    let encoded: Box<dyn tokio::io::AsyncRead + Send + Unpin> = match encoding {
        Encoding::Gzip => Box::new(GzipEncoder::with_quality(reader, Level::Default)),
        // Quality 4: most of brotli's gain for a fraction of its top
        // level's CPU, which matters on the request path.
        Encoding::Brotli => Box::new(BrotliEncoder::with_quality(reader, Level::Precise(4))),
    };
    let frames = tokio_util::io::ReaderStream::new(encoded).map(to_frame);
    StreamBody::new(frames).boxed_unsync()
}

/// The data of a frame, as the byte reader wants it.
fn data_only(frame: Result<Frame<Bytes>, BoxError>) -> Option<std::io::Result<Bytes>> {
    match frame {
        Ok(frame) => frame.into_data().ok().map(Ok),
        Err(e) => Some(Err(std::io::Error::other(e))),
    }
}

fn to_frame(chunk: std::io::Result<Bytes>) -> Result<Frame<Bytes>, BoxError> {
    Ok(Frame::data(chunk?))
}

#[cfg(test)]
mod tests {
    use super::accepts;

    #[test]
    fn accept_encoding() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("GZIP;q=0.5", "gzip"));
        assert!(!accepts("gzip;q=0, br", "gzip"));
        assert!(accepts("*", "br"));
        assert!(!accepts("identity", "gzip"));
        assert!(!accepts("gzip;q=0, *", "gzip"));
    }
}
