//! `JwtVerifier`: where a JSON Web Token is found in a request, which keys
//! and algorithms verify it, and which claims it must carry. Used by the
//! `jwt` plugin (`config: {verifier: <name>}`).
//!
//! Also owns reading keys: [`inline_key`] and [`pem_public_key`] turn an
//! inline key into a [`DecodingKey`] and its [`KeyKind`] (the admin API
//! refuses a key that does not parse, with the field at fault), and
//! [`check_key`] checks that a key, inline or from a JWKS, is usable for
//! its kind. The data plane compiles keys with the same functions, so what
//! the control plane accepts is what the data plane can use.

use super::FieldError;
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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
    /// The shortest time between two JWKS fetches triggered by tokens whose
    /// key is unknown (a flood of made-up `kid`s costs one fetch per
    /// period).
    #[serde(
        default = "JwtVerifierSpec::min_refresh_default",
        with = "super::duration"
    )]
    pub jwks_min_refresh: Duration,
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
    fn min_refresh_default() -> Duration {
        Duration::from_secs(5)
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
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_pem: Option<String>,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_key_pem", &self.public_key_pem.is_some())
            .finish()
    }
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

/// Shortest HMAC secret accepted: 256 bits, the size RFC 7518 §3.2
/// requires for HS256.
pub const MIN_SECRET_BYTES: usize = 32;

/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// One of the supported algorithms by its `alg` name (`none` and ES512 are
/// not).
pub fn parse_algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// What a key is, which decides the algorithms it verifies. A key never
/// verifies another family's algorithm (no RSA public key used as an HMAC
/// secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// An HMAC secret: HS256/384/512.
    Hmac,
    /// An RSA public key: RS256/384/512 and PS256/384/512.
    Rsa,
    /// An EC public key on P-256: ES256.
    EcP256,
    /// An EC public key on P-384: ES384.
    EcP384,
    /// An Ed25519 public key: EdDSA.
    Ed25519,
}

impl KeyKind {
    pub fn algorithms(self) -> &'static [Algorithm] {
        match self {
            KeyKind::Hmac => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
            KeyKind::Rsa => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            KeyKind::EcP256 => &[Algorithm::ES256],
            KeyKind::EcP384 => &[Algorithm::ES384],
            KeyKind::Ed25519 => &[Algorithm::EdDSA],
        }
    }

    /// The kind of key that verifies `alg`.
    pub fn for_algorithm(alg: Algorithm) -> KeyKind {
        [
            KeyKind::Hmac,
            KeyKind::Rsa,
            KeyKind::EcP256,
            KeyKind::EcP384,
            KeyKind::Ed25519,
        ]
        .into_iter()
        .find(|k| k.algorithms().contains(&alg))
        .unwrap_or(KeyKind::Hmac)
    }

    /// For messages: "an RSA public key".
    pub fn describe(self) -> &'static str {
        match self {
            KeyKind::Hmac => "a secret",
            KeyKind::Rsa => "an RSA public key",
            KeyKind::EcP256 => "an EC P-256 public key",
            KeyKind::EcP384 => "an EC P-384 public key",
            KeyKind::Ed25519 => "an Ed25519 public key",
        }
    }
}

