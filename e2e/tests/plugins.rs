//! The plugin pipeline through a real control plane and data plane: API
//! keys (every accepted form, every refusal, rotation with a grace period,
//! secrets never stored, sent or shown in clear), IP allow and block
//! lists, CORS, allowed methods, maintenance (global and per route),
//! redirects, static responses, public paths, body size limits and
//! response compression — each with the exact statuses and headers a
//! client sees, and the denials counted per route and reason.

#![allow(clippy::unwrap_used)]

use base64::Engine;
use nio_e2e::*;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::Duration;

/// A route `name` on host `<name>.test` with these plugins, to a fresh
/// echo backend.
async fn plugged(
    gw: &Gateway,
    name: &str,
    plugins: Value,
    extra: &[Value],
) -> anyhow::Result<TestBackend> {
    let b = TestBackend::start(name).await?;
    let mut resources = extra.to_vec();
    resources.push(backend(name, &[b.url()]));
    resources.push(resource(
        "Route",
        name,
        json!({"frontend": {"hosts": [format!("{name}.test")]}, "backend": name, "plugins": plugins}),
    ));
    gw.apply(&resources).await?;
    Ok(b)
}

struct Seen {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn send(req: reqwest::RequestBuilder) -> Seen {
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    Seen {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn error_of(s: &Seen) -> &str {
    s.headers
        .get("x-nio-error")
        .map_or("", |v| v.to_str().unwrap())
}

/// Creates an API key; returns (id, secret).
async fn api_key(gw: &Gateway, name: &str, spec: Value) -> anyhow::Result<(String, String)> {
    let (status, v) = gw
        .admin
        .send(
            Method::POST,
            "/apis/nio.dev/v1/apikeys",
            Some(json!({"apiVersion": "nio.dev/v1", "kind": "ApiKey", "metadata": {"name": name}, "spec": spec})),
        )
        .await?;
    assert_eq!(status, 201, "{v}");
    let secret = &v["secret"];
    Ok((
        secret["clientId"].as_str().unwrap().to_string(),
        secret["clientSecret"].as_str().unwrap().to_string(),
    ))
}

async fn synced(gw: &Gateway) -> anyhow::Result<()> {
    let revision = gw.admin.revision().await?;
    gw.admin
        .wait_applied(&["dp"], revision, Duration::from_secs(20))
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_in_every_form_and_every_refusal() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let _b = plugged(
        &gw,
        "keyed",
        json!([{"kind": "apiKey", "config": {"queryParam": "apikey"}}]),
        &[],
    )
    .await?;
    let (id, secret) = api_key(&gw, "mobile", json!({"metadata": {"plan": "gold"}})).await?;
    let (other_id, other_secret) =
        api_key(&gw, "narrow", json!({"routes": ["somewhere-else"]})).await?;
    synced(&gw).await?;
    let get = |path: &str| gw.request(Method::GET, "keyed.test", path);
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));

    for (form, req) in [
        (
            "headers",
            get("/")
                .header("nio-client-id", &id)
                .header("nio-client-secret", &secret),
        ),
        (
            "basic",
            get("/").header("authorization", format!("Basic {basic}")),
        ),
        (
            "bearer",
            get("/").header("authorization", format!("Bearer {id}.{secret}")),
        ),
        ("query", get(&format!("/?apikey={id}.{secret}"))),
    ] {
        let s = send(req).await;
        assert_eq!(s.status, 200, "{form}: {:?}", s.body);
        let h = &s.body["headers"];
        assert_eq!(
            h["nio-client-id"],
            id.as_str(),
            "{form}: identity forwarded"
        );
        assert_eq!(
            h["nio-client-meta-plan"], "gold",
            "{form}: metadata forwarded"
        );
        assert!(
            h.get("nio-client-secret").is_none() && h.get("authorization").is_none(),
            "{form}: secret removed: {h}"
        );
        assert_eq!(s.body["path"], "/", "{form}: no key in the upstream query");
    }

