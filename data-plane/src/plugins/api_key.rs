//! `apiKey`: the caller must present an API key that exists, is enabled,
//! not expired, and may call this route.
//!
//! Accepted forms, first found wins: `Nio-Client-Id` + `Nio-Client-Secret`
//! headers; `Authorization: Basic base64(id:secret)`; `Authorization:
//! Bearer id.secret`; and, when the plugin names one, a query parameter
//! `?<queryParam>=id.secret`. Missing or wrong: 401. Disabled, expired or
//! not allowed on the route: 403. The secret is checked against the key's
//! salted HMAC in constant time; the credentials are removed before the
//! request goes on, and the key's id and metadata are forwarded instead
//! (`Nio-Client-Id`, `Nio-Client-Meta-<key>`) unless `forwardIdentity` is
//! off.

use super::{too_many, Ctx, Denial, Flow, Phase, Plugin, Reason, State};
use crate::quota::{self, Allowance, KeyUsage};
use crate::route::CompiledRoute;
use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;
use nio_proto::model::{hmac_finish, hmac_states, parse_time, ApiKey, ApiKeyAuth, LabelSelector};
use sha2::Sha256;
use std::sync::Arc;
use std::time::SystemTime;
use subtle::ConstantTimeEq;

static CLIENT_ID: HeaderName = HeaderName::from_static("nio-client-id");
static CLIENT_SECRET: HeaderName = HeaderName::from_static("nio-client-secret");
const META_PREFIX: &str = "nio-client-meta-";

/// An ApiKey as the request path checks it.
pub struct CompiledKey {
    pub name: String,
    enabled: bool,
    expires: Option<SystemTime>,
    routes: Vec<String>,
    selector: Option<LabelSelector>,
    /// `Nio-Client-Meta-*` headers to forward.
    meta: Vec<(HeaderName, HeaderValue)>,
    secrets: Vec<Secret>,
    /// Its quotas' counters (`None`: no quotas).
    usage: Option<Arc<KeyUsage>>,
    /// Requests this key authenticated (reported to the control plane).
    pub requests: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for CompiledKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes.
        write!(
            f,
            "CompiledKey({}, {} secrets)",
            self.name,
            self.secrets.len()
        )
    }
}

/// One valid secret: the HMAC states keyed with its salt, and the hash.
struct Secret {
    inner: Sha256,
    outer: Sha256,
    hash: [u8; 32],
    not_after: Option<SystemTime>,
}

impl CompiledKey {
    pub fn new(key: &ApiKey) -> Result<CompiledKey, String> {
        let spec = &key.spec;
        let time = |t: &Option<String>| t.as_deref().map(parse_time).transpose();
        let mut secrets = Vec::new();
        for c in &spec.credentials {
            let salt = hex::decode(&c.salt).map_err(|e| format!("credential salt: {e}"))?;
            let hash: [u8; 32] = hex::decode(&c.hash)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or("credential hash: not 32 bytes of hex")?;
            let (inner, outer) = hmac_states(&salt);
            secrets.push(Secret {
                inner,
                outer,
                hash,
                not_after: time(&c.not_after)?,
            });
        }
        let meta = spec
            .metadata
            .iter()
            .filter_map(|(k, v)| {
                let name = HeaderName::from_bytes(
                    format!("{META_PREFIX}{k}").to_ascii_lowercase().as_bytes(),
                )
                .ok()?;
                Some((name, HeaderValue::from_str(v).ok()?))
            })
            .collect();
        Ok(CompiledKey {
            name: key.metadata.name.clone(),
            enabled: spec.enabled,
            expires: time(&spec.expires_at)?,
            routes: spec.routes.clone(),
            selector: spec.route_selector.clone(),
            meta,
            secrets,
            usage: spec
                .quotas
                .as_ref()
                .map(|q| quota::key_usage(&key.metadata.name, q)),
            requests: Default::default(),
        })
    }

    /// Whether `secret` is one of the key's valid secrets (constant time in
    /// the secret's content).
    fn check(&self, secret: &[u8], now: SystemTime) -> bool {
        let mut ok = false;
        for s in &self.secrets {
            let mac = hmac_finish(s.inner.clone(), s.outer.clone(), secret);
            let current = s.not_after.is_none_or(|t| now <= t);
            ok |= bool::from(mac.ct_eq(&s.hash)) && current;
        }
        ok
    }

    fn may_call(&self, route: &CompiledRoute) -> bool {
        if self.routes.is_empty() && self.selector.is_none() {
            return true;
        }
        self.routes.iter().any(|r| **r == *route.name)
            || self
                .selector
                .as_ref()
                .is_some_and(|s| s.matches(|k| route.labels.get(k).map(String::as_str)))
    }
}

#[derive(Debug)]
pub struct ApiKeyPlugin {
    config: ApiKeyAuth,
}

impl ApiKeyPlugin {
    pub fn new(config: ApiKeyAuth) -> ApiKeyPlugin {
        ApiKeyPlugin { config }
    }
}

/// Where the key came from, so it can be removed before forwarding.
enum Found {
    Headers,
    Authorization,
    Query,
}