fn names(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An inline key, read: the key and its kind, or the field at fault
/// (`secret` or `publicKeyPem`) and what is wrong.
pub fn inline_key(key: &JwtKey) -> Result<(DecodingKey, KeyKind), (&'static str, String)> {
    match (&key.secret, &key.public_key_pem) {
        (Some(secret), None) => {
            let k = DecodingKey::from_secret(secret.as_bytes());
            check_key(&k, KeyKind::Hmac).map_err(|m| ("secret", m))?;
            Ok((k, KeyKind::Hmac))
        }
        (None, Some(pem)) => pem_public_key(pem).map_err(|m| ("publicKeyPem", m)),
        _ => Err((
            "",
            "give exactly one of secret (HS algorithms) or publicKeyPem".into(),
        )),
    }
}

/// A public key in PEM (`-----BEGIN PUBLIC KEY-----`, or `-----BEGIN RSA
/// PUBLIC KEY-----`): RSA, EC P-256, EC P-384 or Ed25519.
pub fn pem_public_key(pem: &str) -> Result<(DecodingKey, KeyKind), String> {
    let pem = pem.trim();
    let label = pem
        .strip_prefix("-----BEGIN ")
        .and_then(|rest| rest.split_once("-----"))
        .map(|(label, _)| label)
        .ok_or(
            "not a PEM public key; paste it whole, from -----BEGIN PUBLIC KEY----- to -----END PUBLIC KEY-----",
        )?;
    if label.contains("PRIVATE") {
        return Err(
            "this is a private key; give only the public key (openssl pkey -in key.pem -pubout)"
                .into(),
        );
    }
    if label == "CERTIFICATE" {
        return Err("certificates are not read here; give the public key (openssl x509 -in cert.pem -pubkey -noout)".into());
    }
    if label != "PUBLIC KEY" && label != "RSA PUBLIC KEY" {
        return Err(format!(
            "a PEM block labelled {label:.40} is not a public key; expected -----BEGIN PUBLIC KEY-----"
        ));
    }
    let bytes = pem.as_bytes();
    if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
        check_key(&k, KeyKind::Rsa)?;
        return Ok((k, KeyKind::Rsa));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
        for kind in [KeyKind::EcP256, KeyKind::EcP384] {
            if check_key(&k, kind).is_ok() {
                return Ok((k, kind));
            }
        }
        return Err(
            "an EC key on an unsupported curve; ES256 needs P-256 and ES384 needs P-384".into(),
        );
    }
    if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
        check_key(&k, KeyKind::Ed25519)?;
        return Ok((k, KeyKind::Ed25519));
    }
    Err("cannot read this public key: the PEM is malformed, or the key is not RSA, EC (P-256, P-384) or Ed25519".into())
}

/// Whether `key` can verify the algorithms of `kind`: an RSA key must parse
/// and have at least [`MIN_RSA_BITS`], an EC key must be a point of the
/// curve, an Ed25519 key 32 bytes, a secret at least [`MIN_SECRET_BYTES`].
/// Used for inline keys and for every key of a JWKS.
pub fn check_key(key: &DecodingKey, kind: KeyKind) -> Result<(), String> {
    use rsa::traits::PublicKeyParts;
    match (kind, key.kind()) {
        (KeyKind::Hmac, DecodingKeyKind::SecretOrDer(secret)) => {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "a secret must be at least {MIN_SECRET_BYTES} bytes (256 bits, RFC 7518 section 3.2); generate one with: openssl rand -base64 32"
                ));
            }
        }
        (KeyKind::Rsa, k) => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            let public = match k {
                DecodingKeyKind::SecretOrDer(der) => rsa::RsaPublicKey::from_pkcs1_der(der)
                    .map_err(|e| format!("not a valid RSA public key: {e}"))?,
                DecodingKeyKind::RsaModulusExponent { n, e } => rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(n),
                    rsa::BigUint::from_bytes_be(e),
                )
                .map_err(|e| format!("not a valid RSA public key: {e}"))?,
            };
            let bits = public.n().bits();
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "a {bits}-bit RSA key is too weak; use {MIN_RSA_BITS} bits or more"
                ));
            }
        }
        (KeyKind::Ed25519, DecodingKeyKind::SecretOrDer(point)) if point.len() != 32 => {
            return Err("not an Ed25519 public key (32 bytes)".into());
        }
        (KeyKind::EcP256 | KeyKind::EcP384 | KeyKind::Ed25519, DecodingKeyKind::SecretOrDer(_)) => {
            let alg = kind.algorithms()[0];
            // Building a verifier parses the key for the curve; the empty
            // signature then simply does not verify.
            jsonwebtoken::crypto::verify("", b"", key, alg)
                .map_err(|_| format!("not {} (for {alg:?})", kind.describe()))?;
        }
        (_, DecodingKeyKind::RsaModulusExponent { .. }) => {
            return Err(format!("not {}", kind.describe()));
        }
    }
    Ok(())
}

/// `http(s)://host[:port][/path]`: a host, and nothing a URL cannot hold.
fn is_plain_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    !host.is_empty()
        && !host.starts_with(':')
        && url.len() <= 2048
        && url.bytes().all(|b| b.is_ascii_graphic())
}