    let missing = send(get("/")).await;
    assert_eq!(
        (missing.status, error_of(&missing)),
        (401, "api-key-missing")
    );
    assert!(missing.headers["www-authenticate"]
        .to_str()?
        .starts_with("Basic realm=\"nio\""));
    assert!(missing.body["requestId"].is_string());
    let wrong =
        send(get("/").header("authorization", format!("Bearer {id}.{}", "0".repeat(64)))).await;
    assert_eq!((wrong.status, error_of(&wrong)), (401, "api-key-invalid"));
    let unknown = send(get("/").header("authorization", format!("Bearer nobody.{secret}"))).await;
    assert_eq!(
        (unknown.status, error_of(&unknown)),
        (401, "api-key-invalid")
    );
    let forbidden =
        send(get("/").header("authorization", format!("Bearer {other_id}.{other_secret}"))).await;
    assert_eq!(
        (forbidden.status, error_of(&forbidden)),
        (403, "api-key-forbidden")
    );

    // Disabled, then expired.
    let bearer = format!("Bearer {id}.{secret}");
    gw.admin
        .send(
            Method::PATCH,
            "/apis/nio.dev/v1/apikeys/mobile",
            Some(json!({"spec": {"enabled": false}})),
        )
        .await?;
    synced(&gw).await?;
    let disabled = send(get("/").header("authorization", &bearer)).await;
    assert_eq!(
        (disabled.status, error_of(&disabled)),
        (403, "api-key-disabled")
    );
    gw.admin
        .send(
            Method::PATCH,
            "/apis/nio.dev/v1/apikeys/mobile",
            Some(json!({"spec": {"enabled": true, "expiresAt": "2020-01-01T00:00:00Z"}})),
        )
        .await?;
    synced(&gw).await?;
    let expired = send(get("/").header("authorization", &bearer)).await;
    assert_eq!(
        (expired.status, error_of(&expired)),
        (403, "api-key-expired")
    );

