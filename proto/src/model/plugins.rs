//! Plugin specs: what a Route (or the GlobalConfig) lists in `plugins`, and
//! the typed configuration of every plugin kind.
//!
//! A plugin entry is `{kind, enabled, config}`. [`PluginSpec::validate`]
//! reads `config` into the kind's typed struct (unknown fields are errors)
//! and checks it, so the control plane refuses a bad plugin at write time
//! with a field path (`spec.plugins[1].config.cidrs[0]`), and the data plane
//! builds the plugin from the same struct when it compiles a snapshot.
//!
//! Adding a plugin kind: a config struct here with its `validate`, a line in
//! [`KINDS`] and in `parse`, and its behaviour in the data plane's
//! `plugins/` (see docs/plugins.md).

use super::{is_header_name, Cidr, FieldError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One entry of a `plugins` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSpec {
    pub kind: String,
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Every plugin kind, in the order the docs list them.
pub const KINDS: [&str; 13] = [
    "apiKey",
    "jwt",
    "ipAllowList",
    "ipBlockList",
    "cors",
    "allowedMethods",
    "maintenance",
    "redirect",
    "staticResponse",
    "publicPaths",
    "bodySizeLimit",
    "compression",
    "rateLimit",
];

/// A plugin's configuration, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum PluginConfig {
    ApiKey(ApiKeyAuth),
    Jwt(JwtAuth),
    IpAllowList(IpList),
    IpBlockList(IpList),
    Cors(Cors),
    AllowedMethods(AllowedMethods),
    Maintenance(Maintenance),
    Redirect(Redirect),
    StaticResponse(StaticResponse),
    PublicPaths(PublicPaths),
    BodySizeLimit(BodySizeLimit),
    Compression(Compression),
    RateLimit(RateLimit),
}

impl PluginSpec {
    /// The typed configuration, or the problems with it (`field` is where
    /// this entry is, like `spec.plugins[2]`).
    pub fn parse(&self, field: &str) -> Result<PluginConfig, Vec<FieldError>> {
        let config = || format!("{field}.config");
        let c = &self.config;
        let parsed = match self.kind.as_str() {
            "apiKey" => typed(c, &config()).map(PluginConfig::ApiKey),
            "jwt" => typed(c, &config()).map(PluginConfig::Jwt),
            "ipAllowList" => typed(c, &config()).map(PluginConfig::IpAllowList),
            "ipBlockList" => typed(c, &config()).map(PluginConfig::IpBlockList),
            "cors" => typed(c, &config()).map(PluginConfig::Cors),
            "allowedMethods" => typed(c, &config()).map(PluginConfig::AllowedMethods),
            "maintenance" => typed(c, &config()).map(PluginConfig::Maintenance),
            "redirect" => typed(c, &config()).map(PluginConfig::Redirect),
            "staticResponse" => typed(c, &config()).map(PluginConfig::StaticResponse),
            "publicPaths" => typed(c, &config()).map(PluginConfig::PublicPaths),
            "bodySizeLimit" => typed(c, &config()).map(PluginConfig::BodySizeLimit),
            "compression" => typed(c, &config()).map(PluginConfig::Compression),
            "rateLimit" => typed(c, &config()).map(PluginConfig::RateLimit),
            other => {
                return Err(vec![FieldError::new(
                    format!("{field}.kind"),
                    format!(
                        "unknown plugin \"{other}\"; expected one of {}",
                        KINDS.join(", ")
                    ),
                )])
            }
        }
        .map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        parsed.validate(&config(), &mut errors);
        if errors.is_empty() {
            Ok(parsed)
        } else {
            Err(errors)
        }
    }
}

/// Checks every entry of a `plugins` list.
pub(super) fn validate_list(plugins: &[PluginSpec], field: &str, errors: &mut Vec<FieldError>) {
    for (i, p) in plugins.iter().enumerate() {
        if let Err(e) = p.parse(&format!("{field}[{i}]")) {
            errors.extend(e);
        }
    }
}

/// Reads `value` (null: `{}`) into `T`, naming the field on error.
fn typed<T: DeserializeOwned>(value: &serde_json::Value, field: &str) -> Result<T, FieldError> {
    let value = if value.is_null() {
        serde_json::Value::Object(Default::default())
    } else {
        value.clone()
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            field.to_string()
        } else {
            format!("{field}.{path}")
        };
        FieldError::new(at, e.into_inner().to_string())
    })
}

