//! A data plane refuses (NACKs) a snapshot or delta it cannot use and keeps
//! serving the previous one; a good delta after them applies. The control plane here is a scripted gRPC server, so
//! the test can send what a real control plane never would.

#![allow(clippy::unwrap_used)]

use nio_data_plane::proxy::ProxyOptions;
use nio_data_plane::server::{self, Options};
use nio_data_plane::sync::SyncOptions;
use nio_proto::v1::config_sync_server::{ConfigSync, ConfigSyncServer};
use nio_proto::v1::control_plane_message::Msg;
use nio_proto::v1::{data_plane_message, ControlPlaneMessage, DataPlaneMessage, Snapshot};
use serde_json::json;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

type Out = Pin<Box<dyn tokio_stream::Stream<Item = Result<ControlPlaneMessage, Status>> + Send>>;

/// Sends whatever the test pushes into `to_dp`; forwards what the data
/// plane says to `from_dp`.
struct ScriptedControlPlane {
    to_dp: Mutex<Option<mpsc::Receiver<Result<ControlPlaneMessage, Status>>>>,
    from_dp: mpsc::Sender<DataPlaneMessage>,
}

#[tonic::async_trait]
impl ConfigSync for ScriptedControlPlane {
    type SyncStream = Out;
    async fn sync(
        &self,
        req: Request<Streaming<DataPlaneMessage>>,
    ) -> Result<Response<Out>, Status> {
        let mut inbound = req.into_inner();
        let from_dp = self.from_dp.clone();
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let _ = from_dp.send(m).await;
            }
        });
        let rx = self
            .to_dp
            .lock()
            .await
            .take()
            .ok_or_else(|| Status::unavailable("one stream only"))?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

fn resource(v: serde_json::Value) -> nio_proto::model::AnyResource {
    nio_proto::model::AnyResource::from_value(v).unwrap()
}

fn snapshot(revision: u64, backend_url: &str, route_backend: &str) -> Snapshot {
    let config: nio_proto::model::Config = [
        resource(
            json!({"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "b"},
            "spec": {"targets": [{"url": backend_url}]}}),
        ),
        resource(
            json!({"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": "r"},
            "spec": {"frontend": {"paths": ["/"]}, "backend": route_backend}}),
        ),
    ]
    .into_iter()
    .collect();
    nio_proto::snapshot::encode(&config, revision)
}

async fn next_reply(rx: &mut mpsc::Receiver<DataPlaneMessage>) -> data_plane_message::Msg {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("data plane answered in time")
            .expect("stream open")
            .msg
            .expect("message");
        if !matches!(m, data_plane_message::Msg::Heartbeat(_)) {
            return m;
        }
    }
}

/// A real backend that answers every request with `body`; its URL.
async fn serve(body: &'static str) -> String {
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", backend.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (s, _) = backend.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    url
}

/// The next reply must refuse `revision` for a reason containing `why`.
async fn expect_nack(rx: &mut mpsc::Receiver<DataPlaneMessage>, revision: u64, why: &str) {
    match next_reply(rx).await {
        data_plane_message::Msg::Nack(n) => {
            assert_eq!(n.revision, revision);
            assert!(n.reason.contains(why), "{}", n.reason);
        }
        other => panic!("expected Nack({revision}), got {other:?}"),
    }
}

