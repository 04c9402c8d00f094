//! The verification keys of a JwtVerifier: [`Key`] (a key and the
//! algorithms it may verify) and [`Jwks`], the keys of its `jwksUrl`,
//! fetched by the data plane, cached and refreshed.
//!
//! The request path only loads the current key list (an `ArcSwap`): no
//! lock, no wait. One background task per JWKS fetches it when the verifier
//! is built, then every `jwksRefresh` (after a failure sooner, backing off
//! from `jwksMinRefresh`), and keeps the last good keys while fetches fail.
//! The task holds only a `Weak` reference and ends when the verifier is
//! dropped (when no runtime uses its spec any more).
//!
//! A token whose key is not in the cache asks for a fetch now
//! ([`Jwks::request_refresh`]): granted at most once per `jwksMinRefresh`
//! (counting every fetch), so made-up `kid`s cost at most one fetch per
//! period; requests arriving while a fetch runs wait for that fetch.

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use nio_proto::model::{check_key, parse_algorithm, KeyKind};
use sha2::{Digest, Sha256, Sha384, Sha512};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Longest a fetch may take, connection included.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A verification key.
pub(crate) struct Key {
    pub kid: Option<String>,
    /// What it may verify: its kind's algorithms that the verifier accepts
    /// (and, for a JWK with an `alg`, only that one).
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
    /// An HMAC secret already keyed for each HS algorithm it serves.
    hmac: Option<Box<HmacKeys>>,
}

/// A secret's HMAC states after the key is absorbed, computed once when
/// the verifier is built: a request's check then hashes only the token
/// (setting the key up costs two SHA-2 blocks per check otherwise).
#[derive(Default)]
struct HmacKeys {
    hs256: Option<Hmac<Sha256>>,
    hs384: Option<Hmac<Sha384>>,
    hs512: Option<Hmac<Sha512>>,
}

impl Key {
    pub fn new(
        kid: Option<String>,
        key: DecodingKey,
        kind: KeyKind,
        accepted: &[Algorithm],
    ) -> Key {
        let algorithms: Vec<Algorithm> = kind
            .algorithms()
            .iter()
            .copied()
            .filter(|a| accepted.contains(a))
            .collect();
        let hmac = key.try_get_hmac_secret().ok().map(|secret| {
            let mut keys = HmacKeys::default();
            for alg in &algorithms {
                match alg {
                    Algorithm::HS256 => keys.hs256 = Hmac::new_from_slice(secret).ok(),
                    Algorithm::HS384 => keys.hs384 = Hmac::new_from_slice(secret).ok(),
                    Algorithm::HS512 => keys.hs512 = Hmac::new_from_slice(secret).ok(),
                    _ => {}
                }
            }
            Box::new(keys)
        });
        Key {
            kid,
            algorithms,
            key,
            hmac,
        }
    }

    /// Whether `signature` (base64url) signs `message` with this key.
    pub fn verifies(&self, alg: Algorithm, message: &[u8], signature: &str) -> bool {
        let keys = self.hmac.as_deref();
        match (alg, keys) {
            (Algorithm::HS256, Some(HmacKeys { hs256: Some(k), .. })) => {
                hmac_verifies(k, message, signature)
            }
            (Algorithm::HS384, Some(HmacKeys { hs384: Some(k), .. })) => {
                hmac_verifies(k, message, signature)
            }
            (Algorithm::HS512, Some(HmacKeys { hs512: Some(k), .. })) => {
                hmac_verifies(k, message, signature)
            }
            _ => jsonwebtoken::crypto::verify(signature, message, &self.key, alg).unwrap_or(false),
        }
    }
}

/// An HMAC check from the keyed state; the tag is compared in constant
/// time.
fn hmac_verifies<M: Mac + Clone>(keyed: &M, message: &[u8], signature: &str) -> bool {
    use base64::Engine;
    // The largest tag (HS512) is 64 bytes; room to spare because the
    // decoder's size check is an estimate. A longer signature is wrong.
    let mut tag = [0u8; 96];
    let Ok(n) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(signature, &mut tag)
    else {
        return false;
    };
    let mut mac = keyed.clone();
    mac.update(message);
    mac.verify_slice(&tag[..n]).is_ok()
}

