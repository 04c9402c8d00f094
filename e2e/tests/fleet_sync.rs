//! Fleet sync: edge selectors, deltas on reconnect, version skew.
#![allow(clippy::unwrap_used)]

use nio_e2e::sim::{self, SimOptions};
use nio_e2e::*;
use serde_json::json;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(20);

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

/// `/metrics` of a data plane (ops address) or a control plane (admin address).
async fn metrics(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    Ok(reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?)
}

/// Test 1: a route selected for `zone=eu` is served only by the eu data
/// plane; relabelling the data planes moves it.
#[tokio::test(flavor = "multi_thread")]
async fn edge_selectors_place_routes_by_data_plane_labels() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let backend_app = TestBackend::start("app").await?;
    let admin = cp.admin();
    admin.create(backend("app", &[backend_app.url()])).await?;
    admin
        .create(route("everywhere", &[], &["/all"], "app"))
        .await?;
    let mut eu_only = route("eu-only", &[], &["/eu"], "app");
    eu_only["spec"]["dataPlaneSelector"] = json!({"matchLabels": {"zone": "eu"}});
    admin.create(eu_only).await?;
    let revision = admin.revision().await?;

    let start = |id: &'static str, zone: &'static str| {
        let (url, token, cache) = (cp.grpc_url(), cp.join_token_file(), dir.path().join(id));
        async move {
            DataPlane::start_with(
                &url,
                &token,
                id,
                &cache,
                &["--labels", &format!("zone={zone}")],
            )
            .await
        }
    };
    let mut a = start("dp-a", "eu").await?;
    let mut b = start("dp-b", "us").await?;
    admin
        .wait_applied(&["dp-a", "dp-b"], revision, DEADLINE)
        .await?;
    let http = reqwest::Client::new();
    assert_eq!(a.get(&http, "/eu").await?.0, 200);
    assert_eq!(b.get(&http, "/eu").await?.0, 404);
    for dp in [&a, &b] {
        assert_eq!(dp.get(&http, "/all").await?.0, 200);
    }
    let planes = admin.dataplanes().await?;
    assert_eq!(planes["dp-a"]["labels"]["zone"], "eu");
    assert_ne!(planes["dp-a"]["appliedHash"], planes["dp-b"]["appliedHash"]);

    // Relabel: a moves to us, b to eu (restarted with new labels, same caches).
    a.proc.kill9();
    b.proc.kill9();
    a = start("dp-a", "us").await?;
    b = start("dp-b", "eu").await?;
    wait_for("the route to move", DEADLINE, || async {
        let moved = b.get(&http, "/eu").await?.0 == 200 && a.get(&http, "/eu").await?.0 == 404;
        Ok(moved.then_some(()))
    })
    .await?;

    // Changing the route's selector moves it too, without touching the planes.
    let (s, _) = admin
        .send(
            reqwest::Method::PATCH,
            "/apis/nio.dev/v1/routes/eu-only",
            Some(json!({"spec": {"dataPlaneSelector": {"matchLabels": {"zone": "us"}}}})),
        )
        .await?;
    assert_eq!(s, 200);
    wait_for("the selector change to apply", DEADLINE, || async {
        let moved = a.get(&http, "/eu").await?.0 == 200 && b.get(&http, "/eu").await?.0 == 404;
        Ok(moved.then_some(()))
    })
    .await?;
    Ok(())
}

/// Test 2: a data plane that reconnects after 100 writes receives a delta,
/// not a full snapshot, and ends with the same hash as a fresh data plane.
#[tokio::test(flavor = "multi_thread")]
async fn reconnect_after_100_writes_gets_a_delta() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let app = TestBackend::start("app").await?;
    let admin = cp.admin();
    admin.create(backend("app", &[app.url()])).await?;
    for i in 0..300 {
        admin
            .create(route(&format!("r{i}"), &[], &[&format!("/r{i}")], "app"))
            .await?;
    }
    let cache = dir.path().join("dp");
    let mut dp = DataPlane::start(&cp, "dp-1", &cache).await?;
    admin
        .wait_applied(&["dp-1"], admin.revision().await?, DEADLINE)
        .await?;
    dp.proc.sigterm()?;
    dp.proc.wait_exit(DEADLINE).await?;

    // 100 writes while it is away: 80 changes, 10 deletions, 10 additions.
    for i in 0..80 {
        admin
            .replace(route(
                &format!("r{}", i % 40),
                &[],
                &[&format!("/r{}/v{i}", i % 40)],
                "app",
            ))
            .await?;
    }
    for i in 40..50 {
        let (s, _) = admin
            .send(
                reqwest::Method::DELETE,
                &format!("/apis/nio.dev/v1/routes/r{i}"),
                None,
            )
            .await?;
        assert_eq!(s, 200);
    }
    for i in 300..310 {
        admin
            .create(route(&format!("r{i}"), &[], &[&format!("/r{i}")], "app"))
            .await?;
    }
    let revision = admin.revision().await?;
    let cp_before = metrics(cp.admin).await?;

    let dp = DataPlane::start(&cp, "dp-1", &cache).await?;
    admin.wait_applied(&["dp-1"], revision, DEADLINE).await?;
    let text = metrics(dp.ops).await?;
    assert_eq!(metric(&text, "nio_sync_delta_updates_total"), 1, "{text}");
    assert_eq!(metric(&text, "nio_sync_full_updates_total"), 0, "{text}");
    let cp_after = metrics(cp.admin).await?;
    assert_eq!(
        metric(&cp_after, "nio_sync_pushes_total{type=\"delta\"}"),
        metric(&cp_before, "nio_sync_pushes_total{type=\"delta\"}") + 1
    );
    let http = reqwest::Client::new();
    assert_eq!(dp.get(&http, "/r305").await?.0, 200);
    assert_eq!(dp.get(&http, "/r45").await?.0, 404);
    assert_eq!(dp.get(&http, "/r3/v43").await?.0, 200);
    assert_eq!(dp.get(&http, "/r3/v3").await?.0, 404);

    // A fresh data plane (full snapshot) ends with the same hash.
    let fresh = DataPlane::start(&cp, "dp-fresh", &dir.path().join("fresh")).await?;
    admin
        .wait_applied(&["dp-fresh"], revision, DEADLINE)
        .await?;
    assert_eq!(
        metric(&metrics(fresh.ops).await?, "nio_sync_full_updates_total"),
        1
    );
    let planes = admin.dataplanes().await?;
    assert_eq!(
        planes["dp-1"]["appliedHash"],
        planes["dp-fresh"]["appliedHash"]
    );
    Ok(())
}

