//! What the gateway does when backends are slow, dead or failing, through
//! a real data plane: timeouts (504), dead targets (502) skipped once the
//! circuit breaker opens and tried again after it half-opens, active
//! health checks taking a target out and back in, outlier ejection, and
//! retries that go to another target but never re-send a streamed body.
//! Every gateway error is JSON with the request id and an `X-Nio-Error`
//! header.

#![allow(clippy::unwrap_used)]

use nio_e2e::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

async fn setup(gw: &Gateway, urls: &[String], extra: Value) -> anyhow::Result<()> {
    let targets = urls.iter().map(|u| json!({ "url": u })).collect();
    gw.apply(&[
        backend_with("svc", targets, &extra),
        route("svc", &["svc.test"], &["/"], "svc"),
    ])
    .await?;
    Ok(())
}

/// A URL where nothing listens.
async fn dead_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

struct Answer {
    status: u16,
    error: Option<String>,
    body: Value,
}

async fn call(gw: &Gateway, method: Method, path: &str) -> Answer {
    let r = gw
        .request(method, "svc.test", path)
        .header("x-request-id", "req-1")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let error = r
        .headers()
        .get("x-nio-error")
        .map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap();
    Answer {
        status,
        error,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn spread(gw: &Gateway, n: usize) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for _ in 0..n {
        let a = call(gw, Method::GET, "/").await;
        let who = match a.error {
            Some(e) => e,
            None => a.body["backend"].as_str().unwrap_or("?").to_string(),
        };
        *c.entry(who).or_default() += 1;
    }
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_backend_gives_504() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start("slow").await?;
    setup(
        &gw,
        &[b.url()],
        json!({"timeouts": {"request": "300ms"}, "retries": {"maxRetries": 0}}),
    )
    .await?;
    let a = call(&gw, Method::GET, "/slow/3000").await;
    assert_eq!(a.status, 504);
    assert_eq!(a.error.as_deref(), Some("backend-timeout"));
    assert_eq!(a.body["requestId"], "req-1");
    assert_eq!(a.body["error"], "the backend did not answer in time");
    assert_eq!(call(&gw, Method::GET, "/fast").await.status, 200);
    Ok(())
}

/// The request timeout counts from the end of the request body: an upload
/// slower than the timeout is not a slow backend.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_upload_is_not_a_backend_timeout() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start("upload").await?;
    setup(
        &gw,
        &[b.url()],
        json!({"timeouts": {"request": "300ms"}, "retries": {"maxRetries": 0}}),
    )
    .await?;
    let mut conn = tokio::net::TcpStream::connect(gw.dp.http).await?;
    conn.write_all(
        b"POST /up HTTP/1.1\r\nhost: svc.test\r\ncontent-length: 50\r\nconnection: close\r\n\r\n",
    )
    .await?;
    // Five pieces 200 ms apart: a second of upload against a 300 ms timeout.
    for _ in 0..5 {
        conn.write_all(&[b'x'; 10]).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await?;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"bodyLength\":50"), "{answer}");
    Ok(())
}

/// A client whose request body is broken gets 400, and it does not count
/// against the target: its breaker stays closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_request_body_is_the_clients_fault() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start("b").await?;
    setup(
        &gw,
        &[b.url()],
        json!({"retries": {"maxRetries": 0}, "circuitBreaker": {"consecutiveFailures": 2, "openFor": "1h"}}),
    )
    .await?;
    for _ in 0..4 {
        let mut conn = tokio::net::TcpStream::connect(gw.dp.http).await?;
        conn.write_all(
            b"POST / HTTP/1.1\r\nhost: svc.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        )
        .await?;
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("request-body-failed"), "{answer}");
    }
    assert_eq!(
        call(&gw, Method::GET, "/").await.status,
        200,
        "breaker still closed"
    );
    Ok(())
}

