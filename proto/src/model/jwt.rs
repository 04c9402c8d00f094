//! `JwtVerifier`: where a JSON Web Token is found in a request, which keys
//! and algorithms verify it, and which claims it must carry. Used by the
//! `jwt` plugin (`config: {verifier: <name>}`).

use super::FieldError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtVerifierSpec {
    /// Where the token is. Default: `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "TokenSource::is_default")]
    pub source: TokenSource,
    /// Accepted algorithms: HS256/384/512, RS256/384/512, PS256/384/512,
    /// ES256/384, EdDSA. A token signed otherwise is refused.
    pub algorithms: Vec<String>,
    /// Inline keys (HS secrets, public keys in PEM).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<JwtKey>,
    /// A JWKS document the data planes fetch, cache and refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again (an unknown `kid` also triggers
    /// a fetch, at most once per `jwksMinRefresh`).
    #[serde(default = "JwtVerifierSpec::refresh_default", with = "super::duration")]
    pub jwks_refresh: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The token's `aud` must contain one of these (when set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "JwtVerifierSpec::leeway_default", with = "super::duration")]
    pub leeway: Duration,
    /// More conditions on claims; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims: Vec<ClaimCheck>,
}

impl JwtVerifierSpec {
    fn refresh_default() -> Duration {
        Duration::from_secs(300)
    }
    fn leeway_default() -> Duration {
        Duration::from_secs(30)
    }
}

/// Exactly one of `header` (with an optional `prefix`, default `Bearer `
/// for `Authorization`), `cookie` or `query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

impl TokenSource {
    fn is_default(&self) -> bool {
        *self == TokenSource::default()
    }
}

/// An inline key: `secret` for HS algorithms (the raw string), or
/// `publicKeyPem` for RSA, EC and Ed25519 keys. `kid` selects it when a
/// token names one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
}

/// A condition on one claim (a top-level claim name): exactly one of
/// `equals` (a JSON value), `oneOf` (a list of values) or `regex` (for
/// string claims).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimCheck {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

pub const ALGORITHMS: [&str; 14] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA", "ES512", "none",
];

impl JwtVerifierSpec {
    pub(super) fn validate(&self, errors: &mut Vec<FieldError>) {
        let mut err = |f: String, m: String| errors.push(FieldError::new(f, m));
        if self.algorithms.is_empty() {
            err(
                "spec.algorithms".into(),
                "list the accepted algorithms, like [RS256]".into(),
            );
        }
        for (i, a) in self.algorithms.iter().enumerate() {
            // ES512 and "none" are named only to be refused clearly.
            if !ALGORITHMS[..12].contains(&a.as_str()) {
                err(
                    format!("spec.algorithms[{i}]"),
                    format!(
                        "\"{a}\" is not supported; use {}",
                        ALGORITHMS[..12].join(", ")
                    ),
                );
            }
        }
        if self.keys.is_empty() && self.jwks_url.is_none() {
            err(
                "spec.keys".into(),
                "give inline keys or a jwksUrl to verify tokens with".into(),
            );
        }
        for (i, k) in self.keys.iter().enumerate() {
            if k.secret.is_some() == k.public_key_pem.is_some() {
                err(
                    format!("spec.keys[{i}]"),
                    "give exactly one of secret (HS algorithms) or publicKeyPem".into(),
                );
            }
        }
        if let Some(url) = &self.jwks_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                err(
                    "spec.jwksUrl".into(),
                    format!("\"{url}\" is not an http(s) URL"),
                );
            }
        }
        if self.jwks_refresh < Duration::from_secs(1) {
            err("spec.jwksRefresh".into(), "at least 1s".into());
        }
        let s = &self.source;
        let n = usize::from(s.header.is_some())
            + usize::from(s.cookie.is_some())
            + usize::from(s.query.is_some());
        if n > 1 {
            err(
                "spec.source".into(),
                "give one of header, cookie or query".into(),
            );
        }
        if s.prefix.is_some() && s.header.is_none() {
            err(
                "spec.source.prefix".into(),
                "a prefix goes with a header".into(),
            );
        }
        if let Some(h) = &s.header {
            if !super::is_header_name(h) {
                err(
                    "spec.source.header".into(),
                    format!("\"{h}\" is not a valid header name"),
                );
            }
        }
        for (i, c) in self.claims.iter().enumerate() {
            let set = usize::from(c.equals.is_some())
                + usize::from(c.one_of.is_some())
                + usize::from(c.regex.is_some());
            if set != 1 {
                err(
                    format!("spec.claims[{i}]"),
                    "give exactly one of equals, oneOf or regex".into(),
                );
            }
            if let Some(re) = &c.regex {
                if let Err(m) = super::compile_regex(re) {
                    err(format!("spec.claims[{i}].regex"), m);
                }
            }
        }
    }
}
