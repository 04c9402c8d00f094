//! `EventExporter`: sends the control plane's events to another system.
//! Today a webhook: batches of events POSTed as a JSON array. Kept on the
//! control plane (data planes never receive it).

use super::{is_header_name, FieldError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventExporterSpec {
    /// Where batches are POSTed (`http://` or `https://`).
    pub url: String,
    /// Headers sent with every batch, e.g. `Authorization`. The admin API
    /// shows their names, never their values; a write that sends a value
    /// back as `<hidden>` keeps the stored one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Event kinds to send (`gateway`, `audit`, `alert`, `fleet`); empty:
    /// all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Most events in one POST.
    #[serde(default = "batch_default")]
    pub batch_size: u32,
    /// Longest wait before a partial batch is sent.
    #[serde(default = "flush_default", with = "super::duration")]
    pub flush_interval: Duration,
    /// Most events waiting while the endpoint fails; beyond it the oldest
    /// are skipped (and counted in `nio_exporter_dropped_total`).
    #[serde(default = "buffer_default")]
    pub max_buffer: u64,
    /// Per POST.
    #[serde(default = "timeout_default", with = "super::duration")]
    pub timeout: Duration,
}

/// How a hidden header value is shown and sent back.
pub const HIDDEN: &str = "<hidden>";

fn batch_default() -> u32 {
    100
}
fn flush_default() -> Duration {
    Duration::from_secs(1)
}
fn buffer_default() -> u64 {
    10_000
}
fn timeout_default() -> Duration {
    Duration::from_secs(5)
}

impl std::fmt::Debug for EventExporterSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are credentials.
        f.debug_struct("EventExporterSpec")
            .field("url", &self.url)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("kinds", &self.kinds)
            .field("batch_size", &self.batch_size)
            .finish_non_exhaustive()
    }
}

impl EventExporterSpec {
    pub(super) fn validate(&self, errors: &mut Vec<FieldError>) {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        let url_ok = rest.is_some_and(|r| {
            let authority = r.split('/').next().unwrap_or_default();
            !authority.is_empty()
                && !r
                    .bytes()
                    .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        });
        if !url_ok {
            errors.push(FieldError::new(
                "spec.url",
                format!("\"{}\" is not an http:// or https:// URL", self.url),
            ));
        }
        for name in self.headers.keys() {
            if !is_header_name(name) {
                errors.push(FieldError::new(
                    format!("spec.headers.{name}"),
                    "not a header name",
                ));
            }
        }
        for (i, k) in self.kinds.iter().enumerate() {
            if !["gateway", "audit", "alert", "fleet"].contains(&k.as_str()) {
                errors.push(FieldError::new(
                    format!("spec.kinds[{i}]"),
                    format!("\"{k}\" is not an event kind; use gateway, audit, alert or fleet"),
                ));
            }
        }
        if !(1..=10_000).contains(&self.batch_size) {
            errors.push(FieldError::new("spec.batchSize", "between 1 and 10000"));
        }
        if self.flush_interval.is_zero() || self.flush_interval > Duration::from_secs(3600) {
            errors.push(FieldError::new(
                "spec.flushInterval",
                "more than 0 and at most 1h",
            ));
        }
        if self.max_buffer == 0 {
            errors.push(FieldError::new("spec.maxBuffer", "at least 1"));
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(300) {
            errors.push(FieldError::new(
                "spec.timeout",
                "more than 0 and at most 5m",
            ));
        }
    }
}
