//! `Route`: which requests (host, path) go to which Backend.

use super::FieldError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub frontend: FrontendSpec,
    /// Name of the Backend that serves this route.
    pub backend: String,
    /// Which data planes receive this route (by their labels). Absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_plane_selector: Option<LabelSelector>,
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
    /// Path prefixes, matched on segment boundaries: `/orders` matches
    /// `/orders` and `/orders/42`, not `/ordersx`. Empty: `/` (everything).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Remove the matched prefix before calling the backend.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_path: bool,
}

impl RouteSpec {
    pub(super) fn validate(&self, errors: &mut Vec<FieldError>) {
        for (i, host) in self.frontend.hosts.iter().enumerate() {
            if let Err(msg) = validate_host_pattern(host) {
                errors.push(FieldError::new(format!("spec.frontend.hosts[{i}]"), msg));
            }
        }
        for (i, path) in self.frontend.paths.iter().enumerate() {
            if let Err(msg) = validate_path(path) {
                errors.push(FieldError::new(format!("spec.frontend.paths[{i}]"), msg));
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
        if self.backend.is_empty() {
            errors.push(FieldError::new(
                "spec.backend",
                "missing; name the Backend that serves this route",
            ));
        }
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
    if path
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b == b'?' || b == b'#')
    {
        return Err(format!(
            "\"{path}\" may not contain spaces, control characters, '?' or '#'"
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
        for bad in ["orders", "/a b", "/a?b", "/a#"] {
            assert!(validate_path(bad).is_err(), "{bad}");
        }
    }
}