/// One JWK of a set: `Ok(None)` for a key this verifier has no use for
/// (another algorithm), `Err` for a key that cannot be used.
fn jwk_key(value: &serde_json::Value, accepted: &[Algorithm]) -> Result<Option<Key>, String> {
    let jwk: Jwk =
        serde_json::from_value(value.clone()).map_err(|e| format!("not a supported JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Ok(None);
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::OctetKey(_) => KeyKind::Hmac,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            ref other => return Err(format!("EC curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            ref other => return Err(format!("OKP curve {other:?} is not supported")),
        },
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("cannot read the key: {e}"))?;
    check_key(&key, kind)?;
    let mut key = Key::new(jwk.common.key_id, key, kind, accepted);
    if let Some(alg) = jwk.common.key_algorithm {
        match parse_algorithm(&format!("{alg:?}")) {
            Some(alg) => key.algorithms.retain(|a| *a == alg),
            None => return Ok(None),
        }
    }
    Ok((!key.algorithms.is_empty()).then_some(key))
}

/// The usable keys of a JWKS document, and what was wrong with the others.
pub(crate) fn parse_jwks(
    body: &[u8],
    accepted: &[Algorithm],
) -> Result<(Vec<Key>, Vec<String>), String> {
    let doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or("the JWKS has no \"keys\" array")?;
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, value) in list.iter().enumerate() {
        match jwk_key(value, accepted) {
            Ok(Some(key)) => keys.push(key),
            Ok(None) => {}
            Err(m) => {
                let kid = value.get("kid").and_then(serde_json::Value::as_str);
                skipped.push(format!("keys[{i}] (kid {kid:?}): {m}"));
            }
        }
    }
    Ok((keys, skipped))
}

/// One HTTP client for every JWKS (plain HTTP and HTTPS with rustls).
fn client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .connect_timeout(FETCH_TIMEOUT)
                .user_agent(concat!("nio-data-plane/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the JWKS client: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The keys of one `jwksUrl`.
pub(crate) struct Jwks {
    verifier: String,
    url: reqwest::Url,
    accepted: Vec<Algorithm>,
    refresh: Duration,
    min_refresh: Duration,
    /// The current keys: what the request path reads.
    pub keys: ArcSwap<Vec<Key>>,
    /// Bumped after each new key set, so tokens verified under older keys
    /// are verified again (see `cache`).
    pub generation: AtomicU64,
    fetch: Mutex<FetchState>,
    /// Wakes the task: a fetch was asked for, or the JWKS was dropped.
    wake: Arc<Notify>,
    /// Counts finished fetches (good or not), for requests that wait.
    done: watch::Sender<u64>,
}

#[derive(Default)]
struct FetchState {
    last_start: Option<Instant>,
    in_flight: bool,
    requested: bool,
    /// What was last logged about the key set, to log changes only.
    logged: String,
    /// SHA-256 of the JWKS document whose keys are installed: the same
    /// document again changes nothing (and keeps the cached tokens).
    installed: Option<[u8; 32]>,
}

impl Jwks {
    /// The cache for `url`, and its refresh task when there is a Tokio
    /// runtime (there always is in the data plane).
    pub fn start(
        verifier: &str,
        url: &str,
        accepted: &[Algorithm],
        refresh: Duration,
        min_refresh: Duration,
    ) -> Result<Arc<Jwks>, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("jwksUrl: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("jwksUrl: not an http(s) URL".into());
        }
        client()?;
        let jwks = Arc::new(Jwks {
            verifier: verifier.to_string(),
            url,
            accepted: accepted.to_vec(),
            refresh,
            min_refresh,
            keys: ArcSwap::from_pointee(Vec::new()),
            generation: AtomicU64::new(0),
            fetch: Mutex::new(FetchState::default()),
            wake: Arc::new(Notify::new()),
            done: watch::Sender::new(0),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(refresh_loop(Arc::downgrade(&jwks), jwks.wake.clone()));
        }
        Ok(jwks)
    }

    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FetchState> {
        self.fetch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// For a token whose key is not cached: a receiver that changes when
    /// the next fetch is done (the one running, or one started now), or
    /// `None` when a fetch started less than `jwksMinRefresh` ago. The rare
    /// path: takes this JWKS's lock.
    pub fn request_refresh(&self) -> Option<watch::Receiver<u64>> {
        // Subscribed first, so a fetch that ends meanwhile is seen.
        let done = self.done.subscribe();
        let mut state = self.state();
        if state.in_flight || state.requested {
            return Some(done);
        }
        if state
            .last_start
            .is_some_and(|t| t.elapsed() < self.min_refresh)
        {
            return None;
        }
        state.requested = true;
        drop(state);
        self.wake.notify_one();
        Some(done)
    }

    /// Fetches the JWKS once and installs its keys; false when it failed
    /// (the previous keys stay).
    async fn fetch(&self) -> bool {
        {
            let mut state = self.state();
            state.in_flight = true;
            state.requested = false;
            state.last_start = Some(Instant::now());
        }
        let result = match self.download().await {
            Ok(body) => parse_jwks(&body, &self.accepted)
                .map(|(keys, skipped)| (keys, skipped, Sha256::digest(&body).into())),
            Err(e) => Err(e),
        };
        let ok = result.is_ok();
        let mut state = self.state();
        match result {
            Ok((keys, skipped, digest)) => {
                let kids: Vec<&str> = keys
                    .iter()
                    .map(|k| k.kid.as_deref().unwrap_or("-"))
                    .collect();
                let summary = format!("{} | {}", kids.join(","), skipped.join("; "));
                if summary != state.logged {
                    tracing::info!(
                        verifier = %self.verifier,
                        url = %self.url,
                        keys = keys.len(),
                        kids = %kids.join(","),
                        "JWKS loaded"
                    );
                    for s in &skipped {
                        tracing::warn!(verifier = %self.verifier, url = %self.url, key = %s, "JWKS key skipped");
                    }
                    state.logged = summary;
                }
                if state.installed != Some(digest) {
                    self.keys.store(Arc::new(keys));
                    self.generation.fetch_add(1, Ordering::Release);
                    state.installed = Some(digest);
                }
            }
            Err(error) => {
                tracing::warn!(
                    verifier = %self.verifier,
                    url = %self.url,
                    %error,
                    cached_keys = self.keys.load().len(),
                    "JWKS fetch failed; keeping the cached keys"
                );
                state.logged.clear();
            }
        }
        state.in_flight = false;
        drop(state);
        self.done.send_modify(|n| *n += 1);
        ok
    }

    async fn download(&self) -> Result<Vec<u8>, String> {
        let mut resp = client()?
            .get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("answered {}", resp.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the body: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

impl Drop for Jwks {
    fn drop(&mut self) {
        // Let the task see it is gone now rather than at its next fetch.
        self.wake.notify_one();
    }
}

/// Fetch, wait (the refresh period, or less after a failure, or until
/// woken), again, as long as the JWKS exists.
async fn refresh_loop(jwks: Weak<Jwks>, wake: Arc<Notify>) {
    let mut failures = 0u32;
    loop {
        let pause = {
            let Some(jwks) = jwks.upgrade() else {
                return;
            };
            if jwks.fetch().await {
                failures = 0;
                jwks.refresh
            } else {
                failures = failures.saturating_add(1);
                jwks.min_refresh
                    .saturating_mul(1 << failures.min(16).saturating_sub(1))
                    .min(jwks.refresh)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    const ALL: [Algorithm; 4] = [
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
        Algorithm::HS256,
    ];

    #[test]
    fn unusable_keys_are_skipped_with_a_reason() {
        let doc = json!({"keys": [
            // RSA (n and e of a 2048-bit key would be long; a tiny one is
            // refused as too weak).
            {"kty": "RSA", "kid": "weak", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "OKP", "kid": "short", "crv": "Ed25519", "x": "AAAA"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519",
             "x": "zB-dXBdsKuF9JHsqV4S6FaCsV2nWUpETewk35G_HYGs"},
            {"kty": "oct", "kid": "hs", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"},
            {"kty": "oct", "kid": "enc", "use": "enc", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"},
            {"kty": "oct", "kid": "other-alg", "alg": "HS512", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"},
            {"kty": "weird"},
        ]});
        let (keys, skipped) = parse_jwks(doc.to_string().as_bytes(), &ALL).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref().unwrap()).collect();
        assert_eq!(kids, ["ed", "hs"]);
        assert_eq!(keys[0].algorithms, [Algorithm::EdDSA]);
        assert_eq!(keys[1].algorithms, [Algorithm::HS256]);
        let text = skipped.join("\n");
        assert_eq!(skipped.len(), 4, "{text}");
        assert!(text.contains("\"weak\""), "{text}");
        assert!(text.contains("P521"), "{text}");
        assert!(text.contains("\"short\""), "{text}");
        assert!(parse_jwks(b"<html>", &ALL).is_err());
        assert!(parse_jwks(b"{\"nokeys\": []}", &ALL).is_err());
    }

    /// The refresh task holds only a weak reference and ends when the
    /// JWKS is dropped.
    #[tokio::test]
    async fn the_refresh_task_ends_with_the_jwks() {
        // Nothing listens there: every fetch fails fast.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let jwks = Jwks::start(
            "v",
            &format!("http://127.0.0.1:{port}/jwks"),
            &ALL,
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        let wake = jwks.wake.clone();
        let mut done = jwks.done.subscribe();
        // The first fetch (failed) is done.
        tokio::time::timeout(Duration::from_secs(10), done.changed())
            .await
            .unwrap()
            .unwrap();
        // Rate-limited: the failed fetch just started.
        assert!(jwks.request_refresh().is_none());
        // The JWKS's, the task's and this one.
        assert_eq!(Arc::strong_count(&wake), 3);
        drop(jwks);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&wake) > 1 {
            assert!(
                Instant::now() < deadline,
                "the refresh task is still running"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
