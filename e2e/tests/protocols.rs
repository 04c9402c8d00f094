//! Protocols other than plain HTTP/1.1 through a real data plane: a
//! WebSocket upgrade tunnelled both ways (text, binary, the closing
//! handshake); gRPC to an HTTP/2 backend (unary calls, server streaming,
//! error statuses in headers and in trailers); and HTTP/2 cleartext (h2c)
//! from the client to an HTTP/1.1 backend.

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use nio_e2e::{backend, route, Gateway, TestBackend};
use serde_json::{json, Value};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

mod pb {
    tonic::include_proto!("nio.test.echo");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{CountRequest, EchoReply, EchoRequest};

const DEADLINE: Duration = Duration::from_secs(20);

/// `result`, with the data plane's log attached if it failed.
fn explain<T>(gw: &Gateway, result: Result<T>) -> Result<T> {
    result.with_context(|| format!("--- data plane log ---\n{}", gw.dp.proc.log_text()))
}

/// `fut`, or an error naming `what` once the deadline passes.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .with_context(|| format!("timed out after {DEADLINE:?} waiting for {what}"))
}

/// A WebSocket server that sends every text and binary message back and
/// answers the closing handshake.
async fn websocket_echo_server() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await?;
                // A received Close is answered by tungstenite itself; the
                // stream then ends.
                while let Some(msg) = ws.next().await {
                    let msg = msg?;
                    if msg.is_text() || msg.is_binary() {
                        ws.send(msg).await?;
                    }
                }
                Ok::<_, tokio_tungstenite::tungstenite::Error>(())
            });
        }
    });
    Ok(url)
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_messages_and_close_cross_the_gateway() -> Result<()> {
    let gw = Gateway::start(&[]).await?;
    let backend_url = websocket_echo_server().await?;
    gw.apply(&[
        backend("ws-echo", &[backend_url]),
        route("ws", &["ws.test"], &["/chat"], "ws-echo"),
    ])
    .await?;
    let result = websocket_round_trip(&gw).await;
    explain(&gw, result)
}

/// An upgraded connection with no traffic either way for the Backend's
/// idle timeout is closed by the gateway.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_websocket_is_closed() -> Result<()> {
    let gw = Gateway::start(&[]).await?;
    let backend_url = websocket_echo_server().await?;
    gw.apply(&[
        nio_e2e::resource(
            "Backend",
            "ws-echo",
            json!({"targets": [{"url": backend_url}], "timeouts": {"idle": "300ms"}}),
        ),
        route("ws", &["ws.test"], &["/chat"], "ws-echo"),
    ])
    .await?;
    let mut request = format!("ws://{}/chat", gw.dp.http).into_client_request()?;
    request
        .headers_mut()
        .insert("host", HeaderValue::from_static("ws.test"));
    let (mut ws, _) = within("the upgrade", tokio_tungstenite::connect_async(request)).await??;
    ws.send(Message::text("still here")).await?;
    assert!(within("an echo", ws.next()).await?.is_some());
    // Then silence: the stream ends (closed or reset) well before the deadline.
    let ended = within("the idle close", async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    explain(&gw, ended)
}

async fn websocket_round_trip(gw: &Gateway) -> Result<()> {
    let mut request = format!("ws://{}/chat/room-1", gw.dp.http).into_client_request()?;
    request
        .headers_mut()
        .insert("host", HeaderValue::from_static("ws.test"));
    let (mut ws, response) =
        within("the upgrade", tokio_tungstenite::connect_async(request)).await??;
    assert_eq!(response.status(), 101);
    assert!(
        response.headers().contains_key("x-request-id"),
        "101 without x-request-id: {:?}",
        response.headers()
    );

    let sent = [
        Message::text("hello through nio"),
        Message::binary(vec![0u8, 1, 2, 254, 255]),
        Message::text("x".repeat(100_000)),
        Message::binary(vec![7u8; 70_000]),
    ];
    for msg in sent {
        ws.send(msg.clone()).await?;
        let echoed = within("an echo", ws.next())
            .await?
            .context("the tunnel closed before the echo")??;
        assert_eq!(echoed, msg);
    }

    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await?;
    let reply = within("the server's Close", ws.next())
        .await?
        .context("the tunnel closed without a Close frame")??;
    match reply {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Normal);
            assert_eq!(frame.reason.as_str(), "done");
        }
        other => panic!("expected the server's Close frame, got {other:?}"),
    }
    // After the closing handshake the stream ends.
    assert!(within("the end of the stream", ws.next()).await?.is_none());
    Ok(())
}

