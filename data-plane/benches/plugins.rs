//! CPU cost of a guarded route's plugin chain per request — apiKey (salted
//! HMAC check), jwt (HS256 verification and claim checks), cors and
//! ipAllowList — against the same request with no plugins, without the
//! network around it. Complements `scripts/bench/plugins`, which measures
//! whole requests per second on a shared machine.
//!
//! `cargo bench -p nio-data-plane --bench plugins`

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Uri};
use nio_data_plane::plugins::{Chain, Ctx, Flow, State};
use nio_data_plane::runtime::compile;
use nio_proto::model::{credential_hash, AnyResource, Config};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;

const JWT_SECRET: &str = "bench-secret-of-32-bytes-or-more!";
const KEY_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn resource(v: serde_json::Value) -> AnyResource {
    AnyResource::from_value(v).expect("valid bench resource")
}

fn setup() -> (Arc<nio_data_plane::runtime::Runtime>, HeaderMap) {
    let salt = [7u8; 16];
    let config: Config = [
        resource(json!({"apiVersion": "nio.dev/v1", "kind": "Backend", "metadata": {"name": "b"},
            "spec": {"targets": [{"url": "http://127.0.0.1:9"}]}})),
        resource(json!({"apiVersion": "nio.dev/v1", "kind": "JwtVerifier", "metadata": {"name": "v"},
            "spec": {"algorithms": ["HS256"], "keys": [{"secret": JWT_SECRET}], "issuer": "bench"}})),
        resource(json!({"apiVersion": "nio.dev/v1", "kind": "ApiKey", "metadata": {"name": "app"},
            "spec": {"credentials": [{"salt": hex::encode(salt),
                "hash": hex::encode(credential_hash(&salt, KEY_SECRET.as_bytes()))}]}})),
        resource(json!({"apiVersion": "nio.dev/v1", "kind": "Route", "metadata": {"name": "guarded"},
            "spec": {"frontend": {}, "backend": "b", "plugins": [
                {"kind": "cors", "config": {"allowedOrigins": ["https://app.example.com"]}},
                {"kind": "ipAllowList", "config": {"cidrs": ["127.0.0.0/8"]}},
                {"kind": "apiKey"},
                {"kind": "jwt", "config": {"verifier": "v"}}]}})),
    ]
    .into_iter()
    .collect();
    let runtime = compile(&config, 1, "h", None, None).expect("compiles");
    let claims = json!({"sub": "user", "iss": "bench", "exp": 4_102_444_800u64});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("token");
    let mut headers = HeaderMap::new();
    let value = |s: &str| HeaderValue::from_str(s).expect("header");
    headers.insert("host", value("api.test"));
    headers.insert("origin", value("https://app.example.com"));
    headers.insert("nio-client-id", value("app"));
    headers.insert("nio-client-secret", value(KEY_SECRET));
    headers.insert("authorization", value(&format!("Bearer {token}")));
    headers.insert("accept", value("application/json"));
    (Arc::new(runtime), headers)
}

fn chain(c: &mut Criterion) {
    let (runtime, template) = setup();
    let route = runtime.routes.get("guarded").expect("route").clone();
    let uri: Uri = "/orders/42".parse().expect("uri");
    let method = Method::GET;
    let run = |plugins: &Chain| {
        let mut headers = template.clone();
        let mut state = State::default();
        let mut ctx = Ctx {
            method: &method,
            uri: &uri,
            headers: &mut headers,
            client_ip: [127, 0, 0, 1].into(),
            tls: None,
            route: &route,
            runtime: &runtime,
            state: &mut state,
        };
        for p in Chain::merged(&runtime.global, plugins) {
            assert!(matches!(p.on_request(&mut ctx), Flow::Continue));
        }
        headers
    };
    let none = Chain::default();
    let mut group = c.benchmark_group("plugin chain");
    group.bench_function("no plugins", |b| b.iter(|| black_box(run(&none))));
    group.bench_function("apiKey+jwt+cors+ipAllowList", |b| {
        b.iter(|| black_box(run(&route.plugins)))
    });
    group.finish();
}

criterion_group!(benches, chain);
criterion_main!(benches);
