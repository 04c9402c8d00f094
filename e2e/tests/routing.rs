//! Routing and request rewriting through a real data plane: hosts, path
//! prefixes, exact paths and `:param` segments, method/header/query
//! conditions and the precedence between them; path rewrites, Host
//! handling, header rules, forwarding headers, request ids and the access
//! log.

#![allow(clippy::unwrap_used)]

use nio_e2e::*;
use reqwest::Method;
use serde_json::{json, Value};

fn route_spec(name: &str, frontend: Value, extra: Value) -> Value {
    let mut spec = json!({"frontend": frontend, "backend": name});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    resource("Route", name, spec)
}

/// One backend per route, named after it, so the answer says which route
/// served the request.
async fn routes(gw: &Gateway, specs: &[(&str, Value, Value)]) -> anyhow::Result<Vec<TestBackend>> {
    let mut backends = Vec::new();
    let mut resources = Vec::new();
    for (name, frontend, extra) in specs {
        let b = TestBackend::start(name).await?;
        resources.push(backend(name, &[b.url()]));
        resources.push(route_spec(name, frontend.clone(), extra.clone()));
        backends.push(b);
    }
    gw.apply(&resources).await?;
    Ok(backends)
}

async fn served(gw: &Gateway, req: reqwest::RequestBuilder) -> String {
    let _ = gw;
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    if status == 404 {
        return "404".into();
    }
    served_by(&text)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_most_specific_route_wins() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let none = json!({});
    let _b = routes(
        &gw,
        &[
            (
                "users",
                json!({"hosts": ["api.test"], "paths": ["/users"]}),
                none.clone(),
            ),
            (
                "user-by-id",
                json!({"hosts": ["api.test"], "paths": ["/users/:id"]}),
                none.clone(),
            ),
            (
                "me",
                json!({"hosts": ["api.test"], "paths": ["/users/me"]}),
                none.clone(),
            ),
            (
                "health",
                json!({"hosts": ["api.test"], "paths": ["/health"], "exact": true}),
                none.clone(),
            ),
            (
                "writes",
                json!({"hosts": ["api.test"], "paths": ["/users"], "methods": ["POST", "PUT"]}),
                none.clone(),
            ),
            (
                "canary",
                json!({"hosts": ["api.test"], "paths": ["/users"],
                "headers": [{"name": "x-canary", "value": "yes"}]}),
                none.clone(),
            ),
            (
                "beta",
                json!({"hosts": ["api.test"], "paths": ["/users"],
                "headers": [{"name": "x-version", "regex": "^v[23]$"}]}),
                none.clone(),
            ),
            (
                "debug",
                json!({"hosts": ["api.test"], "paths": ["/users"],
                "query": [{"name": "debug", "present": true}],
                "headers": [{"name": "x-no-debug", "present": false}]}),
                none.clone(),
            ),
            (
                "wild",
                json!({"hosts": ["*.test"], "paths": ["/"]}),
                none.clone(),
            ),
            ("fallback", json!({"paths": ["/"]}), none.clone()),
        ],
    )
    .await?;
    let get = |path: &str| gw.request(Method::GET, "api.test", path);
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("users", get("/users")),
        ("users", get("/users/")),
        ("user-by-id", get("/users/42")),
        ("user-by-id", get("/users/42/orders")),
        ("me", get("/users/me")),
        ("health", get("/health")),
        ("wild", get("/health/deep")),
        ("writes", gw.request(Method::POST, "api.test", "/users")),
        ("users", gw.request(Method::DELETE, "api.test", "/users")),
        ("canary", get("/users").header("x-canary", "yes")),
        ("users", get("/users").header("x-canary", "no")),
        ("beta", get("/users").header("x-version", "v3")),
        ("users", get("/users").header("x-version", "v4")),
        ("debug", get("/users?debug")),
        ("users", get("/users?debug=1").header("x-no-debug", "1")),
        ("wild", gw.request(Method::GET, "shop.test", "/users")),
        (
            "fallback",
            gw.request(Method::GET, "other.org", "/anything"),
        ),
        ("users", gw.request(Method::GET, "API.test:8080", "/users")),
    ];
    for (want, req) in cases {
        let desc = format!("{req:?}");
        assert_eq!(served(&gw, req).await, want, "{desc}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn paths_hosts_and_headers_are_rewritten() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let _b = routes(
        &gw,
        &[
            ("strip", json!({"hosts": ["a.test"], "paths": ["/api"], "stripPath": true}), json!({})),
            ("rewrite", json!({"hosts": ["a.test"], "paths": ["/v1/users/:id"], "rewrite": "/internal/u/:id"}),
                json!({"preserveHost": true})),
            ("override", json!({"hosts": ["a.test"], "paths": ["/o"]}), json!({
                "hostOverride": "svc.internal",
                "requestHeaders": {"set": {"x-env": "prod"}, "add": {"x-tag": "gw"}, "remove": ["x-secret"]},
                "responseHeaders": {"set": {"cache-control": "no-store"}, "remove": ["content-type"]}
            })),
        ],
    )
    .await?;
    let (s, body) = gw.get("a.test", "/api/items/7?q=1").await?;
    assert_eq!((s, body["path"].as_str()), (200, Some("/items/7?q=1")));
    let (_, body) = gw.get("a.test", "/api").await?;
    assert_eq!(body["path"], "/");

    let (_, body) = gw.get("a.test", "/v1/users/42/cart?x=y").await?;
    assert_eq!(body["path"], "/internal/u/42/cart?x=y");
    assert_eq!(body["headers"]["host"], "a.test", "preserveHost");

    let r = gw
        .request(Method::GET, "a.test", "/o")
        .header("x-secret", "s3cr3t")
        .header("x-tag", "client")
        .send()
        .await?;
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers().get("content-type").is_none());
    let body: Value = serde_json::from_str(&r.text().await?)?;
    let h = &body["headers"];
    assert_eq!(h["host"], "svc.internal");
    assert_eq!(h["x-env"], "prod");
    assert!(h.get("x-secret").is_none(), "removed: {h}");
    // `add` appends: the echo keeps the last value of a repeated header.
    assert_eq!(h["x-tag"], "gw", "{h}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_and_request_ids() -> anyhow::Result<()> {
    // The data plane trusts nobody: forged forwarding headers are replaced.
    let gw = Gateway::start(&[]).await?;
    let _b = routes(&gw, &[("r", json!({"hosts": ["f.test"]}), json!({}))]).await?;
    let r = gw
        .request(Method::GET, "f.test", "/x")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "trace-abc-123")
        .send()
        .await?;
    assert_eq!(r.headers()["x-request-id"], "trace-abc-123", "echoed");
    let body: Value = serde_json::from_str(&r.text().await?)?;
    let h = &body["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "f.test");
    assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=\"f.test\"");
    assert_eq!(h["x-request-id"], "trace-abc-123", "propagated");

    // Without one, an id is made, sent to the backend and echoed.
    let r = gw.request(Method::GET, "f.test", "/x").send().await?;
    let id = r.headers()["x-request-id"].to_str()?.to_string();
    assert_eq!(id.len(), 32);
    let body: Value = serde_json::from_str(&r.text().await?)?;
    assert_eq!(body["headers"]["x-request-id"], id.as_str());
    // A trace started (written into the head, not the map: the same).
    let started = body["headers"]["traceparent"].as_str().unwrap_or_default();
    assert_eq!(
        (started.len(), &started[..3], &started[52..]),
        (55, "00-", "-01"),
        "{started}"
    );

    // A trace joined: its id kept, the gateway's own span as the parent.
    let theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = gw
        .request(Method::GET, "f.test", "/x")
        .header("traceparent", theirs)
        .send()
        .await?;
    let body: Value = serde_json::from_str(&r.text().await?)?;
    let joined = body["headers"]["traceparent"].as_str().unwrap_or_default();
    assert_eq!(joined.len(), 55);
    assert_eq!(joined[..36], theirs[..36], "{joined}");
    assert_ne!(joined, theirs);

    // Behind a trusted proxy (here: loopback), the chain is kept.
    let trusting = Gateway::start(&["--trusted-proxies", "127.0.0.0/8"]).await?;
    let _b = routes(&trusting, &[("r", json!({"hosts": ["f.test"]}), json!({}))]).await?;
    let (_, body) = {
        let r = trusting
            .request(Method::GET, "f.test", "/x")
            .header("x-forwarded-for", "203.0.113.7")
            .send()
            .await?;
        (r.status(), serde_json::from_str::<Value>(&r.text().await?)?)
    };
    assert_eq!(body["headers"]["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_has_one_line_per_request() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = routes(
        &gw,
        &[
            (
                "logged",
                json!({"hosts": ["l.test"], "paths": ["/"]}),
                json!({}),
            ),
            (
                "quiet",
                json!({"hosts": ["l.test"], "paths": ["/quiet"]}),
                json!({"accessLog": false}),
            ),
        ],
    )
    .await?;
    let r = gw
        .request(Method::POST, "l.test", "/orders")
        .header("x-request-id", "log-1")
        .body("0123456789")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let len = r.bytes().await?.len() as u64;
    gw.get("l.test", "/quiet").await?;
    gw.get("nobody.test", "/").await?;
    let lines = wait_for(
        "two access-log lines",
        std::time::Duration::from_secs(10),
        || async {
            let lines = gw.access_log();
            Ok((lines.len() >= 2).then_some(lines))
        },
    )
    .await?;
    let line = lines.iter().find(|l| l["requestId"] == "log-1").unwrap();
    assert_eq!(line["route"], "logged");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/orders");
    assert_eq!(line["status"], 200);
    assert_eq!(line["target"], b[0].url().as_str());
    assert_eq!(line["bytesIn"], 10);
    assert_eq!(line["bytesOut"], len);
    assert!(line["durationMs"].as_f64().unwrap() >= line["upstreamMs"].as_f64().unwrap());
    let unrouted = lines.iter().find(|l| l["host"] == "nobody.test").unwrap();
    assert_eq!(
        (unrouted["status"].as_u64(), unrouted["error"].as_str()),
        (Some(404), Some("no-route"))
    );
    assert!(
        lines.iter().all(|l| l["path"] != "/quiet"),
        "accessLog: false"
    );
    Ok(())
}

