//! `Backend`: a pool of targets, how to spread requests over them, and how
//! to behave when they are slow or failing.

use super::FieldError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSpec {
    pub targets: Vec<TargetSpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub load_balancing: LoadBalancing,
    /// HTTP version spoken to the targets: `http1` (default) or `http2`
    /// (cleartext with prior knowledge; needed for gRPC).
    #[serde(default, skip_serializing_if = "is_default")]
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "is_default")]
    pub timeouts: Timeouts,
    #[serde(default, skip_serializing_if = "is_default")]
    pub retries: Retries,
    #[serde(default, skip_serializing_if = "is_default")]
    pub circuit_breaker: CircuitBreaker,
    /// Active health checking. Absent: targets are only judged by the
    /// requests they serve (circuit breaker, outlier detection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive ejection of targets that answer with 5xx. Absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// How `https://` targets are verified, and the client certificate
    /// presented to them.
    #[serde(default, skip_serializing_if = "is_default")]
    pub tls: BackendTls,
}

/// TLS toward `https://` targets. By default a target's certificate is
/// verified against the system's trusted roots for the target's host name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendTls {
    /// A Certificate resource holding the CA (or CAs) to trust instead of
    /// the system roots, for backends with a private PKI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A Certificate resource with a private key, presented to targets that
    /// ask for a client certificate (backend mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Name sent in SNI and checked against the target's certificate,
    /// instead of the target URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Development only: accept any certificate from the targets (no
    /// verification at all — anyone on the path can read and change the
    /// traffic). Every data plane logs a warning for each Backend with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dangerously_skip_verify: bool,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSpec {
    /// `http://host:port`.
    pub url: String,
    /// Relative share of requests, 1 to 1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Used only when no primary (non-backup) target is available.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum Policy {
    /// Smooth weighted round robin (weights 1 and 2 give `b a b`).
    #[default]
    WeightedRoundRobin,
    /// Every target in turn, ignoring weights.
    RoundRobin,
    /// A random target, in proportion to weights.
    Random,
    /// The target with the fewest requests in flight per unit of weight.
    LeastConnections,
    /// Two random targets; the one with fewer requests in flight.
    PowerOfTwoChoices,
    /// A hash ring keyed by `hashOn`: the same key goes to the same target,
    /// and removing a target moves only the keys it had.
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancing {
    #[serde(default)]
    pub policy: Policy,
    /// The key for `consistentHash`: exactly one of a header, a cookie or
    /// the client IP. A request without the header or cookie is hashed on
    /// its client IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<HashOn>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HashOn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_ip: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// To open a connection to a target.
    #[serde(default = "Timeouts::connect_default", with = "super::duration")]
    pub connect: Duration,
    /// From sending the request to the response headers.
    #[serde(default = "Timeouts::request_default", with = "super::duration")]
    pub request: Duration,
    /// Longest pause in a streaming body (either direction) or an upgraded
    /// connection before it is cut.
    #[serde(default = "Timeouts::idle_default", with = "super::duration")]
    pub idle: Duration,
}

impl Timeouts {
    fn connect_default() -> Duration {
        Duration::from_secs(5)
    }
    fn request_default() -> Duration {
        Duration::from_secs(60)
    }
    fn idle_default() -> Duration {
        Duration::from_secs(300)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Timeouts::connect_default(),
            request: Timeouts::request_default(),
            idle: Timeouts::idle_default(),
        }
    }
}

/// Retries go to another target when there is one. A request is retried
/// after a connection failure (the request never reached a target), or —
/// for idempotent methods without a body — when the target answered with
/// one of `statuses`. A request whose body has started streaming is never
/// sent again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Retries after the first attempt; 0 turns retries off.
    #[serde(default = "Retries::max_default")]
    pub max_retries: u32,
    /// First pause between attempts; it doubles each time (with jitter).
    #[serde(default = "Retries::backoff_default", with = "super::duration")]
    pub backoff: Duration,
    #[serde(default = "Retries::statuses_default")]
    pub statuses: Vec<u16>,
}

