//! The event feed seen from outside: a consumer in Python (grpcio, stubs
//! generated from the repository's .proto files) receives gateway events
//! from two data planes and audit events, and resumes by sequence number
//! without loss or duplicates; events buffered through a control-plane
//! outage arrive after it, with an exact count of what a too-small buffer
//! dropped; `/metrics` parses and matches the traffic; refused admin calls,
//! NACKs and disconnections become audit and alert events.

#![allow(clippy::unwrap_used)]

use anyhow::{Context, Result};
use nio_e2e::sim::{self, SimOptions};
use nio_e2e::{backend, route, wait_for, ControlPlane, DataPlane, TestBackend};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(60);

/// Runs the Python consumer (`feed.py subscribe`) against `cp`.
async fn feed(cp: &ControlPlane, args: &[&str]) -> Result<Vec<Value>> {
    let python = nio_e2e::python()?;
    let out = tokio::process::Command::new(python)
        .arg(nio_e2e::feed_script())
        .arg("subscribe")
        .args(["--target", &cp.grpc.to_string()])
        .arg("--ca")
        .arg(cp.ca_file())
        .args(["--token", &cp.token])
        .args(args)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "feed.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Parses Prometheus text with Python's prometheus_client.
async fn parse_metrics(text: &str) -> Result<Value> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(nio_e2e::python()?)
        .arg(nio_e2e::feed_script())
        .arg("parse-metrics")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())
        .await?;
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "the metrics do not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

async fn send(client: &reqwest::Client, dp: &DataPlane, id: &str) -> Result<()> {
    let status = client
        .get(dp.url("/hello"))
        .header("host", "svc.test")
        .header("x-request-id", id)
        .send()
        .await?
        .status();
    anyhow::ensure!(status == 200, "{id}: {status}");
    Ok(())
}

fn ids(events: &[Value], kind: &str) -> BTreeSet<String> {
    events
        .iter()
        .filter(|e| e["kind"] == kind)
        .filter_map(|e| e["requestId"].as_str().map(String::from))
        .collect()
}

fn sequences(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| e["sequence"].as_u64())
        .collect()
}

