//! Resource model: the Kubernetes-style envelope shared by every kind, the
//! kinds themselves, and validation.
//!
//! Every resource looks like
//! `{apiVersion: nio.dev/v1, kind, metadata: {name, labels, resourceVersion}, spec}`.
//! Specs use `deny_unknown_fields`: a misspelt field is an error, never
//! silently ignored. Validation returns every problem found, each naming the
//! field (`spec.frontend.hosts[0]`) and what to do about it.

mod apikey;
mod backend;
mod certificate;
mod cidr;
mod config;
mod duration;
mod exporter;
mod global;
mod jwt;
mod plugins;
mod route;
mod sparse;

pub use apikey::{
    credential_hash, hmac_finish, hmac_states, parse_time, ApiKeyQuotas, ApiKeySpec, Credential,
    Throttle,
};
pub use backend::{
    parse_target_url, BackendSpec, BackendTls, CircuitBreaker, HashOn, HealthCheck, LoadBalancing,
    OutlierDetection, Policy, Protocol, Retries, StatusRange, TargetAddr, TargetSpec, Timeouts,
};
pub use certificate::{CertificateInfo, CertificateSpec};
pub use cidr::{canonical_ip, Cidr};
pub use config::Config;
pub use exporter::{EventExporterSpec, HIDDEN};
pub use global::{GlobalConfigSpec, GLOBAL_NAME};
pub use jwt::{
    check_key, inline_key, parse_algorithm, pem_public_key, ClaimCheck, JwtKey, JwtVerifierSpec,
    KeyKind, TokenSource,
};
pub use plugins::{
    AllowedMethods, ApiKeyAuth, BodySizeLimit, Compression, Cors, IpList, JwtAuth, Maintenance,
    PluginConfig, PluginSpec, PublicPaths, RateLimit, RateLimitBy, Redirect, StaticResponse,
};
pub use route::{
    compile_regex, is_header_name, ClientAuth, FrontendSpec, HeaderRules, LabelSelector, Matcher,
    PathPattern, RouteSpec, RouteTls, Segment,
};
pub use sparse::{Empty, Sparse};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The kinds of resource the control plane stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Route,
    Backend,
    ApiKey,
    JwtVerifier,
    GlobalConfig,
    Certificate,
    EventExporter,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Route,
        Kind::Backend,
        Kind::ApiKey,
        Kind::JwtVerifier,
        Kind::GlobalConfig,
        Kind::Certificate,
        Kind::EventExporter,
    ];

    /// The `kind` field value, e.g. `Route`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Route => "Route",
            Kind::Backend => "Backend",
            Kind::ApiKey => "ApiKey",
            Kind::JwtVerifier => "JwtVerifier",
            Kind::GlobalConfig => "GlobalConfig",
            Kind::Certificate => "Certificate",
            Kind::EventExporter => "EventExporter",
        }
    }

    /// The plural used in admin API paths, e.g. `routes`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Route => "routes",
            Kind::Backend => "backends",
            Kind::ApiKey => "apikeys",
            Kind::JwtVerifier => "jwtverifiers",
            Kind::GlobalConfig => "globalconfigs",
            Kind::Certificate => "certificates",
            Kind::EventExporter => "eventexporters",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Kind::Route => "rt",
            Kind::Backend => "be",
            Kind::ApiKey => "ak",
            Kind::JwtVerifier => "jwt",
            Kind::GlobalConfig => "gc",
            Kind::Certificate => "cert",
            Kind::EventExporter => "exp",
        }
    }

    /// Accepts the kind name, singular, plural or short form, any case
    /// (`Route`, `route`, `routes`, `rt`).
    pub fn parse(s: &str) -> Option<Kind> {
        let s = s.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|k| s == k.as_str().to_ascii_lowercase() || s == k.plural() || s == k.short())
    }

    /// Exactly the `kind` field value.
    pub fn from_kind_field(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `metadata` of every resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The revision of this resource's last change; set by the control plane.
    /// Sent back on a write, it must match (optimistic concurrency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// The envelope shared by all kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resource<S> {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: S,
}

