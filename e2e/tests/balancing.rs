//! Load balancing through a real data plane, one test per policy: the
//! share each target gets (weights within a stated tolerance), least-loaded
//! policies avoiding a busy target, consistent hashing that keeps keys in
//! place when a target leaves, backups used only when every primary is
//! down, and balancer state that survives an unrelated configuration swap.

#![allow(clippy::unwrap_used)]

use nio_e2e::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;

/// A Backend over `backends` with these weights and extra spec fields, and
/// a route `lb.test/` to it.
async fn pool(
    gw: &Gateway,
    backends: &[TestBackend],
    weights: &[u32],
    extra: Value,
) -> anyhow::Result<u64> {
    let targets = backends
        .iter()
        .zip(weights)
        .map(|(b, w)| json!({"url": b.url(), "weight": w}))
        .collect();
    gw.apply(&[
        backend_with("pool", targets, &extra),
        route("lb", &["lb.test"], &["/"], "pool"),
    ])
    .await
}

async fn count(gw: &Gateway, n: usize, header: Option<(&str, String)>) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for _ in 0..n {
        let mut req = gw.request(reqwest::Method::GET, "lb.test", "/");
        if let Some((k, v)) = &header {
            req = req.header(*k, v);
        }
        let body = req.send().await.unwrap().text().await.unwrap();
        *c.entry(served_by(&body)).or_default() += 1;
    }
    c
}

fn share(c: &HashMap<String, usize>, name: &str) -> f64 {
    c.get(name).copied().unwrap_or(0) as f64 / c.values().sum::<usize>() as f64
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_weighted_and_random_shares() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start_all(&["a", "b", "c"]).await?;

    // Weighted round robin (the default) is exact over a cycle: 1:2:5.
    pool(&gw, &b, &[1, 2, 5], json!({})).await?;
    let c = count(&gw, 400, None).await;
    assert_eq!((c["a"], c["b"], c["c"]), (50, 100, 250), "{c:?}");

    // Round robin ignores weights.
    pool(
        &gw,
        &b,
        &[1, 2, 5],
        json!({"loadBalancing": {"policy": "roundRobin"}}),
    )
    .await?;
    let c = count(&gw, 300, None).await;
    assert_eq!((c["a"], c["b"], c["c"]), (100, 100, 100), "{c:?}");

    // Random follows weights: within 7 points of 1/8, 2/8, 5/8 over 800.
    pool(
        &gw,
        &b,
        &[1, 2, 5],
        json!({"loadBalancing": {"policy": "random"}}),
    )
    .await?;
    let c = count(&gw, 800, None).await;
    for (name, want) in [("a", 0.125), ("b", 0.25), ("c", 0.625)] {
        assert!((share(&c, name) - want).abs() < 0.07, "{name}: {c:?}");
    }
    Ok(())
}

