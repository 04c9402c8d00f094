//! `/apis/nio.dev/v1/{plural}[/{name}]`: CRUD on resources, JSON or YAML.

use super::shown;
use super::{AdminState, ApiError};
use crate::apikeys::{self, Issued};
use crate::store::{Outcome, Written};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use nio_proto::model::{AnyResource, Kind};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

fn kind_of(plural: &str) -> Result<Kind, ApiError> {
    Kind::parse(plural).ok_or_else(|| {
        let known: Vec<_> = Kind::ALL.iter().map(|k| k.plural()).collect();
        ApiError::not_found(format!(
            "unknown resource type \"{plural}\"; expected one of {}",
            known.join(", ")
        ))
    })
}

fn is_yaml(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("yaml"))
}

/// Reads a JSON or YAML body (by `Content-Type`; without one, JSON then YAML).
pub(super) fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send the resource as JSON or YAML",
        ));
    }
    let content_type = headers.get(header::CONTENT_TYPE);
    let yaml = || {
        serde_yaml::from_slice::<Value>(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))
    };
    if is_yaml(content_type) {
        return yaml();
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(_) if content_type.is_none() => yaml(),
        Err(e) => Err(ApiError::bad_request(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// `If-Match: "42"` (or `42`).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(|s| s.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("If-Match must be a resourceVersion, like \"42\""))
}

/// Answers in YAML when the client accepts it, JSON otherwise.
pub(super) fn respond(
    headers: &HeaderMap,
    status: StatusCode,
    body: &Value,
    revision: u64,
) -> Response {
    let (content_type, bytes) = if is_yaml(headers.get(header::ACCEPT)) {
        (
            "application/yaml",
            serde_yaml::to_string(body).unwrap_or_default().into_bytes(),
        )
    } else {
        (
            "application/json",
            serde_json::to_vec_pretty(body).unwrap_or_default(),
        )
    };
    (
        status,
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::HeaderName::from_static("x-nio-revision"),
                revision.to_string(),
            ),
        ],
        bytes,
    )
        .into_response()
}

fn written(headers: &HeaderMap, w: &Written) -> Response {
    respond_written(headers, w, shown(&w.resource))
}

/// A write that issued an API-key secret: the resource plus the secret,
/// this once.
fn issued(headers: &HeaderMap, w: &Written, secret: &Issued) -> Response {
    let mut body = shown(&w.resource);
    body["secret"] = secret.to_value();
    respond_written(headers, w, body)
}

fn respond_written(headers: &HeaderMap, w: &Written, body: Value) -> Response {
    tracing::info!(
        kind = %w.resource.kind(),
        name = %w.resource.name(),
        outcome = ?w.outcome,
        revision = w.revision,
        "admin write"
    );
    let status = match w.outcome {
        Outcome::Created => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    let mut resp = respond(headers, status, &body, w.revision);
    // For the audit record: what was written (a create names it only in
    // its body).
    resp.extensions_mut().insert(super::WrittenResource {
        kind: w.resource.kind(),
        name: w.resource.name().to_string(),
        version: w.resource.metadata().version(),
    });
    resp
}

fn decode_for(kind: Kind, mut value: Value) -> Result<AnyResource, ApiError> {
    // `status` is written by the control plane; a resource read back and
    // sent again may carry it.
    if let Some(o) = value.as_object_mut() {
        o.remove("status");
    }
    let mut resource = AnyResource::from_value(value).map_err(crate::store::WriteError::from)?;
    // API-key secrets are the control plane's to issue.
    if let AnyResource::ApiKey(k) = &mut resource {
        k.spec.credentials.clear();
    }
    // A certificate written now must be valid now (one stored earlier may
    // expire without making snapshots invalid).
    if let AnyResource::Certificate(c) = &resource {
        if let Err(e) = c.spec.check_current() {
            return Err(
                crate::store::WriteError::Invalid(nio_proto::model::ValidationError {
                    kind: Kind::Certificate.to_string(),
                    name: c.metadata.name.clone(),
                    errors: vec![e],
                })
                .into(),
            );
        }
    }
    if resource.kind() != kind {
        return Err(ApiError::bad_request(format!(
            "the body is a {} but the URL is for {}; send it to /apis/nio.dev/v1/{}",
            resource.kind(),
            kind.plural(),
            resource.kind().plural()
        )));
    }
    Ok(resource)
}

/// `labelSelector=team=shop,tier!=edge,canary` (equality, inequality, presence).
fn matches_selector(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels.get(k.trim()).map(String::as_str) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once('=') {
                let v = v.trim_start_matches('=');
                labels.get(k.trim()).map(String::as_str) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                !labels.contains_key(k)
            } else {
                labels.contains_key(term)
            }
        })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    label_selector: Option<String>,
}