pub type Route = Resource<RouteSpec>;
pub type Backend = Resource<BackendSpec>;
pub type ApiKey = Resource<ApiKeySpec>;
pub type JwtVerifier = Resource<JwtVerifierSpec>;
pub type GlobalConfig = Resource<GlobalConfigSpec>;
pub type Certificate = Resource<CertificateSpec>;
pub type EventExporter = Resource<EventExporterSpec>;

impl Metadata {
    /// `resourceVersion` as a number (0 when unset or unparseable).
    pub fn version(&self) -> u64 {
        self.resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl<S> Resource<S> {
    pub fn resource_version(&self) -> u64 {
        self.metadata.version()
    }
}

/// One validation problem: which field, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// A resource (or a whole configuration) that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} \"{}\" is invalid: {}", kind, name, join_errors(errors))]
pub struct ValidationError {
    pub kind: String,
    pub name: String,
    pub errors: Vec<FieldError>,
}

/// Field errors as one line: `field: message; field: message`.
pub fn join_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A document that could not be read as a resource at all (wrong type,
/// unknown field, unknown kind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub FieldError);

/// A resource of any kind. An enum is as large as its largest variant and
/// routes are the many, so kinds larger than a Route are boxed.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyResource {
    Route(Route),
    Backend(Box<Backend>),
    ApiKey(ApiKey),
    JwtVerifier(JwtVerifier),
    GlobalConfig(GlobalConfig),
    Certificate(Certificate),
    EventExporter(EventExporter),
}

/// `$body` with `$r` bound to the resource, whatever its kind.
macro_rules! each_kind {
    ($value:expr, $r:ident => $body:expr) => {
        match $value {
            AnyResource::Route($r) => $body,
            AnyResource::Backend($r) => $body,
            AnyResource::ApiKey($r) => $body,
            AnyResource::JwtVerifier($r) => $body,
            AnyResource::GlobalConfig($r) => $body,
            AnyResource::Certificate($r) => $body,
            AnyResource::EventExporter($r) => $body,
        }
    };
}

impl AnyResource {
    /// Reads a resource from a JSON value, naming the field on error
    /// (`spec.targets[0].weight: invalid type: string "x", expected u32`).
    pub fn from_value(value: serde_json::Value) -> Result<AnyResource, DecodeError> {
        let kind_field = value.get("kind").and_then(|k| k.as_str()).ok_or_else(|| {
            DecodeError(FieldError::new(
                "kind",
                format!("missing; set it to one of {}", kind_list()),
            ))
        })?;
        let kind = Kind::from_kind_field(kind_field).ok_or_else(|| {
            DecodeError(FieldError::new(
                "kind",
                format!(
                    "unknown kind \"{kind_field}\"; expected one of {}",
                    kind_list()
                ),
            ))
        })?;
        match value.get("apiVersion").and_then(|v| v.as_str()) {
            Some(crate::API_VERSION) => {}
            Some(other) => {
                return Err(DecodeError(FieldError::new(
                    "apiVersion",
                    format!(
                        "unsupported apiVersion \"{other}\"; use \"{}\"",
                        crate::API_VERSION
                    ),
                )))
            }
            None => {
                return Err(DecodeError(FieldError::new(
                    "apiVersion",
                    format!("missing; set it to \"{}\"", crate::API_VERSION),
                )))
            }
        }
        Ok(match kind {
            Kind::Route => AnyResource::Route(decode(value)?),
            Kind::Backend => AnyResource::Backend(Box::new(decode(value)?)),
            Kind::ApiKey => AnyResource::ApiKey(decode(value)?),
            Kind::JwtVerifier => AnyResource::JwtVerifier(decode(value)?),
            Kind::GlobalConfig => AnyResource::GlobalConfig(decode(value)?),
            Kind::Certificate => AnyResource::Certificate(decode(value)?),
            Kind::EventExporter => AnyResource::EventExporter(decode(value)?),
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            AnyResource::Route(_) => Kind::Route,
            AnyResource::Backend(_) => Kind::Backend,
            AnyResource::ApiKey(_) => Kind::ApiKey,
            AnyResource::JwtVerifier(_) => Kind::JwtVerifier,
            AnyResource::GlobalConfig(_) => Kind::GlobalConfig,
            AnyResource::Certificate(_) => Kind::Certificate,
            AnyResource::EventExporter(_) => Kind::EventExporter,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        each_kind!(self, r => &r.metadata)
    }

    pub fn metadata_mut(&mut self) -> &mut Metadata {
        each_kind!(self, r => &mut r.metadata)
    }

    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// Checks this resource on its own (references to other resources are
    /// checked by [`Config::validate`]).
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut errors = validate_metadata(self.metadata());
        match self {
            AnyResource::Route(r) => r.spec.validate(&mut errors),
            AnyResource::Backend(r) => r.spec.validate(&mut errors),
            AnyResource::ApiKey(r) => r.spec.validate(&mut errors),
            AnyResource::JwtVerifier(r) => r.spec.validate(&mut errors),
            AnyResource::GlobalConfig(r) => r.spec.validate(&r.metadata.name, &mut errors),
            AnyResource::Certificate(r) => r.spec.validate(&mut errors),
            AnyResource::EventExporter(r) => r.spec.validate(&mut errors),
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationError {
                kind: self.kind().to_string(),
                name: self.name().to_string(),
                errors,
            })
        }
    }

    /// Canonical JSON (field order fixed by the types, labels sorted): the
    /// bytes that are stored, sent, and hashed.
    pub fn to_json_vec(&self) -> Vec<u8> {
        // Serializing these plain structs cannot fail: every map key is a string.
        each_kind!(self, r => serde_json::to_vec(r)).unwrap_or_default()
    }

    pub fn to_value(&self) -> serde_json::Value {
        each_kind!(self, r => serde_json::to_value(r)).unwrap_or(serde_json::Value::Null)
    }
}

fn decode<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        DecodeError(FieldError::new(field, e.into_inner().to_string()))
    })
}