    let metrics = gw.metrics().await?;
    for reason in [
        "api-key-missing",
        "api-key-invalid",
        "api-key-forbidden",
        "api-key-disabled",
        "api-key-expired",
    ] {
        assert!(
            metrics.contains(&format!(
                "nio_plugin_denials_total{{route=\"keyed\",reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{metrics}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_secret_works_and_the_old_one_stops_after_the_grace_period() -> anyhow::Result<()>
{
    let gw = Gateway::start(&[]).await?;
    let _b = plugged(&gw, "keyed", json!([{"kind": "apiKey"}]), &[]).await?;
    let (id, old) = api_key(&gw, "app", json!({})).await?;
    let (status, v) = gw
        .admin
        .send(
            Method::POST,
            "/apis/nio.dev/v1/apikeys/app/rotate",
            Some(json!({"gracePeriod": "3s"})),
        )
        .await?;
    assert_eq!(status, 200, "{v}");
    let new = v["secret"]["clientSecret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    synced(&gw).await?;
    let call = |secret: &str| {
        send(
            gw.request(Method::GET, "keyed.test", "/")
                .header("nio-client-id", &id)
                .header("nio-client-secret", secret),
        )
    };
    assert_eq!(call(&new).await.status, 200);
    assert_eq!(call(&old).await.status, 200, "within the grace period");
    wait_for(
        "the old secret to stop",
        Duration::from_secs(15),
        || async { Ok((call(&old).await.status == 401).then_some(())) },
    )
    .await?;
    assert_eq!(call(&new).await.status, 200);

    // GET shows how many secrets and until when, never a salt or hash.
    let (_, shown) = gw
        .admin
        .send(Method::GET, "/apis/nio.dev/v1/apikeys/app", None)
        .await?;
    assert!(shown["spec"].get("credentials").is_none(), "{shown}");
    assert!(shown["status"]["secrets"].is_array(), "{shown}");
    // A write that tries to set credentials changes nothing.
    let mut sent = shown.clone();
    sent["spec"]["credentials"] = json!([{"salt": "00".repeat(16), "hash": "11".repeat(32)}]);
    let (status, _) = gw
        .admin
        .send(Method::PUT, "/apis/nio.dev/v1/apikeys/app", Some(sent))
        .await?;
    assert_eq!(status, 200);
    synced(&gw).await?;
    assert_eq!(
        call(&new).await.status,
        200,
        "the stored secret is unchanged"
    );
    Ok(())
}

/// No API-key secret in clear anywhere: not in the control plane's sled
/// files, not in the snapshot a data plane received (its cache), not in
/// either process's logs.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_stored_and_sent_only_hashed() -> anyhow::Result<()> {
    let mut gw = Gateway::start(&[]).await?;
    let _b = plugged(&gw, "keyed", json!([{"kind": "apiKey"}]), &[]).await?;
    let (id, secret) = api_key(&gw, "vault", json!({})).await?;
    synced(&gw).await?;
    let ok = send(
        gw.request(Method::GET, "keyed.test", "/")
            .header("authorization", format!("Bearer {id}.{secret}")),
    )
    .await;
    assert_eq!(ok.status, 200);
    wait_for("the snapshot cached", Duration::from_secs(10), || async {
        Ok((gw.dp.cached_revision() >= gw.admin.revision().await?).then_some(()))
    })
    .await?;
    gw.cp.proc.sigterm()?;
    gw.cp.proc.wait_exit(Duration::from_secs(10)).await?;

    let mut files = 0;
    for dir in [&gw.cp.data_dir, &gw.dp.cache_dir] {
        for entry in walk(dir) {
            let bytes = std::fs::read(&entry)?;
            files += 1;
            assert!(
                !contains(&bytes, secret.as_bytes()),
                "secret in clear in {}",
                entry.display()
            );
        }
    }
    assert!(files >= 2, "looked at {files} files");
    // The snapshot inside the cache, decoded (its resources may be gzip).
    let cached = std::fs::read(gw.dp.cache_dir.join("snapshot.pb"))?;
    let snapshot = <nio_proto::v1::Snapshot as prost::Message>::decode(cached.as_slice())?;
    let config = nio_proto::snapshot::decode(&snapshot)?;
    let text = format!("{config:?}");
    assert!(
        text.contains("vault") && !text.contains(&secret),
        "the key is there, hashed"
    );
    assert!(!gw.cp.proc.log_text().contains(&secret) && !gw.dp.proc.log_text().contains(&secret));
    gw.dp.proc.kill9();
    Ok(())
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn ip_lists_use_the_real_client_address() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--trusted-proxies", "127.0.0.1/32"]).await?;
    let _a = plugged(
        &gw,
        "allowed",
        json!([{"kind": "ipAllowList", "config": {"cidrs": ["10.0.0.0/8", "::1"]}}]),
        &[],
    )
    .await?;
    let _b = plugged(
        &gw,
        "blocked",
        json!([{"kind": "ipBlockList", "config": {"cidrs": ["203.0.113.0/24"]}}]),
        &[],
    )
    .await?;
    let via = |host: &str, xff: &str| {
        send(
            gw.request(Method::GET, host, "/")
                .header("x-forwarded-for", xff.to_string()),
        )
    };
    // Behind the trusted proxy (loopback), the forwarded client counts.
    let s = via("allowed.test", "10.1.2.3").await;
    assert_eq!(s.status, 200);
    let s = via("allowed.test", "192.0.2.1").await;
    assert_eq!((s.status, error_of(&s)), (403, "ip-not-allowed"));
    let s = via("blocked.test", "203.0.113.9").await;
    assert_eq!((s.status, error_of(&s)), (403, "ip-blocked"));
    assert_eq!(via("blocked.test", "198.51.100.1").await.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_and_response_headers() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = plugged(
        &gw,
        "web",
        json!([{"kind": "cors", "config": {
            "allowedOrigins": ["https://app.example.com"], "allowedMethods": ["GET", "PUT"],
            "allowedHeaders": ["x-token"], "exposedHeaders": ["x-total"], "allowCredentials": true, "maxAge": "10m"}}]),
        &[],
    )
    .await?;
    let preflight = |origin: &str, method: &str| {
        send(
            gw.request(Method::OPTIONS, "web.test", "/items")
                .header("origin", origin.to_string())
                .header("access-control-request-method", method.to_string())
                .header("access-control-request-headers", "x-token"),
        )
    };
    let ok = preflight("https://app.example.com", "PUT").await;
    assert_eq!(ok.status, 204);
    let h = &ok.headers;
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, PUT");
    assert_eq!(h["access-control-allow-headers"], "x-token");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    assert_eq!(b.hit_count(), 0, "preflights stay at the gateway");
    let s = preflight("https://evil.example", "PUT").await;
    assert_eq!((s.status, error_of(&s)), (403, "cors-origin-denied"));
    let s = preflight("https://app.example.com", "DELETE").await;
    assert_eq!(s.status, 403);

    let actual = send(
        gw.request(Method::GET, "web.test", "/items")
            .header("origin", "https://app.example.com"),
    )
    .await;
    assert_eq!(actual.status, 200);
    assert_eq!(
        actual.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(actual.headers["access-control-expose-headers"], "x-total");
    let other = send(
        gw.request(Method::GET, "web.test", "/items")
            .header("origin", "https://evil.example"),
    )
    .await;
    assert_eq!(other.status, 200);
    assert!(other.headers.get("access-control-allow-origin").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn methods_maintenance_redirects_and_static_answers() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let _m = plugged(
        &gw,
        "methods",
        json!([{"kind": "allowedMethods", "config": {"methods": ["GET", "HEAD"]}}]),
        &[],
    )
    .await?;
    let s = send(gw.request(Method::POST, "methods.test", "/")).await;
    assert_eq!((s.status, error_of(&s)), (405, "method-not-allowed"));
    assert_eq!(s.headers["allow"], "GET, HEAD");
    assert_eq!(
        send(gw.request(Method::GET, "methods.test", "/"))
            .await
            .status,
        200
    );

    let _r = plugged(&gw, "moved", json!([{"kind": "redirect", "config": {"to": "https://new.example.com", "status": 301, "keepPath": true}}]), &[]).await?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let r = client
        .get(gw.dp.url("/a/b?c=1"))
        .header("host", "moved.test")
        .send()
        .await?;
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "https://new.example.com/a/b?c=1");

    let s_b = plugged(&gw, "mock", json!([{"kind": "staticResponse", "config": {
        "status": 418, "headers": {"content-type": "text/plain", "x-mock": "yes"}, "body": "short and stout"}}]), &[]).await?;
    let r = gw.request(Method::GET, "mock.test", "/").send().await?;
    assert_eq!(r.status(), 418);
    assert_eq!(r.headers()["x-mock"], "yes");
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.text().await?, "short and stout");
    assert_eq!(s_b.hit_count(), 0);

    // Per-route maintenance, then global maintenance for every route.
    let _d = plugged(
        &gw,
        "down",
        json!([{"kind": "maintenance", "config": {"retryAfter": 120}}]),
        &[],
    )
    .await?;
    let s = send(gw.request(Method::GET, "down.test", "/")).await;
    assert_eq!(s.status, 503);
    assert_eq!(s.headers["retry-after"], "120");
    assert_eq!(s.body["error"], "the service is down for maintenance");
    gw.apply(&[resource("GlobalConfig", "global", json!({"plugins": [
        {"kind": "maintenance", "config": {"status": 503, "body": "back soon", "contentType": "text/plain"}}]}))])
        .await?;
    let r = gw.request(Method::GET, "methods.test", "/").send().await?;
    assert_eq!(r.status(), 503);
    assert_eq!(r.text().await?, "back soon");
    gw.apply(&[resource(
        "GlobalConfig",
        "global",
        json!({"plugins": [
        {"kind": "maintenance", "enabled": false}]}),
    )])
    .await?;
    assert_eq!(
        send(gw.request(Method::GET, "methods.test", "/"))
            .await
            .status,
        200
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn public_paths_skip_authentication_and_bodies_are_limited() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let _b = plugged(
        &gw,
        "mixed",
        json!([
            {"kind": "apiKey"},
            {"kind": "publicPaths", "config": {"paths": ["/docs", "/health"]}},
            {"kind": "bodySizeLimit", "config": {"maxBytes": 1000}}
        ]),
        &[],
    )
    .await?;
    let public = send(
        gw.request(Method::GET, "mixed.test", "/docs/intro")
            .header("nio-client-id", "admin")
            .header("nio-client-meta-plan", "gold"),
    )
    .await;
    assert_eq!(public.status, 200);
    let h = &public.body["headers"];
    assert!(
        h.get("nio-client-id").is_none() && h.get("nio-client-meta-plan").is_none(),
        "identity headers are the gateway's, even on public paths: {h}"
    );
    assert_eq!(
        send(gw.request(Method::GET, "mixed.test", "/api"))
            .await
            .status,
        401
    );
    assert_eq!(
        send(gw.request(Method::GET, "mixed.test", "/docsx"))
            .await
            .status,
        401
    );

    let big = send(
        gw.request(Method::POST, "mixed.test", "/docs")
            .body(vec![1u8; 5000]),
    )
    .await;
    assert_eq!((big.status, error_of(&big)), (413, "body-too-large"));
    let fits = send(
        gw.request(Method::POST, "mixed.test", "/docs")
            .body(vec![1u8; 1000]),
    )
    .await;
    assert_eq!(fits.status, 200);
    // Without a Content-Length (chunked), the limit holds as it streams.
    let chunks =
        futures_util::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![2u8; 400])));
    let streamed = send(
        gw.request(Method::POST, "mixed.test", "/docs")
            .body(reqwest::Body::wrap_stream(chunks)),
    )
    .await;
    assert_eq!(
        (streamed.status, error_of(&streamed)),
        (413, "body-too-large")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_are_compressed_when_the_client_accepts_it() -> anyhow::Result<()> {
    use std::io::Read;
    let gw = Gateway::start(&[]).await?;
    let _b = plugged(
        &gw,
        "zip",
        json!([{"kind": "compression", "config": {"minSize": 100}}]),
        &[],
    )
    .await?;
    let padding = "x".repeat(3000);
    let raw = |enc: &str| {
        gw.request(Method::GET, "zip.test", &format!("/{padding}"))
            .header("accept-encoding", enc.to_string())
            .send()
    };
    let plain: Value = serde_json::from_str(
        &gw.request(Method::GET, "zip.test", &format!("/{padding}"))
            .send()
            .await?
            .text()
            .await?,
    )?;

    let r = raw("gzip").await?;
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert!(r.headers()["vary"].to_str()?.contains("Accept-Encoding"));
    let bytes = r.bytes().await?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..]).read_to_string(&mut text)?;
    let unzipped: Value = serde_json::from_str(&text)?;
    assert_eq!(unzipped["path"], plain["path"]);
    assert!(
        bytes.len() * 4 < text.len(),
        "{} → {}",
        text.len(),
        bytes.len()
    );

    let r = raw("br;q=1, gzip;q=0.5").await?;
    assert_eq!(r.headers()["content-encoding"], "br");
    let bytes = r.bytes().await?;
    let mut text = String::new();
    brotli_decompressor::Decompressor::new(&bytes[..], 4096).read_to_string(&mut text)?;
    assert_eq!(serde_json::from_str::<Value>(&text)?["path"], plain["path"]);

    // Not accepted, or too small: sent as is.
    let r = raw("identity").await?;
    assert!(r.headers().get("content-encoding").is_none());
    let _big = plugged(
        &gw,
        "zipbig",
        json!([{"kind": "compression", "config": {"minSize": 1_000_000}}]),
        &[],
    )
    .await?;
    let r = gw
        .request(Method::GET, "zipbig.test", "/small")
        .header("accept-encoding", "gzip")
        .send()
        .await?;
    assert!(
        r.headers().contains_key("content-length"),
        "the echo's length is known"
    );
    assert!(
        r.headers().get("content-encoding").is_none(),
        "under minSize: not compressed"
    );
    Ok(())
}
