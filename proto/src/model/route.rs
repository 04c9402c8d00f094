//! `Route`: which requests (host, path, method, headers, query) go to which
//! Backend, and how the request and response are rewritten on the way.

use super::{Empty, FieldError, Sparse};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub frontend: FrontendSpec,
    /// Name of the Backend that serves this route.
    pub backend: String,
    /// Send the client's Host header to the backend instead of the target's
    /// `host:port`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserve_host: bool,
    /// Send this Host header to the backend (virtual hosting behind the
    /// target address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_override: Option<String>,
    /// Changes to the request before it goes to the backend.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub request_headers: Sparse<HeaderRules>,
    /// Changes to the backend's response before it goes to the client.
    #[serde(default, skip_serializing_if = "HeaderRules::is_empty")]
    pub response_headers: Sparse<HeaderRules>,
    /// Plugins, run in phase order (then in this order within a phase).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<super::PluginSpec>,
    /// One access-log line per request on this route (default on).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub access_log: bool,
    /// Share of this route's requests that become GatewayEvents on the
    /// event feed, 0 (off) to 100 (default).
    #[serde(default = "all", skip_serializing_if = "is_all")]
    pub event_sample_percent: u8,
    /// Which data planes receive this route (by their labels). Absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane_selector: Option<LabelSelector>,
    /// HTTPS-only serving and client certificates (mTLS).
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls: Sparse<RouteTls>,
}

/// What a route asks of TLS on the data plane's HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTls {
    /// Answer requests that arrive over plain HTTP with a redirect to the
    /// same URL over HTTPS (301 for GET and HEAD, 308 otherwise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect_http: bool,
    /// Client certificates: `none` (default), `optional` (asked for; a
    /// client without one is served, one with a bad one is not), or
    /// `required` (no verified certificate: 403 `client_certificate_required`,
    /// and plain HTTP is refused the same way).
    #[serde(default, skip_serializing_if = "is_default")]
    pub client_auth: ClientAuth,
    /// A Certificate resource holding the CA that client certificates must
    /// chain to. Required with `optional` or `required`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<String>,
    /// Send the verified client certificate's subject to the backend in
    /// this header (any value the client sent in it is removed first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_subject_header: Option<String>,
}