/// A data plane whose held state diverged (it claims resources it does not
/// have right) is resynced with a full snapshot and converges.
#[tokio::test(flavor = "multi_thread")]
async fn divergent_inventory_is_resynced() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start_plaintext(&dir.path().join("cp")).await?;
    let admin = cp.admin();
    admin
        .create(backend("app", &["http://127.0.0.1:9".into()]))
        .await?;
    admin.create(route("r", &[], &["/"], "app")).await?;
    let token = cp.join_token()?;
    let opts = SimOptions {
        verify: true,
        ..SimOptions::new("sim-1", token)
    };
    let (holding, mut rx, first_stream) = sim::start_one(&cp.grpc_url(), opts.clone()).await?;
    let first = rx.recv().await.unwrap();
    assert_eq!(first.kind, "full");
    // Let it reach the current revision, then end that stream.
    let revision = admin.revision().await?;
    let mut latest = first.revision;
    while latest < revision {
        latest = tokio::time::timeout(DEADLINE, rx.recv())
            .await?
            .unwrap()
            .revision;
    }
    first_stream.abort();
    let _ = first_stream.await;
    let channel = sim::connect(&cp.grpc_url()).await?;
    let (tx, mut rx2) = tokio::sync::mpsc::unbounded_channel();
    // The held inventory claims a resource version that does not exist.
    holding.lock().unwrap().set = Some(nio_proto::snapshot::ResourceSet::from_resources([
        nio_proto::v1::Resource {
            kind: "Route".into(),
            name: "r".into(),
            resource_version: 2,
            json: bytes::Bytes::from_static(b"{\"tampered\": true}"),
        },
    ]));
    holding.lock().unwrap().revision = 2;
    holding.lock().unwrap().hash = "0".repeat(64);
    tokio::spawn(sim::run(
        channel,
        SimOptions {
            id: "sim-1".into(),
            ..opts
        },
        holding.clone(),
        tx,
    ));
    // First a delta that cannot reproduce the hash (NACK resync), then a full snapshot.
    let a = rx2.recv().await.unwrap();
    assert_eq!(a.kind, "delta");
    let b = tokio::time::timeout(DEADLINE, rx2.recv()).await?.unwrap();
    assert_eq!(b.kind, "full");
    let planes = admin.dataplanes().await?;
    assert!(planes["sim-1"]["lastNack"]["reason"]
        .as_str()
        .unwrap()
        .contains("hash mismatch"));
    Ok(())
}

/// Version skew: a data plane of an incompatible version is refused with a
/// clear status and shown as refused in the fleet list.
#[tokio::test(flavor = "multi_thread")]
async fn incompatible_versions_are_refused_and_listed() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start_plaintext(&dir.path().join("cp")).await?;
    let token = cp.join_token()?;
    let opts = SimOptions {
        version: "9.0.0".into(),
        ..SimOptions::new("old-plane", token)
    };
    let (_, _, task) = sim::start_one(&cp.grpc_url(), opts).await?;
    let status = task.await?.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("data plane version 9.0.0 cannot be served"),
        "{}",
        status.message()
    );
    let planes = cp.admin().dataplanes().await?;
    assert_eq!(planes["old-plane"]["status"], "refused");
    assert!(planes["old-plane"]["lastError"]
        .as_str()
        .unwrap()
        .contains("9.0.0"));
    Ok(())
}

/// A data plane that refuses a revision is not sent it again: the next
/// message it gets is the next revision.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_revision_is_not_resent() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start_plaintext(&dir.path().join("cp")).await?;
    let admin = cp.admin();
    admin
        .create(backend("app", &["http://127.0.0.1:9".into()]))
        .await?;
    let token = cp.join_token()?;
    let opts = SimOptions {
        refuse: true,
        ..SimOptions::new("stubborn", token)
    };
    let (_, mut rx, _task) = sim::start_one(&cp.grpc_url(), opts).await?;
    let first = tokio::time::timeout(DEADLINE, rx.recv()).await?.unwrap();
    wait_for("the NACK to be recorded", DEADLINE, || async {
        let planes = admin.dataplanes().await?;
        Ok(planes
            .get("stubborn")
            .filter(|p| p["lastNack"]["revision"].as_u64() == Some(first.revision))
            .map(|_| ()))
    })
    .await?;
    // Nothing more arrives while nothing changes.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "the refused revision was sent again"
    );
    let w = admin.create(route("r", &[], &["/"], "app")).await?;
    let next: u64 = w["metadata"]["resourceVersion"].as_str().unwrap().parse()?;
    let second = tokio::time::timeout(DEADLINE, rx.recv()).await?.unwrap();
    assert_eq!(
        (second.kind, second.revision),
        ("full", next),
        "after a refusal the next revision goes out whole"
    );
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv())
        .await
        .is_err());
    Ok(())
}