/// A control plane, a backend with route `svc.test`, and data planes with
/// these extra flags each (reporting every 100 ms).
async fn fleet(
    dir: &std::path::Path,
    planes: &[(&str, &[&str])],
) -> Result<(ControlPlane, TestBackend, Vec<DataPlane>)> {
    let cp = ControlPlane::start(&dir.join("cp")).await?;
    let admin = cp.admin();
    let svc = TestBackend::start("svc").await?;
    admin.create(backend("svc", &[svc.url()])).await?;
    admin
        .create(route("svc", &["svc.test"], &["/"], "svc"))
        .await?;
    let revision = admin.revision().await?;
    let mut dps = Vec::new();
    for (id, extra) in planes {
        let mut args = vec!["--report-interval-ms", "100", "--access-log", "off"];
        args.extend_from_slice(extra);
        let dp = DataPlane::start_with(
            &cp.grpc_url(),
            &cp.join_token_file(),
            id,
            &dir.join(id),
            &args,
        )
        .await?;
        dps.push(dp);
    }
    let ids: Vec<&str> = planes.iter().map(|(id, _)| *id).collect();
    admin.wait_applied(&ids, revision, DEADLINE).await?;
    Ok((cp, svc, dps))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_consumer_resumes_without_loss_or_duplicates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (cp, svc, dps) = fleet(dir.path(), &[("dp-a", &[]), ("dp-b", &[])]).await?;
    let admin = cp.admin();
    let client = reqwest::Client::new();
    let mut sent = BTreeSet::new();
    for i in 0..10 {
        for dp in &dps {
            let id = format!("one-{}-{i}", dp.id);
            send(&client, dp, &id).await?;
            sent.insert(id);
        }
    }
    let revision = admin
        .create(route("extra", &["extra.test"], &["/"], "svc"))
        .await?["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse::<u64>()?;

    // First subscription, from the beginning of the log.
    let first = feed(
        &cp,
        &["--from", "1", "--kinds", "gateway,audit", "--idle", "3"],
    )
    .await?;
    assert_eq!(ids(&first, "gateway"), sent, "{first:?}");
    let from_both: BTreeSet<&str> = first
        .iter()
        .filter(|e| e["kind"] == "gateway")
        .filter_map(|e| e["dataPlane"].as_str())
        .collect();
    assert_eq!(from_both, ["dp-a", "dp-b"].into());
    let audit = first
        .iter()
        .find(|e| e["kind"] == "audit" && e["resource"] == "Route/extra")
        .context("the audit event of the write")?;
    assert_eq!(audit["action"], "create");
    assert_eq!(audit["status"], 201);
    assert_eq!(audit["newVersion"], revision);
    assert_eq!(audit["sourceIp"], "127.0.0.1");
    assert!(first.iter().all(|e| e.get("error").is_none()), "{first:?}");

    // Disconnected: more traffic; then resumed after the last it saw.
    let last = *sequences(&first).iter().max().unwrap();
    let mut missed = BTreeSet::new();
    for i in 0..15 {
        for dp in &dps {
            let id = format!("two-{}-{i}", dp.id);
            send(&client, dp, &id).await?;
            missed.insert(id);
        }
    }
    let from = (last + 1).to_string();
    let second = feed(
        &cp,
        &["--from", &from, "--kinds", "gateway,audit", "--idle", "3"],
    )
    .await?;
    assert_eq!(ids(&second, "gateway"), missed, "exactly what was missed");
    let all: Vec<u64> = sequences(&first)
        .into_iter()
        .chain(sequences(&second))
        .collect();
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "in order, none twice: {all:?}"
    );

    // A field filter: only what the data plane answered 200 on dp-a.
    let filtered = feed(
        &cp,
        &[
            "--from",
            "1",
            "--data-plane",
            "dp-a",
            "--field",
            "gateway.status=200",
            "--idle",
            "2",
        ],
    )
    .await?;
    assert_eq!(filtered.len(), 25, "{filtered:?}");

    // /metrics: parses, and the per-route counters match the traffic.
    let text = reqwest::get(format!("http://{}/metrics", dps[0].ops))
        .await?
        .text()
        .await?;
    let m = parse_metrics(&text).await?;
    assert_eq!(m["nio_requests_total{code=2xx,route=svc}"], 25.0, "{m}");
    assert_eq!(m["nio_request_duration_seconds_count{route=svc}"], 25.0);
    assert!(
        m["nio_response_body_bytes_total{route=svc}"].as_f64() > Some(25.0 * 50.0),
        "{m}"
    );
    let fleet = wait_for("the fleet-wide counters", DEADLINE, || async {
        let text = reqwest::get(format!("http://{}/metrics", cp.admin))
            .await?
            .text()
            .await?;
        let m = parse_metrics(&text).await?;
        let key = "nio_fleet_requests_total{code=2xx,data_plane=dp-b,route=svc}";
        Ok((m[key] == 25.0).then_some(m))
    })
    .await?;
    assert_eq!(
        fleet["nio_fleet_requests_total{code=2xx,data_plane=dp-a,route=svc}"],
        25.0
    );
    assert_eq!(
        fleet["nio_fleet_request_duration_seconds_count{route=svc}"],
        50.0
    );
    assert_eq!(
        fleet["nio_fleet_body_bytes_total{data_plane=dp-a,direction=out,route=svc}"],
        m["nio_response_body_bytes_total{route=svc}"]
    );
    let target = format!(
        "nio_fleet_target_requests_total{{backend=svc,data_plane=dp-b,target={}}}",
        svc.url()
    );
    assert_eq!(fleet[target.as_str()], 25.0, "{fleet}");
    assert!(
        fleet["nio_event_log_events{}"].as_f64() >= Some(50.0),
        "{fleet}"
    );
    assert!(
        fleet["nio_push_ack_seconds_count{}"].as_f64() >= Some(2.0),
        "{fleet}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn events_buffered_through_an_outage_arrive_and_drops_are_counted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut cp, _svc, dps) = fleet(
        dir.path(),
        &[("dp-a", &[]), ("dp-b", &["--event-buffer", "50"])],
    )
    .await?;
    let (data_dir, admin_addr, grpc_addr) = (cp.data_dir.clone(), cp.admin, cp.grpc);
    cp.proc.kill9();
    let down = Instant::now();
    let client = reqwest::Client::new();
    for i in 0..200 {
        for dp in &dps {
            send(&client, dp, &format!("out-{}-{i}", dp.id)).await?;
        }
    }
    // Thirty seconds without a control plane, data planes serving.
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down.elapsed())).await;
    cp = ControlPlane::start_on(&data_dir, admin_addr, grpc_addr).await?;
    let admin = cp.admin();
    let got = wait_for("the buffered events", DEADLINE, || async {
        let (_, page) = admin
            .send(
                reqwest::Method::GET,
                "/api/v1/events?kinds=gateway&fromSequence=1&limit=1000",
                None,
            )
            .await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let count = |dp: &str| items.iter().filter(|e| e["dataPlane"] == dp).count();
        Ok((count("dp-a") >= 200 && count("dp-b") >= 50).then_some(items))
    })
    .await?;
    let of = |dp: &str| -> BTreeSet<String> {
        got.iter()
            .filter(|e| e["dataPlane"] == dp)
            .filter_map(|e| e["gateway"]["requestId"].as_str().map(String::from))
            .collect()
    };
    let want_a: BTreeSet<String> = (0..200).map(|i| format!("out-dp-a-{i}")).collect();
    assert_eq!(of("dp-a"), want_a, "every buffered event, once");
    // dp-b kept the newest 50 and says it dropped exactly 150.
    let want_b: BTreeSet<String> = (150..200).map(|i| format!("out-dp-b-{i}")).collect();
    assert_eq!(of("dp-b"), want_b);
    let alert = wait_for("the events-dropped alert", DEADLINE, || async {
        let (_, page) = admin
            .send(
                reqwest::Method::GET,
                "/api/v1/events?kinds=alert&fromSequence=1",
                None,
            )
            .await?;
        Ok(page["items"].as_array().and_then(|a| {
            a.iter()
                .find(|e| e["alert"]["alert"] == "events-dropped" && e["dataPlane"] == "dp-b")
                .cloned()
        }))
    })
    .await?;
    assert_eq!(alert["alert"]["labels"]["dropped"], "150", "{alert}");
    let planes = wait_for("both data planes back", DEADLINE, || async {
        let planes = admin.dataplanes().await?;
        let back = ["dp-a", "dp-b"]
            .iter()
            .all(|id| planes.get(*id).is_some_and(|p| p["connected"] == true));
        Ok(back.then_some(planes))
    })
    .await?;
    assert_eq!(planes["dp-b"]["eventsDropped"], 150);
    assert_eq!(planes["dp-a"]["eventsDropped"], 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_calls_nacks_and_disconnections_become_events() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start_plaintext(&dir.path().join("cp")).await?;
    let admin = cp.admin();
    admin
        .create(backend("app", &["http://127.0.0.1:9".into()]))
        .await?;
    // A refused admin call (a wrong token).
    let status = reqwest::Client::new()
        .delete(format!("http://{}/apis/nio.dev/v1/backends/app", cp.admin))
        .bearer_auth("not-the-token-0123456789")
        .send()
        .await?
        .status();
    assert_eq!(status, 401);
    // A data plane that refuses every snapshot.
    let opts = SimOptions {
        refuse: true,
        ..SimOptions::new("stubborn", cp.join_token()?)
    };
    let (_, _, _task) = sim::start_one(&cp.grpc_url(), opts).await?;
    // A data plane that dies.
    let mut dp = DataPlane::start(&cp, "doomed", &dir.path().join("dp")).await?;
    admin
        .wait_applied(&["doomed"], admin.revision().await?, DEADLINE)
        .await?;
    dp.proc.kill9();

    let events = wait_for("the audit and alert events", DEADLINE, || async {
        let (_, page) = admin
            .send(
                reqwest::Method::GET,
                "/api/v1/events?kinds=audit,alert,fleet&fromSequence=1",
                None,
            )
            .await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let has = |f: &dyn Fn(&Value) -> bool| items.iter().any(f);
        let ready = has(&|e| e["audit"]["action"] == "refused")
            && has(&|e| e["alert"]["alert"] == "snapshot-nacked")
            && has(&|e| e["alert"]["alert"] == "dataplane-disconnected");
        Ok(ready.then_some(items))
    })
    .await?;
    let refused = events
        .iter()
        .find(|e| e["audit"]["action"] == "refused")
        .unwrap();
    assert_eq!(refused["audit"]["status"], 401);
    assert_eq!(refused["audit"]["actor"], "anonymous");
    assert_eq!(refused["audit"]["path"], "/apis/nio.dev/v1/backends/app");
    let nack = events
        .iter()
        .find(|e| e["alert"]["alert"] == "snapshot-nacked")
        .unwrap();
    assert_eq!(nack["dataPlane"], "stubborn");
    let gone = events
        .iter()
        .find(|e| e["alert"]["alert"] == "dataplane-disconnected")
        .unwrap();
    assert_eq!(
        (
            gone["dataPlane"].as_str(),
            gone["alert"]["severity"].as_str()
        ),
        (Some("doomed"), Some("critical"))
    );
    assert!(events
        .iter()
        .any(|e| e["fleet"]["change"] == "joined" && e["dataPlane"] == "doomed"));
    let (status, _) = admin
        .send(reqwest::Method::GET, "/api/v1/events?kinds=bogus", None)
        .await?;
    assert_eq!(status, 400);

    // nioctl: the log, and following it live (SSE).
    let nioctl = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(nio_e2e::bin("nioctl"));
        cmd.args(args)
            .env("NIO_SERVER", format!("http://{}", cp.admin))
            .env("NIO_ADMIN_TOKEN", &cp.token)
            .env("NIOCONFIG", dir.path().join("nioctl.yaml"))
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    let out = nioctl(&["events", "--kinds", "audit"]).output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("anonymous refused Backend/app -> 401"),
        "{text}"
    );
    let mut follow = nioctl(&["events", "-f", "--kinds", "audit"]).spawn()?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        follow.stdout.take().context("stdout")?,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin
        .create(backend("later", &["http://127.0.0.1:9".into()]))
        .await?;
    let line = tokio::time::timeout(DEADLINE, async {
        loop {
            match lines.next_line().await? {
                Some(l) if l.contains("Backend/later") => return Ok::<_, anyhow::Error>(l),
                Some(_) => continue,
                None => anyhow::bail!("nioctl events -f ended"),
            }
        }
    })
    .await??;
    assert!(
        line.contains("admin-token create Backend/later -> 201"),
        "{line}"
    );
    Ok(())
}