impl JwtVerifierSpec {
    pub(super) fn validate(&self, errors: &mut Vec<FieldError>) {
        let mut err = |f: String, m: String| errors.push(FieldError::new(f, m));
        if self.algorithms.is_empty() {
            err(
                "spec.algorithms".into(),
                "list the accepted algorithms, like [RS256]".into(),
            );
        }
        let mut algorithms = Vec::new();
        for (i, a) in self.algorithms.iter().enumerate() {
            // ES512 and "none" are named only to be refused clearly.
            match parse_algorithm(a) {
                Some(alg) => algorithms.push((i, alg)),
                None => err(
                    format!("spec.algorithms[{i}]"),
                    format!(
                        "\"{a}\" is not supported; use {}",
                        ALGORITHMS[..12].join(", ")
                    ),
                ),
            }
        }
        if self.keys.is_empty() && self.jwks_url.is_none() {
            err(
                "spec.keys".into(),
                "give inline keys or a jwksUrl to verify tokens with".into(),
            );
        }
        let mut kinds = Vec::new();
        let mut all_read = true;
        let mut kids: HashMap<&str, usize> = HashMap::new();
        for (i, k) in self.keys.iter().enumerate() {
            if let Some(kid) = &k.kid {
                if kid.is_empty() || kid.len() > 256 {
                    err(format!("spec.keys[{i}].kid"), "1-256 characters".into());
                } else if let Some(first) = kids.insert(kid, i) {
                    err(
                        format!("spec.keys[{i}].kid"),
                        format!(
                            "\"{kid}\" is the kid of spec.keys[{first}] too; kids must be unique"
                        ),
                    );
                }
            }
            match inline_key(k) {
                Ok((_, kind)) => {
                    let usable: Vec<Algorithm> = kind
                        .algorithms()
                        .iter()
                        .copied()
                        .filter(|a| algorithms.iter().any(|(_, b)| a == b))
                        .collect();
                    if usable.is_empty() && !algorithms.is_empty() {
                        let field = if kind == KeyKind::Hmac {
                            "secret"
                        } else {
                            "publicKeyPem"
                        };
                        err(
                            format!("spec.keys[{i}].{field}"),
                            format!(
                                "{} verifies {}, and spec.algorithms lists none of them; add one or remove the key",
                                kind.describe(),
                                names(kind.algorithms())
                            ),
                        );
                    }
                    kinds.push(kind);
                }
                Err((field, message)) => {
                    all_read = false;
                    let at = if field.is_empty() {
                        format!("spec.keys[{i}]")
                    } else {
                        format!("spec.keys[{i}].{field}")
                    };
                    err(at, message);
                }
            }
        }
        // Without a JWKS, an algorithm no inline key verifies would refuse
        // every token that uses it: a mistake in the list or in the keys.
        if self.jwks_url.is_none() && !self.keys.is_empty() && all_read {
            for (i, alg) in &algorithms {
                if !kinds.iter().any(|k| k.algorithms().contains(alg)) {
                    err(
                        format!("spec.algorithms[{i}]"),
                        format!(
                            "no key in spec.keys verifies {alg:?}; add {} or a jwksUrl, or remove {alg:?}",
                            KeyKind::for_algorithm(*alg).describe()
                        ),
                    );
                }
            }
        }
        if let Some(url) = &self.jwks_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                err(
                    "spec.jwksUrl".into(),
                    format!("\"{url}\" is not an http(s) URL"),
                );
            } else if !is_plain_url(url) {
                err(
                    "spec.jwksUrl".into(),
                    format!("\"{url}\" is not a valid URL: it needs a host, and no spaces"),
                );
            }
        }
        if self.jwks_refresh < Duration::from_secs(1) {
            err("spec.jwksRefresh".into(), "at least 1s".into());
        }
        if self.jwks_min_refresh < Duration::from_secs(1) {
            err("spec.jwksMinRefresh".into(), "at least 1s".into());
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Public keys generated once with openssl for these tests.
    const RSA_2048: &str = "\
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
    const RSA_1024: &str = "\
-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC+frA998uvpgUMpnnzOsrTCsHO
l4YiCL+LzHnpmkqiqExn9sDaOvjIaaBipuedIqNy1xbMvpDI1VEEXS9PQ0hOf017
S2gjRAh7azyH4/3TwHXYw91yein5GWNinaCBrbGuYl+N1xltNCGlyDFDtlHIxWBl
TDVyOS4yd+waY0XVXwIDAQAB
-----END PUBLIC KEY-----
";
    const EC_P256: &str = "\
-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEsCaYHTAQqqNXrXU/e5gYUReBmuX5
nzt0BOYu5vX8Yg8Y7T/QLXxtD97hmkxROmIBfHZhjukPksxVVwGb7i8ezw==
-----END PUBLIC KEY-----
";
    const EC_P384: &str = "\
-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEnDh/tcUTqt7Y70yndQr/Vqs+T3xkKc34
Pw/vkE2xKp0fxzsZTZnyydwNEl3Ykxl9rMzesKA+Q2J9gE9sydbwQ9qVjGwNTjGE
3yTqD1F+Zx/KwfDbbfENTxlpqJGXW7+s
-----END PUBLIC KEY-----
";
    const EC_P521: &str = "\
-----BEGIN PUBLIC KEY-----
MIGbMBAGByqGSM49AgEGBSuBBAAjA4GGAAQA/0ECsREvKb7ndZFjzhIIK137gTzA
6DA9RCbpzWJsExwo8yYcJMN5MVlGEpPQYELL9eXD4TRWMyZAOCt/NOgjbYkASAs7
NHtwEYDoF7qDXyBWr/j4WClHlqOYGuvpMRJZj8wMrbn1lJ/4OgVRfY/9+5UjdDPl
KW+lg0cmUqe2ZR5bq4k=
-----END PUBLIC KEY-----
";
    const ED25519: &str = "\
-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAzB+dXBdsKuF9JHsqV4S6FaCsV2nWUpETewk35G/HYGs=
-----END PUBLIC KEY-----
";
    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn errors(spec: serde_json::Value) -> Vec<String> {
        let spec: JwtVerifierSpec = serde_json::from_value(spec).unwrap();
        let mut errors = Vec::new();
        spec.validate(&mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    fn assert_error(spec: serde_json::Value, expected: &str) {
        let errors = errors(spec);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{expected:?} not in {errors:#?}"
        );
    }

    #[test]
    fn every_supported_key_kind_is_read() {
        for (pem, kind) in [
            (RSA_2048, KeyKind::Rsa),
            (EC_P256, KeyKind::EcP256),
            (EC_P384, KeyKind::EcP384),
            (ED25519, KeyKind::Ed25519),
        ] {
            let (_, read) = pem_public_key(pem).unwrap();
            assert_eq!(read, kind);
        }
        let all = errors(json!({
            "algorithms": ["HS256", "RS256", "PS512", "ES256", "ES384", "EdDSA"],
            "keys": [
                {"kid": "h", "secret": SECRET},
                {"kid": "r", "publicKeyPem": RSA_2048},
                {"kid": "e1", "publicKeyPem": EC_P256},
                {"kid": "e2", "publicKeyPem": EC_P384},
                {"kid": "ed", "publicKeyPem": ED25519},
            ],
        }));
        assert!(all.is_empty(), "{all:#?}");
    }

    #[test]
    fn a_key_must_serve_a_listed_algorithm() {
        assert_error(
            json!({"algorithms": ["RS256"], "keys": [{"secret": SECRET}], "jwksUrl": "https://idp.example/jwks"}),
            "spec.keys[0].secret: a secret verifies HS256, HS384, HS512, and spec.algorithms lists none of them",
        );
        assert_error(
            json!({"algorithms": ["ES256"], "keys": [{"publicKeyPem": RSA_2048}], "jwksUrl": "https://idp.example/jwks"}),
            "spec.keys[0].publicKeyPem: an RSA public key verifies RS256",
        );
        // The curve decides: a P-256 key does not verify ES384.
        assert_error(
            json!({"algorithms": ["ES384"], "keys": [{"publicKeyPem": EC_P256}], "jwksUrl": "https://idp.example/jwks"}),
            "spec.keys[0].publicKeyPem: an EC P-256 public key verifies ES256",
        );
        assert_error(
            json!({"algorithms": ["EdDSA"], "keys": [{"publicKeyPem": EC_P384}], "jwksUrl": "https://idp.example/jwks"}),
            "spec.keys[0].publicKeyPem: an EC P-384 public key verifies ES384",
        );
    }

    #[test]
    fn an_algorithm_without_a_key_is_refused_unless_a_jwks_may_have_one() {
        let spec = json!({"algorithms": ["RS256", "ES256"], "keys": [{"publicKeyPem": RSA_2048}]});
        assert_error(
            spec.clone(),
            "spec.algorithms[1]: no key in spec.keys verifies ES256; add an EC P-256 public key or a jwksUrl",
        );
        let mut with_jwks = spec;
        with_jwks["jwksUrl"] = json!("https://idp.example/.well-known/jwks.json");
        assert_eq!(errors(with_jwks), Vec::<String>::new());
    }

    #[test]
    fn bad_keys_are_refused_with_what_to_do() {
        let rs = |pem: &str| json!({"algorithms": ["RS256"], "keys": [{"publicKeyPem": pem}]});
        assert_error(
            rs("MIIBIjANBgkq"),
            "spec.keys[0].publicKeyPem: not a PEM public key",
        );
        assert_error(
            rs("-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"),
            "spec.keys[0].publicKeyPem: this is a private key; give only the public key",
        );
        assert_error(
            rs("-----BEGIN CERTIFICATE-----\nMIIE\n-----END CERTIFICATE-----"),
            "openssl x509 -in cert.pem -pubkey -noout",
        );
        assert_error(
            rs("-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----"),
            "spec.keys[0].publicKeyPem: cannot read this public key",
        );
        assert_error(
            rs(RSA_1024),
            "spec.keys[0].publicKeyPem: a 1024-bit RSA key is too weak; use 2048 bits or more",
        );
        assert_error(
            json!({"algorithms": ["ES256"], "keys": [{"publicKeyPem": EC_P521}]}),
            "spec.keys[0].publicKeyPem: an EC key on an unsupported curve",
        );
        assert_error(
            json!({"algorithms": ["HS256"], "keys": [{"secret": "short"}]}),
            "spec.keys[0].secret: a secret must be at least 32 bytes",
        );
        assert_error(
            json!({"algorithms": ["HS256"], "keys": [{"secret": SECRET, "publicKeyPem": RSA_2048}]}),
            "spec.keys[0]: give exactly one of secret",
        );
    }

    #[test]
    fn kids_algorithms_urls_and_intervals_are_checked() {
        assert_error(
            json!({"algorithms": ["HS256"], "keys": [{"kid": "a", "secret": SECRET}, {"kid": "a", "secret": SECRET}]}),
            "spec.keys[1].kid: \"a\" is the kid of spec.keys[0] too",
        );
        assert_error(
            json!({"algorithms": ["none"], "jwksUrl": "https://idp.example/jwks"}),
            "spec.algorithms[0]: \"none\" is not supported",
        );
        assert_error(
            json!({"algorithms": ["RS256"], "jwksUrl": "https:// idp.example/jwks"}),
            "spec.jwksUrl",
        );
        assert_error(
            json!({"algorithms": ["RS256"], "jwksUrl": "https:///jwks"}),
            "spec.jwksUrl",
        );
        assert_error(
            json!({"algorithms": ["RS256"], "jwksUrl": "https://idp.example/jwks", "jwksMinRefresh": "10ms"}),
            "spec.jwksMinRefresh: at least 1s",
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let key = JwtKey {
            kid: None,
            secret: Some(SECRET.into()),
            public_key_pem: None,
        };
        let text = format!("{key:?}");
        assert!(!text.contains(SECRET), "{text}");
        assert!(text.contains("redacted"), "{text}");
    }

    #[test]
    fn defaults_round_trip() {
        let spec: JwtVerifierSpec =
            serde_json::from_value(json!({"algorithms": ["RS256"], "jwksUrl": "http://idp/jwks"}))
                .unwrap();
        assert_eq!(spec.jwks_refresh, Duration::from_secs(300));
        assert_eq!(spec.jwks_min_refresh, Duration::from_secs(5));
        assert_eq!(spec.leeway, Duration::from_secs(30));
        let again: JwtVerifierSpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);
    }
}