/// A backend that stops reading an upload (without answering) gives 504
/// after the idle timeout instead of holding the request forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_that_stops_reading_gives_504() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (hold_tx, mut hold_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            // Keep the connection open and never read from it.
            let _ = hold_tx.send(conn);
        }
    });
    setup(
        &gw,
        &[url],
        json!({"timeouts": {"request": "500ms", "idle": "500ms"}, "retries": {"maxRetries": 0}}),
    )
    .await?;
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        gw.request(Method::POST, "svc.test", "/")
            .body(vec![0u8; 32 * 1024 * 1024])
            .send(),
    )
    .await??;
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-nio-error"], "backend-timeout");
    hold_rx.close();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn dot_segments_are_refused() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start("b").await?;
    gw.apply(&[
        backend("svc", &[b.url()]),
        route("public", &["svc.test"], &["/public"], "svc"),
    ])
    .await?;
    // Sent raw: an HTTP client library would resolve the dots itself.
    for path in ["/public/../admin", "/public/%2e%2E/admin", "/public/./x"] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(gw.dp.http).await?;
        conn.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: svc.test\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await?;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(
            answer.contains("x-nio-error: bad-request"),
            "{path}: {answer}"
        );
    }
    assert_eq!(b.hit_count(), 0);
    Ok(())
}

