//! The `jwt` plugin through a real data plane: tokens verified per
//! algorithm family (HS256, RS256, PS256, ES256, EdDSA) with inline keys,
//! the time, issuer, audience and claim checks, the RFC 6750 challenges,
//! claims forwarded to the backend (and client copies dropped), keys from a
//! JWKS served by a test server, rotated through the unknown-`kid` refresh
//! and by the background refresh, and verifiers refused at write time.
//!
//! The keys below were generated once with `openssl genpkey` for these
//! tests and protect nothing.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use nio_e2e::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// RSA key A (private, PKCS#8).
const RSA_A: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCu8wOAnjon11cq
lXJbfP96wsS9htYSmgEJzVDLo1kIvUsHz5cAKCzrIhzcKT1T9KnH3pkFSi3hwYHn
L9xi4LhHNAsPaa9gWEBre4vqFU42XDn3FjgMx3OVTaGeELebRsVZPYJha6VSEcLJ
0HF/nc78TAH9XO2J87C3dhhDr3wMo5tVnAgTeBaizVhgimkzYArwsIe5lxJ98pFQ
Wp3TyRHQyIjvIZF1qIWK1qNe1W6jNF5qLx6lhIu0irj9UCoehJr6t174eDLNonhL
i/2Y8VkW8YXn+UwSATwILyt92+WljsFudNpXo5U7ZKccUDmdK7AC6ABwJJTBVynK
Y4HmhWinAgMBAAECggEAHBPYXg4G21oOHUF65v/6qKMVnC1FshqRTBdtfiErKuHm
ZsyEOXw5KUuCQjtEInNDxFYPTPAIyRCbXpUp05ypNpQ9qi2V/epr/FQJsnnU4ZiP
nP4t5K8l97JL2+hm7z6+cYITqLrz/2XmUylm7cpP6+Hu99CwNtGrbOZBIqvJRuW+
3Z43StaIrhq+4WH5YdfFtSptyJB+4lo8mkANL6THeyIUTX9K7VtzGjUVuhHGWtDL
u5lOdzJ0W7KHjjENYz9iH44dhGm8BJFNJLELYYMGVnfsr6M022YDF+41OLp6aMUp
Oc699FBdyURwZmEcBpazn/KmBBKKZEQq8YVhle94QQKBgQDmYZuGSoPtIGk6RpX+
LmIiDm6WbFAgB/LQM7niPRT1bdFgLKR5TF3ekIMRudPAZdihXkWRMdZ3C2xq6ixn
ylc2IaTm2YjNEqOtnM7ATJMHkF9YC2kgx/ylGgkfXR8C5+u1sQcoTBObjmCGIviV
u7XvnuYC0trS0HWbiqIP6K0UtwKBgQDCZ2Rr8404DHUIoY1Y3exx8IRdllYyZ15D
wMF1WmRMrYC8/vUHG6cIZEt9ajcSEJhH9xnv9v35DmWKLNO98MHUcd42DSMVWt80
2be8rSGevfXxHxv2KoztCzoGs6ge+WysEC7CkfSwRxP1GEPd6as+c7lpd+O3W6sB
n+M/9327kQKBgCwnzxg5FfoP+TsrJjp2h2aBn56DGgRZoadYEquTC35S0wt84vVA
tskep5BxLm2014VuPSUsCS/954TCZ0ppVLfSUPnR/c9YYDi5UkM3KgMMH8oPPdID
op++UrtJLNVwwBOt33JQyn1JF6T99Ok19hP8P5eQ9FHtlG0AcDleXjYXAoGAAZ9h
TDFdNWGNPIQ0rNA1YAIU6L8Pex43wDMEqlkVyzoLgAhUvTly3HQR2TsguIrg6oDa
e5FBL2n6WPvkzIoM5BwLMcJMT6pRgJxslyuOw0dsnRWYYyaZxIS6eEHZnmCQkqMT
8NXNCAef2ATa1ChWIJBQtNumT+p48+uEtwz2xLECgYARALEgpz/x4TFH6ERxXJP1
8t+vDhd2wmR4FN7gk5wUwk7dh9iSPcQ5eSyrA/YCEVBxVV2d4jLYzCxfj2HAme/Q
uT18E9YNaweJdNFxJ/7nRvwb+mfHObwp05A5j6B+p+yLzHAY1lQ6kmVYMq3WMIHw
WO1rSJOttN9ULAHdXeVPCw==
-----END PRIVATE KEY-----
";
/// RSA key A (public).
const RSA_A_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEArvMDgJ46J9dXKpVyW3z/
esLEvYbWEpoBCc1Qy6NZCL1LB8+XACgs6yIc3Ck9U/Spx96ZBUot4cGB5y/cYuC4
RzQLD2mvYFhAa3uL6hVONlw59xY4DMdzlU2hnhC3m0bFWT2CYWulUhHCydBxf53O
/EwB/VztifOwt3YYQ698DKObVZwIE3gWos1YYIppM2AK8LCHuZcSffKRUFqd08kR
0MiI7yGRdaiFitajXtVuozReai8epYSLtIq4/VAqHoSa+rde+HgyzaJ4S4v9mPFZ
FvGF5/lMEgE8CC8rfdvlpY7BbnTaV6OVO2SnHFA5nSuwAugAcCSUwVcpymOB5oVo
pwIDAQAB
-----END PUBLIC KEY-----
";
/// RSA key B (private).
const RSA_B: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC5Uom60oGYzyAF
TaFcFLBYd9RgSP48BZLVlBQgGlqHGWsHhd7ppdKNc9qdcjmAiN9seKNAun6gaMlu
OYD+CFYmIuMNJa4fb8ipBqQPVYOoCgL/93ibKawP8wND4hnyM6oGbfuSUr3ZCyS1
4iO+rzqXCsPSWhwXk4fLBi1yCP1EVWm6jFLJh4cL8Gmn6fnflZbkU1b4OXNP9IcI
JAsUHuSufWdFqztCTa14KDmN0FVeq6v/iOr9anJMhv4ePoxY1r7tH7aqCtEsjlLZ
1uJMt1RlSfk9lIfETvXnsfjuzCDrnJlgA8eT3JQMoAI9W3G2R6V+NTed5jiaQN1Q
fXPpdDDPAgMBAAECggEAB2QLoCAYZmAO9ocuYei6plyTuLSl3FObPoSlpNNy5s5p
s/wadBZWkP5HgAiifcYiUEYjZJ0gwwRK0ZLeL8NkrtKssW/eQ4dcE6RIfgq6scSX
HV7g4syaUxctpdMU69GJp1tS3CFhTDr4iinBo9ot1lY/PFq29229Iv3/vqYty5V2
+MBlGg20XgWxA5MOGydi5Z39smoCSK972h8K9jl5mTFJlWYlSxK6BkzbrZ7HVwXx
PuK/+tCOCzUqMgEP0Ukh2R2V6jgjMbUpyXOGnBDUXon6yGYItJxB5B05dof/xZPe
hse/LZrfZcPcxSdWCRz9vyPzOlnU38ZlGTk6lFpi8QKBgQDzVEHTVGeDpqZwx+AR
DFcUBSLlgflxyrTHZMT7hLE57E5l0S4phcNedO0y7CBzbBz8F7Hp1GXV6DAqYVE4
tJzJYJluU63BGi6qaKy2Jxap9m7TdE0jxYlM/3Oo8dpts7eqCcQ1llJ0S4KjTvM6
+EWKGiA7kaxS6XIasl9mQ/C4eQKBgQDC+QMLN1bz6gibBCRBeqbzN2KHTAf6NFXM
mxa8PyrRxhzXmOLM/Tc9gpr7rhTemqOOXAFMS5srOLMmv2IYvdP7yxHrPeeE1uKQ
c0Gbv46JILFsZsMvXguTx5VMQeLQrSvvoebVq3SK+eX6gG9pJAiNdAtZhlPECRi4
7PcOomHxhwKBgQCJy4gvXdf05NXSfk30OZHCY5o8cBtLhmhTlkw6xwz56UkIPaov
l3FotzxwHunNk0bit6Rn74Dv3roP9eZh/13eaFba9IYsGWCd3gMYcBBUlZpzIqRg
gofbU7oyzStN/n0ezMMROZxeATjstFPnbBstNthUA42bslmMpsCBkC3suQKBgQCi
C54ZA1yUiu2uEQolFdCOEnkkY++5ZyfsTvXdbU6kXNj544qUvtvblqJDDZMw1Cud
lSBLDgegK5bSXHwmfhcijcuNzbyPbp2NWw2radEIbZCovNv6kVpj75xJbfUaZONA
XjphWggZvcsDoR13sEgfcNRCCt+x7bGLeP95PULUHwKBgAuugRagR7MkMaGVl9Qt
1zjOLX15DKXhkrD2RXJN1x2G1iVdjybsV8RaAb6g3Aj3oopXKeFA+qTEKp268IC5
2ouSu2+anl6/gNhXcLPn0Tq6SHkuemJ2trdjLFTrkPObiOeriYe3V8tIWQRR5un3
Q2/RVn5K779Si3A06cy7zdTO
-----END PRIVATE KEY-----
";
/// EC P-256 key (private).
const EC: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNhautSh9bsHfh0Nv
P44nhIUqlbX1SJzpQuTixoqOfImhRANCAASwJpgdMBCqo1etdT97mBhRF4Ga5fmf
O3QE5i7m9fxiDxjtP9AtfG0P3uGaTFE6YgF8dmGO6Q+SzFVXAZvuLx7P
-----END PRIVATE KEY-----
";
/// EC P-256 key (public).
const EC_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEsCaYHTAQqqNXrXU/e5gYUReBmuX5
nzt0BOYu5vX8Yg8Y7T/QLXxtD97hmkxROmIBfHZhjukPksxVVwGb7i8ezw==
-----END PUBLIC KEY-----
";
/// Another EC P-256 key (private).
const EC_OTHER: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgXp6upemIkqMpCXNm
zO9xVC6jwKcXSxNM4wmV+KNm296hRANCAARJdodDB36tzvTlzaSx/38intlGuHr4
MFuvzbE8ft+TowMX23HYniVCV/WRtNA+ybuMIjvsu7ai4+OahqMt5/PZ
-----END PRIVATE KEY-----
";
/// Ed25519 key (private).
const ED: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIFiQpa/KYTPjg0zzyEkwm2il9rtEj+9Fd1C/rmMk0Xw1
-----END PRIVATE KEY-----
";
/// Ed25519 key (public).
const ED_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAzB+dXBdsKuF9JHsqV4S6FaCsV2nWUpETewk35G/HYGs=
-----END PUBLIC KEY-----
";

