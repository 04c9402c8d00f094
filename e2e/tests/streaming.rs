//! Bodies stream through the data plane with backpressure and are never
//! buffered whole: a 1 GiB upload and a 1 GiB download cross a real data
//! plane while its peak RSS stays flat.
//!
//! Each direction has an instant producer and a slower consumer (it
//! checksums every byte): the client's generated upload against a backend
//! that reads it frame by frame, and the backend's generated download
//! against a client that reads it frame by frame. A proxy without
//! backpressure would pile the difference up in memory; one that buffered
//! bodies would grow by the whole gigabyte.

#![allow(clippy::unwrap_used)]

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use nio_e2e::*;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

const GIB: u64 = 1 << 30;
const MIB: f64 = (1 << 20) as f64;
/// Frames the generators produce.
const CHUNK: usize = 256 << 10;
/// The pattern repeats every `PERIOD` bytes: a prime, so that it never
/// lines up with chunk boundaries and bytes moved between frames change
/// the checksum.
const PERIOD: usize = 251;
/// Allowed growth of the data plane's peak RSS over the transfers.
const MAX_PEAK_GROWTH_KIB: u64 = 64 << 10;
/// Deadline for one whole transfer.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(300);
const DEADLINE: Duration = Duration::from_secs(20);

/// `len` bytes of the deterministic pattern (byte `i` is `i % PERIOD`),
/// produced one `CHUNK` at a time as slices of one shared buffer: never
/// more than a chunk exists, whatever `len` is.
struct PatternBody {
    pattern: Bytes,
    sent: u64,
    len: u64,
}

impl PatternBody {
    fn new(len: u64) -> PatternBody {
        let pattern = (0..CHUNK + PERIOD).map(|i| (i % PERIOD) as u8).collect();
        PatternBody {
            pattern,
            sent: 0,
            len,
        }
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let n = (this.len - this.sent).min(CHUNK as u64) as usize;
        if n == 0 {
            return Poll::Ready(None);
        }
        let start = (this.sent % PERIOD as u64) as usize;
        this.sent += n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.pattern.slice(start..start + n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.len
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

/// Length and FNV-1a checksum of a body, computed frame by frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    bytes: u64,
    sum: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            bytes: 0,
            sum: 0xcbf2_9ce4_8422_2325,
        }
    }

    fn add(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        for &b in data {
            self.sum = (self.sum ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Reads `body` to its end, keeping nothing but the tally.
    async fn of<B>(mut body: B) -> Result<Tally>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let mut tally = Tally::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                tally.add(&data);
            }
        }
        Ok(tally)
    }
}

type BackendBody = Either<PatternBody, Full<Bytes>>;

/// The backend: `POST /upload` tallies the request body and answers
/// `{"bytes": N, "sum": S}`; `GET /download/<n>` streams `n` pattern bytes.
async fn serve(req: Request<Incoming>) -> Result<Response<BackendBody>, Infallible> {
    let path = req.uri().path();
    let download = path
        .strip_prefix("/download/")
        .and_then(|n| n.parse::<u64>().ok());
    let (status, body) = match (req.method(), download) {
        (&Method::GET, Some(n)) => {
            return Ok(Response::new(Either::Left(PatternBody::new(n))));
        }
        (&Method::POST, _) if path == "/upload" => match Tally::of(req.into_body()).await {
            Ok(t) => (
                StatusCode::OK,
                serde_json::json!({"bytes": t.bytes, "sum": t.sum}).to_string(),
            ),
            Err(e) => (StatusCode::BAD_REQUEST, format!("reading the upload: {e}")),
        },
        _ => (StatusCode::NOT_FOUND, String::new()),
    };
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    Ok(resp)
}

async fn start_backend() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(serve))
                    .await;
            });
        }
    });
    Ok(addr)
}

/// The data plane's peak and current resident set size, in KiB.
#[derive(Debug, Clone, Copy)]
struct Memory {
    peak_kib: u64,
    rss_kib: u64,
}