/// A webhook receiver: fails the first `failures` POSTs with 503, then
/// keeps every batch (and the Authorization header it came with).
async fn webhook(
    failures: u64,
) -> Result<(
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
)> {
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let got: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let seen = Arc::new(AtomicU64::new(0));
    let store = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (store, seen) = (store.clone(), seen.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (store, seen) = (store.clone(), seen.clone());
                        async move {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = if seen.fetch_add(1, Ordering::SeqCst) < failures {
                                503
                            } else {
                                if let Ok(v) = serde_json::from_slice(&body) {
                                    store.lock().unwrap().push((auth, v));
                                }
                                200
                            };
                            let mut resp = hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            ));
                            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok((addr, got))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_exporter_delivers_batches_with_retries() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    let admin = cp.admin();
    let (addr, got) = webhook(2).await?;
    admin
        .create(nio_e2e::resource(
            "EventExporter",
            "audit-hook",
            serde_json::json!({
                "url": format!("http://{addr}/events"),
                "headers": {"Authorization": "Bearer hook-secret"},
                "kinds": ["audit"],
                "batchSize": 2,
                "flushInterval": "200ms",
            }),
        ))
        .await?;
    // Never shown back.
    let (_, shown) = admin
        .send(
            reqwest::Method::GET,
            "/apis/nio.dev/v1/eventexporters/audit-hook",
            None,
        )
        .await?;
    assert_eq!(shown["spec"]["headers"]["Authorization"], "<hidden>");
    for name in ["one", "two", "three"] {
        admin
            .create(backend(name, &["http://127.0.0.1:9".into()]))
            .await?;
    }
    let batches = wait_for("three audit events at the webhook", DEADLINE, || async {
        let got = got.lock().unwrap().clone();
        let names: Vec<String> = got
            .iter()
            .flat_map(|(_, b)| b.as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["audit"]["name"].as_str().map(String::from))
            .collect();
        let all = ["one", "two", "three"]
            .iter()
            .all(|n| names.iter().any(|m| m == n));
        Ok(all.then_some(got))
    })
    .await?;
    // Batches of at most two, only audit events, with the secret header;
    // each event once although the first POSTs failed.
    let events: Vec<Value> = batches
        .iter()
        .flat_map(|(_, b)| b.as_array().cloned().unwrap_or_default())
        .collect();
    assert!(batches.iter().all(
        |(auth, b)| auth == "Bearer hook-secret" && b.as_array().is_some_and(|a| a.len() <= 2)
    ));
    assert!(events.iter().all(|e| e["kind"] == "audit"));
    let seqs = sequences(&events);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let metrics = reqwest::get(format!("http://{}/metrics", cp.admin))
        .await?
        .text()
        .await?;
    let m = parse_metrics(&metrics).await?;
    assert!(
        m["nio_exporter_failures_total{exporter=audit-hook}"].as_f64() >= Some(2.0),
        "{m}"
    );
    Ok(())
}
