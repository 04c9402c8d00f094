//! The per-request functions `router.rs` and `plugins.rs` do not isolate:
//! a route's request and response header rules, the hop-by-hop strip of a
//! backend's response, the API-key check alone and the JWT check alone
//! (HS256 and ES256; a token seen before, which the verifier has cached,
//! and a new one, which it decodes and verifies). Each case works on a fresh copy of a realistic header
//! map, as a request does; the cost of that copy is measured on its own
//! (`header map copy`) so it can be subtracted.
//!
//! `cargo bench -p nio-data-plane --bench hot_paths`

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Uri};
use nio_data_plane::plugins::{Chain, Ctx, Flow, State};
use nio_data_plane::proxy::strip_hop_by_hop;
use nio_data_plane::route::CompiledRoute;
use nio_data_plane::runtime::{compile, Runtime};
use nio_proto::model::{credential_hash, AnyResource, Config};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;

const JWT_SECRET: &str = "bench-secret-of-32-bytes-or-more!";
const KEY_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn resource(v: serde_json::Value) -> AnyResource {
    AnyResource::from_value(v).expect("valid bench resource")
}

fn route(name: &str, spec: serde_json::Value) -> AnyResource {
    let mut spec = spec;
    spec["frontend"] = json!({"hosts": [format!("{name}.test")]});
    spec["backend"] = json!("b");
    resource(
        json!({"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": name}, "spec": spec}),
    )
}

/// An ES256 key pair made once for the bench (PKCS#8 private, SPKI public).
fn es256_keys() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key pair");
    (key.serialize_pem(), key.public_key_pem())
}

struct Setup {
    runtime: Arc<Runtime>,
    request: HeaderMap,
    response: HeaderMap,
    hs256: String,
    es256: String,
    hs_key: jsonwebtoken::EncodingKey,
    es_key: jsonwebtoken::EncodingKey,
}

/// A token the verifiers accept; `jti` makes each one new.
fn sign(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey, jti: u64) -> String {
    let claims = json!({"sub": "user", "iss": "bench", "exp": 4_102_444_800u64, "jti": jti});
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, key).expect("token")
}