/// `(id, secret)` from the request, in the documented order.
fn credentials(
    headers: &HeaderMap,
    query: Option<&str>,
    param: Option<&str>,
) -> Option<(String, Vec<u8>, Found)> {
    if let (Some(id), Some(secret)) = (headers.get(&CLIENT_ID), headers.get(&CLIENT_SECRET)) {
        return Some((
            id.to_str().ok()?.to_string(),
            secret.as_bytes().to_vec(),
            Found::Headers,
        ));
    }
    if let Some(auth) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, value) = auth.split_once(' ')?;
        let value = value.trim();
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value)
                .ok()?;
            let decoded = String::from_utf8(decoded).ok()?;
            let (id, secret) = decoded.split_once(':')?;
            return Some((
                id.to_string(),
                secret.as_bytes().to_vec(),
                Found::Authorization,
            ));
        }
        if scheme.eq_ignore_ascii_case("bearer") {
            let (id, secret) = value.split_once('.')?;
            return Some((
                id.to_string(),
                secret.as_bytes().to_vec(),
                Found::Authorization,
            ));
        }
    }
    let param = param?;
    let value = crate::route::query_param(query?, param)?;
    let (id, secret) = value.split_once('.')?;
    Some((id.to_string(), secret.as_bytes().to_vec(), Found::Query))
}

/// Removes identity headers a client may have sent.
fn strip_identity(h: &mut HeaderMap) {
    let spoofed: Vec<HeaderName> = h
        .keys()
        .filter(|n| n.as_str().starts_with(META_PREFIX))
        .cloned()
        .collect();
    for n in spoofed {
        h.remove(n);
    }
    h.remove(&CLIENT_ID);
}

/// Takes the presented secret out of the request: the header, the
/// `Authorization`, or (when the proxy builds the upstream URL) the query
/// parameter.
fn remove_secret(ctx: &mut Ctx<'_>, found: Found, query_param: Option<&str>) {
    match found {
        Found::Headers => {
            ctx.headers.remove(&CLIENT_SECRET);
        }
        Found::Authorization => {
            ctx.headers.remove(header::AUTHORIZATION);
        }
        Found::Query => ctx.state.drop_query_param = query_param.map(str::to_string),
    }
}

fn unauthorized(reason: Reason, message: &str) -> Flow {
    Flow::Deny(
        Denial::new(StatusCode::UNAUTHORIZED, reason, message).with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"nio\", charset=\"UTF-8\""),
        ),
    )
}

impl Plugin for ApiKeyPlugin {
    fn phase(&self) -> Phase {
        Phase::Access
    }

    fn on_request(&self, ctx: &mut Ctx<'_>) -> Flow {
        // Another apiKey plugin (the GlobalConfig's, say) already admitted
        // this request and took its credentials away.
        if ctx.state.api_key_checked {
            return Flow::Continue;
        }
        let presented = credentials(
            ctx.headers,
            ctx.uri.query(),
            self.config.query_param.as_deref(),
        );
        // Only the gateway sets identity headers, public paths included.
        strip_identity(ctx.headers);
        if ctx.state.public {
            if let Some((_, _, found)) = presented {
                remove_secret(ctx, found, self.config.query_param.as_deref());
            }
            return Flow::Continue;
        }
        let Some((id, secret, found)) = presented else {
            return unauthorized(Reason::ApiKeyMissing, "an API key is required");
        };
        let now = SystemTime::now();
        let Some(key) = ctx.runtime.api_keys.get(id.as_str()) else {
            return unauthorized(Reason::ApiKeyInvalid, "the API key is not valid");
        };
        if !key.check(&secret, now) {
            return unauthorized(Reason::ApiKeyInvalid, "the API key is not valid");
        }
        let forbidden =
            |reason, message| Flow::Deny(Denial::new(StatusCode::FORBIDDEN, reason, message));
        if !key.enabled {
            return forbidden(Reason::ApiKeyDisabled, "this API key is disabled");
        }
        if key.expires.is_some_and(|t| now > t) {
            return forbidden(Reason::ApiKeyExpired, "this API key has expired");
        }
        if !key.may_call(ctx.route) {
            return forbidden(
                Reason::ApiKeyForbidden,
                "this API key may not call this route",
            );
        }
        // The secret goes no further; the identity does.
        remove_secret(ctx, found, self.config.query_param.as_deref());
        ctx.state.api_key_checked = true;
        let h = &mut *ctx.headers;
        if self.config.forward_identity {
            if let Ok(v) = HeaderValue::from_str(&key.name) {
                h.insert(CLIENT_ID.clone(), v);
            }
            for (n, v) in &key.meta {
                h.insert(n.clone(), v.clone());
            }
        }
        ctx.state.consumer = Some(key.name.clone());
        if let Some(usage) = &key.usage {
            match usage.admit(quota::now_secs()) {
                Ok(Some(a)) => {
                    ctx.state.rate_limit = Some(Allowance::tighter(ctx.state.rate_limit, a))
                }
                Ok(None) => {}
                Err(r) if r.quota == "throttle" => {
                    return Flow::Deny(too_many(
                        Reason::RateLimited,
                        "too many requests for this API key; retry later",
                        &r.allowance,
                    ))
                }
                Err(r) => {
                    return Flow::Deny(too_many(
                        Reason::QuotaExceeded,
                        &format!("this API key's {} quota is used up", r.quota),
                        &r.allowance,
                    ))
                }
            }
        }
        key.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Flow::Continue
    }

    fn on_response(&self, state: &mut State, response: &mut http::response::Parts) {
        super::write_rate_limit(state, response);
    }
}