impl PluginConfig {
    fn validate(&self, field: &str, errors: &mut Vec<FieldError>) {
        let mut err = |f: String, m: String| errors.push(FieldError::new(f, m));
        match self {
            PluginConfig::ApiKey(c) => {
                if let Some(q) = &c.query_param {
                    if q.is_empty() || q.len() > 64 {
                        err(format!("{field}.queryParam"), "1-64 characters".into());
                    }
                }
            }
            PluginConfig::Jwt(c) => {
                if !super::is_dns_label(&c.verifier) {
                    err(
                        format!("{field}.verifier"),
                        "name an existing JwtVerifier".into(),
                    );
                }
                for (claim, header) in &c.forward_claims {
                    if !is_header_name(header) {
                        err(
                            format!("{field}.forwardClaims.{claim}"),
                            format!("\"{header}\" is not a valid header name"),
                        );
                    }
                }
            }
            PluginConfig::IpAllowList(c) | PluginConfig::IpBlockList(c) => {
                if c.cidrs.is_empty() {
                    err(
                        format!("{field}.cidrs"),
                        "list at least one address or range, like 10.0.0.0/8".into(),
                    );
                }
                for (i, cidr) in c.cidrs.iter().enumerate() {
                    if let Err(m) = cidr.parse::<Cidr>() {
                        err(format!("{field}.cidrs[{i}]"), m);
                    }
                }
            }
            PluginConfig::Cors(c) => {
                if c.allowed_origins.is_empty() {
                    err(
                        format!("{field}.allowedOrigins"),
                        "list the origins allowed, like https://app.example.com, or \"*\"".into(),
                    );
                }
                for (i, o) in c.allowed_origins.iter().enumerate() {
                    let ok = o == "*"
                        || (o.starts_with("http://") || o.starts_with("https://"))
                            && !o.ends_with('/')
                            && o.bytes().all(|b| b.is_ascii_graphic());
                    if !ok {
                        err(
                            format!("{field}.allowedOrigins[{i}]"),
                            format!("\"{o}\" is not an origin; write scheme://host[:port] without a path, or \"*\""),
                        );
                    }
                }
                if c.allow_credentials && c.allowed_origins.iter().any(|o| o == "*") {
                    err(
                        format!("{field}.allowCredentials"),
                        "browsers refuse credentials with origin \"*\"; list the origins".into(),
                    );
                }
                check_methods(
                    &c.allowed_methods,
                    &format!("{field}.allowedMethods"),
                    &mut err,
                );
                for (name, list) in [
                    ("allowedHeaders", &c.allowed_headers),
                    ("exposedHeaders", &c.exposed_headers),
                ] {
                    for (i, h) in list.iter().enumerate() {
                        if !is_header_name(h) && h != "*" {
                            err(
                                format!("{field}.{name}[{i}]"),
                                format!("\"{h}\" is not a valid header name"),
                            );
                        }
                    }
                }
            }
            PluginConfig::AllowedMethods(c) => {
                if c.methods.is_empty() {
                    err(
                        format!("{field}.methods"),
                        "list at least one method".into(),
                    );
                }
                check_methods(&c.methods, &format!("{field}.methods"), &mut err);
            }
            PluginConfig::Maintenance(c) => {
                check_status(c.status, &format!("{field}.status"), &mut err)
            }
            PluginConfig::Redirect(c) => {
                if ![301, 302, 303, 307, 308].contains(&c.status) {
                    err(
                        format!("{field}.status"),
                        "a redirect status: 301, 302, 303, 307 or 308".into(),
                    );
                }
                let ok = c.to.starts_with('/')
                    || c.to.starts_with("http://")
                    || c.to.starts_with("https://");
                if !ok || c.to.bytes().any(|b| !b.is_ascii_graphic()) {
                    err(
                        format!("{field}.to"),
                        format!("\"{}\" is not a URL or an absolute path", c.to),
                    );
                }
            }
            PluginConfig::StaticResponse(c) => {
                check_status(c.status, &format!("{field}.status"), &mut err);
                for (name, value) in &c.headers {
                    if !is_header_name(name) || value.bytes().any(|b| b.is_ascii_control()) {
                        err(
                            format!("{field}.headers.{name}"),
                            "a header name and a printable value".into(),
                        );
                    }
                }
            }
            PluginConfig::PublicPaths(c) => {
                if c.paths.is_empty() {
                    err(
                        format!("{field}.paths"),
                        "list at least one path prefix".into(),
                    );
                }
                for (i, p) in c.paths.iter().enumerate() {
                    if let Err(m) = super::route::validate_path(p) {
                        err(format!("{field}.paths[{i}]"), m);
                    }
                }
            }
            PluginConfig::BodySizeLimit(c) => {
                if c.max_bytes == 0 {
                    err(format!("{field}.maxBytes"), "must be at least 1".into());
                }
            }
            PluginConfig::Compression(c) => {
                if c.algorithms.is_empty() {
                    err(
                        format!("{field}.algorithms"),
                        "list gzip, br or both".into(),
                    );
                }
                for (i, a) in c.algorithms.iter().enumerate() {
                    if a != "gzip" && a != "br" {
                        err(
                            format!("{field}.algorithms[{i}]"),
                            format!("\"{a}\": use gzip or br"),
                        );
                    }
                }
            }
            PluginConfig::RateLimit(c) => {
                if c.limit == 0 {
                    err(format!("{field}.limit"), "at least 1".into());
                }
                if let Err(m) = super::apikey::check_window(c.per) {
                    err(format!("{field}.per"), m);
                }
                match (c.by, &c.header) {
                    (RateLimitBy::Header, None) => err(
                        format!("{field}.header"),
                        "by: header needs the header's name, like X-Tenant".into(),
                    ),
                    (RateLimitBy::Header, Some(h)) if !is_header_name(h) => err(
                        format!("{field}.header"),
                        format!("\"{h}\" is not a valid header name"),
                    ),
                    (RateLimitBy::Header, Some(_)) | (_, None) => {}
                    (_, Some(_)) => err(format!("{field}.header"), "only with by: header".into()),
                }
            }
        }
    }
}