async fn free_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_updates_are_nacked_and_the_previous_one_keeps_serving() {
    let backend_url = serve("from revision 1").await;

    // The scripted control plane.
    let (to_dp, to_dp_rx) = mpsc::channel(8);
    let (from_dp_tx, mut from_dp) = mpsc::channel(8);
    let cp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp_addr = cp_listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                ConfigSyncServer::new(ScriptedControlPlane {
                    to_dp: Mutex::new(Some(to_dp_rx)),
                    from_dp: from_dp_tx,
                })
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(cp_listener)),
    );

    let cache = tempfile::tempdir().unwrap();
    let http = free_addr().await;
    let opts = Options {
        http_listen: http,
        https_listen: None,
        ops_listen: "127.0.0.1:0".parse().unwrap(),
        cache_dir: cache.path().to_path_buf(),
        sync: SyncOptions {
            control_plane: format!("http://{cp_addr}"),
            join_token: Some("test-token-0123456789".into()),
            control_plane_ca: None,
            identity_dir: cache.path().to_path_buf(),
            id: "dp-test".into(),
            version: nio_proto::VERSION.into(),
            labels: Default::default(),
            heartbeat: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
        },
        report: nio_data_plane::events::ReportOptions {
            buffer: 100,
            interval: Duration::from_secs(1),
        },
        proxy: ProxyOptions::default(),
        drain_timeout: Duration::from_secs(1),
        drain_delay: Duration::ZERO,
        startup_sync_timeout: Duration::from_secs(5),
        send_timeout: Duration::from_secs(60),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dp = tokio::spawn(server::run(opts, async move {
        let _ = stopped.await;
    }));

    match next_reply(&mut from_dp).await {
        data_plane_message::Msg::Hello(h) => {
            assert_eq!((h.id.as_str(), h.held_revision), ("dp-test", 0))
        }
        other => panic!("expected Hello, got {other:?}"),
    }
    let send = |msg: Msg| {
        let to_dp = to_dp.clone();
        async move {
            to_dp
                .send(Ok(ControlPlaneMessage { msg: Some(msg) }))
                .await
                .unwrap()
        }
    };

    let good = snapshot(1, &backend_url, "b");
    send(Msg::Snapshot(good.clone())).await;
    match next_reply(&mut from_dp).await {
        data_plane_message::Msg::Ack(a) => assert_eq!((a.revision, a.hash), (1, good.hash.clone())),
        other => panic!("expected Ack(1), got {other:?}"),
    }
    let client = reqwest::Client::new();
    let get = || client.get(format!("http://{http}/x")).send();
    assert_eq!(
        get().await.unwrap().text().await.unwrap(),
        "from revision 1"
    );

    // Revision 2: a route to a backend that is not in the snapshot.
    let mut dangling = snapshot(2, &backend_url, "b");
    dangling.resources.retain(|r| r.kind == "Route");
    dangling.hash = nio_proto::snapshot::content_hash(&dangling.resources);
    send(Msg::Snapshot(dangling)).await;
    expect_nack(&mut from_dp, 2, "backend \"b\" does not exist").await;

    // Revision 3: contents that do not match the announced hash.
    let mut tampered = snapshot(3, &backend_url, "b");
    tampered.hash = "00".repeat(32);
    send(Msg::Snapshot(tampered)).await;
    expect_nack(&mut from_dp, 3, "hash mismatch").await;

    // Revision 4: bytes that are not a resource at all.
    let mut garbage = snapshot(4, &backend_url, "b");
    garbage.resources[0].json = bytes::Bytes::from_static(b"\xff\xfe not json");
    garbage.hash = nio_proto::snapshot::content_hash(&garbage.resources);
    send(Msg::Snapshot(garbage)).await;
    expect_nack(&mut from_dp, 4, "").await;

    // Revision 5: a delta removing the backend the route still uses.
    let held = nio_proto::snapshot::ResourceSet::from_snapshot(&good).unwrap();
    let delta_to = |s: &Snapshot| {
        let to = nio_proto::snapshot::ResourceSet::from_snapshot(s).unwrap();
        to.delta_from_set(&held, 1, s.revision)
    };
    let mut orphan = snapshot(5, &backend_url, "b");
    orphan.resources.retain(|r| r.kind == "Route");
    orphan.hash = nio_proto::snapshot::content_hash(&orphan.resources);
    let delta = delta_to(&orphan);
    assert_eq!(delta.removals.len(), 1);
    send(Msg::Delta(delta)).await;
    expect_nack(&mut from_dp, 5, "still used by route \"r\"").await;

    // Still serving revision 1, and the cache holds revision 1.
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "from revision 1");
    // The cache is written in the background: wait for it, with a deadline.
    let store = nio_data_plane::cache::Cache::new(cache.path()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let cached = loop {
        if let Some(c) = store.load().unwrap() {
            break c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cache was never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        cached.revision, 1,
        "refused revisions never reach the cache"
    );

    // Revision 6: a delta moving the backend elsewhere. The route on it,
    // not in the delta, follows; the cache catches up with the same hash.
    let moved = snapshot(6, &serve("from revision 6").await, "b");
    let delta = delta_to(&moved);
    assert_eq!(delta.upserts.len(), 1);
    send(Msg::Delta(delta)).await;
    match next_reply(&mut from_dp).await {
        data_plane_message::Msg::Ack(a) => {
            assert_eq!((a.revision, a.hash), (6, moved.hash.clone()))
        }
        other => panic!("expected Ack(6), got {other:?}"),
    }
    assert_eq!(
        get().await.unwrap().text().await.unwrap(),
        "from revision 6"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while store.load().unwrap().map(|c| c.revision) != Some(6) {
        assert!(
            std::time::Instant::now() < deadline,
            "revision 6 never reached the cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cached = store.load().unwrap().unwrap();
    assert_eq!(cached.hash, moved.hash);
    assert_eq!(
        nio_proto::snapshot::decode(&cached).unwrap(),
        nio_proto::snapshot::decode(&moved).unwrap()
    );

    let _ = stop.send(());
    dp.await.unwrap().unwrap();
}
