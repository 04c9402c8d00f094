//! Overload through a real data plane: slow request heads (slowloris) are
//! answered 408 and closed without slowing other clients, requests over
//! `--max-requests` get 503 with `Retry-After`, connections over
//! `--max-connections` are closed at accept. Each is counted in /metrics.

#![allow(clippy::unwrap_used)]

use nio_e2e::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn gateway(extra: &[&str]) -> (Gateway, TestBackend) {
    Gateway::with_echo(extra).await.unwrap()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// How the slowloris connections ended.
#[derive(Default)]
struct Tally {
    started: AtomicUsize,
    closed: AtomicUsize,
    got_408: AtomicUsize,
}

/// 300 connections each send a request head one byte per second. With a
/// 5 s header read timeout each gets a 408 and is closed; meanwhile 200
/// normal requests are served, and their p99 stays under 1 s.
///
/// The bound: an unloaded request here takes about a millisecond; the
/// attack costs the data plane one wake-up per byte (300/s), so any p99
/// near a second would mean the attackers are starving the accept loop or
/// the runtime. 1 s is deliberately generous so a loaded 2-core CI machine
/// does not flake; the measured figure is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_does_not_starve_other_clients_and_is_cut_by_the_header_timeout() {
    const ATTACKERS: usize = 300;
    let (gw, svc) = gateway(&["--header-read-timeout", "5"]).await;
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for _ in 0..ATTACKERS {
        let tally = tally.clone();
        let addr = gw.dp.http;
        tasks.push(tokio::spawn(async move {
            let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
                return;
            };
            let head = b"GET / HTTP/1.1\r\nHost: svc.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            let mut got = Vec::new();
            for (i, b) in head.iter().enumerate() {
                if conn.write_all(&[*b]).await.is_err() {
                    break;
                }
                if i == 0 {
                    tally.started.fetch_add(1, Ordering::Relaxed);
                }
                // The attack's pace (one byte a second), not a wait for a
                // condition: the read ends it early when the server closes.
                let mut buf = [0u8; 1024];
                match tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await {
                    Err(_) => continue,
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(n)) => {
                        got.extend_from_slice(&buf[..n]);
                        // Read to the end: the server closes after its 408.
                        let _ = tokio::time::timeout(
                            Duration::from_secs(5),
                            conn.read_to_end(&mut got),
                        )
                        .await;
                        break;
                    }
                }
            }
            if got.starts_with(b"HTTP/1.1 408") {
                tally.got_408.fetch_add(1, Ordering::Relaxed);
            }
            tally.closed.fetch_add(1, Ordering::Relaxed);
        }));
    }
    wait_for("every attacker to start", Duration::from_secs(20), || {
        let n = tally.started.load(Ordering::Relaxed);
        async move { Ok((n == ATTACKERS).then_some(())) }
    })
    .await
    .unwrap();

    // Normal clients during the attack: a new connection per request, so
    // the accept loop is exercised too.
    let mut latencies = Vec::new();
    let open_before = ATTACKERS - tally.closed.load(Ordering::Relaxed);
    for i in 0..200 {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let t = Instant::now();
        let r = client
            .get(gw.dp.url(&format!("/n/{i}")))
            .header("host", "svc.test")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        latencies.push(t.elapsed());
    }
    let open_after = ATTACKERS - tally.closed.load(Ordering::Relaxed);
    latencies.sort();
    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    eprintln!(
        "slowloris: {ATTACKERS} attackers ({open_before} open at the start of the measurement, {open_after} at the end); normal requests p50 {p50:?}, p99 {p99:?}"
    );
    assert!(
        open_after > 0,
        "the attack was over before the measurement ended"
    );
    assert!(
        p99 < Duration::from_secs(1),
        "p99 {p99:?} during the attack"
    );

    // Every attacker is answered 408 and closed by the header timeout.
    wait_for(
        "every slow connection to be closed",
        Duration::from_secs(30),
        || {
            let n = tally.closed.load(Ordering::Relaxed);
            async move { Ok((n == ATTACKERS).then_some(())) }
        },
    )
    .await
    .unwrap();
    assert_eq!(tally.got_408.load(Ordering::Relaxed), ATTACKERS);
    assert_eq!(svc.hit_count(), 200, "a slow head reached the backend");
    let m = gw.metrics().await.unwrap();
    assert_eq!(
        metric(&m, "nio_header_timeouts_total"),
        ATTACKERS as u64,
        "{m}"
    );
    for t in tasks {
        t.await.unwrap();
    }
}