fn check_methods(methods: &[String], field: &str, err: &mut impl FnMut(String, String)) {
    for (i, m) in methods.iter().enumerate() {
        if !super::route::METHODS.contains(&m.as_str()) {
            err(
                format!("{field}[{i}]"),
                format!(
                    "\"{m}\" is not a method; use one of {}",
                    super::route::METHODS.join(", ")
                ),
            );
        }
    }
}

fn check_status(status: u16, field: &str, err: &mut impl FnMut(String, String)) {
    if !(200..=599).contains(&status) {
        err(field.to_string(), "an HTTP status from 200 to 599".into());
    }
}

/// `rateLimit`: at most `limit` requests per `per` for each client (by IP,
/// by the caller's identity, or by a header's value), across the fleet
/// (each data plane takes its share: docs/quotas.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub limit: u64,
    #[serde(default = "super::apikey::one_second", with = "super::duration")]
    pub per: Duration,
    #[serde(default)]
    pub by: RateLimitBy,
    /// With `by: header`: the header whose value is the client.
    #[serde(default)]
    pub header: Option<String>,
}

/// What a `rateLimit` counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitBy {
    /// The client's address (after trusted proxies).
    #[default]
    Ip,
    /// The API key an apiKey plugin admitted (or the subject a jwt plugin
    /// verified); requests without one count by address.
    ApiKey,
    /// A request header's value (one bucket for requests without it).
    Header,
}

/// `apiKey`: the request must carry a valid API key allowed on the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiKeyAuth {
    /// Also accept the key as `?<queryParam>=<id>.<secret>`.
    #[serde(default)]
    pub query_param: Option<String>,
    /// Send the key's id (`Nio-Client-Id`) and metadata
    /// (`Nio-Client-Meta-<key>`) to the backend.
    #[serde(default = "yes")]
    pub forward_identity: bool,
}

/// `jwt`: the request must carry a token the named JwtVerifier accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtAuth {
    pub verifier: String,
    /// Claims sent to the backend as headers: `{sub: X-User-Id}`.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
}

/// `ipAllowList` (only these may call) and `ipBlockList` (these may not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpList {
    pub cidrs: Vec<String>,
}

/// `cors`: answers preflights at the gateway and adds the CORS headers to
/// responses for allowed origins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cors {
    pub allowed_origins: Vec<String>,
    #[serde(default = "Cors::default_methods")]
    pub allowed_methods: Vec<String>,
    #[serde(default)]
    pub allowed_headers: Vec<String>,
    #[serde(default)]
    pub exposed_headers: Vec<String>,
    #[serde(default)]
    pub allow_credentials: bool,
    #[serde(default, with = "super::duration::option")]
    pub max_age: Option<Duration>,
}

impl Cors {
    fn default_methods() -> Vec<String> {
        ["GET", "HEAD", "POST"].map(String::from).to_vec()
    }
}

/// `allowedMethods`: other methods get 405 with an `Allow` header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AllowedMethods {
    pub methods: Vec<String>,
}