impl Retries {
    fn max_default() -> u32 {
        1
    }
    fn backoff_default() -> Duration {
        Duration::from_millis(25)
    }
    fn statuses_default() -> Vec<u16> {
        vec![502, 503]
    }
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            max_retries: Retries::max_default(),
            backoff: Retries::backoff_default(),
            statuses: Retries::statuses_default(),
        }
    }
}

/// Per target: opens (the target is skipped) after `consecutiveFailures`
/// failures in a row, or when at least `minRequests` requests in `window`
/// failed in `failureRatio` or more; after `openFor`, one probe request is
/// let through (half-open) and a success closes it. A failure is a
/// connection error or a timeout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "CircuitBreaker::consecutive_default")]
    pub consecutive_failures: u32,
    #[serde(default = "CircuitBreaker::ratio_default")]
    pub failure_ratio: f64,
    #[serde(default = "CircuitBreaker::min_default")]
    pub min_requests: u32,
    #[serde(default = "CircuitBreaker::window_default", with = "super::duration")]
    pub window: Duration,
    #[serde(default = "CircuitBreaker::open_default", with = "super::duration")]
    pub open_for: Duration,
}

// Ratios are compared, never hashed; NaN is refused by validation.
impl Eq for CircuitBreaker {}

fn yes() -> bool {
    true
}

impl CircuitBreaker {
    fn consecutive_default() -> u32 {
        5
    }
    fn ratio_default() -> f64 {
        0.5
    }
    fn min_default() -> u32 {
        20
    }
    fn window_default() -> Duration {
        Duration::from_secs(10)
    }
    fn open_default() -> Duration {
        Duration::from_secs(10)
    }
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            enabled: true,
            consecutive_failures: CircuitBreaker::consecutive_default(),
            failure_ratio: CircuitBreaker::ratio_default(),
            min_requests: CircuitBreaker::min_default(),
            window: CircuitBreaker::window_default(),
            open_for: CircuitBreaker::open_default(),
        }
    }
}

/// Each target is probed with `GET path` every `interval`; it leaves the
/// pool after `unhealthyThreshold` failed probes in a row and comes back
/// after `healthyThreshold` good ones. A probe is good when it answers in
/// `timeout` with one of `expectedStatuses` (`200`, `2xx`, `200-299`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "HealthCheck::interval_default", with = "super::duration")]
    pub interval: Duration,
    #[serde(default = "HealthCheck::timeout_default", with = "super::duration")]
    pub timeout: Duration,
    #[serde(default = "HealthCheck::healthy_default")]
    pub healthy_threshold: u32,
    #[serde(default = "HealthCheck::unhealthy_default")]
    pub unhealthy_threshold: u32,
    #[serde(default = "HealthCheck::statuses_default")]
    pub expected_statuses: Vec<StatusRange>,
}

impl HealthCheck {
    fn interval_default() -> Duration {
        Duration::from_secs(5)
    }
    fn timeout_default() -> Duration {
        Duration::from_secs(2)
    }
    fn healthy_default() -> u32 {
        2
    }
    fn unhealthy_default() -> u32 {
        3
    }
    fn statuses_default() -> Vec<StatusRange> {
        vec![StatusRange(200, 399)]
    }

    pub fn expects(&self, status: u16) -> bool {
        self.expected_statuses
            .iter()
            .any(|r| (r.0..=r.1).contains(&status))
    }
}

/// An inclusive range of HTTP statuses, written `204`, `2xx` or `200-299`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange(pub u16, pub u16);

impl std::str::FromStr for StatusRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("\"{s}\" is not a status; write 200, 2xx or 200-299");
        let status = |t: &str| {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|n| (100..=599).contains(n))
                .ok_or_else(bad)
        };
        if let Some(class) = s.strip_suffix("xx") {
            let c = status(&format!("{class}00"))?;
            return Ok(StatusRange(c, c + 99));
        }
        match s.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (status(a)?, status(b)?);
                if a > b {
                    return Err(bad());
                }
                Ok(StatusRange(a, b))
            }
            None => status(s).map(|n| StatusRange(n, n)),
        }
    }
}

