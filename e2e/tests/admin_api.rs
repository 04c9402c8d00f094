//! The admin API against a real control-plane process: authentication,
//! validation messages, optimistic concurrency, formats, and durability of
//! acknowledged writes across SIGKILL.

#![allow(clippy::unwrap_used)]

use nio_e2e::*;
use reqwest::Method;
use serde_json::json;

async fn cp() -> anyhow::Result<(tempfile::TempDir, ControlPlane)> {
    let dir = tempfile::tempdir()?;
    let cp = ControlPlane::start(&dir.path().join("cp")).await?;
    Ok((dir, cp))
}

#[tokio::test(flavor = "multi_thread")]
async fn requires_the_admin_token() -> anyhow::Result<()> {
    let (_dir, cp) = cp().await?;
    let http = reqwest::Client::new();
    let url = format!("http://{}/apis/nio.dev/v1/routes", cp.admin);
    let r = http.get(&url).send().await?;
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await?;
    assert!(body["error"].as_str().unwrap().contains("admin token"));
    let r = http.get(&url).bearer_auth("not-the-token").send().await?;
    assert_eq!(r.status(), 401);
    let r = http.get(&url).bearer_auth(&cp.token).send().await?;
    assert_eq!(r.status(), 200);
    // Health needs no token; the token never appears in the logs.
    let r = http
        .get(format!("http://{}/healthz", cp.admin))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert!(!cp.proc.log_text().contains(&cp.token));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_resources_get_422_naming_the_field() -> anyhow::Result<()> {
    let (_dir, cp) = cp().await?;
    let admin = cp.admin();
    let (s, v) = admin
        .send(
            Method::POST,
            "/apis/nio.dev/v1/routes",
            Some(route(
                "orders",
                &["api.example.com"],
                &["/orders"],
                "orders-v2",
            )),
        )
        .await?;
    assert_eq!(s, 422, "{v}");
    assert_eq!(v["details"][0]["field"], "spec.backend");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("backend \"orders-v2\" does not exist"),
        "{v}"
    );

    let (s, v) = admin
        .send(
            Method::POST,
            "/apis/nio.dev/v1/backends",
            Some(backend("empty", &[])),
        )
        .await?;
    assert_eq!(s, 422);
    assert_eq!(v["details"][0]["field"], "spec.targets");

    let (s, v) = admin
        .send(
            Method::POST,
            "/apis/nio.dev/v1/routes",
            Some(route("r", &["bad host!"], &["/"], "x")),
        )
        .await?;
    assert_eq!(s, 422);
    assert_eq!(v["details"][0]["field"], "spec.frontend.hosts[0]");

    let (s, v) = admin
        .send(
            Method::POST,
            "/apis/nio.dev/v1/backends",
            Some(json!({
            "apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "b"},
            "spec": {"targets": [{"url": "http://x:1", "wieght": 2}]}})),
        )
        .await?;
    assert_eq!(s, 422);
    assert!(v["error"].as_str().unwrap().contains("wieght"), "{v}");

    // Unparseable body: 400.
    let r = admin
        .request(Method::POST, "/apis/nio.dev/v1/backends")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let (s, _) = admin
        .send(Method::GET, "/apis/nio.dev/v1/gadgets", None)
        .await?;
    assert_eq!(s, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn crud_with_yaml_patch_and_optimistic_concurrency() -> anyhow::Result<()> {
    let (_dir, cp) = cp().await?;
    let admin = cp.admin();
    // The DESIGN.md minimal pair, as YAML, exactly as written.
    for doc in [
        "apiVersion: nio.dev/v1\nkind: Backend\nmetadata: {name: orders}\nspec:\n  targets:\n    - url: http://10.0.0.12:8080\n    - url: http://10.0.0.13:8080\n      weight: 2\n",
        "apiVersion: nio.dev/v1\nkind: Route\nmetadata: {name: orders-api}\nspec:\n  frontend:\n    hosts: [api.example.com]\n    paths: [/orders]\n  backend: orders\n",
    ] {
        let plural = if doc.contains("kind: Route") { "routes" } else { "backends" };
        let r = admin
            .request(Method::POST, &format!("/apis/nio.dev/v1/{plural}"))
            .header("content-type", "application/yaml")
            .body(doc)
            .send()
            .await?;
        assert_eq!(r.status(), 201, "{}", r.text().await?);
    }
    let (s, v) = admin
        .send(
            Method::POST,
            "/apis/nio.dev/v1/backends",
            Some(backend("orders", &["http://10.0.0.1:1".into()])),
        )
        .await?;
    assert_eq!(s, 409, "{v}");

    let (_, b) = admin
        .send(Method::GET, "/apis/nio.dev/v1/backends/orders", None)
        .await?;
    assert_eq!(b["metadata"]["resourceVersion"], "1");
    assert_eq!(b["spec"]["targets"][1]["weight"], 2);

    // A stale resourceVersion (in the body or If-Match) is a conflict.
    let mut stale = b.clone();
    stale["metadata"]["resourceVersion"] = json!("0");
    let (s, v) = admin
        .send(Method::PUT, "/apis/nio.dev/v1/backends/orders", Some(stale))
        .await?;
    assert_eq!(s, 409);
    assert!(
        v["error"].as_str().unwrap().contains("current one is 1"),
        "{v}"
    );
    let r = admin
        .request(Method::PATCH, "/apis/nio.dev/v1/backends/orders")
        .header("if-match", "\"7\"")
        .json(&json!({"metadata": {"labels": {"team": "shop"}}}))
        .send()
        .await?;
    assert_eq!(r.status(), 409);

    // Merge patch with the right version.
    let r = admin
        .request(Method::PATCH, "/apis/nio.dev/v1/backends/orders")
        .header("if-match", "\"1\"")
        .json(&json!({"metadata": {"labels": {"team": "shop"}}}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let patched: serde_json::Value = r.json().await?;
    assert_eq!(patched["metadata"]["labels"]["team"], "shop");
    assert_eq!(patched["metadata"]["resourceVersion"], "3");

    // YAML out, label selector.
    let r = admin
        .request(
            Method::GET,
            "/apis/nio.dev/v1/backends?labelSelector=team=shop",
        )
        .header("accept", "application/yaml")
        .send()
        .await?;
    let text = r.text().await?;
    assert!(
        text.contains("kind: BackendList") && text.contains("name: orders"),
        "{text}"
    );

    // Deleting a backend in use is refused; in order it works.
    let (s, v) = admin
        .send(Method::DELETE, "/apis/nio.dev/v1/backends/orders", None)
        .await?;
    assert_eq!(s, 409);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("route \"orders-api\""),
        "{v}"
    );
    let (s, _) = admin
        .send(Method::DELETE, "/apis/nio.dev/v1/routes/orders-api", None)
        .await?;
    assert_eq!(s, 200);
    let (s, _) = admin
        .send(Method::DELETE, "/apis/nio.dev/v1/backends/orders", None)
        .await?;
    assert_eq!(s, 200);
    let (s, _) = admin
        .send(Method::GET, "/apis/nio.dev/v1/backends/orders", None)
        .await?;
    assert_eq!(s, 404);
    assert_eq!(admin.revision().await?, 5);
    Ok(())
}

/// Every write that was answered 2xx is there after SIGKILL + restart.
#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_sigkill() -> anyhow::Result<()> {
    let (_dir, mut cp) = cp().await?;
    for round in 0..5 {
        let admin = cp.admin();
        let mut acked = Vec::new();
        // Concurrent writers, killed right after the last acknowledgement.
        let mut tasks = Vec::new();
        for i in 0..10 {
            let admin = admin.clone();
            let name = format!("b-{round}-{i}");
            tasks.push(tokio::spawn(async move {
                admin
                    .create(backend(&name, &[format!("http://127.0.0.1:{}", 1000 + i)]))
                    .await
                    .map(|_| name)
            }));
        }
        for t in tasks {
            acked.push(t.await??);
        }
        cp.restart().await?;
        let admin = cp.admin();
        for name in &acked {
            let (s, v) = admin
                .send(
                    Method::GET,
                    &format!("/apis/nio.dev/v1/backends/{name}"),
                    None,
                )
                .await?;
            assert_eq!(s, 200, "{name} lost after SIGKILL: {v}");
        }
        assert_eq!(admin.revision().await?, 10 * (round + 1));
    }
    Ok(())
}

/// A Certificate is checked on write, described on read (subject, SANs,
/// expiry), and its private key is never returned; a write without the key
/// keeps the stored one.
#[tokio::test(flavor = "multi_thread")]
async fn certificates_are_described_never_shown() -> anyhow::Result<()> {
    let (_dir, cp) = cp().await?;
    let admin = cp.admin();
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["api.test".to_string()])?.self_signed(&key)?;
    let (pem, key_pem) = (cert.pem(), key.serialize_pem());
    let doc = |private_key: Option<&str>| {
        json!({"apiVersion": "nio.dev/v1", "kind": "Certificate", "metadata": {"name": "api"},
               "spec": {"certificate": pem, "privateKey": private_key}})
    };
    let created = admin.create(doc(Some(&key_pem))).await?;
    assert!(created["spec"].get("privateKey").is_none(), "{created}");
    assert_eq!(created["status"]["sans"], json!(["api.test"]));
    assert_eq!(created["status"]["hasPrivateKey"], true);

    let (status, got) = admin
        .send(Method::GET, "/apis/nio.dev/v1/certificates/api", None)
        .await?;
    assert_eq!(status, 200);
    assert!(!got.to_string().contains("PRIVATE KEY"), "{got}");
    // Sent back as read (no key, a status): accepted, the key stays.
    let (status, replaced) = admin
        .send(Method::PUT, "/apis/nio.dev/v1/certificates/api", Some(got))
        .await?;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["status"]["hasPrivateKey"], true);

    // A key that is not the certificate's is refused, naming the field.
    let other = rcgen::KeyPair::generate()?.serialize_pem();
    let (status, err) = admin
        .send(
            Method::PUT,
            "/apis/nio.dev/v1/certificates/api",
            Some(doc(Some(&other))),
        )
        .await?;
    assert_eq!(status, 422, "{err}");
    assert!(err.to_string().contains("spec.privateKey"), "{err}");
    Ok(())
}