/// `maintenance`: every request gets this answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Maintenance {
    #[serde(default = "Maintenance::default_status")]
    pub status: u16,
    #[serde(default = "Maintenance::default_body")]
    pub body: String,
    #[serde(default = "Maintenance::default_type")]
    pub content_type: String,
    /// Seconds for `Retry-After`.
    #[serde(default)]
    pub retry_after: Option<u32>,
}

impl Maintenance {
    fn default_status() -> u16 {
        503
    }
    fn default_body() -> String {
        r#"{"error":"the service is down for maintenance"}"#.into()
    }
    fn default_type() -> String {
        "application/json".into()
    }
}

/// `redirect`: answers with a redirect to `to` (plus the request's path and
/// query when `keepPath`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    pub to: String,
    #[serde(default = "Redirect::default_status")]
    pub status: u16,
    #[serde(default)]
    pub keep_path: bool,
}

impl Redirect {
    fn default_status() -> u16 {
        302
    }
}

/// `staticResponse`: answers at the gateway (mocks, stubs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticResponse {
    #[serde(default = "StaticResponse::default_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: String,
}

impl StaticResponse {
    fn default_status() -> u16 {
        200
    }
}

/// `publicPaths`: requests under these path prefixes skip the
/// authentication plugins (`apiKey`, `jwt`) of the route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublicPaths {
    pub paths: Vec<String>,
}

/// `bodySizeLimit`: request bodies over `maxBytes` get 413.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BodySizeLimit {
    pub max_bytes: u64,
}

/// `compression`: compresses responses when the client accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Compression {
    /// In order of preference when the client accepts several.
    #[serde(default = "Compression::default_algorithms")]
    pub algorithms: Vec<String>,
    /// Smaller responses (by `Content-Length`) are sent as they are.
    #[serde(default = "Compression::default_min")]
    pub min_size: u64,
    /// Content types to compress (prefix match); already-compressed types
    /// (images, video, archives) are never in the default list.
    #[serde(default = "Compression::default_types")]
    pub content_types: Vec<String>,
}

impl Compression {
    fn default_algorithms() -> Vec<String> {
        vec!["br".into(), "gzip".into()]
    }
    fn default_min() -> u64 {
        1024
    }
    fn default_types() -> Vec<String> {
        [
            "text/",
            "application/json",
            "application/javascript",
            "application/xml",
            "application/problem+json",
            "image/svg+xml",
        ]
        .map(String::from)
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(kind: &str, config: serde_json::Value) -> String {
        let spec = PluginSpec {
            kind: kind.into(),
            enabled: true,
            config,
        };
        match spec.parse("spec.plugins[0]") {
            Ok(_) => String::new(),
            Err(e) => super::super::join_errors(&e),
        }
    }

    #[test]
    fn configs_are_checked_with_field_paths() {
        assert_eq!(
            errors("cors", json!({"allowedOrigins": ["https://a.test"]})),
            ""
        );
        assert_eq!(errors("apiKey", serde_json::Value::Null), "");
        for (kind, config, expected) in [
            (
                "nope",
                json!({}),
                "spec.plugins[0].kind: unknown plugin \"nope\"",
            ),
            (
                "ipAllowList",
                json!({"cidrs": ["10.0.0.0/33"]}),
                "spec.plugins[0].config.cidrs[0]",
            ),
            (
                "ipBlockList",
                json!({"cidr": []}),
                "spec.plugins[0].config.cidr: unknown field `cidr`",
            ),
            (
                "cors",
                json!({"allowedOrigins": ["*"], "allowCredentials": true}),
                "config.allowCredentials",
            ),
            (
                "cors",
                json!({"allowedOrigins": ["https://a.test/"]}),
                "config.allowedOrigins[0]",
            ),
            (
                "allowedMethods",
                json!({"methods": ["FETCH"]}),
                "config.methods[0]",
            ),
            (
                "redirect",
                json!({"to": "https://x.test", "status": 200}),
                "config.status",
            ),
            (
                "compression",
                json!({"algorithms": ["zstd"]}),
                "config.algorithms[0]",
            ),
            (
                "bodySizeLimit",
                json!({"maxBytes": "big"}),
                "config.maxBytes: invalid type",
            ),
            (
                "cors",
                json!({"allowedOrigins": ["https://a.test"], "maxAge": "soon"}),
                "config.maxAge",
            ),
        ] {
            let e = errors(kind, config);
            assert!(e.contains(expected), "{kind}: {expected} not in {e}");
        }
    }
}