fn kind_list() -> String {
    Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `metadata.name` and label keys use DNS-label syntax: lowercase letters,
/// digits and '-', starting and ending with a letter or digit, 63 at most.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn validate_metadata(m: &Metadata) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !is_dns_label(&m.name) {
        errors.push(FieldError::new(
            "metadata.name",
            format!(
                "\"{}\" is not a valid name; use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
                m.name
            ),
        ));
    }
    for (k, v) in &m.labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
        if !key_ok {
            errors.push(FieldError::new(
                format!("metadata.labels.{k}"),
                "label keys are 1-63 characters of letters, digits, '-', '_', '.' or '/'",
            ));
        }
        if v.len() > 63 || v.chars().any(char::is_control) {
            errors.push(FieldError::new(
                format!("metadata.labels.{k}"),
                "label values are at most 63 printable characters",
            ));
        }
    }
    if let Some(rv) = &m.resource_version {
        if rv.parse::<u64>().is_err() {
            errors.push(FieldError::new(
                "metadata.resourceVersion",
                format!("\"{rv}\" is not a revision number; omit it or copy it from a GET"),
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kind_accepts_all_forms() {
        for s in ["Route", "route", "routes", "rt", "ROUTES"] {
            assert_eq!(Kind::parse(s), Some(Kind::Route), "{s}");
        }
        assert_eq!(Kind::parse("backends"), Some(Kind::Backend));
        assert_eq!(Kind::parse("nope"), None);
    }

    #[test]
    fn decode_names_the_field() {
        let err = AnyResource::from_value(json!({
            "apiVersion": "nio.dev/v1", "kind": "Backend",
            "metadata": {"name": "b"},
            "spec": {"targets": [{"url": "http://a:1", "weight": "heavy"}]}
        }))
        .unwrap_err();
        assert_eq!(err.0.field, "spec.targets[0].weight");

        let err = AnyResource::from_value(json!({
            "apiVersion": "nio.dev/v1", "kind": "Route",
            "metadata": {"name": "r"},
            "spec": {"frontend": {"hostz": []}, "backend": "b"}
        }))
        .unwrap_err();
        assert!(err.0.to_string().contains("hostz"), "{err}");

        let err = AnyResource::from_value(json!({"apiVersion": "nio.dev/v1", "kind": "Gadget"}))
            .unwrap_err();
        assert!(err.0.message.contains("unknown kind \"Gadget\""));
    }

    #[test]
    fn names_must_be_dns_labels() {
        assert!(is_dns_label("orders-api"));
        assert!(is_dns_label("a1"));
        for bad in ["", "-a", "a-", "Orders", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