impl Empty for RouteTls {
    fn empty() -> &'static Self {
        static EMPTY: RouteTls = RouteTls {
            redirect_http: false,
            client_auth: ClientAuth::None,
            client_ca: None,
            client_subject_header: None,
        };
        &EMPTY
    }
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl RouteTls {
    fn validate(&self, errors: &mut Vec<FieldError>) {
        match (self.client_auth, &self.client_ca) {
            (ClientAuth::None, Some(_)) => errors.push(FieldError::new(
                "spec.tls.clientCa",
                "a client CA is only used with clientAuth: optional or required",
            )),
            (ClientAuth::Optional | ClientAuth::Required, None) => errors.push(FieldError::new(
                "spec.tls.clientCa",
                "name the Certificate resource holding the CA that client certificates chain to",
            )),
            _ => {}
        }
        if let Some(h) = &self.client_subject_header {
            if !is_header_name(h) {
                errors.push(FieldError::new(
                    "spec.tls.clientSubjectHeader",
                    bad_header_name(h),
                ));
            }
            if self.client_auth == ClientAuth::None {
                errors.push(FieldError::new(
                    "spec.tls.clientSubjectHeader",
                    "there is no client certificate with clientAuth: none",
                ));
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum ClientAuth {
    #[default]
    None,
    Optional,
    Required,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn all() -> u8 {
    100
}

fn is_all(p: &u8) -> bool {
    *p == 100
}

/// Selects data planes by label, Kubernetes style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    /// Every pair must be among the data plane's labels.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl LabelSelector {
    pub fn matches<'a>(&self, mut get: impl FnMut(&str) -> Option<&'a str>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| get(k) == Some(v.as_str()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FrontendSpec {
    /// Exact host names (`api.example.com`) or wildcards (`*.example.com`,
    /// which matches any name ending in `.example.com`). Empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Path patterns. A literal segment matches itself, a `:name` segment
    /// matches any one non-empty segment. Prefixes match on segment
    /// boundaries: `/orders` matches `/orders` and `/orders/42`, not
    /// `/ordersx`. Empty: `/` (everything).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// The paths must match the whole request path, not a prefix of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
    /// HTTP methods this route accepts (`GET`, `POST`…). Empty: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Conditions on request headers; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<Matcher>,
    /// Conditions on query parameters; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<Matcher>,
    /// Remove the matched path before calling the backend.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_path: bool,
    /// Replace the matched path with this one before calling the backend;
    /// `:name` inserts the segment the path's `:name` matched. What follows
    /// the matched prefix is kept: paths `/api/users/:id`, rewrite
    /// `/v2/u/:id` sends `/api/users/7/cart` as `/v2/u/7/cart`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
}

/// A condition on one header or query parameter: exactly one of `value`
/// (equal), `regex` (matches), or `present` (true: must be there, false:
/// must be absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Matcher {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<bool>,
}

/// Header changes, applied in this order: remove, set (replace), add
/// (append another value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderRules {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
}

impl Empty for HeaderRules {
    fn empty() -> &'static Self {
        static EMPTY: HeaderRules = HeaderRules {
            remove: Vec::new(),
            set: BTreeMap::new(),
            add: BTreeMap::new(),
        };
        &EMPTY
    }
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    fn validate(&self, field: &str, errors: &mut Vec<FieldError>) {
        for (i, name) in self.remove.iter().enumerate() {
            if !is_header_name(name) {
                errors.push(FieldError::new(
                    format!("{field}.remove[{i}]"),
                    bad_header_name(name),
                ));
            }
        }
        for (op, map) in [("set", &self.set), ("add", &self.add)] {
            for (name, value) in map {
                if !is_header_name(name) {
                    errors.push(FieldError::new(
                        format!("{field}.{op}.{name}"),
                        bad_header_name(name),
                    ));
                }
                if !is_header_value(value) {
                    errors.push(FieldError::new(
                        format!("{field}.{op}.{name}"),
                        "header values are visible ASCII, spaces and tabs, at most 4096 bytes",
                    ));
                }
            }
        }
    }
}

/// A header name as HTTP allows it (RFC 9110 token), at most 256 bytes.
pub fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_header_value(s: &str) -> bool {
    s.len() <= 4096 && s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

fn bad_header_name(name: &str) -> String {
    format!("\"{name}\" is not a valid header name; use letters, digits and '-'")
}

/// Methods a route may list.
pub(super) const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// Longest accepted regex, and the compiled-size cap, so a route cannot
/// make the data plane build a huge automaton.
const MAX_REGEX_LEN: usize = 1024;
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a matcher's regex with the same limits on both planes.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_REGEX_LEN {
        return Err(format!("regexes are at most {MAX_REGEX_LEN} characters"));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regex: {e}"))
}

impl Matcher {
    fn validate(&self, field: &str, header: bool, errors: &mut Vec<FieldError>) {
        if header && !is_header_name(&self.name) {
            errors.push(FieldError::new(
                format!("{field}.name"),
                bad_header_name(&self.name),
            ));
        }
        if !header && (self.name.is_empty() || self.name.len() > 256) {
            errors.push(FieldError::new(
                format!("{field}.name"),
                "query parameter names are 1-256 characters",
            ));
        }
        let set = [
            self.value.is_some(),
            self.regex.is_some(),
            self.present.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            errors.push(FieldError::new(
                field.to_string(),
                "give exactly one of value (equals), regex (matches) or present (true: must be there, false: must be absent)",
            ));
        }
        if let Some(re) = &self.regex {
            if let Err(msg) = compile_regex(re) {
                errors.push(FieldError::new(format!("{field}.regex"), msg));
            }
        }
    }
}

impl RouteSpec {
    pub(super) fn validate(&self, errors: &mut Vec<FieldError>) {
        self.tls.validate(errors);
        if self.event_sample_percent > 100 {
            errors.push(FieldError::new(
                "spec.eventSamplePercent",
                "a percentage: 0 (no events) to 100 (every request)",
            ));
        }
        let f = &self.frontend;
        for (i, host) in f.hosts.iter().enumerate() {
            if let Err(msg) = validate_host_pattern(host) {
                errors.push(FieldError::new(format!("spec.frontend.hosts[{i}]"), msg));
            }
        }
        let mut patterns = Vec::new();
        for (i, path) in f.paths.iter().enumerate() {
            match PathPattern::parse(path) {
                Ok(p) => patterns.push(p),
                Err(msg) => errors.push(FieldError::new(format!("spec.frontend.paths[{i}]"), msg)),
            }
        }
        for (i, m) in f.methods.iter().enumerate() {
            if !METHODS.contains(&m.as_str()) {
                errors.push(FieldError::new(
                    format!("spec.frontend.methods[{i}]"),
                    format!("\"{m}\" is not a method; use one of {}", METHODS.join(", ")),
                ));
            }
        }
        for (i, m) in f.headers.iter().enumerate() {
            m.validate(&format!("spec.frontend.headers[{i}]"), true, errors);
        }
        for (i, m) in f.query.iter().enumerate() {
            m.validate(&format!("spec.frontend.query[{i}]"), false, errors);
        }
        if let Some(rewrite) = &f.rewrite {
            if f.strip_path {
                errors.push(FieldError::new(
                    "spec.frontend.rewrite",
                    "use either stripPath or rewrite, not both (stripPath is rewrite: /)",
                ));
            }
            match PathPattern::parse(rewrite) {
                Err(msg) => errors.push(FieldError::new("spec.frontend.rewrite", msg)),
                Ok(p) => {
                    for param in p.params() {
                        let everywhere = !patterns.is_empty()
                            && patterns.iter().all(|pat| pat.params().any(|q| q == param));
                        if !everywhere {
                            errors.push(FieldError::new(
                                "spec.frontend.rewrite",
                                format!(":{param} is not a parameter of every path in spec.frontend.paths"),
                            ));
                        }
                    }
                }
            }
        }
        if let Some(sel) = &self.data_plane_selector {
            for (k, v) in &sel.match_labels {
                if k.is_empty() || k.len() > 63 || v.len() > 63 {
                    errors.push(FieldError::new(
                        format!("spec.dataPlaneSelector.matchLabels.{k}"),
                        "label keys are 1-63 characters and values at most 63",
                    ));
                }
            }
        }
        if self.preserve_host && self.host_override.is_some() {
            errors.push(FieldError::new(
                "spec.hostOverride",
                "use either preserveHost or hostOverride, not both",
            ));
        }
        if let Some(h) = &self.host_override {
            if h.is_empty() || !is_header_value(h) || h.contains([' ', '/']) {
                errors.push(FieldError::new(
                    "spec.hostOverride",
                    format!(
                        "\"{h}\" is not a host; use a name like api.internal or api.internal:8080"
                    ),
                ));
            }
        }
        super::plugins::validate_list(&self.plugins, "spec.plugins", errors);
        self.request_headers.validate("spec.requestHeaders", errors);
        self.response_headers
            .validate("spec.responseHeaders", errors);
        if self.backend.is_empty() {
            errors.push(FieldError::new(
                "spec.backend",
                "missing; name the Backend that serves this route",
            ));
        }
    }
}

/// One segment of a path pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    Literal(Box<str>),
    /// `:name`: any one non-empty segment.
    Param(Box<str>),
}

/// A parsed path: `/users/:id/` is `[Literal(users), Param(id)]` with a
/// trailing slash. `/` has no segments and a trailing slash. Kept per
/// route on the data plane, so sized to fit (a boxed slice of boxed
/// strings).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PathPattern {
    pub segments: Box<[Segment]>,
    /// The pattern ends with '/': as a prefix it needs more path after it
    /// (`/a/` matches `/a/b`, not `/a`).
    pub trailing_slash: bool,
}

impl PathPattern {
    pub fn parse(path: &str) -> Result<PathPattern, String> {
        validate_path(path)?;
        let body = &path[1..];
        let trailing_slash = body.is_empty() || body.ends_with('/');
        let body = body.strip_suffix('/').unwrap_or(body);
        let mut segments = Vec::new();
        if path.len() > 1 {
            for seg in body.split('/') {
                match seg.strip_prefix(':') {
                    Some(name) => {
                        let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                        if !ok {
                            return Err(format!(
                                "\"{path}\": \":{name}\" is not a parameter; name it with letters, digits and '_', like :id"
                            ));
                        }
                        if segments.contains(&Segment::Param(name.into())) {
                            return Err(format!("\"{path}\": parameter :{name} appears twice"));
                        }
                        segments.push(Segment::Param(name.into()));
                    }
                    None => segments.push(Segment::Literal(seg.into())),
                }
            }
        }
        Ok(PathPattern {
            segments: segments.into(),
            trailing_slash,
        })
    }

    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Param(p) => Some(&**p),
            Segment::Literal(_) => None,
        })
    }
}