/// The gRPC test service: `Say` echoes (NOT_FOUND for "missing"), `Count`
/// streams numbers.
struct EchoService;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn say(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let text = request.into_inner().text;
        if text == "missing" {
            return Err(tonic::Status::not_found("nothing is called missing"));
        }
        Ok(tonic::Response::new(EchoReply { text }))
    }

    type CountStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

    async fn count(
        &self,
        request: tonic::Request<CountRequest>,
    ) -> Result<tonic::Response<Self::CountStream>, tonic::Status> {
        let CountRequest { n, fail_with } = request.into_inner();
        let replies = (1..=n).map(|i| {
            Ok(EchoReply {
                text: i.to_string(),
            })
        });
        let end = (!fail_with.is_empty()).then(|| Err(tonic::Status::not_found(fail_with)));
        let stream = tokio_stream::iter(replies.chain(end));
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Serves [`EchoService`] over HTTP/2 cleartext; returns its URL.
async fn grpc_echo_server() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(EchoService))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(url)
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_unary_streaming_and_statuses_cross_the_gateway() -> Result<()> {
    let gw = Gateway::start(&[]).await?;
    let target = grpc_echo_server().await?;
    let mut echo_backend = backend("grpc-echo", &[target]);
    echo_backend["spec"]["protocol"] = json!("http2");
    // No hosts: the client's :authority is the data plane's address.
    gw.apply(&[
        echo_backend,
        route("grpc", &[], &["/nio.test.echo.Echo"], "grpc-echo"),
    ])
    .await?;
    let result = grpc_calls(&gw).await;
    explain(&gw, result)
}

async fn grpc_calls(gw: &Gateway) -> Result<()> {
    let mut client = within(
        "a gRPC connection",
        EchoClient::connect(format!("http://{}", gw.dp.http)),
    )
    .await??;

    // Unary.
    let reply = within(
        "Say",
        client.say(EchoRequest {
            text: "hello grpc".into(),
        }),
    )
    .await??;
    assert_eq!(reply.get_ref().text, "hello grpc");
    assert!(reply.metadata().contains_key("x-request-id"));

    // Server streaming: every message, in order, then OK in the trailers.
    let n = 50;
    let mut stream = within(
        "Count",
        client.count(CountRequest {
            n,
            fail_with: String::new(),
        }),
    )
    .await??
    .into_inner();
    let mut got = Vec::new();
    while let Some(reply) = within("the next message", stream.message()).await?? {
        got.push(reply.text);
    }
    let expected: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
    assert_eq!(got, expected);
    let trailers = within("the trailers", stream.trailers())
        .await??
        .context("the stream ended without trailers")?;
    assert_eq!(
        trailers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("0")
    );

    // An error status from the server, sent without a body (in the
    // response headers): the client sees its code and message.
    let status = within(
        "Say(missing)",
        client.say(EchoRequest {
            text: "missing".into(),
        }),
    )
    .await?
    .expect_err("the server answers NOT_FOUND");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "nothing is called missing");

    // An error status after messages: it can only travel in the trailers.
    let mut stream = within(
        "Count(fail)",
        client.count(CountRequest {
            n: 3,
            fail_with: "counted too far".into(),
        }),
    )
    .await??
    .into_inner();
    for i in 1..=3 {
        let reply = within("the next message", stream.message())
            .await??
            .context("the stream ended early")?;
        assert_eq!(reply.text, i.to_string());
    }
    let status = within("the final status", stream.message())
        .await?
        .expect_err("the stream ends with NOT_FOUND");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "counted too far");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_client_reaches_http1_backend() -> Result<()> {
    let gw = Gateway::start(&[]).await?;
    let plain = TestBackend::start("plain").await?;
    // No hosts: over HTTP/2 the host is the :authority, the data plane's
    // address.
    gw.apply(&[
        backend("plain", &[plain.url()]),
        route("plain", &[], &["/"], "plain"),
    ])
    .await?;
    let result = h2c_request(&gw).await;
    explain(&gw, result)
}

async fn h2c_request(gw: &Gateway) -> Result<()> {
    let client = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let response = within(
        "the response",
        client.get(gw.dp.url("/over/h2c?x=1")).send(),
    )
    .await??;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert!(response.headers().contains_key("x-request-id"));
    let body: Value = within("the body", response.json()).await??;
    assert_eq!(body["backend"], "plain");
    assert_eq!(body["path"], "/over/h2c?x=1");
    Ok(())
}