pub async fn list(
    State(state): State<AdminState>,
    Path(plural): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    let current = state.store.current();
    let items: Vec<Value> = current
        .config
        .of_kind(kind)
        .filter(|r| {
            q.label_selector
                .as_deref()
                .is_none_or(|s| matches_selector(s, &r.metadata().labels))
        })
        .map(shown)
        .collect();
    let body = json!({
        "apiVersion": nio_proto::API_VERSION,
        "kind": format!("{}List", kind),
        "metadata": {"resourceVersion": current.revision.to_string()},
        "items": items,
    });
    Ok(respond(&headers, StatusCode::OK, &body, current.revision))
}

pub async fn get(
    State(state): State<AdminState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    let current = state.store.current();
    let resource = current
        .config
        .get(kind, &name)
        .ok_or_else(|| ApiError::not_found(format!("{kind} \"{name}\" not found")))?;
    Ok(respond(
        &headers,
        StatusCode::OK,
        &shown(resource),
        current.revision,
    ))
}

pub async fn create(
    State(state): State<AdminState>,
    Path(plural): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    let mut resource = decode_for(kind, parse_body(&headers, &body)?)?;
    if let AnyResource::ApiKey(key) = &mut resource {
        let secret = apikeys::issue(key, Duration::ZERO, SystemTime::now());
        let w = state.store.create(resource).await?;
        return Ok(issued(&headers, &w, &secret));
    }
    let w = state.store.create(resource).await?;
    Ok(written(&headers, &w))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the current secrets keep working (`1h`); default: none.
    #[serde(default)]
    grace_period: Option<String>,
}

/// The longest an old API-key secret may keep working after a rotation.
const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);

/// `POST /apis/nio.dev/v1/apikeys/{name}/rotate`: a new secret, shown once;
/// the old ones stop now or after `gracePeriod`.
pub async fn rotate(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        serde_json::from_value(parse_body(&headers, &body)?)
            .map_err(|e| ApiError::bad_request(format!("rotate: {e}")))?
    };
    let grace = match req.grace_period.as_deref() {
        None => Duration::ZERO,
        Some(g) => humantime::parse_duration(g)
            .map_err(|e| e.to_string())
            .and_then(|d| {
                (d <= MAX_GRACE)
                    .then_some(d)
                    .ok_or_else(|| "at most 365 days".to_string())
            })
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "gracePeriod: \"{g}\": {e}; write it like 30m or 1h"
                ))
            })?,
    };
    let (w, secret) = state
        .store
        .update(Kind::ApiKey, &name, |r| match r {
            AnyResource::ApiKey(key) => Some(apikeys::issue(key, grace, SystemTime::now())),
            _ => None,
        })
        .await?;
    let secret =
        secret.ok_or_else(|| ApiError::not_found(format!("ApiKey \"{name}\" not found")))?;
    Ok(issued(&headers, &w, &secret))
}

pub async fn replace(
    State(state): State<AdminState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    let resource = decode_for(kind, parse_body(&headers, &body)?)?;
    if resource.name() != name {
        return Err(ApiError::bad_request(format!(
            "metadata.name \"{}\" does not match the URL's name \"{name}\"",
            resource.name()
        )));
    }
    let w = state.store.replace(resource, if_match(&headers)?).await?;
    Ok(written(&headers, &w))
}

pub async fn patch(
    State(state): State<AdminState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    let patch = parse_body(&headers, &body)?;
    if !patch.is_object() {
        return Err(ApiError::bad_request(
            "a PATCH body is a JSON merge patch (RFC 7396): an object with the fields to change",
        ));
    }
    let w = state
        .store
        .patch(kind, &name, &patch, if_match(&headers)?)
        .await?;
    Ok(written(&headers, &w))
}

pub async fn delete(
    State(state): State<AdminState>,
    Path((plural, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let kind = kind_of(&plural)?;
    let w = state.store.delete(kind, &name, if_match(&headers)?).await?;
    Ok(written(&headers, &w))
}

#[cfg(test)]
mod tests {
    use super::matches_selector;
    use std::collections::BTreeMap;

    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [("team".to_string(), "shop".to_string())]
            .into_iter()
            .collect();
        assert!(matches_selector("team=shop", &labels));
        assert!(matches_selector("team==shop", &labels));
        assert!(matches_selector("team", &labels));
        assert!(matches_selector("team!=ops,!tier", &labels));
        assert!(!matches_selector("team=ops", &labels));
        assert!(!matches_selector("tier", &labels));
    }
}