/// A response body that stops flowing for longer than the idle timeout is
/// cut, so a hung backend cannot hold a client forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_response_body_is_cut() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&[]).await?;
    // A backend that sends headers and 5 of 100 promised bytes, then hangs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
                    .await;
                std::future::pending::<()>().await;
            });
        }
    });
    setup(
        &gw,
        &[url],
        json!({"timeouts": {"idle": "300ms"}, "retries": {"maxRetries": 0}}),
    )
    .await?;
    let r = gw.request(Method::GET, "svc.test", "/").send().await?;
    assert_eq!(r.status(), 200);
    let body = tokio::time::timeout(Duration::from_secs(20), r.bytes()).await?;
    assert!(body.is_err(), "the body was cut, not completed: {body:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_target_gives_502_then_is_skipped_until_it_recovers() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let live = TestBackend::start("live").await?;
    let dead = dead_url().await;
    setup(
        &gw,
        &[dead.clone(), live.url()],
        json!({
            "loadBalancing": {"policy": "roundRobin"},
            "retries": {"maxRetries": 0},
            "circuitBreaker": {"consecutiveFailures": 2, "openFor": "1s"}
        }),
    )
    .await?;
    // Round robin: every other request goes to the dead target until its
    // breaker opens after two failures.
    let before = spread(&gw, 4).await;
    assert_eq!(
        (before.get("backend-unreachable"), before.get("live")),
        (Some(&2), Some(&2)),
        "{before:?}"
    );
    let a = call(&gw, Method::GET, "/").await;
    assert_eq!(a.body["backend"], "live");
    let after = spread(&gw, 20).await;
    assert_eq!(after.get("live"), Some(&20), "breaker open: {after:?}");
    let m = gw.metrics().await?;
    assert!(
        m.contains(&format!(
            "nio_backend_target_up{{backend=\"svc\",target=\"{dead}\"}} 0"
        )),
        "{m}"
    );

    // The dead target comes back on its address; after openFor one probe
    // request closes the breaker and it takes traffic again.
    let revived =
        TestBackend::start_on(dead.trim_start_matches("http://").parse()?, "revived").await?;
    wait_for(
        "the revived target to serve",
        Duration::from_secs(10),
        || async { Ok(spread(&gw, 2).await.contains_key("revived").then_some(())) },
    )
    .await?;
    let c = spread(&gw, 10).await;
    assert_eq!(
        (c.get("revived"), c.get("live")),
        (Some(&5), Some(&5)),
        "{c:?}"
    );
    drop(revived);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_every_breaker_open_the_answer_is_503() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    setup(
        &gw,
        &[dead_url().await],
        json!({"retries": {"maxRetries": 0}, "circuitBreaker": {"consecutiveFailures": 1, "openFor": "1h"}}),
    )
    .await?;
    let first = call(&gw, Method::GET, "/").await;
    assert_eq!(
        (first.status, first.error.as_deref()),
        (502, Some("backend-unreachable"))
    );
    let next = call(&gw, Method::GET, "/").await;
    assert_eq!(
        (next.status, next.error.as_deref()),
        (503, Some("no-healthy-target"))
    );
    assert_eq!(next.body["requestId"], "req-1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_take_a_target_out_and_bring_it_back() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let (a, b) = (
        TestBackend::start("a").await?,
        TestBackend::start("b").await?,
    );
    setup(
        &gw,
        &[a.url(), b.url()],
        json!({"healthCheck": {"path": "/health", "interval": "100ms", "timeout": "100ms",
                               "unhealthyThreshold": 2, "healthyThreshold": 2,
                               "expectedStatuses": ["2xx"]}}),
    )
    .await?;
    assert_eq!(spread(&gw, 10).await.get("a"), Some(&5));
    a.set_health(500);
    wait_for("a taken out", Duration::from_secs(10), || async {
        Ok((spread(&gw, 4).await.get("b") == Some(&4)).then_some(()))
    })
    .await?;
    assert_eq!(spread(&gw, 20).await.get("b"), Some(&20));
    a.set_health(204);
    wait_for("a back in", Duration::from_secs(10), || async {
        Ok(spread(&gw, 4).await.contains_key("a").then_some(()))
    })
    .await?;
    assert_eq!(spread(&gw, 10).await.get("a"), Some(&5));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn outliers_answering_5xx_are_ejected() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let (bad, good) = (
        TestBackend::start("bad").await?,
        TestBackend::start("good").await?,
    );
    bad.set_status(500);
    setup(
        &gw,
        &[bad.url(), good.url()],
        json!({"retries": {"maxRetries": 0},
               "outlierDetection": {"consecutive5xx": 3, "ejectFor": "1h"}}),
    )
    .await?;
    let c = spread(&gw, 6).await;
    assert_eq!(c.get("bad"), Some(&3), "{c:?}");
    let c = spread(&gw, 20).await;
    assert_eq!(c.get("good"), Some(&20), "ejected: {c:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn retries_go_elsewhere_but_never_resend_a_streamed_body() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let (a, b) = (
        TestBackend::start("a").await?,
        TestBackend::start("b").await?,
    );
    a.set_status(503);
    setup(
        &gw,
        &[a.url(), b.url()],
        json!({"loadBalancing": {"policy": "roundRobin"}, "retries": {"maxRetries": 1, "backoff": "1ms"}}),
    )
    .await?;
    // A GET that got 503 from "a" is retried on "b".
    for _ in 0..6 {
        let r = call(&gw, Method::GET, "/").await;
        assert_eq!((r.status, r.body["backend"].as_str()), (200, Some("b")));
    }
    // Retries advance the rotation too, so how many first attempts landed
    // on "a" depends on the order; each of those was answered by "b".
    assert!((3..=6).contains(&a.hit_count()), "a got {}", a.hit_count());

    // A POST with a body that "a" read and answered 503 to is not sent again.
    b.set_status(503);
    let (a0, b0) = (a.hit_count(), b.hit_count());
    for _ in 0..4 {
        let r = gw
            .request(Method::POST, "svc.test", "/")
            .body(vec![7u8; 100_000])
            .send()
            .await?;
        assert_eq!(r.status(), 503);
    }
    assert_eq!(
        a.hit_count() - a0 + b.hit_count() - b0,
        4,
        "one attempt per POST"
    );
    b.set_status(0);

    // A connection failure happens before the body is read: the body goes
    // to the next target whole.
    let dead = dead_url().await;
    setup(
        &gw,
        &[dead, b.url()],
        json!({"loadBalancing": {"policy": "roundRobin"}, "retries": {"maxRetries": 1, "backoff": "1ms"},
               "circuitBreaker": {"enabled": false}}),
    )
    .await?;
    for _ in 0..4 {
        let r = gw
            .request(Method::POST, "svc.test", "/")
            .body(vec![7u8; 100_000])
            .send()
            .await?;
        assert_eq!(r.status(), 200);
        let body: Value = serde_json::from_str(&r.text().await?)?;
        assert_eq!(
            (body["backend"].as_str(), body["bodyLength"].as_u64()),
            (Some("b"), Some(100_000))
        );
    }
    Ok(())
}