/// Over `--max-requests` in flight: 503 with `Retry-After`, counted.
#[tokio::test]
async fn requests_over_the_limit_get_503_with_retry_after() {
    let (gw, svc) = gateway(&["--max-requests", "2"]).await;
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let req = gw.request(reqwest::Method::GET, "svc.test", "/slow/3000");
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    wait_for(
        "two slow requests at the backend",
        Duration::from_secs(10),
        || {
            let n = svc.hit_count();
            async move { Ok((n == 2).then_some(())) }
        },
    )
    .await
    .unwrap();
    let r = gw
        .request(reqwest::Method::GET, "svc.test", "/")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.headers()["x-nio-error"], "overloaded");
    for s in slow {
        assert_eq!(s.await.unwrap().unwrap(), 200);
    }
    // The slots are free again.
    let (status, _) = gw.get("svc.test", "/").await.unwrap();
    assert_eq!(status, 200);
    let m = gw.metrics().await.unwrap();
    assert_eq!(metric(&m, "nio_overloaded_requests_total"), 1, "{m}");
}

/// Over `--max-connections`: a new connection is closed at accept, and is
/// accepted again once one closes.
#[tokio::test]
async fn connections_over_the_limit_are_closed() {
    let (gw, _svc) = gateway(&["--max-connections", "2"]).await;
    let request = b"GET / HTTP/1.1\r\nHost: svc.test\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(gw.dp.http).await.unwrap();
        c.write_all(request).await.unwrap();
        let mut buf = [0u8; 4096];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    let mut third = tokio::net::TcpStream::connect(gw.dp.http).await.unwrap();
    let _ = third.write_all(request).await;
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection was served");
    let m = gw.metrics().await.unwrap();
    assert_eq!(metric(&m, "nio_refused_connections_total"), 1, "{m}");

    drop(held.pop());
    wait_for(
        "a connection slot to be free",
        Duration::from_secs(10),
        || async {
            let (status, _) = gw.get("svc.test", "/").await?;
            Ok((status == 200).then_some(()))
        },
    )
    .await
    .unwrap();
}

/// Above 80 % of a limit, the data plane stops keeping connections alive
/// (before it has to refuse anything), and counts it.
#[tokio::test]
async fn near_the_limit_keep_alive_is_disabled_first() {
    let (gw, _svc) = gateway(&["--max-connections", "10"]).await;
    let ask = || async {
        let mut c = tokio::net::TcpStream::connect(gw.dp.http).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: svc.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 8192];
        let n = c.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase()
    };
    let calm = ask().await;
    assert!(
        calm.starts_with("http/1.1 200") && !calm.contains("connection: close"),
        "{calm}"
    );
    // Eight idle connections: 9 of 10 in use while the next request runs.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(tokio::net::TcpStream::connect(gw.dp.http).await.unwrap());
    }
    wait_for(
        "keep-alive to be turned off",
        Duration::from_secs(10),
        || async {
            let answer = ask().await;
            assert!(answer.starts_with("http/1.1 200"), "still served: {answer}");
            Ok(answer.contains("connection: close").then_some(()))
        },
    )
    .await
    .unwrap();
    let m = gw.metrics().await.unwrap();
    assert!(metric(&m, "nio_keepalive_shed_total") >= 1, "{m}");
    drop(held);
}

/// Over `--memory-limit-mb`, requests are shed with 503 (the data plane
/// refuses work rather than growing until it is killed). A 1 MiB limit is
/// below any real process's footprint, so the watermark is crossed at once.
#[tokio::test]
async fn over_the_memory_watermark_requests_are_shed() {
    let (gw, _svc) = gateway(&["--memory-limit-mb", "1"]).await;
    wait_for("requests to be shed", Duration::from_secs(10), || async {
        let r = gw
            .request(reqwest::Method::GET, "svc.test", "/")
            .send()
            .await?;
        let shed = r.status() == 503
            && r.headers().get("retry-after").is_some()
            && r.headers()["x-nio-error"] == "overloaded";
        Ok(shed.then_some(()))
    })
    .await
    .unwrap();
    let m = gw.metrics().await.unwrap();
    assert!(metric(&m, "nio_overloaded_requests_total") >= 1, "{m}");
}