impl Serialize for StatusRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == self.1 {
            s.serialize_u16(self.0)
        } else {
            s.serialize_str(&format!("{}-{}", self.0, self.1))
        }
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = StatusRange;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a status like 200, \"2xx\" or \"200-299\"")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<StatusRange, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<StatusRange, E> {
                self.visit_str(&n.to_string())
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<StatusRange, E> {
                s.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Ejects a target for `ejectFor` after `consecutive5xx` responses with a
/// 5xx status in a row, never more than `maxEjectedPercent` of the targets
/// at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(
        default = "OutlierDetection::consecutive_default",
        rename = "consecutive5xx"
    )]
    pub consecutive_5xx: u32,
    #[serde(default = "OutlierDetection::eject_default", with = "super::duration")]
    pub eject_for: Duration,
    #[serde(default = "OutlierDetection::max_default")]
    pub max_ejected_percent: u32,
}

impl OutlierDetection {
    fn consecutive_default() -> u32 {
        5
    }
    fn eject_default() -> Duration {
        Duration::from_secs(30)
    }
    fn max_default() -> u32 {
        50
    }
}

pub const MAX_TARGETS: usize = 1000;
pub const MAX_WEIGHT: u32 = 1000;
const MAX_RETRIES: u32 = 10;

impl BackendSpec {
    pub(super) fn validate(&self, errors: &mut Vec<FieldError>) {
        let mut err = |field: String, msg: String| errors.push(FieldError::new(field, msg));
        if self.targets.is_empty() {
            err(
                "spec.targets".into(),
                "a Backend needs at least one target; add one like {url: http://10.0.0.12:8080}"
                    .into(),
            );
        } else if self.targets.iter().all(|t| t.backup) {
            err(
                "spec.targets".into(),
                "every target is a backup; at least one must be a primary (backup: false)".into(),
            );
        }
        if self.targets.len() > MAX_TARGETS {
            err(
                "spec.targets".into(),
                format!("at most {MAX_TARGETS} targets per Backend"),
            );
        }
        for (i, t) in self.targets.iter().enumerate() {
            if let Err(msg) = parse_target_url(&t.url) {
                err(format!("spec.targets[{i}].url"), msg);
            }
            if t.weight == 0 || t.weight > MAX_WEIGHT {
                err(
                    format!("spec.targets[{i}].weight"),
                    format!("must be between 1 and {MAX_WEIGHT} (got {})", t.weight),
                );
            }
        }
        let lb = &self.load_balancing;
        match (&lb.hash_on, lb.policy) {
            (None, Policy::ConsistentHash) => err(
                "spec.loadBalancing.hashOn".into(),
                "consistentHash needs a key: {header: x-user-id}, {cookie: session} or {clientIp: true}".into(),
            ),
            (Some(_), p) if p != Policy::ConsistentHash => err(
                "spec.loadBalancing.hashOn".into(),
                "hashOn is only used with policy: consistentHash".into(),
            ),
            (Some(h), _) => {
                let n = usize::from(h.header.is_some())
                    + usize::from(h.cookie.is_some())
                    + usize::from(h.client_ip);
                if n != 1 {
                    err(
                        "spec.loadBalancing.hashOn".into(),
                        "give exactly one of header, cookie or clientIp: true".into(),
                    );
                }
                if h.header.as_deref().is_some_and(|n| !super::is_header_name(n)) {
                    err(
                        "spec.loadBalancing.hashOn.header".into(),
                        "not a valid header name".into(),
                    );
                }
                if h.cookie.as_deref().is_some_and(|c| c.is_empty() || c.len() > 256) {
                    err(
                        "spec.loadBalancing.hashOn.cookie".into(),
                        "cookie names are 1-256 characters".into(),
                    );
                }
            }
            (None, _) => {}
        }
        let positive = [
            ("spec.timeouts.connect", self.timeouts.connect),
            ("spec.timeouts.request", self.timeouts.request),
            ("spec.timeouts.idle", self.timeouts.idle),
            ("spec.circuitBreaker.window", self.circuit_breaker.window),
            ("spec.circuitBreaker.openFor", self.circuit_breaker.open_for),
        ];
        for (field, d) in positive {
            if d.is_zero() || d > MAX_DURATION {
                err(field.into(), "must be more than 0 and at most 24h".into());
            }
        }
        if self.retries.max_retries > MAX_RETRIES {
            err(
                "spec.retries.maxRetries".into(),
                format!("at most {MAX_RETRIES}"),
            );
        }
        if self.retries.backoff > Duration::from_secs(10) {
            err("spec.retries.backoff".into(), "at most 10s".into());
        }
        for (i, s) in self.retries.statuses.iter().enumerate() {
            if !(500..=599).contains(s) {
                err(
                    format!("spec.retries.statuses[{i}]"),
                    format!("{s}: only 5xx statuses can be retried"),
                );
            }
        }
        let cb = &self.circuit_breaker;
        if !(cb.failure_ratio > 0.0 && cb.failure_ratio <= 1.0) {
            err(
                "spec.circuitBreaker.failureRatio".into(),
                "must be more than 0 and at most 1 (0.5 = half the requests)".into(),
            );
        }
        if let Some(hc) = &self.health_check {
            if let Err(msg) = super::route::validate_path(&hc.path) {
                err("spec.healthCheck.path".into(), msg);
            }
            if hc.interval < Duration::from_millis(100) || hc.interval > MAX_DURATION {
                err(
                    "spec.healthCheck.interval".into(),
                    "must be between 100ms and 24h".into(),
                );
            }
            if hc.timeout.is_zero() || hc.timeout > hc.interval {
                err(
                    "spec.healthCheck.timeout".into(),
                    "must be more than 0 and at most the interval".into(),
                );
            }
            for (field, n) in [
                ("healthyThreshold", hc.healthy_threshold),
                ("unhealthyThreshold", hc.unhealthy_threshold),
            ] {
                if n == 0 || n > 100 {
                    err(
                        format!("spec.healthCheck.{field}"),
                        "must be between 1 and 100".into(),
                    );
                }
            }
            if hc.expected_statuses.is_empty() {
                err(
                    "spec.healthCheck.expectedStatuses".into(),
                    "list at least one status, like 2xx".into(),
                );
            }
        }
        if let Some(od) = &self.outlier_detection {
            if od.consecutive_5xx == 0 {
                err(
                    "spec.outlierDetection.consecutive5xx".into(),
                    "must be at least 1".into(),
                );
            }
            if od.eject_for.is_zero() || od.eject_for > MAX_DURATION {
                err(
                    "spec.outlierDetection.ejectFor".into(),
                    "must be more than 0 and at most 24h".into(),
                );
            }
            if od.max_ejected_percent > 100 {
                err(
                    "spec.outlierDetection.maxEjectedPercent".into(),
                    "a percentage: 0 to 100".into(),
                );
            }
        }
        let tls = &self.tls;
        if tls != &BackendTls::default()
            && !self
                .targets
                .iter()
                .any(|t| parse_target_url(&t.url).is_ok_and(|a| a.tls))
        {
            err(
                "spec.tls".into(),
                "only used for https:// targets; make the targets https:// or remove tls".into(),
            );
        }
        if tls.dangerously_skip_verify && tls.ca.is_some() {
            err(
                "spec.tls.dangerouslySkipVerify".into(),
                "a CA is given but would not be used; remove one of ca and dangerouslySkipVerify"
                    .into(),
            );
        }
        if let Some(name) = &tls.server_name {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                err(
                    "spec.tls.serverName".into(),
                    format!("\"{name}\" is not a DNS name or IP address"),
                );
            }
        }
    }
}

