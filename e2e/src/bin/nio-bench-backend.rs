//! The backend of `scripts/bench/proxy`: as little work per request as
//! hyper allows, so the proxies in front of it are what is measured.
//!
//! HTTP/1.1 with keep-alive, one thread. `GET /100k` answers 100 KiB;
//! any other path answers a 13-byte body. Bodies are static and never
//! copied. `nio-demo-backend` is not used for this: it builds a JSON echo
//! of every request, which costs more than the proxies under test.
//!
//! `nio-bench-backend ADDR` (default `127.0.0.1:8082`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;

static SMALL: &[u8] = b"hello, bench\n";
static LARGE: [u8; 100 * 1024] = [b'x'; 100 * 1024];

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = if req.uri().path() == "/100k" {
        Bytes::from_static(&LARGE)
    } else {
        Bytes::from_static(SMALL)
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".into());
    if addr == "--help" || addr == "-h" {
        println!("usage: nio-bench-backend [ADDR]   (default 127.0.0.1:8082)");
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("bench backend listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(answer))
                .await;
        });
    }
}
