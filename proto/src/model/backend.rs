//! `Backend`: a pool of targets and how to spread requests over them.

use super::FieldError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendSpec {
    pub targets: Vec<TargetSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSpec {
    /// `http://host:port`.
    pub url: String,
    /// Relative share of requests (weighted round robin), 1 to 1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

pub const MAX_TARGETS: usize = 1000;
pub const MAX_WEIGHT: u32 = 1000;

impl BackendSpec {
    pub(super) fn validate(&self, errors: &mut Vec<FieldError>) {
        if self.targets.is_empty() {
            errors.push(FieldError::new(
                "spec.targets",
                "a Backend needs at least one target; add one like {url: http://10.0.0.12:8080}",
            ));
        }
        if self.targets.len() > MAX_TARGETS {
            errors.push(FieldError::new(
                "spec.targets",
                format!("at most {MAX_TARGETS} targets per Backend"),
            ));
        }
        for (i, t) in self.targets.iter().enumerate() {
            if let Err(msg) = parse_target_url(&t.url) {
                errors.push(FieldError::new(format!("spec.targets[{i}].url"), msg));
            }
            if t.weight == 0 || t.weight > MAX_WEIGHT {
                errors.push(FieldError::new(
                    format!("spec.targets[{i}].weight"),
                    format!("must be between 1 and {MAX_WEIGHT} (got {})", t.weight),
                ));
            }
        }
    }
}

/// A target URL split into what a connection needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAddr {
    /// Host as written (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// `host:port` as it goes in a URI authority or a Host header.
    pub authority: String,
}

/// Parses `http://host[:port][/]`. Only plain HTTP targets are supported in
/// this version; TLS toward backends is a later feature.
pub fn parse_target_url(url: &str) -> Result<TargetAddr, String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "\"{url}\": scheme \"{scheme}\" is not supported; use http://host:port"
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
    if host.is_empty() || host.contains(':') && !authority.starts_with('[') {
        return Err(format!("\"{url}\": missing or malformed host"));
    }
    let port = match port {
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
        assert_eq!(
            parse_target_url("http://[::1]:9").unwrap().authority,
            "[::1]:9"
        );
        for bad in [
            "10.0.0.1:80",
            "ftp://x",
            "https://x",
            "http://",
            "http://x:0",
            "http://x:99999",
            "http://x/path",
            "http://u@x",
            "http://[::1",
        ] {
            assert!(parse_target_url(bad).is_err(), "{bad}");
        }
    }
}
