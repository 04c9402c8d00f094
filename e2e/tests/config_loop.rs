//! The whole loop: admin write → control plane → gRPC stream → data planes
//! → real backends, including hot reconfiguration under load, control-plane
//! outages and the fleet view.

#![allow(clippy::unwrap_used)]

use nio_e2e::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

struct Setup {
    _dir: tempfile::TempDir,
    cp: ControlPlane,
    dps: Vec<DataPlane>,
    backends: Vec<TestBackend>,
}

async fn setup(backends: &[&str]) -> anyhow::Result<Setup> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let mut dps = Vec::new();
    for id in ["dp-1", "dp-2"] {
        dps.push(DataPlane::start(&cp, id, &dir.path().join(id)).await?);
    }
    let mut started = Vec::new();
    for name in backends {
        started.push(TestBackend::start(name).await?);
    }
    Ok(Setup {
        _dir: dir,
        cp,
        dps,
        backends: started,
    })
}

/// Test 1: a Backend with two real targets behind a Route, through both
/// data planes: each data plane alternates between the two targets.
#[tokio::test(flavor = "multi_thread")]
async fn two_data_planes_round_robin_over_two_targets() -> anyhow::Result<()> {
    let s = setup(&["red", "blue"]).await?;
    let admin = s.cp.admin();
    let urls: Vec<String> = s.backends.iter().map(TestBackend::url).collect();
    admin.create(backend("colors", &urls)).await?;
    let written = admin
        .create(route("colors", &["shop.test"], &["/"], "colors"))
        .await?;
    let revision: u64 = written["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()?;
    admin
        .wait_applied(&["dp-1", "dp-2"], revision, DEADLINE)
        .await?;

    let client = reqwest::Client::new();
    for dp in &s.dps {
        let mut seen = Vec::new();
        for _ in 0..6 {
            let r = client
                .get(dp.url("/hello"))
                .header("host", "shop.test")
                .send()
                .await?;
            assert_eq!(r.status(), 200);
            assert!(r.headers().contains_key("x-request-id"));
            seen.push(served_by(&r.text().await?));
        }
        // Strict alternation: round robin, whatever the starting point.
        for pair in seen.windows(2) {
            assert_ne!(pair[0], pair[1], "{} served {seen:?}", dp.id);
        }
        assert!(seen.contains(&"red".to_string()) && seen.contains(&"blue".to_string()));
    }
    // The backend saw the forwarding headers.
    let r = client
        .get(s.dps[0].url("/echo?q=1"))
        .header("host", "shop.test")
        .header("x-request-id", "trace-42")
        .send()
        .await?;
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["path"], "/echo?q=1");
    assert_eq!(body["headers"]["x-forwarded-host"], "shop.test");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    assert_eq!(body["headers"]["x-request-id"], "trace-42");

    // No route for another host: 404 JSON with a request id.
    let r = client
        .get(s.dps[0].url("/"))
        .header("host", "other.test")
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await?;
    assert!(body["requestId"].as_str().is_some_and(|s| !s.is_empty()));
    Ok(())
}

/// Test 2: replacing a Route's backend ten times under continuous traffic
/// drops nothing, and every change reaches every data plane promptly.
#[tokio::test(flavor = "multi_thread")]
async fn hot_reconfiguration_under_load_drops_nothing() -> anyhow::Result<()> {
    let s = setup(&["v0", "v1"]).await?;
    let admin = s.cp.admin();
    for b in &s.backends {
        admin.create(backend(&b.name, &[b.url()])).await?;
    }
    let w = admin.create(route("live", &[], &["/"], "v0")).await?;
    let rev: u64 = w["metadata"]["resourceVersion"].as_str().unwrap().parse()?;
    admin.wait_applied(&["dp-1", "dp-2"], rev, DEADLINE).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut load = Vec::new();
    for dp in &s.dps {
        // Two clients per data plane, sending without pause.
        for _ in 0..2 {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let url = dp.url("/load");
            load.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failed
                            .lock()
                            .unwrap()
                            .push(format!("status {}", r.status())),
                        Err(e) => failed.lock().unwrap().push(e.to_string()),
                    }
                }
            }));
        }
    }

    let client = reqwest::Client::new();
    let mut to_ack = Vec::new();
    for i in 1..=10 {
        let target = format!("v{}", i % 2);
        let written_at = Instant::now();
        let w = admin.replace(route("live", &[], &["/"], &target)).await?;
        let rev: u64 = w["metadata"]["resourceVersion"].as_str().unwrap().parse()?;
        admin.wait_applied(&["dp-1", "dp-2"], rev, DEADLINE).await?;
        to_ack.push(written_at.elapsed());
        for dp in &s.dps {
            let (status, body) = dp.get(&client, "/check").await?;
            assert_eq!(status, 200);
            assert_eq!(served_by(&body), target, "{} after write {i}", dp.id);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await?;
    }
    let failed = failed.lock().unwrap();
    let served = ok.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} failed requests: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(served > 100, "only {served} requests were sent");
    to_ack.sort();
    println!(
        "hot reconfiguration: {served} requests, 0 failed; write 2xx → both data planes ACK: median {:?}, max {:?}",
        percentile(&to_ack, 0.5),
        to_ack.last().unwrap()
    );
    Ok(())
}