const SECRET: &str = "e2e-secret-of-at-least-32-bytes!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signed token; `claims` gets `sub: alice` and an `exp` 5 minutes
/// ahead unless it sets them.
fn token(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    let mut all = json!({"sub": "alice", "exp": now() + 300});
    all.as_object_mut()
        .unwrap()
        .extend(claims.as_object().unwrap().clone());
    encode(&header, &all, key).unwrap()
}

fn hs(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes())
}
fn rsa(pem: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()
}
fn ec(pem: &str) -> EncodingKey {
    EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()
}
fn ed(pem: &str) -> EncodingKey {
    EncodingKey::from_ed_pem(pem.as_bytes()).unwrap()
}

/// A JWK (public part) for `key`, with its `kid`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    serde_json::to_value(jwk).unwrap()
}

struct Answer {
    status: u16,
    error: Option<String>,
    challenge: Option<String>,
    body: Value,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.unwrap();
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (status, error, challenge) = (
        r.status().as_u16(),
        header("x-nio-error"),
        header("www-authenticate"),
    );
    let text = r.text().await.unwrap();
    Answer {
        status,
        error,
        challenge,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

/// GET `/` on `host` with `Authorization: Bearer <token>`.
async fn call(gw: &Gateway, host: &str, token: &str) -> Answer {
    send(
        gw.request(reqwest::Method::GET, host, "/")
            .bearer_auth(token),
    )
    .await
}

fn assert_invalid(a: &Answer, description: &str) {
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.error.as_deref(), Some("jwt-invalid"));
    assert_eq!(
        a.challenge.as_deref(),
        Some(
            format!(
                "Bearer realm=\"nio\", error=\"invalid_token\", error_description=\"{description}\""
            )
            .as_str()
        )
    );
    assert_eq!(a.body["error"], description);
}

/// A route `name` on host `<name>.test` to `backend`, with `plugins`.
fn jwt_route(name: &str, backend: &str, plugins: Value) -> Value {
    resource(
        "Route",
        name,
        json!({
            "frontend": {"hosts": [format!("{name}.test")]},
            "backend": backend,
            "plugins": plugins,
        }),
    )
}

fn jwt_plugin(verifier: &str) -> Value {
    json!([{"kind": "jwt", "config": {"verifier": verifier}}])
}

/// A JWKS document served over plain HTTP, replaceable, counting fetches.
struct JwksServer {
    url: String,
    doc: Arc<Mutex<Value>>,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let doc = Arc::new(Mutex::new(json!({ "keys": keys })));
        let hits = Arc::new(AtomicU64::new(0));
        let (d, h) = (doc.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (d, h) = (d.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let body = d.lock().unwrap().to_string();
                        async move {
                            let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
                            resp.headers_mut()
                                .insert("content-type", "application/json".parse().unwrap());
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        JwksServer {
            url,
            doc,
            hits,
            task,
        }
    }

    fn serve(&self, keys: Vec<Value>) {
        *self.doc.lock().unwrap() = json!({ "keys": keys });
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_verified_per_algorithm_family() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start("api").await?;
    let verifier = |name: &str, algorithms: Value, keys: Value| {
        resource(
            "JwtVerifier",
            name,
            json!({"algorithms": algorithms, "keys": keys}),
        )
    };
    gw.apply(&[
        verifier("hs", json!(["HS256"]), json!([{"secret": SECRET}])),
        verifier(
            "rs",
            json!(["RS256", "PS256"]),
            json!([{"kid": "a", "publicKeyPem": RSA_A_PUBLIC}]),
        ),
        verifier("es", json!(["ES256"]), json!([{"publicKeyPem": EC_PUBLIC}])),
        verifier("ed", json!(["EdDSA"]), json!([{"publicKeyPem": ED_PUBLIC}])),
        backend("api", &[b.url()]),
        jwt_route("hs", "api", jwt_plugin("hs")),
        jwt_route("rs", "api", jwt_plugin("rs")),
        jwt_route("es", "api", jwt_plugin("es")),
        jwt_route("ed", "api", jwt_plugin("ed")),
    ])
    .await?;

    let good = [
        (
            "hs.test",
            token(Algorithm::HS256, &hs(SECRET), None, json!({})),
        ),
        (
            "rs.test",
            token(Algorithm::RS256, &rsa(RSA_A), Some("a"), json!({})),
        ),
        (
            "rs.test",
            token(Algorithm::PS256, &rsa(RSA_A), None, json!({})),
        ),
        ("es.test", token(Algorithm::ES256, &ec(EC), None, json!({}))),
        ("ed.test", token(Algorithm::EdDSA, &ed(ED), None, json!({}))),
    ];
    for (host, t) in &good {
        let a = call(&gw, host, t).await;
        assert_eq!(a.status, 200, "{host}: {}", a.body);
        // The token goes on to the backend unchanged.
        assert_eq!(a.body["headers"]["authorization"], format!("Bearer {t}"));
    }

    let signature = "the token's signature is not valid";
    let not_accepted = "the token's algorithm is not accepted";
    let other_secret = "another-secret-of-at-least-32-bytes";
    let bad = [
        (
            "hs.test",
            token(Algorithm::HS256, &hs(other_secret), None, json!({})),
            signature,
        ),
        (
            "hs.test",
            token(Algorithm::HS384, &hs(SECRET), None, json!({})),
            not_accepted,
        ),
        (
            "rs.test",
            token(Algorithm::RS256, &rsa(RSA_B), Some("a"), json!({})),
            signature,
        ),
        (
            "rs.test",
            token(Algorithm::RS384, &rsa(RSA_A), Some("a"), json!({})),
            not_accepted,
        ),
        // The RSA public key used as an HMAC secret: HS256 is not listed,
        // and a public key never verifies HMAC anyway.
        (
            "rs.test",
            token(Algorithm::HS256, &hs(RSA_A_PUBLIC), Some("a"), json!({})),
            not_accepted,
        ),
        (
            "rs.test",
            token(Algorithm::RS256, &rsa(RSA_A), Some("z"), json!({})),
            "no key of this verifier matches the token",
        ),
        (
            "es.test",
            token(Algorithm::ES256, &ec(EC_OTHER), None, json!({})),
            signature,
        ),
        (
            "es.test",
            token(Algorithm::RS256, &rsa(RSA_A), None, json!({})),
            not_accepted,
        ),
        (
            "ed.test",
            token(Algorithm::ES256, &ec(EC), None, json!({})),
            not_accepted,
        ),
        (
            "hs.test",
            "not-a-token".to_string(),
            "the token is not a JWT (header.payload.signature)",
        ),
    ];
    for (host, t, why) in &bad {
        assert_invalid(&call(&gw, host, t).await, why);
    }

    // alg "none" is never accepted, whatever the list says.
    let b64 = |v: Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none"})),
        b64(json!({"sub": "mallory"}))
    );
    assert_invalid(
        &call(&gw, "hs.test", &unsigned).await,
        "the token is not signed (alg none)",
    );
    let hits = b.hit_count();
    assert_eq!(
        hits,
        good.len() as u64,
        "only accepted requests reach the backend"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn time_issuer_audience_and_claims_are_checked() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start("api").await?;
    gw.apply(&[
        resource(
            "JwtVerifier",
            "strict",
            json!({
                "algorithms": ["HS256"],
                "keys": [{"secret": SECRET}],
                "issuer": "https://idp.test",
                "audiences": ["orders", "billing"],
                "leeway": "5s",
                "claims": [
                    {"name": "role", "oneOf": ["admin", "ops"]},
                    {"name": "tenant", "equals": "acme"},
                    {"name": "email", "regex": "@acme\\.test$"},
                ],
            }),
        ),
        backend("api", &[b.url()]),
        jwt_route("strict", "api", jwt_plugin("strict")),
    ])
    .await?;
    let with = |claims: Value| {
        let mut all = json!({
            "iss": "https://idp.test", "aud": ["web", "orders"],
            "role": "ops", "tenant": "acme", "email": "bob@acme.test",
        });
        all.as_object_mut()
            .unwrap()
            .extend(claims.as_object().unwrap().clone());
        token(Algorithm::HS256, &hs(SECRET), None, all)
    };
    let a = call(&gw, "strict.test", &with(json!({}))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // Inside the leeway.
    let a = call(&gw, "strict.test", &with(json!({"exp": now() - 2}))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    // A token the gateway has verified and cached (from its second use)
    // still expires on time: valid for three more seconds, then refused.
    let soon = with(json!({"exp": now() - 2}));
    for _ in 0..2 {
        let a = call(&gw, "strict.test", &soon).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_invalid(
        &call(&gw, "strict.test", &soon).await,
        "the token has expired",
    );

    for (claims, why) in [
        (json!({"exp": now() - 60}), "the token has expired"),
        (json!({"nbf": now() + 60}), "the token is not valid yet"),
        (
            json!({"iss": "https://evil.test"}),
            "the token's issuer is not accepted",
        ),
        (
            json!({"aud": "web"}),
            "the token is not meant for this audience",
        ),
    ] {
        assert_invalid(&call(&gw, "strict.test", &with(claims)).await, why);
    }

    for (claims, why) in [
        (
            json!({"role": "user"}),
            "the token's role claim is not accepted here",
        ),
        (
            json!({"tenant": "globex"}),
            "the token's tenant claim is not accepted here",
        ),
        (
            json!({"email": "bob@evil.test"}),
            "the token's email claim is not accepted here",
        ),
        (
            json!({"role": null}),
            "the token's role claim is not accepted here",
        ),
    ] {
        let a = call(&gw, "strict.test", &with(claims.clone())).await;
        assert_eq!(a.status, 403, "{claims}: {}", a.body);
        assert_eq!(a.error.as_deref(), Some("jwt-claims"));
        assert_eq!(a.body["error"], why);
        assert_eq!(
            a.challenge.as_deref(),
            Some(
                format!(
                    "Bearer realm=\"nio\", error=\"insufficient_scope\", error_description=\"{why}\""
                )
                .as_str()
            )
        );
    }
    assert_eq!(b.hit_count(), 4);
    // Denials are counted per route and reason.
    let metrics = gw.metrics().await?;
    assert!(metrics.contains("jwt-invalid"), "{metrics}");
    assert!(metrics.contains("jwt-claims"), "{metrics}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_token_gets_a_bearer_challenge() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start("api").await?;
    gw.apply(&[
        resource(
            "JwtVerifier",
            "hs",
            json!({"algorithms": ["HS256"], "keys": [{"secret": SECRET}]}),
        ),
        resource(
            "JwtVerifier",
            "cookie",
            json!({"algorithms": ["HS256"], "keys": [{"secret": SECRET}], "source": {"cookie": "session"}}),
        ),
        backend("api", &[b.url()]),
        jwt_route("hs", "api", jwt_plugin("hs")),
        jwt_route("cookie", "api", jwt_plugin("cookie")),
    ])
    .await?;
    let plain = gw
        .request(reqwest::Method::GET, "hs.test", "/")
        .header("x-request-id", "no-token");
    let basic = gw
        .request(reqwest::Method::GET, "hs.test", "/")
        .basic_auth("user", Some("password"));
    for req in [plain, basic] {
        let a = send(req).await;
        assert_eq!(a.status, 401, "{}", a.body);
        assert_eq!(a.error.as_deref(), Some("jwt-missing"));
        assert_eq!(a.challenge.as_deref(), Some("Bearer realm=\"nio\""));
        assert_eq!(a.body["error"], "a bearer token is required");
    }
    // The token in a cookie.
    let t = token(Algorithm::HS256, &hs(SECRET), None, json!({}));
    let a = send(
        gw.request(reqwest::Method::GET, "cookie.test", "/")
            .header("cookie", format!("theme=dark; session={t}")),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = call(&gw, "cookie.test", &t).await;
    assert_eq!(a.error.as_deref(), Some("jwt-missing"));
    assert_eq!(b.hit_count(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_are_forwarded_and_client_copies_dropped() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start("api").await?;
    gw.apply(&[
        resource(
            "JwtVerifier",
            "hs",
            json!({"algorithms": ["HS256"], "keys": [{"secret": SECRET}]}),
        ),
        backend("api", &[b.url()]),
        jwt_route(
            "fwd",
            "api",
            json!([
                {"kind": "publicPaths", "config": {"paths": ["/public"]}},
                {"kind": "jwt", "config": {"verifier": "hs", "forwardClaims": {
                    "sub": "X-User-Id", "groups": "X-Groups", "level": "X-Level", "name": "X-Name",
                }}},
            ]),
        ),
    ])
    .await?;
    let t = token(
        Algorithm::HS256,
        &hs(SECRET),
        None,
        json!({"groups": ["eng", "ops"], "level": 3, "name": "Zoë"}),
    );
    let a = send(
        gw.request(reqwest::Method::GET, "fwd.test", "/orders")
            .bearer_auth(&t)
            .header("x-user-id", "mallory")
            .header("x-level", "99"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let h = &a.body["headers"];
    assert_eq!(h["x-user-id"], "alice");
    assert_eq!(h["x-groups"], r#"["eng","ops"]"#);
    assert_eq!(h["x-level"], "3");
    // A non-ASCII string goes as its UTF-8 bytes (the echo shows it only
    // when it is ASCII).
    assert!(h.get("x-name").is_some(), "{h}");

    // A claim the token lacks: no header, and the client's copy is gone.
    let t = token(Algorithm::HS256, &hs(SECRET), None, json!({}));
    let a = send(
        gw.request(reqwest::Method::GET, "fwd.test", "/orders")
            .bearer_auth(&t)
            .header("x-groups", "admins"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["headers"].get("x-groups").is_none(), "{}", a.body);

    // A public path needs no token, and still gets no client copy through.
    let a = send(
        gw.request(reqwest::Method::GET, "fwd.test", "/public/docs")
            .header("x-user-id", "mallory"),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body["headers"].get("x-user-id").is_none(), "{}", a.body);
    Ok(())
}

/// Key A in the JWKS; then only key B: a token with B's `kid` makes the
/// data plane fetch the JWKS again at once (not waiting for `jwksRefresh`,
/// an hour here) and is accepted; from then on A is refused. A change to
/// another resource keeps the verifier and its cache.
#[tokio::test(flavor = "multi_thread")]
async fn jwks_rotation_through_the_unknown_kid_refresh() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start("api").await?;
    let (key_a, key_b) = (rsa(RSA_A), ec(EC));
    let jwks = JwksServer::start(vec![jwk(&key_a, Algorithm::RS256, "key-a")]).await;
    gw.apply(&[
        resource(
            "JwtVerifier",
            "idp",
            json!({
                "algorithms": ["RS256", "ES256"],
                "jwksUrl": jwks.url,
                "jwksRefresh": "1h",
                "jwksMinRefresh": "1s",
            }),
        ),
        backend("api", &[b.url()]),
        jwt_route("idp", "api", jwt_plugin("idp")),
    ])
    .await?;
    let with_a = token(Algorithm::RS256, &key_a, Some("key-a"), json!({}));
    let with_b = token(Algorithm::ES256, &key_b, Some("key-b"), json!({}));
    // The first request may wait for the first fetch.
    let a = call(&gw, "idp.test", &with_a).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let fetched = jwks.hits();
    assert!(fetched >= 1);

    // Another route: the verifier (and its cache) is kept.
    gw.apply(&[jwt_route("other", "api", jwt_plugin("idp"))])
        .await?;
    let a = call(&gw, "other.test", &with_a).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(jwks.hits(), fetched, "a kept verifier does not fetch again");

    jwks.serve(vec![jwk(&key_b, Algorithm::ES256, "key-b")]);
    // Refused only while a fetch started less than jwksMinRefresh ago.
    wait_for("a token signed with key B", Duration::from_secs(20), || {
        let (gw, t) = (&gw, &with_b);
        async move {
            let a = call(gw, "idp.test", t).await;
            if a.status != 200 {
                assert_invalid(&a, "no key of this verifier matches the token");
            }
            Ok((a.status == 200).then_some(()))
        }
    })
    .await?;
    assert!(jwks.hits() > fetched);
    // The refresh replaced the set: A is gone.
    assert_invalid(
        &call(&gw, "idp.test", &with_a).await,
        "no key of this verifier matches the token",
    );
    let a = call(&gw, "idp.test", &with_b).await;
    assert_eq!(a.status, 200, "{}", a.body);
    Ok(())
}

/// Without tokens asking, the JWKS is fetched every `jwksRefresh`: a key
/// taken out of the set stops verifying after the next refresh.
#[tokio::test(flavor = "multi_thread")]
async fn the_jwks_is_refreshed_in_the_background() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let b = TestBackend::start("api").await?;
    let (key_a, key_b) = (rsa(RSA_A), rsa(RSA_B));
    let jwks = JwksServer::start(vec![
        jwk(&key_a, Algorithm::RS256, "key-a"),
        jwk(&key_b, Algorithm::RS256, "key-b"),
    ])
    .await;
    gw.apply(&[
        resource(
            "JwtVerifier",
            "idp",
            json!({"algorithms": ["RS256"], "jwksUrl": jwks.url, "jwksRefresh": "1s"}),
        ),
        backend("api", &[b.url()]),
        jwt_route("idp", "api", jwt_plugin("idp")),
    ])
    .await?;
    let with_a = token(Algorithm::RS256, &key_a, Some("key-a"), json!({}));
    let with_b = token(Algorithm::RS256, &key_b, Some("key-b"), json!({}));
    for t in [&with_a, &with_b] {
        let a = call(&gw, "idp.test", t).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let before = jwks.hits();
    wait_for(
        "two background fetches",
        Duration::from_secs(20),
        || async { Ok((jwks.hits() >= before + 2).then_some(())) },
    )
    .await?;

    jwks.serve(vec![jwk(&key_b, Algorithm::RS256, "key-b")]);
    let refreshed = jwks.hits();
    wait_for(
        "the next background fetch",
        Duration::from_secs(20),
        || async { Ok((jwks.hits() > refreshed).then_some(())) },
    )
    .await?;
    // That fetch may still be installing its keys: wait for A to go.
    wait_for("key A to be refused", Duration::from_secs(20), || async {
        Ok((call(&gw, "idp.test", &with_a).await.status == 401).then_some(()))
    })
    .await?;
    assert_invalid(
        &call(&gw, "idp.test", &with_a).await,
        "no key of this verifier matches the token",
    );
    let a = call(&gw, "idp.test", &with_b).await;
    assert_eq!(a.status, 200, "{}", a.body);

    // Deleting the verifier (and its routes) stops the refresh: after a
    // fetch in flight at most, no more.
    let (s, v) = gw
        .admin
        .send(reqwest::Method::DELETE, "/apis/nio.dev/v1/routes/idp", None)
        .await?;
    assert!(s < 300, "{s} {v}");
    let (s, v) = gw
        .admin
        .send(
            reqwest::Method::DELETE,
            "/apis/nio.dev/v1/jwtverifiers/idp",
            None,
        )
        .await?;
    assert!(s < 300, "{s} {v}");
    let revision = gw.admin.revision().await?;
    gw.admin
        .wait_applied(&["dp"], revision, Duration::from_secs(20))
        .await?;
    let stopped = jwks.hits();
    // Three refresh periods with nothing asked: at most the fetch that
    // was in flight.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        jwks.hits() <= stopped + 1,
        "{} > {stopped} + 1",
        jwks.hits()
    );
    Ok(())
}

/// Keys that do not parse, or serve no listed algorithm, are refused at
/// write time with the field at fault.
#[tokio::test(flavor = "multi_thread")]
async fn bad_verifiers_are_refused_at_write_time() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let post = |spec: Value| {
        let admin = gw.admin.clone();
        async move {
            admin
                .send(
                    reqwest::Method::POST,
                    "/apis/nio.dev/v1/jwtverifiers",
                    Some(resource("JwtVerifier", "bad", spec)),
                )
                .await
                .unwrap()
        }
    };
    for (spec, field, message) in [
        (
            json!({"algorithms": ["RS256"], "keys": [{"publicKeyPem": RSA_A}]}),
            "spec.keys[0].publicKeyPem",
            "this is a private key",
        ),
        (
            json!({"algorithms": ["ES256"], "keys": [{"publicKeyPem": RSA_A_PUBLIC}]}),
            "spec.keys[0].publicKeyPem",
            "an RSA public key verifies RS256",
        ),
        (
            json!({"algorithms": ["HS256"], "keys": [{"secret": "too-short"}]}),
            "spec.keys[0].secret",
            "at least 32 bytes",
        ),
        (
            json!({"algorithms": ["ES256", "EdDSA"], "keys": [{"publicKeyPem": EC_PUBLIC}]}),
            "spec.algorithms[1]",
            "no key in spec.keys verifies EdDSA",
        ),
    ] {
        let (s, v) = post(spec.clone()).await;
        assert_eq!(s, 422, "{spec}: {v}");
        let text = v.to_string();
        assert!(
            text.contains(field) && text.contains(message),
            "{field} / {message} not in {text}"
        );
    }
    Ok(())
}
