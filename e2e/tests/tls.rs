//! TLS on the data plane with real TLS clients: certificates chosen by SNI
//! and replaced without a restart, ALPN, client certificates (mTLS) per
//! route, redirects to HTTPS, and TLS toward backends with a private CA.

#![allow(clippy::unwrap_used)]

use anyhow::{Context, Result};
use nio_e2e::{backend_with, resource, route, wait_for, Gateway, TestBackend};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A test certificate authority.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `names` (the first is the CN), and its key.
    fn issue(&self, names: &[&str]) -> (String, String) {
        self.issue_valid(names, -1, 90)
    }

    fn issue_valid(&self, names: &[&str], from_days: i64, to_days: i64) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from_days);
        params.not_after = now + time::Duration::days(to_days);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn certificate(name: &str, cert: &str, key: Option<&str>, default: bool) -> Value {
    let mut spec = json!({"certificate": cert});
    if let Some(k) = key {
        spec["privateKey"] = json!(k);
    }
    if default {
        spec["default"] = json!(true);
    }
    resource("Certificate", name, spec)
}

/// A TLS client trusting `ca`, resolving each name to `addr`, with an
/// optional client certificate (PEM chain + key).
fn client(
    ca: &Ca,
    names: &[&str],
    addr: SocketAddr,
    identity: Option<&(String, String)>,
) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .tls_info(true)
        .timeout(Duration::from_secs(10));
    for n in names {
        b = b.resolve(n, addr);
    }
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The DER of the certificate the server presented.
fn served(resp: &reqwest::Response) -> Vec<u8> {
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .map(<[u8]>::to_vec)
        .unwrap_or_default()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

async fn echo(resp: reqwest::Response) -> Result<Value> {
    Ok(serde_json::from_str(&resp.text().await?)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_by_sni_replaced_hot_with_alpn() -> Result<()> {
    let (gw, _svc) = Gateway::with_echo(&["--https-listen", "127.0.0.1:0"]).await?;
    let https = gw.dp.https.context("https listener")?;
    let ca = Ca::new("Nio Test CA");
    let a = ca.issue(&["a.test"]);
    let b = ca.issue(&["*.b.test"]);
    gw.apply(&[
        certificate("a", &a.0, Some(&a.1), false),
        certificate("b", &b.0, Some(&b.1), false),
        route("a", &["a.test"], &["/"], "svc"),
        route("b", &["*.b.test"], &["/"], "svc"),
    ])
    .await?;
    let port = https.port();
    let names = ["a.test", "x.b.test", "other.test"];
    let old = client(&ca, &names, https, None);

    // Each host gets its own certificate; h2 is chosen by ALPN.
    let resp = old.get(format!("https://a.test:{port}/one")).send().await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(served(&resp), der(&a.0));
    let body = echo(resp).await?;
    assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
    let resp = old.get(format!("https://x.b.test:{port}/")).send().await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(served(&resp), der(&b.0), "the wildcard certificate");

    // No certificate for the name and no default: the handshake fails.
    let refused = old.get(format!("https://other.test:{port}/")).send().await;
    assert!(refused.is_err(), "{refused:?}");

    // HTTP/1.1 clients get HTTP/1.1 by ALPN.
    let h1 = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes())?)
        .resolve("a.test", https)
        .http1_only()
        .build()?;
    let resp = h1.get(format!("https://a.test:{port}/")).send().await?;
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, reqwest::Version::HTTP_11)
    );

    // Replaced through the admin API: the next handshake gets the new one,
    // while the open (pooled, HTTP/2) connection keeps working on the old.
    let a2 = ca.issue(&["a.test"]);
    gw.apply(&[certificate("a", &a2.0, Some(&a2.1), false)])
        .await?;
    let resp = old.get(format!("https://a.test:{port}/two")).send().await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(served(&resp), der(&a.0), "same connection as before");
    let fresh = client(&ca, &names, https, None);
    let resp = fresh.get(format!("https://a.test:{port}/")).send().await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(served(&resp), der(&a2.0), "a new handshake");

    // A default certificate answers names nothing else claims.
    let d = ca.issue(&["default.test"]);
    gw.apply(&[certificate("fallback", &d.0, Some(&d.1), true)])
        .await?;
    let resp = fresh
        .get(format!("https://other.test:{port}/"))
        .send()
        .await;
    // The certificate does not name other.test, so the client refuses it —
    // but the server offered the default one.
    let err = format!("{:?}", resp.expect_err("name mismatch"));
    assert!(
        err.contains("NotValidForName") || err.contains("not valid for"),
        "{err}"
    );

    // The same with curl, a client built on another TLS stack.
    if let Ok(out) = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .args(["--resolve", &format!("x.b.test:{port}:127.0.0.1")])
        .args(["--cacert", &write_temp(&gw, "ca.pem", &ca.pem())?])
        .arg(format!("https://x.b.test:{port}/"))
        .output()
    {
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text,
            "200 2",
            "curl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let metrics = gw.metrics().await?;
    assert!(metrics.contains("nio_tls_handshake_failures_total"));
    Ok(())
}