use std::sync::Mutex;

/// Test 3: the fleet keeps serving without its control plane, a restarted
/// data plane serves from its cache, and everyone reconnects by themselves.
#[tokio::test(flavor = "multi_thread")]
async fn data_planes_survive_control_plane_outage() -> anyhow::Result<()> {
    let mut s = setup(&["steady"]).await?;
    let admin = s.cp.admin();
    admin
        .create(backend("steady", &[s.backends[0].url()]))
        .await?;
    let w = admin.create(route("steady", &[], &["/"], "steady")).await?;
    let rev: u64 = w["metadata"]["resourceVersion"].as_str().unwrap().parse()?;
    admin.wait_applied(&["dp-1", "dp-2"], rev, DEADLINE).await?;

    s.cp.proc.kill9();
    let client = reqwest::Client::new();
    for dp in &s.dps {
        for _ in 0..10 {
            let (status, body) = dp.get(&client, "/still-up").await?;
            assert_eq!((status, served_by(&body).as_str()), (200, "steady"));
        }
    }

    // Restart dp-1 with the control plane still down: it serves its cache
    // (written in the background at most every 500 ms: wait for it).
    let cache = s.dps[0].cache_dir.clone();
    wait_for("the cache to hold the revision", DEADLINE, || {
        let cached = s.dps[0].cached_revision();
        async move { Ok((cached >= rev).then_some(())) }
    })
    .await?;
    s.dps[0].proc.kill9();
    let cp_url = s.cp.grpc_url();
    s.dps[0] = DataPlane::start_with(&cp_url, &s.cp.join_token_file(), "dp-1", &cache, &[]).await?;
    s.dps[0].ready().await?;
    let (status, body) = s.dps[0].get(&client, "/from-cache").await?;
    assert_eq!((status, served_by(&body).as_str()), (200, "steady"));

    // The control plane comes back where the data planes look for it.
    s.cp = ControlPlane::start_on(&s.cp.data_dir.clone(), s.cp.admin, s.cp.grpc).await?;
    let admin = s.cp.admin();
    let extra = TestBackend::start("fresh").await?;
    admin.create(backend("fresh", &[extra.url()])).await?;
    let w = admin
        .create(route("fresh", &[], &["/fresh"], "fresh"))
        .await?;
    let rev: u64 = w["metadata"]["resourceVersion"].as_str().unwrap().parse()?;
    admin
        .wait_applied(&["dp-1", "dp-2"], rev, Duration::from_secs(40))
        .await?;
    for dp in &s.dps {
        let (status, body) = dp.get(&client, "/fresh/x").await?;
        assert_eq!(
            (status, served_by(&body).as_str()),
            (200, "fresh"),
            "{}",
            dp.id
        );
    }
    Ok(())
}

/// Test 4: the fleet view shows both data planes on the latest revision,
/// then a killed one as disconnected.
#[tokio::test(flavor = "multi_thread")]
async fn fleet_view_tracks_revisions_and_disconnects() -> anyhow::Result<()> {
    let mut s = setup(&["b"]).await?;
    let admin = s.cp.admin();
    admin.create(backend("b", &[s.backends[0].url()])).await?;
    admin.create(route("r", &[], &["/"], "b")).await?;
    let latest = admin.revision().await?;
    admin
        .wait_applied(&["dp-1", "dp-2"], latest, DEADLINE)
        .await?;
    let planes = admin.dataplanes().await?;
    for id in ["dp-1", "dp-2"] {
        let p = &planes[id];
        assert_eq!(p["connected"], true);
        assert_eq!(p["appliedRevision"].as_u64(), Some(latest));
        assert_eq!(p["appliedHash"].as_str().map(str::len), Some(64));
        assert_eq!(p["version"], env!("CARGO_PKG_VERSION"));
        assert!(p["connectedSince"].is_string() && p["lastSeen"].is_string());
        assert!(p["lastNack"].is_null());
    }
    s.dps[1].proc.kill9();
    wait_for("dp-2 shown disconnected", DEADLINE, || async {
        let planes = admin.dataplanes().await?;
        Ok(
            (planes["dp-2"]["connected"] == false && planes["dp-1"]["connected"] == true)
                .then_some(()),
        )
    })
    .await?;
    let planes = admin.dataplanes().await?;
    assert!(planes["dp-2"]["disconnectedAt"].is_string());
    assert_eq!(planes["dp-2"]["appliedRevision"].as_u64(), Some(latest));
    Ok(())
}

/// A data plane with a wrong join token is refused and never configured.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_join_token_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, "0123456789abcdef-not-the-token")?;
    let ca = cp.ca_file();
    let dp = DataPlane::start_with(
        &cp.grpc_url(),
        &bad,
        "intruder",
        &dir.path().join("dp"),
        &["--control-plane-ca", ca.to_str().unwrap_or_default()],
    )
    .await?;
    wait_for("refusal logged", DEADLINE, || async {
        Ok(dp
            .proc
            .logged("control plane refused this data plane")
            .then_some(()))
    })
    .await?;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("http://{}/readyz", dp.ops))
        .send()
        .await?;
    assert_eq!(r.status(), 503);
    assert!(cp.admin().dataplanes().await?.is_empty());
    Ok(())
}