fn setup() -> Setup {
    let salt = [7u8; 16];
    let (es_private, es_public) = es256_keys();
    let config: Config = [
        resource(json!({"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "b"},
            "spec": {"targets": [{"url": "http://127.0.0.1:9"}]}})),
        resource(json!({"apiVersion": "nio.dev/v1", "kind": "JwtVerifier", "metadata": {"name": "hs"},
            "spec": {"algorithms": ["HS256"], "keys": [{"secret": JWT_SECRET}], "issuer": "bench"}})),
        resource(json!({"apiVersion": "nio.dev/v1", "kind": "JwtVerifier", "metadata": {"name": "es"},
            "spec": {"algorithms": ["ES256"], "keys": [{"publicKeyPem": es_public}], "issuer": "bench"}})),
        resource(json!({"apiVersion": "nio.dev/v1", "kind": "ApiKey", "metadata": {"name": "app"},
            "spec": {"credentials": [{"salt": hex::encode(salt),
                "hash": hex::encode(credential_hash(&salt, KEY_SECRET.as_bytes()))}]}})),
        route("headers", json!({
            "requestHeaders": {"remove": ["x-debug", "x-internal-trace"],
                "set": {"x-tenant": "acme", "x-gateway": "nio"}, "add": {"x-tag": "bench"}},
            "responseHeaders": {"remove": ["server", "x-powered-by"],
                "set": {"strict-transport-security": "max-age=31536000", "x-frame-options": "DENY"},
                "add": {"vary": "Origin"}}})),
        route("apikey", json!({"plugins": [{"kind": "apiKey"}]})),
        route("jwths", json!({"plugins": [{"kind": "jwt", "config": {"verifier": "hs"}}]})),
        route("jwtes", json!({"plugins": [{"kind": "jwt", "config": {"verifier": "es"}}]})),
    ]
    .into_iter()
    .collect();
    let runtime = compile(&config, 1, "h", None, None).expect("compiles");
    let hs_key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let es_key = jsonwebtoken::EncodingKey::from_ec_pem(es_private.as_bytes()).expect("ES256 key");
    let hs256 = sign(jsonwebtoken::Algorithm::HS256, &hs_key, 0);
    let es256 = sign(jsonwebtoken::Algorithm::ES256, &es_key, 0);
    let value = |s: &str| HeaderValue::from_str(s).expect("header");
    let mut request = HeaderMap::new();
    for (n, v) in [
        ("host", "api.test"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("cookie", "session=abc123; theme=dark"),
        ("x-debug", "1"),
        ("nio-client-id", "app"),
        ("nio-client-secret", KEY_SECRET),
    ] {
        request.insert(n, value(v));
    }
    let mut response = HeaderMap::new();
    for (n, v) in [
        ("content-type", "application/json"),
        ("content-length", "512"),
        ("date", "Sat, 28 Nov 2026 00:00:00 GMT"),
        ("server", "backend/1.0"),
        ("x-powered-by", "bench"),
        ("cache-control", "no-store"),
        ("connection", "keep-alive"),
        ("keep-alive", "timeout=5"),
    ] {
        response.insert(n, value(v));
    }
    Setup {
        runtime: Arc::new(runtime),
        request,
        response,
        hs256,
        es256,
        hs_key,
        es_key,
    }
}

/// Runs `route`'s request plugins on `headers`; every one must let it pass.
fn run_chain(runtime: &Arc<Runtime>, route: &CompiledRoute, mut headers: HeaderMap) -> HeaderMap {
    let (method, uri) = (Method::GET, Uri::from_static("/orders/42"));
    let mut state = State::default();
    let mut ctx = Ctx {
        method: &method,
        uri: &uri,
        headers: &mut headers,
        client_ip: [127, 0, 0, 1].into(),
        tls: None,
        route,
        runtime,
        state: &mut state,
    };
    for p in Chain::merged(&runtime.global, &route.plugins) {
        assert!(matches!(p.on_request(&mut ctx), Flow::Continue));
    }
    headers
}

fn headers(c: &mut Criterion) {
    let s = setup();
    let route = s.runtime.routes.get("headers").expect("route").clone();
    let mut group = c.benchmark_group("headers");
    group.bench_function("header map copy", |b| {
        b.iter(|| black_box(s.request.clone()))
    });
    group.bench_function("request rules (remove 2, set 2, add 1)", |b| {
        b.iter(|| {
            let mut h = s.request.clone();
            route.request_headers.apply(&mut h);
            black_box(h)
        })
    });
    group.bench_function("response: hop-by-hop strip + rules", |b| {
        b.iter(|| {
            let mut h = s.response.clone();
            strip_hop_by_hop(&mut h);
            route.response_headers.apply(&mut h);
            black_box(h)
        })
    });
    group.finish();
}

fn auth(c: &mut Criterion) {
    let s = setup();
    let get = |name: &str| s.runtime.routes.get(name).expect("route").clone();
    let (apikey, jwths, jwtes) = (get("apikey"), get("jwths"), get("jwtes"));
    let bearer = |token: &str| {
        let mut h = s.request.clone();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        h
    };
    let (with_hs, with_es) = (bearer(&s.hs256), bearer(&s.es256));
    let mut group = c.benchmark_group("auth");
    group.bench_function("apiKey (salted HMAC-SHA256)", |b| {
        b.iter(|| black_box(run_chain(&s.runtime, &apikey, s.request.clone())))
    });
    group.bench_function("jwt HS256 (cached)", |b| {
        b.iter(|| black_box(run_chain(&s.runtime, &jwths, with_hs.clone())))
    });
    group.bench_function("jwt ES256 (cached)", |b| {
        b.iter(|| black_box(run_chain(&s.runtime, &jwtes, with_es.clone())))
    });
    // A new token each time: signed outside the measurement.
    let mut jti = 0;
    let mut fresh = |alg, key| {
        jti += 1;
        bearer(&sign(alg, key, jti))
    };
    group.bench_function("jwt HS256 (new token)", |b| {
        b.iter_batched(
            || fresh(jsonwebtoken::Algorithm::HS256, &s.hs_key),
            |h| black_box(run_chain(&s.runtime, &jwths, h)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function("jwt ES256 (new token)", |b| {
        b.iter_batched(
            || fresh(jsonwebtoken::Algorithm::ES256, &s.es_key),
            |h| black_box(run_chain(&s.runtime, &jwtes, h)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, headers, auth);
criterion_main!(benches);