/// With one target slow (its requests pile up), least connections and
/// power of two choices send new requests to the idle one; round robin
/// would split them evenly.
#[tokio::test(flavor = "multi_thread")]
async fn least_loaded_policies_avoid_a_busy_target() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start_all(&["busy", "idle"]).await?;
    b[0].set_delay(Duration::from_secs(3));
    for policy in ["leastConnections", "powerOfTwoChoices"] {
        pool(
            &gw,
            &b,
            &[1, 1],
            json!({"loadBalancing": {"policy": policy}}),
        )
        .await?;
        let (busy0, idle0) = (b[0].hit_count(), b[1].hit_count());
        let mut pending = Vec::new();
        for i in 0..20u64 {
            let req = gw.request(reqwest::Method::GET, "lb.test", "/").send();
            pending.push(tokio::spawn(req));
            // Wait until the request reached a target, so the next pick
            // sees it in flight.
            wait_for("request delivered", Duration::from_secs(5), || async {
                let seen = b[0].hit_count() - busy0 + b[1].hit_count() - idle0;
                Ok((seen > i).then_some(()))
            })
            .await?;
        }
        let busy = b[0].hit_count() - busy0;
        assert!(busy <= 2, "{policy}: the busy target got {busy} of 20");
        for p in pending {
            assert_eq!(p.await??.status(), 200);
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hash_keeps_keys_when_a_target_leaves() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start_all(&["a", "b", "c"]).await?;
    let hashed =
        json!({"loadBalancing": {"policy": "consistentHash", "hashOn": {"header": "x-user"}}});
    pool(&gw, &b, &[1, 1, 1], hashed.clone()).await?;
    let mut placed = HashMap::new();
    for k in 0..90 {
        let key = format!("user-{k}");
        let c = count(&gw, 3, Some(("x-user", key.clone()))).await;
        assert_eq!(c.len(), 1, "{key} always lands on one target: {c:?}");
        placed.insert(key, c.into_keys().next().unwrap());
    }
    let per_target = |name: &str| placed.values().filter(|t| *t == name).count();
    for name in ["a", "b", "c"] {
        assert!(
            per_target(name) >= 10,
            "{name} got {} of 90 keys",
            per_target(name)
        );
    }

    // "b" leaves: only its keys move.
    let targets = vec![json!({"url": b[0].url()}), json!({"url": b[2].url()})];
    gw.apply(&[backend_with("pool", targets, &hashed)]).await?;
    for (key, before) in &placed {
        let now = count(&gw, 1, Some(("x-user", key.clone())))
            .await
            .into_keys()
            .next()
            .unwrap();
        if before != "b" {
            assert_eq!(&now, before, "{key} moved though its target stayed");
        } else {
            assert_ne!(now, "b");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn backups_serve_only_when_every_primary_is_down() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start_all(&["p1", "p2", "backup"]).await?;
    let spec = json!({
        "targets": [
            {"url": b[0].url()}, {"url": b[1].url()}, {"url": b[2].url(), "backup": true}
        ],
        "retries": {"maxRetries": 2},
        "circuitBreaker": {"consecutiveFailures": 1, "openFor": "1h"}
    });
    gw.apply(&[
        resource("Backend", "pool", spec),
        route("lb", &["lb.test"], &["/"], "pool"),
    ])
    .await?;
    let c = count(&gw, 20, None).await;
    assert_eq!(
        (c.get("p1"), c.get("p2"), c.get("backup")),
        (Some(&10), Some(&10), None)
    );

    b[0].stop();
    let c = count(&gw, 20, None).await;
    assert_eq!(
        (c.get("p2"), c.get("backup")),
        (Some(&20), None),
        "one primary left: {c:?}"
    );

    b[1].stop();
    let c = count(&gw, 20, None).await;
    assert_eq!(c.get("backup"), Some(&20), "all primaries down: {c:?}");
    Ok(())
}

/// A swap that does not touch the Backend keeps its pool: the round-robin
/// position carries on, and a target the health check took out stays out.
#[tokio::test(flavor = "multi_thread")]
async fn balancer_and_health_state_survive_an_unrelated_swap() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start_all(&["a", "b", "c"]).await?;
    pool(
        &gw,
        &b,
        &[1, 1, 1],
        json!({
            "loadBalancing": {"policy": "roundRobin"},
            "healthCheck": {"path": "/health", "interval": "100ms", "timeout": "100ms",
                             "unhealthyThreshold": 1, "healthyThreshold": 1}
        }),
    )
    .await?;
    let first = served_by(
        &gw.request(reqwest::Method::GET, "lb.test", "/")
            .send()
            .await?
            .text()
            .await?,
    );
    assert_eq!(first, "a");
    gw.apply(&[route("other", &["other.test"], &["/"], "pool")])
        .await?;
    let second = served_by(
        &gw.request(reqwest::Method::GET, "lb.test", "/")
            .send()
            .await?
            .text()
            .await?,
    );
    assert_eq!(
        second, "b",
        "the position in the rotation survived the swap"
    );

    b[2].set_health(503);
    wait_for("c taken out", Duration::from_secs(10), || async {
        let m = gw.metrics().await?;
        Ok(m.contains(&format!(
            "nio_backend_target_up{{backend=\"pool\",target=\"{}\"}} 0",
            b[2].url()
        ))
        .then_some(()))
    })
    .await?;
    gw.apply(&[route("third", &["third.test"], &["/"], "pool")])
        .await?;
    let c = count(&gw, 30, None).await;
    assert_eq!(c.get("c"), None, "still out after the swap: {c:?}");
    Ok(())
}
