//! Process lifecycle of data planes: scaling out and in under load without a
//! failed request, and a graceful drain that lets a slow request finish.
#![allow(clippy::unwrap_used)]

use nio_e2e::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

async fn gateway(
    backend_name: &str,
) -> anyhow::Result<(tempfile::TempDir, ControlPlane, TestBackend, u64)> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let backend = TestBackend::start(backend_name).await?;
    let admin = cp.admin();
    admin
        .create(nio_e2e::backend("app", &[backend.url()]))
        .await?;
    admin.create(route("app", &[], &["/"], "app")).await?;
    let revision = admin.revision().await?;
    Ok((dir, cp, backend, revision))
}

/// Like a load balancer's health check: which data planes answer /readyz 200.
fn health_checker(
    known: Arc<RwLock<Vec<(SocketAddr, SocketAddr)>>>,
    ready: Arc<RwLock<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        while !stop.load(Ordering::Relaxed) {
            // All data planes at once, so one slow answer delays no verdict.
            let planes = known.read().unwrap().clone();
            let mut checks = tokio::task::JoinSet::new();
            for (http, ops) in planes {
                let req = client.get(format!("http://{ops}/readyz")).send();
                checks.spawn(
                    async move { req.await.is_ok_and(|r| r.status() == 200).then_some(http) },
                );
            }
            let mut up = Vec::new();
            while let Some(result) = checks.join_next().await {
                up.extend(result.ok().flatten());
            }
            *ready.write().unwrap() = up;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}

/// Test 1: one data plane, four more join under load, three of them are
/// stopped with SIGTERM: the client sees no failure, each stopped data
/// plane exits 0 within its drain deadline, and the fleet shows them as left.
#[tokio::test(flavor = "multi_thread")]
async fn scale_out_and_in_under_load_drops_nothing() -> anyhow::Result<()> {
    let (dir, cp, _backend, revision) = gateway("app").await?;
    let admin = cp.admin();
    // The drain delay must exceed the health checker's reaction time.
    let drain = ["--drain-delay", "2", "--drain-timeout", "5"];
    let (cp_url, token) = (cp.grpc_url(), cp.join_token_file());
    let start = |id: String| {
        let (cp_url, token, cache) = (cp_url.clone(), token.clone(), dir.path().join(&id));
        async move { DataPlane::start_with(&cp_url, &token, &id, &cache, &drain).await }
    };
    let mut dps = vec![start("dp-1".into()).await?];
    dps[0].ready().await?;

    let known = Arc::new(RwLock::new(vec![(dps[0].http, dps[0].ops)]));
    let ready: Arc<RwLock<Vec<SocketAddr>>> = Arc::new(RwLock::new(vec![dps[0].http]));
    let stop = Arc::new(AtomicBool::new(false));
    let checker = health_checker(known.clone(), ready.clone(), stop.clone());
    let ok = Arc::new(AtomicU64::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..4usize {
        let (ready, stop, ok, failures) =
            (ready.clone(), stop.clone(), ok.clone(), failures.clone());
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = c;
            while !stop.load(Ordering::Relaxed) {
                let target = {
                    let r = ready.read().unwrap();
                    if r.is_empty() {
                        None
                    } else {
                        n += 1;
                        Some(r[n % r.len()])
                    }
                };
                let Some(target) = target else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let result = match client.get(format!("http://{target}/work")).send().await {
                    Ok(r) if r.status() == 200 => {
                        r.text().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{target}: {e}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Scale out: each new data plane serves the current configuration
    // before it says it is ready.
    let http = reqwest::Client::new();
    for i in 2..=5 {
        let dp = start(format!("dp-{i}")).await?;
        dp.ready().await?;
        assert_eq!(dp.readiness(&http).await?, Some(revision));
        let (status, served) = dp.get(&http, "/first").await?;
        assert_eq!((status, served_by(&served).as_str()), (200, "app"));
        known.write().unwrap().push((dp.http, dp.ops));
        dps.push(dp);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;

    // Scale in: SIGTERM three of them at once.
    let started = Instant::now();
    for dp in &dps[1..4] {
        dp.proc.sigterm()?;
    }
    for dp in &mut dps[1..4] {
        let status = dp.proc.wait_exit(Duration::from_secs(12)).await?;
        assert!(status.success(), "{} exited with {status}", dp.id);
    }
    let drained_in = started.elapsed();
    known
        .write()
        .unwrap()
        .retain(|(h, _)| *h == dps[0].http || *h == dps[4].http);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    checker.await?;

    let failures = failures.lock().unwrap().clone();
    let served = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(served > 200, "only {served} requests");
    let planes = admin.dataplanes().await?;
    for id in ["dp-2", "dp-3", "dp-4"] {
        assert_eq!(planes[id]["status"], "left", "{id}: {}", planes[id]);
    }
    for id in ["dp-1", "dp-5"] {
        assert_eq!(planes[id]["status"], "connected", "{id}");
    }
    println!("scale out 1→5 and in 5→2: {served} requests, 0 failed; three data planes drained and exited 0 in {drained_in:?}");
    Ok(())
}

/// Test 2: requests that take 3 s (HTTP/1.1 and HTTP/2) are in flight when its data plane gets
/// SIGTERM: the data plane stops taking new connections and reports not
/// ready at once, the request completes with 200 (and `Connection: close`),
/// then the process exits 0 and the fleet shows it as left.
#[tokio::test(flavor = "multi_thread")]
async fn slow_request_in_flight_completes_on_sigterm() -> anyhow::Result<()> {
    let (dir, cp, backend, revision) = gateway("slow").await?;
    let mut dp = DataPlane::start_with(
        &cp.grpc_url(),
        &cp.join_token_file(),
        "dp-slow",
        &dir.path().join("dp"),
        &["--drain-timeout", "10"],
    )
    .await?;
    dp.ready().await?;
    cp.admin()
        .wait_applied(&["dp-slow"], revision, DEADLINE)
        .await?;

    // One HTTP/1.1 and one HTTP/2 (h2c) request, each taking 3 s.
    let slow = |h2: bool| {
        let url = dp.url("/slow/3000");
        tokio::spawn(async move {
            let mut client = reqwest::Client::builder();
            if h2 {
                client = client.http2_prior_knowledge();
            }
            let r = client.build()?.get(url).send().await?;
            let close = r
                .headers()
                .get("connection")
                .map(|v| v.to_str().unwrap_or("").to_string());
            let status = r.status().as_u16();
            anyhow::Ok((status, close, r.text().await?))
        })
    };
    let in_flight = slow(false);
    let in_flight_h2 = slow(true);
    let hits = backend.hits.clone();
    wait_for("the slow requests to reach the backend", DEADLINE, || {
        let n = hits.load(Ordering::Relaxed);
        async move { Ok((n == 2).then_some(())) }
    })
    .await?;

    let signalled = Instant::now();
    dp.proc.sigterm()?;
    let http = reqwest::Client::new();
    let ops = dp.ops;
    wait_for("readyz to turn 503", DEADLINE, || {
        let req = http.get(format!("http://{ops}/readyz")).send();
        async move { Ok(req.await.ok().filter(|r| r.status() == 503).map(|_| ())) }
    })
    .await?;
    let proxy = dp.http;
    wait_for("the proxy to stop accepting", DEADLINE, || async move {
        Ok(tokio::net::TcpStream::connect(proxy)
            .await
            .is_err()
            .then_some(()))
    })
    .await?;
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before its 3 s"
    );

    let (status, close, body) = in_flight.await??;
    assert_eq!(status, 200);
    assert_eq!(served_by(&body), "slow");
    assert_eq!(close.as_deref(), Some("close"));
    let (status, _, body) = in_flight_h2.await??;
    assert_eq!((status, served_by(&body).as_str()), (200, "slow"));
    let exit = dp.proc.wait_exit(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exited with {exit}");
    assert!(signalled.elapsed() >= Duration::from_millis(2500));
    let planes = cp.admin().dataplanes().await?;
    assert_eq!(planes["dp-slow"]["status"], "left");
    Ok(())
}

/// The control plane stops cleanly on SIGTERM: it closes data-plane streams
/// with a status that tells them to come back later, exits 0, and keeps
/// every acknowledged write.
#[tokio::test(flavor = "multi_thread")]
async fn control_plane_sigterm_closes_streams_and_exits_0() -> anyhow::Result<()> {
    let (dir, mut cp, _backend, revision) = gateway("app").await?;
    let dp = DataPlane::start(&cp, "dp-1", &dir.path().join("dp")).await?;
    cp.admin()
        .wait_applied(&["dp-1"], revision, DEADLINE)
        .await?;
    cp.proc.sigterm()?;
    let exit = cp.proc.wait_exit(Duration::from_secs(10)).await?;
    assert!(exit.success(), "control plane exited with {exit}");
    wait_for("the data plane to see the shutdown", DEADLINE, || async {
        Ok(dp
            .proc
            .logged("control plane shutting down; reconnect later")
            .then_some(()))
    })
    .await?;
    // Still serving without it; the restarted control plane has every write.
    let (status, _) = dp.get(&reqwest::Client::new(), "/x").await?;
    assert_eq!(status, 200);
    let cp = ControlPlane::start_on(&cp.data_dir.clone(), cp.admin, cp.grpc).await?;
    assert_eq!(cp.admin().revision().await?, revision);
    cp.admin()
        .wait_applied(&["dp-1"], revision, Duration::from_secs(30))
        .await?;
    Ok(())
}