/// `api.example.com` or `*.example.com`; letters, digits, '-' and '.', no port.
pub fn validate_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let bad = || {
        format!(
            "\"{host}\" is not a valid host; use a DNS name like api.example.com or a wildcard like *.example.com (no scheme, port or path)"
        )
    };
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

pub fn validate_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("\"{path}\" must start with '/'"));
    }
    if path.len() > 1024 {
        return Err("paths are at most 1024 characters".into());
    }
    // RFC 3986 path characters (unreserved, sub-delims, ':', '@', '%'
    // escapes): what every HTTP library accepts in a request line.
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
    if let Some(c) = path.chars().find(|c| !c.is_ascii() || !allowed(*c as u8)) {
        return Err(format!(
            "\"{path}\" may not contain {c:?}; percent-encode it (no spaces, quotes, '<', '>', '?' or '#')"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        for ok in [
            "api.example.com",
            "*.example.com",
            "localhost",
            "127.0.0.1",
            "A-B.io",
        ] {
            assert!(validate_host_pattern(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "*.", "http://x", "x:80", "a..b", "*x.com", "-a.com", "a/b", "*",
        ] {
            assert!(validate_host_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths() {
        assert!(validate_path("/").is_ok());
        assert!(validate_path("/orders/v1").is_ok());
        for bad in ["orders", "/a b", "/a?b", "/a#", "/health<1>", "/a\"b", "/é"] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
        let p = PathPattern::parse("/users/:id/").unwrap();
        assert_eq!(
            *p.segments,
            [
                Segment::Literal("users".into()),
                Segment::Param("id".into())
            ]
        );
        assert!(p.trailing_slash);
        assert!(PathPattern::parse("/").unwrap().segments.is_empty());
        for bad in ["/a/:", "/a/:1x", "/:id/:id", "/a/:b-c"] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    fn spec(frontend: serde_json::Value) -> Vec<String> {
        let spec: RouteSpec =
            serde_json::from_value(serde_json::json!({"frontend": frontend, "backend": "b"}))
                .unwrap();
        let mut errors = Vec::new();
        spec.validate(&mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn matchers_and_rewrites_are_checked() {
        assert!(spec(serde_json::json!({
            "paths": ["/u/:id"], "methods": ["GET"], "rewrite": "/v2/:id",
            "headers": [{"name": "x-env", "regex": "^can"}],
            "query": [{"name": "debug", "present": false}]
        }))
        .is_empty());
        let errors = spec(serde_json::json!({
            "paths": ["/u/:id", "/x"], "methods": ["get"], "rewrite": "/v2/:id",
            "headers": [{"name": "x env", "value": "a", "present": true}],
            "query": [{"name": "q", "regex": "("}]
        }));
        let text = errors.join("\n");
        for expected in [
            "spec.frontend.methods[0]: \"get\" is not a method",
            "spec.frontend.headers[0].name",
            "spec.frontend.headers[0]: give exactly one of",
            "spec.frontend.query[0].regex: invalid regex",
            "spec.frontend.rewrite: :id is not a parameter of every path",
        ] {
            assert!(text.contains(expected), "{expected} not in\n{text}");
        }
    }
}