const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A target URL split into what a connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAddr {
    /// Host as written (IPv6 without brackets).
    pub host: String,
    /// `https://`: TLS to this target.
    pub tls: bool,
    pub port: u16,
    /// `host:port` as it goes in a URI authority or a Host header.
    pub authority: String,
}

/// Parses `http://host[:port][/]` or `https://host[:port][/]`.
pub fn parse_target_url(url: &str) -> Result<TargetAddr, String> {
    let (tls, rest) = match url.split_once("://") {
        Some(("http", rest)) => (false, rest),
        Some(("https", rest)) => (true, rest),
        Some((scheme, _)) => {
            return Err(format!(
                "\"{url}\": scheme \"{scheme}\" is not supported; use http://host:port or https://host:port"
            ))
        }
        None => return Err(format!("\"{url}\" is not a URL; use http://host:port")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "\"{url}\": give only scheme, host and port, like http://10.0.0.12:8080 (no path, query or credentials)"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("\"{url}\": unclosed '[' in IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("\"{url}\": expected ':port' after ']'"))?,
            ),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let host_ok = if authority.starts_with('[') {
        host.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    };
    if !host_ok {
        return Err(format!(
            "\"{url}\": missing or malformed host; use a DNS name or an IP address"
        ));
    }
    let port = match port {
        None if tls => 443,
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("\"{url}\": port must be a number from 1 to 65535"))?,
    };
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(TargetAddr {
        host: host.to_string(),
        tls,
        port,
        authority,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_urls() {
        let a = parse_target_url("http://10.0.0.12:8080").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("10.0.0.12", 8080));
        assert_eq!(parse_target_url("http://svc/").unwrap().authority, "svc:80");
        let tls = parse_target_url("https://api.example.com").unwrap();
        assert_eq!(
            (tls.tls, tls.authority.as_str()),
            (true, "api.example.com:443")
        );
        assert_eq!(
            parse_target_url("http://[::1]:9").unwrap().authority,
            "[::1]:9"
        );
        for bad in [
            "10.0.0.1:80",
            "ftp://x",
            "https://x/path",
            "http://",
            "http://x:0",
            "http://x:99999",
            "http://x/path",
            "http://u@x",
            "http://[::1",
            "http://a\"b:80",
            "http://a<b",
            "http://[zz]:80",
        ] {
            assert!(parse_target_url(bad).is_err(), "{bad}");
        }
    }

    fn errors(spec: serde_json::Value) -> String {
        let spec: BackendSpec = serde_json::from_value(spec).unwrap();
        let mut errors = Vec::new();
        spec.validate(&mut errors);
        super::super::join_errors(&errors)
    }

    #[test]
    fn resilience_settings_are_checked() {
        let ok = serde_json::json!({
            "targets": [{"url": "http://a:1"}, {"url": "http://b:1", "backup": true}],
            "loadBalancing": {"policy": "consistentHash", "hashOn": {"header": "x-user"}},
            "protocol": "http2",
            "timeouts": {"connect": "250ms", "request": "2s"},
            "retries": {"maxRetries": 2},
            "healthCheck": {"path": "/health", "expectedStatuses": [200, "2xx", "300-304"]},
            "outlierDetection": {"consecutive5xx": 3}
        });
        assert_eq!(errors(ok.clone()), "");
        let spec: BackendSpec = serde_json::from_value(ok).unwrap();
        let hc = spec.health_check.as_ref().unwrap();
        assert!(hc.expects(204) && hc.expects(304) && !hc.expects(305));
        // Serialized form reads back the same.
        let again: BackendSpec =
            serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(again, spec);

        let text = errors(serde_json::json!({
            "targets": [{"url": "http://a:1", "backup": true}],
            "loadBalancing": {"policy": "consistentHash"},
            "retries": {"maxRetries": 11, "statuses": [404]},
            "circuitBreaker": {"failureRatio": 1.5},
            "healthCheck": {"path": "health", "interval": "10ms"}
        }));
        for expected in [
            "spec.targets: every target is a backup",
            "spec.loadBalancing.hashOn: consistentHash needs a key",
            "spec.retries.maxRetries: at most 10",
            "spec.retries.statuses[0]: 404",
            "spec.circuitBreaker.failureRatio",
            "spec.healthCheck.path",
            "spec.healthCheck.interval",
        ] {
            assert!(text.contains(expected), "{expected} not in\n{text}");
        }
        let bad: Result<BackendSpec, _> = serde_json::from_value(serde_json::json!({
            "targets": [{"url": "http://a:1"}], "timeouts": {"connect": "soon"}
        }));
        assert!(bad.unwrap_err().to_string().contains("is not a duration"));
    }
}