/// A JwtVerifier's HMAC secrets can mint tokens: the admin API never shows
/// them, a write without them keeps them, and an export carries them only
/// when asked for secrets.
#[tokio::test(flavor = "multi_thread")]
async fn jwt_secrets_are_never_shown() -> anyhow::Result<()> {
    let (_dir, cp) = cp().await?;
    let admin = cp.admin();
    let secret = "a-shared-hmac-secret-of-32-bytes!!";
    let created = admin
        .create(
            json!({"apiVersion": "nio.dev/v1", "kind": "JwtVerifier", "metadata": {"name": "v"},
            "spec": {"algorithms": ["HS256"], "keys": [{"kid": "k1", "secret": secret}]}}),
        )
        .await?;
    assert!(!created.to_string().contains(secret), "{created}");
    let (_, got) = admin
        .send(Method::GET, "/apis/nio.dev/v1/jwtverifiers/v", None)
        .await?;
    assert!(!got.to_string().contains(secret), "{got}");
    let (status, put) = admin
        .send(Method::PUT, "/apis/nio.dev/v1/jwtverifiers/v", Some(got))
        .await?;
    assert_eq!(status, 200, "sent back without the secret: {put}");
    let (_, without) = admin.send(Method::GET, "/api/v1/export", None).await?;
    assert!(!without.to_string().contains(secret));
    let (_, with) = admin
        .send(Method::GET, "/api/v1/export?includeSecrets=true", None)
        .await?;
    assert!(
        with.to_string().contains(secret),
        "the stored secret is intact"
    );
    Ok(())
}
