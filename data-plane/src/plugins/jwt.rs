//! `jwt`: the request must carry a JSON Web Token that the route's
//! JwtVerifier accepts. This module owns the plugin and
//! [`CompiledVerifier`], a JwtVerifier compiled for the request path (its
//! keys and JWKS cache are in [`jwks`]).
//!
//! For each request, unless a `publicPaths` plugin marked it public:
//!
//! 1. the token is taken from the verifier's `source`: by default
//!    `Authorization: Bearer <token>` (scheme in any case), or another
//!    header with an optional prefix, a cookie or a query parameter;
//! 2. its header must name an algorithm the verifier lists (`none` never
//!    is; a header with `crit` is refused);
//! 3. its signature must verify with a key whose kind serves that algorithm:
//!    the keys with the token's `kid` (and the keys without a kid), or
//!    every key when the token has no `kid`. Inline keys and the cached
//!    JWKS are read without a lock. When no key has the token's `kid` and
//!    the verifier has a `jwksUrl`, the JWKS is fetched again (at most once
//!    per `jwksMinRefresh`) and the request waits for it ([`Flow::Later`]);
//! 4. `exp` and `nbf` are checked when present, with `leeway`; `iss` must
//!    equal `issuer` and `aud` (a string or a list) must contain one of
//!    `audiences`, when those are set;
//! 5. every `claims` matcher must hold: `equals` (JSON equality; a list
//!    claim matches when it contains the value), `oneOf` (the claim, or an
//!    element of a list claim, is one of the values), `regex` (a string
//!    claim, or an element of a list claim, matches; unanchored).
//!
//! A token that passed 2–5 twice is remembered by its verifier
//! ([`cache`]); the next requests with it run only steps 4 and 5.
//!
//! Then `ctx.state.consumer` is the token's `sub`, and each
//! `forwardClaims` entry is sent to the backend as a header: a string claim
//! as is, anything else as compact JSON. Copies of those headers sent by
//! the client are removed first, on every request (public ones too). The
//! token itself is passed on unchanged.
//!
//! Answers (RFC 6750), all in the gateway's JSON error format:
//!
//! | case | status | `X-Nio-Error` | `WWW-Authenticate` |
//! | --- | --- | --- | --- |
//! | no token | 401 | `jwt-missing` | `Bearer realm="nio"` |
//! | malformed, bad signature, unknown key, expired, not yet valid, wrong `iss` or `aud` | 401 | `jwt-invalid` | `Bearer realm="nio", error="invalid_token", error_description="…"` |
//! | a `claims` matcher fails | 403 | `jwt-claims` | `Bearer realm="nio", error="insufficient_scope", error_description="…"` |
//!
//! A failed claim matcher is a 403: the token is genuine and current, the
//! caller is known but not allowed here, which is RFC 6750's
//! `insufficient_scope` (and what `apiKey` answers for a key that may not
//! call a route). Sending the same token again will not help.
//!
//! On the rare refresh path the plugin answers [`Flow::Later`] with a
//! future that waits for the fetch and decides; when it lets the request
//! through, the pipeline runs the plugin again, which now finds the key and
//! sets the identity headers and `consumer` from the verified token.
//!
//! Tokens and secrets are never logged.

mod cache;
mod jwks;

use super::{Ctx, Denial, Flow, Phase, Plugin, Reason};
use base64::Engine;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use jsonwebtoken::Algorithm;
use jwks::{Jwks, Key};
use nio_proto::model::{inline_key, parse_algorithm, JwtAuth, JwtVerifierSpec};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Longest a request waits for a JWKS fetch its token asked for.
const REFRESH_WAIT: Duration = Duration::from_secs(6);

/// Where the token is.
enum Source {
    /// `Authorization: Bearer <token>`.
    Bearer,
    Header {
        name: HeaderName,
        prefix: Option<String>,
    },
    Cookie(String),
    Query(String),
}

/// A condition on a claim.
enum Check {
    Equals(Value),
    OneOf(Vec<Value>),
    Regex(regex::Regex),
}

struct ClaimRule {
    name: String,
    check: Check,
}