fn write_temp(gw: &Gateway, name: &str, text: &str) -> Result<String> {
    let path = gw.dir.path().join(name);
    std::fs::write(&path, text)?;
    Ok(path.to_string_lossy().into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_per_route_and_https_redirects() -> Result<()> {
    let (gw, _svc) = Gateway::with_echo(&["--https-listen", "127.0.0.1:0"]).await?;
    let https = gw.dp.https.context("https listener")?;
    let port = https.port();
    let server_ca = Ca::new("Server CA");
    let clients_ca = Ca::new("Partner CA");
    let foreign_ca = Ca::new("Someone Else");
    let serving = server_ca.issue(&["api.test"]);
    let mut mtls = route("mtls", &["api.test"], &["/partner"], "svc");
    mtls["spec"]["tls"] = json!({"clientAuth": "required", "clientCa": "partners",
                                 "clientSubjectHeader": "X-Client-Subject", "redirectHttp": true});
    let mut open = route("open", &["api.test"], &["/"], "svc");
    open["spec"]["tls"] = json!({"redirectHttp": true});
    gw.apply(&[
        certificate("api", &serving.0, Some(&serving.1), false),
        certificate("partners", &clients_ca.pem(), None, false),
        mtls,
        open,
    ])
    .await?;
    let url = format!("https://api.test:{port}/partner/orders");

    // No client certificate: refused by the route, in the gateway's format.
    let anonymous = client(&server_ca, &["api.test"], https, None);
    let resp = anonymous.get(&url).send().await?;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-nio-error"], "client-certificate-required");
    // ...while the open route on the same host serves it.
    let resp = anonymous
        .get(format!("https://api.test:{port}/"))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);

    // A certificate from the route's CA: served, its subject passed on
    // (and a forged header replaced).
    let alice = clients_ca.issue(&["alice.partner.test"]);
    let partner = client(&server_ca, &["api.test"], https, Some(&alice));
    let resp = partner
        .get(&url)
        .header("X-Client-Subject", "CN=forged")
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let body = echo(resp).await?;
    assert_eq!(
        body["headers"]["x-client-subject"], "CN=alice.partner.test",
        "{body}"
    );
    let log = wait_for("the access log line", Duration::from_secs(10), || {
        let lines = gw.access_log();
        async move {
            Ok(lines
                .into_iter()
                .find(|l| l["path"] == "/partner/orders" && l["status"] == 200))
        }
    })
    .await?;
    assert_eq!(log["clientCertificate"], "CN=alice.partner.test", "{log}");

    // A certificate from another CA fails the handshake.
    let mallory = foreign_ca.issue(&["mallory.test"]);
    let stranger = client(&server_ca, &["api.test"], https, Some(&mallory));
    assert!(stranger.get(&url).send().await.is_err());

    // Plain HTTP: redirected to the HTTPS port (308 keeps a POST a POST).
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let resp = plain
        .get(gw.dp.url("/partner/orders?x=1"))
        .header("Host", "api.test")
        .send()
        .await?;
    assert_eq!(resp.status(), 301);
    assert_eq!(
        resp.headers()["location"],
        format!("https://api.test:{port}/partner/orders?x=1").as_str()
    );
    let resp = plain
        .post(gw.dp.url("/"))
        .header("Host", "api.test:80")
        .send()
        .await?;
    assert_eq!(resp.status(), 308);
    Ok(())
}

/// A TLS server in front of `backend`, with `cert` (and asking for client
/// certificates from `client_ca` when given): a backend that speaks TLS.
async fn tls_front(
    backend: SocketAddr,
    cert: &(String, String),
    client_ca: Option<&Ca>,
) -> Result<SocketAddr> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = vec![CertificateDer::from_pem_slice(cert.0.as_bytes())?];
    let key = PrivateKeyDer::from_pem_slice(cert.1.as_bytes())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let config = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(ca.pem().as_bytes())?)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    }
    .with_single_cert(chain, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread")]
async fn backends_over_tls_with_a_private_ca() -> Result<()> {
    let svc = TestBackend::start("secure").await?;
    let gw = Gateway::start(&[]).await?;
    let ca = Ca::new("Backend CA");
    let other = Ca::new("Wrong CA");
    let good = tls_front(svc.addr, &ca.issue(&["localhost", "127.0.0.1"]), None).await?;
    let bad = tls_front(svc.addr, &other.issue(&["localhost", "127.0.0.1"]), None).await?;
    let client_ca = Ca::new("Backend client CA");
    let mutual = tls_front(svc.addr, &ca.issue(&["localhost"]), Some(&client_ca)).await?;
    let gateway_id = client_ca.issue(&["nio-gateway"]);
    let tls = |extra: Value| json!({"tls": extra});
    gw.apply(&[
        certificate("backend-ca", &ca.pem(), None, false),
        certificate("gateway-client", &gateway_id.0, Some(&gateway_id.1), false),
        backend_with(
            "good",
            vec![json!({"url": format!("https://{good}")})],
            &tls(json!({"ca": "backend-ca"})),
        ),
        backend_with(
            "bad",
            vec![json!({"url": format!("https://{bad}")})],
            &tls(json!({"ca": "backend-ca"})),
        ),
        backend_with(
            "skip",
            vec![json!({"url": format!("https://{bad}")})],
            &tls(json!({"dangerouslySkipVerify": true})),
        ),
        backend_with(
            "mutual",
            vec![json!({"url": format!("https://localhost:{}", mutual.port())})],
            &tls(json!({"ca": "backend-ca", "clientCertificate": "gateway-client"})),
        ),
        backend_with(
            "anonymous",
            vec![json!({"url": format!("https://localhost:{}", mutual.port())})],
            &tls(json!({"ca": "backend-ca"})),
        ),
        route("good", &["good.test"], &["/"], "good"),
        route("bad", &["bad.test"], &["/"], "bad"),
        route("skip", &["skip.test"], &["/"], "skip"),
        route("mutual", &["mutual.test"], &["/"], "mutual"),
        route("anonymous", &["anonymous.test"], &["/"], "anonymous"),
    ])
    .await?;

    let (status, body) = gw.get("good.test", "/x").await?;
    assert_eq!(
        (status, body["backend"].as_str()),
        (200, Some("secure")),
        "{body}"
    );
    // A certificate the Backend's CA did not issue: 502, and a log line
    // that says why.
    let (status, body) = gw.get("bad.test", "/").await?;
    assert_eq!(status, 502, "{body}");
    wait_for("the log line", Duration::from_secs(10), || {
        let found = gw
            .dp
            .proc
            .log_text()
            .lines()
            .any(|l| l.contains("cannot connect to the target") && l.contains("UnknownIssuer"));
        async move { Ok(found.then_some(())) }
    })
    .await?;
    // Explicitly skipped verification (development only) gets through.
    let (status, _) = gw.get("skip.test", "/").await?;
    assert_eq!(status, 200);
    assert!(gw.dp.proc.logged("dangerouslySkipVerify"));
    // Backend mTLS: with the client certificate served, without refused.
    let (status, body) = gw.get("mutual.test", "/").await?;
    assert_eq!(status, 200, "{body}");
    let (status, _) = gw.get("anonymous.test", "/").await?;
    assert_eq!(status, 502);

    // Replacing the CA rebuilds the pool: the good backend is now refused.
    gw.apply(&[certificate("backend-ca", &other.pem(), None, false)])
        .await?;
    let (status, _) = gw.get("good.test", "/").await?;
    assert_eq!(status, 502);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_certificate_uploads_say_what_is_wrong() -> Result<()> {
    let gw = Gateway::start(&[]).await?;
    let ca = Ca::new("CA");
    let (cert, key) = ca.issue(&["a.test"]);
    let (_, other_key) = ca.issue(&["a.test"]);
    let (expired, expired_key) = ca.issue_valid(&["a.test"], -60, -1);
    let cases = [
        (
            certificate("c", "not a certificate", None, false),
            "spec.certificate: no certificate found",
        ),
        (
            certificate(
                "c",
                &cert,
                Some("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
                false,
            ),
            "spec.privateKey",
        ),
        (
            certificate("c", &cert, Some(&other_key), false),
            "this private key does not belong to the certificate",
        ),
        (
            certificate("c", &expired, Some(&expired_key), false),
            "the certificate is not valid now",
        ),
        (
            certificate("c", &ca.pem(), None, true),
            "spec.default: a default certificate is served, so it needs its privateKey",
        ),
    ];
    for (doc, want) in cases {
        let (status, body) = gw
            .admin
            .send(
                reqwest::Method::POST,
                "/apis/nio.dev/v1/certificates",
                Some(doc),
            )
            .await?;
        assert_eq!(status, 422, "{body}");
        assert!(body.to_string().contains(want), "want {want:?} in {body}");
    }
    let (status, _) = gw
        .admin
        .send(
            reqwest::Method::POST,
            "/apis/nio.dev/v1/certificates",
            Some(certificate("c", &cert, Some(&key), false)),
        )
        .await?;
    assert_eq!(status, 201);
    // A Backend naming a missing CA is refused with the field.
    let (status, body) = gw
        .admin
        .send(
            reqwest::Method::POST,
            "/apis/nio.dev/v1/backends",
            Some(backend_with(
                "b",
                vec![json!({"url": "https://127.0.0.1:1"})],
                &json!({"tls": {"ca": "nope"}}),
            )),
        )
        .await?;
    assert_eq!(status, 422);
    assert!(
        body.to_string()
            .contains("spec.tls.ca: Certificate \\\"nope\\\" does not exist"),
        "{body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_over_tls() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("Admin CA");
    let (cert, key) = ca.issue(&["localhost", "127.0.0.1"]);
    let (cert_file, key_file) = (
        dir.path().join("admin.pem"),
        dir.path().join("admin-key.pem"),
    );
    std::fs::write(&cert_file, cert)?;
    std::fs::write(&key_file, key)?;
    let cp = nio_e2e::ControlPlane::start_with_flags(
        &dir.path().join("cp"),
        &[
            "--admin-tls-cert",
            cert_file.to_str().unwrap(),
            "--admin-tls-key",
            key_file.to_str().unwrap(),
        ],
    )
    .await?;
    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes())?)
        .build()?;
    let resp = https
        .get(format!(
            "https://127.0.0.1:{}/api/v1/revision",
            cp.admin.port()
        ))
        .bearer_auth(&cp.token)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    // Plain HTTP on the TLS port gets nowhere.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", cp.admin))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status() != 200));
    Ok(())
}