/// A backend that answers each request on a kept-alive connection with
/// the raw answer its path names.
async fn raw_backend() -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                            _ => return,
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let path = head.split(' ').nth(1).unwrap_or("");
                    let answer: &[u8] = match path {
                        "/hops" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Mixed-Case: a\r\n\
                            Set-Cookie: a=1\r\nSet-Cookie: b=2\r\nDate: Tue, 01 Jan 2030 00:00:00 GMT\r\n\
                            Keep-Alive: timeout=5\r\nConnection: keep-alive\r\nProxy-Connection: keep-alive\r\n\
                            X-Request-Id: from-backend\r\n\r\nok",
                        "/named" => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-secret\r\n\
                            X-Secret: 1\r\nX-Kept: 1\r\n\r\nok",
                        "/chunked" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n\
                            3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n",
                        "/lf" => b"HTTP/1.1 200 OK\nContent-Length: 2\nX-A: 1\n\nok",
                        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: 1\r\n\r\n",
                        _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok",
                    };
                    if sock.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(format!("http://{addr}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn backend_fields_reach_the_client_as_sent() -> anyhow::Result<()> {
    // The answer's fields pass through without the header map (a route
    // without plugins or header rules): hop-by-hop ones still go, the
    // request id is the gateway's, repeated fields stay repeated.
    let gw = Gateway::start(&[]).await?;
    let url = raw_backend().await?;
    gw.apply(&[
        backend("raw", &[url]),
        route("raw", &["raw.test"], &["/"], "raw"),
    ])
    .await?;
    let r = gw
        .request(Method::GET, "raw.test", "/hops")
        .header("x-request-id", "from-client")
        .send()
        .await?;
    let h = r.headers().clone();
    assert_eq!(r.text().await?, "ok");
    assert_eq!(h["x-mixed-case"], "a");
    let cookies: Vec<_> = h.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(
        h["date"], "Tue, 01 Jan 2030 00:00:00 GMT",
        "the backend's, once"
    );
    assert_eq!(h.get_all("date").iter().count(), 1);
    assert_eq!(
        h.get_all("x-request-id").iter().collect::<Vec<_>>(),
        ["from-client"]
    );
    assert_eq!(h["content-length"], "2");
    for hop in ["keep-alive", "proxy-connection", "connection"] {
        assert!(h.get(hop).is_none(), "{hop} passed on: {h:?}");
    }

    // A field `Connection` names is hop-by-hop too.
    let r = gw.request(Method::GET, "raw.test", "/named").send().await?;
    assert!(r.headers().get("x-secret").is_none(), "{:?}", r.headers());
    assert_eq!(r.headers()["x-kept"], "1");
    assert!(r.headers().contains_key("x-request-id"));

    // Chunked in, chunked out (re-framed by the gateway); a date added.
    let r = gw
        .request(Method::GET, "raw.test", "/chunked")
        .send()
        .await?;
    assert_eq!(r.headers()["x-a"], "1");
    assert!(r.headers().contains_key("date"));
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(r.text().await?, "hello");

    // Bare LF line ends from the backend: CRLF to the client.
    let r = gw.request(Method::GET, "raw.test", "/lf").send().await?;
    assert_eq!(r.headers()["x-a"], "1");
    assert_eq!(r.text().await?, "ok");

    // HEAD: the backend's length, no body.
    let r = gw.request(Method::HEAD, "raw.test", "/head").send().await?;
    assert_eq!(r.headers()["content-length"], "10");
    assert_eq!(r.text().await?, "");

    // The common case, several times over one kept-alive connection.
    for _ in 0..3 {
        let r = gw.request(Method::GET, "raw.test", "/").send().await?;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-a"], "1");
        assert_eq!(r.headers().get_all("content-length").iter().count(), 1);
        assert!(r.headers().contains_key("date"));
        assert_eq!(r.text().await?, "ok");
    }
    Ok(())
}