impl ClaimRule {
    fn holds(&self, v: &Value) -> bool {
        match (&self.check, v) {
            (Check::Equals(x), Value::Array(items)) if !x.is_array() => items.contains(x),
            (Check::Equals(x), v) => v == x,
            (Check::OneOf(xs), Value::Array(items)) => {
                xs.contains(v) || items.iter().any(|i| xs.contains(i))
            }
            (Check::OneOf(xs), v) => xs.contains(v),
            (Check::Regex(re), Value::String(s)) => re.is_match(s),
            (Check::Regex(re), Value::Array(items)) => items
                .iter()
                .any(|i| i.as_str().is_some_and(|s| re.is_match(s))),
            (Check::Regex(_), _) => false,
        }
    }
}

/// A JwtVerifier as the request path uses it. Shared by every runtime
/// while its spec is unchanged, so its JWKS cache survives swaps.
pub struct CompiledVerifier {
    /// What it was compiled from (compared to reuse it).
    pub spec: JwtVerifierSpec,
    name: String,
    source: Source,
    algorithms: Vec<Algorithm>,
    inline: Vec<Key>,
    jwks: Option<Arc<Jwks>>,
    issuer: Option<String>,
    audiences: Vec<String>,
    leeway: f64,
    claims: Vec<ClaimRule>,
    /// Tokens that verified and passed (see [`cache`]).
    verified: cache::TokenCache,
}

impl std::fmt::Debug for CompiledVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        write!(
            f,
            "CompiledVerifier({}, {:?}, {} inline keys, jwks {:?})",
            self.name,
            self.algorithms,
            self.inline.len(),
            self.jwks.as_ref().map(|j| j.url())
        )
    }
}

