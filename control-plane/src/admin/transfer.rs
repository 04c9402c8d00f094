//! `GET /api/v1/export`, `POST /api/v1/import`: the whole configuration
//! as one document (see [`crate::transfer`]), and imports from Otoroshi
//! (see [`crate::otoroshi`]).

use super::resources::{parse_body, respond};
use super::{AdminState, ApiError};
use crate::transfer::{self, ImportError, ImportOptions};
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportQuery {
    #[serde(default)]
    include_secrets: bool,
}

pub async fn export(
    State(state): State<AdminState>,
    Query(q): Query<ExportQuery>,
    headers: HeaderMap,
) -> Response {
    let current = state.store.current();
    if q.include_secrets {
        // Who took the hashes, not what they are.
        tracing::info!(
            revision = current.revision,
            "export with API-key credentials (salted hashes)"
        );
    }
    let body = transfer::export(&current, q.include_secrets);
    respond(&headers, StatusCode::OK, &body, current.revision)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportQuery {
    #[serde(default)]
    dry_run: bool,
    /// `otoroshi`: the body is an Otoroshi full export.
    from: Option<String>,
    /// Replace every Backend's targets with this URL.
    rewrite_targets: Option<String>,
}

impl From<ImportError> for ApiError {
    fn from(e: ImportError) -> ApiError {
        match e {
            ImportError::Document(m) => ApiError::bad_request(m),
            ImportError::Invalid(details) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: ImportError::Invalid(details.clone()).to_string(),
                details,
            },
            ImportError::Write(w) => w.into(),
        }
    }
}

pub async fn import(
    State(state): State<AdminState>,
    Query(q): Query<ImportQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let doc = parse_body(&headers, &body)?;
    let options = ImportOptions {
        dry_run: q.dry_run,
        rewrite_targets: q.rewrite_targets.clone(),
    };
    let (resources, report) = match q.from.as_deref() {
        None | Some("nio") => (transfer::decode_items(doc)?, None),
        Some("otoroshi") => {
            let converted = crate::otoroshi::convert_with(
                &doc,
                &crate::otoroshi::ConvertOptions {
                    rewrite_targets: q.rewrite_targets.clone(),
                },
            ).map_err(ApiError::bad_request)?;
            (converted.resources, Some(converted.report))
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "from=\"{other}\" is not a known source; use from=otoroshi, or leave it out for a Nio export"
            )))
        }
    };
    let done = transfer::import(&state.store, resources, &options).await?;
    tracing::info!(
        dry_run = done.dry_run,
        revision = done.revision,
        resources = done.items.len(),
        new_secrets = done.secrets.len(),
        from = q.from.as_deref().unwrap_or("nio"),
        "admin import"
    );
    let mut body = done.to_value();
    if let Some(report) = report {
        body["report"] = report.to_value();
    }
    Ok(respond(&headers, StatusCode::OK, &body, done.revision))
}