impl Memory {
    fn of(pid: u32) -> Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok(Memory {
            peak_kib: field("VmHWM")?,
            rss_kib: field("VmRSS")?,
        })
    }
}

/// `transfer`, failed if it stalls: a deadline, not a timing assertion.
async fn within<T>(what: &str, transfer: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(TRANSFER_DEADLINE, transfer)
        .await
        .with_context(|| format!("{what} did not finish within {TRANSFER_DEADLINE:?}"))?
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread")]
async fn gigabyte_up_and_down_with_flat_memory() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let dp = DataPlane::start(&cp, "dp-1", &dir.path().join("dp-1")).await?;
    let upstream = start_backend().await?;
    let admin = cp.admin();
    admin
        .create(backend("bulk", &[format!("http://{upstream}")]))
        .await?;
    let written = admin.create(route("bulk", &[], &["/"], "bulk")).await?;
    let revision: u64 = written["metadata"]["resourceVersion"]
        .as_str()
        .context("resourceVersion")?
        .parse()?;
    admin.wait_applied(&["dp-1"], revision, DEADLINE).await?;

    let client: Client<_, PatternBody> = Client::builder(TokioExecutor::new()).build_http();
    let get = |path: &str| {
        Request::get(dp.url(path))
            .body(PatternBody::new(0))
            .unwrap()
    };
    let warm_up = client.request(get("/download/65536")).await?;
    ensure!(warm_up.status() == 200, "warm-up: {}", warm_up.status());
    assert_eq!(Tally::of(warm_up.into_body()).await?.bytes, 65536);

    // Both bodies are the same gigabyte of pattern.
    let expected = Tally::of(PatternBody::new(GIB)).await?;
    let before = Memory::of(dp.proc.pid())?;

    let clock = Instant::now();
    let (status, answer) = within("the upload", async {
        let upload = Request::post(dp.url("/upload")).body(PatternBody::new(GIB))?;
        let resp = client.request(upload).await?;
        Ok((resp.status(), resp.into_body().collect().await?.to_bytes()))
    })
    .await?;
    let upload_time = clock.elapsed();
    ensure!(
        status == 200,
        "upload: {status} {}\n--- data plane log ---\n{}",
        String::from_utf8_lossy(&answer),
        dp.proc.log_text()
    );
    let seen: serde_json::Value = serde_json::from_slice(&answer)?;
    assert_eq!(seen["bytes"].as_u64(), Some(expected.bytes), "{seen}");
    assert_eq!(seen["sum"].as_u64(), Some(expected.sum), "{seen}");

    let clock = Instant::now();
    let got = within("the download", async {
        let resp = client.request(get(&format!("/download/{GIB}"))).await?;
        ensure!(
            resp.status() == 200,
            "download: {}\n--- data plane log ---\n{}",
            resp.status(),
            dp.proc.log_text()
        );
        Tally::of(resp.into_body()).await
    })
    .await?;
    let download_time = clock.elapsed();
    assert_eq!(got, expected);

    let after = Memory::of(dp.proc.pid())?;
    let throughput = |t: Duration| GIB as f64 / MIB / t.as_secs_f64();
    println!(
        "streaming 1 GiB: upload {:.0} MiB/s, download {:.0} MiB/s; data plane peak RSS \
         {:.1} MiB before, {:.1} MiB after (+{:.1} MiB), RSS {:.1} → {:.1} MiB; test took {:.1?}",
        throughput(upload_time),
        throughput(download_time),
        mib(before.peak_kib),
        mib(after.peak_kib),
        mib(after.peak_kib.saturating_sub(before.peak_kib)),
        mib(before.rss_kib),
        mib(after.rss_kib),
        started.elapsed(),
    );
    assert!(
        after.peak_kib < before.peak_kib + MAX_PEAK_GROWTH_KIB,
        "the data plane's peak RSS grew from {:.1} MiB to {:.1} MiB while streaming",
        mib(before.peak_kib),
        mib(after.peak_kib),
    );
    Ok(())
}