impl CompiledVerifier {
    /// Compiles `spec`; starts fetching its JWKS (in the background).
    pub fn new(name: &str, spec: &JwtVerifierSpec) -> Result<CompiledVerifier, String> {
        let algorithms: Vec<Algorithm> = spec
            .algorithms
            .iter()
            .map(|a| {
                parse_algorithm(a).ok_or_else(|| format!("algorithm \"{a}\" is not supported"))
            })
            .collect::<Result<_, _>>()?;
        let mut inline = Vec::new();
        for (i, k) in spec.keys.iter().enumerate() {
            let (key, kind) =
                inline_key(k).map_err(|(field, m)| format!("keys[{i}].{field}: {m}"))?;
            inline.push(Key::new(k.kid.clone(), key, kind, &algorithms));
        }
        let s = &spec.source;
        let source = match (&s.header, &s.cookie, &s.query) {
            (Some(h), _, _) => {
                let name = HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("source.header: \"{h}\" is not a header name"))?;
                if name == header::AUTHORIZATION && s.prefix.is_none() {
                    Source::Bearer
                } else {
                    Source::Header {
                        name,
                        prefix: s.prefix.clone(),
                    }
                }
            }
            (None, Some(c), _) => Source::Cookie(c.clone()),
            (None, None, Some(q)) => Source::Query(q.clone()),
            (None, None, None) => Source::Bearer,
        };
        let mut claims = Vec::new();
        for (i, c) in spec.claims.iter().enumerate() {
            let check = match (&c.equals, &c.one_of, &c.regex) {
                (Some(v), None, None) => Check::Equals(v.clone()),
                (None, Some(vs), None) => Check::OneOf(vs.clone()),
                (None, None, Some(re)) => Check::Regex(
                    nio_proto::model::compile_regex(re)
                        .map_err(|m| format!("claims[{i}].regex: {m}"))?,
                ),
                _ => {
                    return Err(format!(
                        "claims[{i}]: give exactly one of equals, oneOf or regex"
                    ))
                }
            };
            claims.push(ClaimRule {
                name: c.name.clone(),
                check,
            });
        }
        let jwks = spec
            .jwks_url
            .as_deref()
            .map(|url| {
                Jwks::start(
                    name,
                    url,
                    &algorithms,
                    spec.jwks_refresh,
                    spec.jwks_min_refresh,
                )
            })
            .transpose()?;
        Ok(CompiledVerifier {
            spec: spec.clone(),
            name: name.to_string(),
            source,
            algorithms,
            inline,
            jwks,
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.clone(),
            leeway: spec.leeway.as_secs_f64(),
            claims,
            verified: Default::default(),
        })
    }

    /// The token in the request, if any.
    fn token<'a>(&self, headers: &'a HeaderMap, uri: &Uri) -> Option<Cow<'a, str>> {
        let token = match &self.source {
            Source::Bearer => {
                let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
                let (scheme, token) = value.split_once(' ')?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return None;
                }
                Cow::Borrowed(token.trim())
            }
            Source::Header { name, prefix } => {
                let value = headers.get(name)?.to_str().ok()?;
                let token = match prefix {
                    None => value,
                    Some(p) => {
                        let head = value.get(..p.len())?;
                        if !head.eq_ignore_ascii_case(p) {
                            return None;
                        }
                        value.get(p.len()..)?
                    }
                };
                Cow::Borrowed(token.trim())
            }
            Source::Cookie(name) => headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k.trim() == name).then(|| Cow::Borrowed(v.trim().trim_matches('"')))
                })?,
            Source::Query(name) => Cow::Owned(crate::route::query_param(uri.query()?, name)?),
        };
        (!token.is_empty()).then_some(token)
    }

    /// The JWKS key set's generation (0 without a JWKS); read before the
    /// keys, so an entry is never newer than the keys that verified it.
    fn generation(&self) -> u64 {
        self.jwks
            .as_ref()
            .map_or(0, |j| j.generation.load(Ordering::Acquire))
    }

    /// Whether a key verifies the token's signature.
    fn verify_signature(&self, token: &Token) -> Signature {
        let cached = self.jwks.as_ref().map(|j| j.keys.load());
        let from_jwks = cached.iter().flat_map(|keys| keys.iter());
        let mut tried = false;
        let mut kid_known = false;
        for key in self.inline.iter().chain(from_jwks) {
            if !key.algorithms.contains(&token.alg) {
                continue;
            }
            match (&token.kid, &key.kid) {
                (Some(a), Some(b)) if a != b => continue,
                (Some(_), Some(_)) => kid_known = true,
                _ => {}
            }
            tried = true;
            if key.verifies(token.alg, token.message(), token.signature()) {
                return Signature::Valid;
            }
        }
        if !tried || (token.kid.is_some() && !kid_known) {
            Signature::UnknownKey
        } else {
            Signature::Invalid
        }
    }

    /// The time and issuer/audience checks, then the claim matchers.
    fn check_claims(&self, claims: &Map<String, Value>, now: f64) -> Result<(), Failure> {
        let time = |name: &str| -> Result<Option<f64>, Failure> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or(Failure::Invalid(match name {
                    "exp" => "the token's exp claim is not a number",
                    _ => "the token's nbf claim is not a number",
                })),
            }
        };
        if time("exp")?.is_some_and(|exp| now >= exp + self.leeway) {
            return Err(Failure::Invalid("the token has expired"));
        }
        if time("nbf")?.is_some_and(|nbf| now + self.leeway < nbf) {
            return Err(Failure::Invalid("the token is not valid yet"));
        }
        if let Some(issuer) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
                return Err(Failure::Invalid("the token's issuer is not accepted"));
            }
        }
        if !self.audiences.is_empty() {
            let accepted = |v: &Value| {
                v.as_str()
                    .is_some_and(|a| self.audiences.iter().any(|x| x == a))
            };
            let ok = match claims.get("aud") {
                Some(Value::Array(items)) => items.iter().any(accepted),
                Some(v) => accepted(v),
                None => false,
            };
            if !ok {
                return Err(Failure::Invalid("the token is not meant for this audience"));
            }
        }
        for rule in &self.claims {
            match claims.get(&rule.name) {
                None => {
                    return Err(Failure::Claims(format!(
                        "the token has no {} claim",
                        rule.name
                    )))
                }
                Some(v) if !rule.holds(v) => {
                    return Err(Failure::Claims(format!(
                        "the token's {} claim is not accepted here",
                        rule.name
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Signature, then claims, once the keys are there.
    fn decide(&self, token: &Token) -> Result<(), Failure> {
        match self.verify_signature(token) {
            Signature::Valid => self.check_claims(&token.claims, unix_now()),
            Signature::Invalid => Err(Failure::Invalid("the token's signature is not valid")),
            Signature::UnknownKey => Err(Failure::Invalid(
                "no key of this verifier matches the token",
            )),
        }
    }
}

enum Signature {
    Valid,
    Invalid,
    /// No key has the token's `kid`, or none serves its algorithm.
    UnknownKey,
}

enum Failure {
    Invalid(&'static str),
    Claims(String),
}

impl Failure {
    fn flow(self) -> Flow {
        match self {
            Failure::Invalid(m) => invalid(m),
            Failure::Claims(m) => {
                let challenge = format!(
                    "Bearer realm=\"nio\", error=\"insufficient_scope\", error_description=\"{}\"",
                    quotable(&m)
                );
                deny(StatusCode::FORBIDDEN, Reason::JwtClaims, m, &challenge)
            }
        }
    }
}

/// A token, read but not yet trusted.
struct Token {
    raw: String,
    /// Where the signature starts (after the second dot).
    dot: usize,
    alg: Algorithm,
    kid: Option<String>,
    claims: Map<String, Value>,
}

/// The fields of a JOSE header the check reads; the others are skipped
/// without being kept (a header is parsed on every request). A field
/// named twice makes the header invalid.
#[derive(serde::Deserialize)]
struct JoseHeader {
    alg: Option<Value>,
    kid: Option<Value>,
    #[serde(default)]
    crit: Present,
}

/// Whether a field was there at all (whatever its value, `null` too).
#[derive(Default)]
struct Present(bool);

impl<'de> serde::Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d)?;
        Ok(Present(true))
    }
}

impl Token {
    fn parse(raw: String, accepted: &[Algorithm]) -> Result<Token, &'static str> {
        const NOT_A_JWT: &str = "the token is not a JWT (header.payload.signature)";
        let mut parts = raw.splitn(4, '.');
        let (Some(h), Some(p), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(NOT_A_JWT);
        };
        let dot = h.len() + 1 + p.len();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64
            .decode(h)
            .map_err(|_| "the token's header is not valid")?;
        let header: JoseHeader =
            serde_json::from_slice(&header).map_err(|_| "the token's header is not valid")?;
        let alg = match &header.alg {
            Some(Value::String(alg)) => alg.as_str(),
            _ => return Err("the token's header names no algorithm"),
        };
        if alg.eq_ignore_ascii_case("none") {
            return Err("the token is not signed (alg none)");
        }
        let alg = parse_algorithm(alg)
            .filter(|a| accepted.contains(a))
            .ok_or("the token's algorithm is not accepted")?;
        if header.crit.0 {
            return Err("the token's header has critical extensions, which are not supported");
        }
        let kid = match header.kid {
            None => None,
            Some(Value::String(k)) => Some(k),
            Some(_) => return Err("the token's kid is not a string"),
        };
        let claims: Map<String, Value> = b64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("the token's claims are not a JSON object")?;
        Ok(Token {
            raw,
            dot,
            alg,
            kid,
            claims,
        })
    }

    fn message(&self) -> &[u8] {
        self.raw.as_bytes().get(..self.dot).unwrap_or_default()
    }

    fn signature(&self) -> &str {
        self.raw.get(self.dot + 1..).unwrap_or_default()
    }
}

/// Seconds since the epoch, as the time claims count them.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// What may go in a quoted-string of `WWW-Authenticate` (RFC 6750 §3).
fn quotable(message: &str) -> String {
    message
        .chars()
        .map(|c| match c {
            ' ' | '!' | '#'..='[' | ']'..='~' => c,
            _ => '?',
        })
        .collect()
}

fn deny(status: StatusCode, reason: Reason, message: String, challenge: &str) -> Flow {
    let mut denial = Denial::new(status, reason, message);
    if let Ok(v) = HeaderValue::from_str(challenge) {
        denial = denial.with_header(header::WWW_AUTHENTICATE, v);
    }
    Flow::Deny(denial)
}

fn missing() -> Flow {
    deny(
        StatusCode::UNAUTHORIZED,
        Reason::JwtMissing,
        "a bearer token is required".into(),
        "Bearer realm=\"nio\"",
    )
}

fn invalid(message: &str) -> Flow {
    let challenge = format!(
        "Bearer realm=\"nio\", error=\"invalid_token\", error_description=\"{}\"",
        quotable(message)
    );
    deny(
        StatusCode::UNAUTHORIZED,
        Reason::JwtInvalid,
        message.to_string(),
        &challenge,
    )
}

/// The plugin: which verifier, and which claims go to the backend.
#[derive(Debug)]
pub struct JwtPlugin {
    verifier: String,
    forward: Vec<(String, HeaderName)>,
}

impl JwtPlugin {
    pub fn new(c: JwtAuth) -> Result<JwtPlugin, String> {
        let forward = c
            .forward_claims
            .iter()
            .map(|(claim, h)| {
                HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
                    .map(|name| (claim.clone(), name))
                    .map_err(|_| format!("forwardClaims.{claim}: \"{h}\" is not a header name"))
            })
            .collect::<Result<_, _>>()?;
        Ok(JwtPlugin {
            verifier: c.verifier,
            forward,
        })
    }

    /// The claims of a token whose signature holds: checked (time,
    /// issuer, audience, matchers), then admitted.
    fn pass(
        &self,
        ctx: &mut Ctx<'_>,
        verifier: &CompiledVerifier,
        claims: &Map<String, Value>,
        now: f64,
    ) -> Flow {
        match verifier.check_claims(claims, now) {
            Ok(()) => {
                self.admit(ctx, claims);
                Flow::Continue
            }
            Err(f) => f.flow(),
        }
    }

    /// The caller is who the token says: `consumer` and the forwarded
    /// claims.
    fn admit(&self, ctx: &mut Ctx<'_>, claims: &Map<String, Value>) {
        for (claim, name) in &self.forward {
            let value = match claims.get(claim) {
                None => continue,
                Some(Value::String(s)) => HeaderValue::from_bytes(s.as_bytes()).ok(),
                Some(_) => None,
            }
            .or_else(|| {
                let json = serde_json::to_string(claims.get(claim)?).ok()?;
                HeaderValue::from_bytes(json.as_bytes()).ok()
            });
            if let Some(value) = value {
                ctx.headers.insert(name.clone(), value);
            }
        }
        if let Some(sub) = claims.get("sub").and_then(Value::as_str) {
            ctx.state.consumer = Some(sub.to_string());
        }
    }
}

impl Plugin for JwtPlugin {
    fn phase(&self) -> Phase {
        Phase::Access
    }

    fn on_request(&self, ctx: &mut Ctx<'_>) -> Flow {
        // The backend trusts these headers: only the gateway sets them.
        for (_, name) in &self.forward {
            ctx.headers.remove(name);
        }
        if ctx.state.public {
            return Flow::Continue;
        }
        let Some(verifier) = ctx.runtime.jwt_verifiers.get(&self.verifier) else {
            // The control plane checks that it exists; fail closed anyway.
            return Flow::Deny(Denial::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Reason::JwtInvalid,
                format!(
                    "the JwtVerifier \"{}\" is not configured on this gateway",
                    self.verifier
                ),
            ));
        };
        let Some(raw) = verifier.token(ctx.headers, ctx.uri) else {
            return missing();
        };
        let now = unix_now();
        let generation = verifier.generation();
        if let Some(known) = verifier.verified.get(&raw, generation) {
            return self.pass(ctx, verifier, &known.claims, now);
        }
        let token = match Token::parse(raw.into_owned(), &verifier.algorithms) {
            Ok(t) => t,
            Err(m) => return invalid(m),
        };
        match verifier.verify_signature(&token) {
            Signature::Valid => {
                let flow = self.pass(ctx, verifier, &token.claims, now);
                if matches!(flow, Flow::Continue) {
                    verifier
                        .verified
                        .insert(&token.raw, token.claims, generation, now);
                }
                flow
            }
            Signature::Invalid => invalid("the token's signature is not valid"),
            Signature::UnknownKey => {
                let Some(mut fetched) = verifier.jwks.as_ref().and_then(|j| j.request_refresh())
                else {
                    return invalid("no key of this verifier matches the token");
                };
                // The pipeline runs this plugin again once the fetch is
                // done; that second look admits the request.
                let verifier = verifier.clone();
                Flow::Later(Box::pin(async move {
                    let _ = tokio::time::timeout(REFRESH_WAIT, fetched.changed()).await;
                    match verifier.decide(&token) {
                        Ok(()) => Flow::Continue,
                        Err(f) => f.flow(),
                    }
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(extra: Value) -> CompiledVerifier {
        let mut spec = json!({"algorithms": ["HS256"], "keys": [{"kid": "k1", "secret": SECRET}]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let spec: JwtVerifierSpec = serde_json::from_value(spec).unwrap();
        CompiledVerifier::new("v", &spec).unwrap()
    }

    fn sign(kid: Option<&str>, claims: Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = kid.map(str::to_string);
        encode(
            &header,
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    fn decide(v: &CompiledVerifier, token: String) -> Result<(), String> {
        let token = Token::parse(token, &v.algorithms).map_err(str::to_string)?;
        v.decide(&token).map_err(|f| match f {
            Failure::Invalid(m) => format!("invalid: {m}"),
            Failure::Claims(m) => format!("claims: {m}"),
        })
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn signature_time_issuer_and_audience() {
        let v = verifier(json!({"issuer": "idp", "audiences": ["api"], "leeway": "10s"}));
        let ok = json!({"iss": "idp", "aud": ["x", "api"], "exp": now() + 60});
        assert_eq!(decide(&v, sign(Some("k1"), ok.clone())), Ok(()));
        assert_eq!(decide(&v, sign(None, ok.clone())), Ok(()));
        let mut bad_sig = sign(Some("k1"), ok.clone()).into_bytes();
        let i = bad_sig.len() - 10;
        bad_sig[i] = if bad_sig[i] == b'A' { b'B' } else { b'A' };
        let bad_sig = String::from_utf8(bad_sig).unwrap();
        assert_eq!(
            decide(&v, bad_sig),
            Err("invalid: the token's signature is not valid".into())
        );
        let tampered = {
            let t = sign(Some("k1"), ok.clone());
            let mut parts: Vec<&str> = t.split('.').collect();
            let other = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(json!({"iss": "idp", "aud": "api", "admin": true}).to_string());
            parts[1] = &other;
            parts.join(".")
        };
        assert!(decide(&v, tampered).unwrap_err().contains("signature"));
        assert_eq!(
            decide(&v, sign(Some("k2"), ok.clone())),
            Err("invalid: no key of this verifier matches the token".into())
        );
        // Within the leeway, then past it.
        let at = |exp: u64, nbf: u64| json!({"iss": "idp", "aud": "api", "exp": exp, "nbf": nbf});
        assert_eq!(decide(&v, sign(None, at(now() - 5, 0))), Ok(()));
        assert_eq!(
            decide(&v, sign(None, at(now() - 20, 0))),
            Err("invalid: the token has expired".into())
        );
        assert_eq!(decide(&v, sign(None, at(now() + 60, now() + 5))), Ok(()));
        assert_eq!(
            decide(&v, sign(None, at(now() + 60, now() + 60))),
            Err("invalid: the token is not valid yet".into())
        );
        assert!(
            decide(&v, sign(None, json!({"iss": "other", "aud": "api"})))
                .unwrap_err()
                .contains("issuer")
        );
        assert!(decide(&v, sign(None, json!({"iss": "idp", "aud": "web"})))
            .unwrap_err()
            .contains("audience"));
        assert!(decide(&v, sign(None, json!({"iss": "idp"})))
            .unwrap_err()
            .contains("audience"));
    }

    #[test]
    fn unsigned_and_malformed_tokens_are_refused() {
        let v = verifier(json!({}));
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!(
            "{}.{}.",
            b64(json!({"alg": "none"})),
            b64(json!({"sub": "x"}))
        );
        assert_eq!(
            decide(&v, none),
            Err("the token is not signed (alg none)".into())
        );
        let rs = format!("{}.{}.sig", b64(json!({"alg": "RS256"})), b64(json!({})));
        assert_eq!(
            decide(&v, rs),
            Err("the token's algorithm is not accepted".into())
        );
        let crit = format!(
            "{}.{}.sig",
            b64(json!({"alg": "HS256", "crit": ["b64"], "b64": false})),
            b64(json!({}))
        );
        assert!(decide(&v, crit).unwrap_err().contains("critical"));
        // A `crit` that is null is still there; an algorithm named twice
        // is not a header to guess from.
        let crit = format!(
            "{}.{}.sig",
            b64(json!({"alg": "HS256", "crit": null})),
            b64(json!({}))
        );
        assert!(decide(&v, crit).unwrap_err().contains("critical"));
        let twice = format!(
            "{}.{}.sig",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"alg":"none","alg":"HS256"}"#),
            b64(json!({}))
        );
        assert_eq!(
            decide(&v, twice),
            Err("the token's header is not valid".into())
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert!(decide(&v, bad.to_string()).is_err(), "{bad}");
        }
        let list = format!("{}.{}.sig", b64(json!({"alg": "HS256"})), b64(json!([1])));
        assert!(decide(&v, list).unwrap_err().contains("JSON object"));
    }

    #[test]
    fn claim_matchers() {
        let v = verifier(json!({"claims": [
            {"name": "tenant", "equals": "acme"},
            {"name": "role", "oneOf": ["admin", "ops"]},
            {"name": "email", "regex": "@example\\.com$"},
        ]}));
        let ok = json!({"tenant": "acme", "role": ["user", "ops"], "email": "a@example.com"});
        assert_eq!(decide(&v, sign(None, ok)), Ok(()));
        let cases = [
            (
                json!({"role": "ops", "email": "a@example.com"}),
                "claims: the token has no tenant claim",
            ),
            (
                json!({"tenant": "acme", "role": "user", "email": "a@example.com"}),
                "claims: the token's role claim is not accepted here",
            ),
            (
                json!({"tenant": "acme", "role": "admin", "email": "a@example.org"}),
                "claims: the token's email claim is not accepted here",
            ),
            (
                json!({"tenant": ["acme"], "role": "admin", "email": 7}),
                "claims: the token's email claim is not accepted here",
            ),
        ];
        for (claims, expected) in cases {
            assert_eq!(
                decide(&v, sign(None, claims.clone())),
                Err(expected.into()),
                "{claims}"
            );
        }
    }

    #[test]
    fn tokens_come_from_the_configured_source() {
        let uri: Uri = "/x?access_token=q.q.q&other=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  a.b.c "),
        );
        headers.insert("x-token", HeaderValue::from_static("Token h.h.h"));
        headers.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; session=c.c.c"),
        );
        let token = |source: Value| verifier(json!({"source": source})).token(&headers, &uri);
        assert_eq!(token(json!({})).as_deref(), Some("a.b.c"));
        assert_eq!(
            token(json!({"header": "X-Token", "prefix": "token "})).as_deref(),
            Some("h.h.h")
        );
        assert_eq!(
            token(json!({"header": "X-Token", "prefix": "Bearer "})),
            None
        );
        assert_eq!(
            token(json!({"header": "X-Token"})).as_deref(),
            Some("Token h.h.h")
        );
        assert_eq!(
            token(json!({"cookie": "session"})).as_deref(),
            Some("c.c.c")
        );
        assert_eq!(token(json!({"cookie": "missing"})), None);
        assert_eq!(
            token(json!({"query": "access_token"})).as_deref(),
            Some("q.q.q")
        );
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dTpw"),
        );
        assert_eq!(verifier(json!({})).token(&basic, &uri), None);
    }

    #[test]
    fn challenges_quote_safely() {
        assert_eq!(quotable("claim \"x\\y\" é"), "claim ?x?y? ?");
        let Flow::Deny(d) = invalid("the token has expired") else {
            panic!("not a denial");
        };
        assert_eq!(d.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            d.headers[0].1,
            "Bearer realm=\"nio\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
    }
}
