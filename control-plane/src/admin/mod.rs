//! The admin API (HTTP, JSON or YAML), the only way to change configuration:
//! the UI and `nioctl` are clients of it.
//!
//! ```text
//! GET                      /healthz                      (no auth)
//! GET                      /metrics                      (no auth, Prometheus)
//! GET                      /api/v1/revision
//! GET                      /api/v1/dataplanes
//! POST                     /api/v1/dataplanes/{id}/revoke
//! GET                      /api/v1/export                [?includeSecrets=true]
//! POST                     /api/v1/import                [?dryRun=true&from=otoroshi&rewriteTargets=URL]
//! GET, POST                /apis/nio.dev/v1/{plural}
//! GET, PUT, PATCH, DELETE  /apis/nio.dev/v1/{plural}/{name}
//! ```
//!
//! Everything but health and metrics needs `Authorization: Bearer <admin
//! token>`. Errors are `{"error", "code", "details": [{field, message}]}`:
//! 400 unreadable body, 401 no or wrong token, 404 unknown, 409 conflict
//! (exists, stale resourceVersion, in use), 422 invalid resource.

mod error;
mod resources;
mod transfer;

pub use error::ApiError;

use crate::fleet::Fleet;
use crate::store::Store;
use crate::tokens::{bearer, Token};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nio_proto::model::AnyResource;
use serde_json::json;
use serde_json::Value;
use std::sync::Arc;

#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<Store>,
    pub fleet: Arc<Fleet>,
    pub stats: Arc<crate::sync::SyncStats>,
    pub admin_token: Token,
    /// The CA of data-plane certificates (`None` with `--grpc-plaintext`).
    pub pki: Option<Arc<crate::pki::Pki>>,
}

pub fn router(state: AdminState) -> Router {
    let authed = Router::new()
        .route("/api/v1/revision", get(revision))
        .route("/api/v1/dataplanes", get(dataplanes))
        .route("/api/v1/dataplanes/{id}/revoke", post(revoke))
        .route("/api/v1/export", get(transfer::export))
        .route("/api/v1/import", post(transfer::import))
        .route(
            "/apis/nio.dev/v1/{plural}",
            get(resources::list).post(resources::create),
        )
        .route(
            "/apis/nio.dev/v1/{plural}/{name}",
            get(resources::get)
                .put(resources::replace)
                .patch(resources::patch)
                .delete(resources::delete),
        )
        .route(
            "/apis/nio.dev/v1/apikeys/{name}/rotate",
            post(resources::rotate),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .merge(authed)
        .fallback(|| async {
            ApiError::not_found("no such endpoint; resources live under /apis/nio.dev/v1/{plural}")
        })
        .with_state(state)
}

async fn authenticate(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let presented = bearer(
        req.headers()
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    );
    match presented {
        Some(t) if state.admin_token.matches(t) => next.run(req).await,
        _ => {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), "admin call refused: missing or wrong token");
            ApiError::unauthorized().into_response()
        }
    }
}

async fn revision(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(json!({"revision": state.store.current().revision}))
}

async fn dataplanes(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let revision = state.store.current().revision;
    Json(json!({"revision": revision, "items": state.fleet.list()}))
}

/// Revokes the data plane's certificates: its open stream is closed, and
/// it cannot connect again until it enrolls with the join token.
async fn revoke(
    State(state): State<AdminState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let pki = state.pki.as_ref().ok_or_else(|| {
        ApiError::new(
            http::StatusCode::CONFLICT,
            "data planes have no certificates: the gRPC listener runs without TLS (--grpc-plaintext); change the join token to shut a data plane out",
        )
    })?;
    let at = pki
        .revoke(&id)
        .map_err(|e| ApiError::new(http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    tracing::info!(%id, "data-plane certificates revoked");
    Ok(Json(json!({"id": id, "revokedAt": at})))
}

fn load(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let current = state.store.current();
    let planes = state.fleet.list();
    let connected = planes.iter().filter(|p| p.connected).count();
    let current_ones = planes
        .iter()
        .filter(|p| p.connected && p.applied_revision == current.revision)
        .count();
    let body = format!(
        "# HELP nio_config_revision Current configuration revision.\n\
         # TYPE nio_config_revision gauge\n\
         nio_config_revision {}\n\
         # HELP nio_config_resources Resources in the current configuration.\n\
         # TYPE nio_config_resources gauge\n\
         nio_config_resources {}\n\
         # HELP nio_dataplanes_connected Data planes with an open sync stream.\n\
         # TYPE nio_dataplanes_connected gauge\n\
         nio_dataplanes_connected {connected}\n\
         # HELP nio_dataplanes_current Connected data planes that applied the current revision.\n\
         # TYPE nio_dataplanes_current gauge\n\
         nio_dataplanes_current {current_ones}\n\
         # HELP nio_sync_pushes_total Configuration messages sent to data planes, by type.\n\
         # TYPE nio_sync_pushes_total counter\n\
         nio_sync_pushes_total{{type=\"full\"}} {}\n\
         nio_sync_pushes_total{{type=\"delta\"}} {}\n\
         nio_sync_pushes_total{{type=\"up_to_date\"}} {}\n\
         # HELP nio_sync_refused_streams_total Streams refused (token, version, admission).\n\
         # TYPE nio_sync_refused_streams_total counter\n\
         nio_sync_refused_streams_total {}\n",
        current.revision,
        current.config.len(),
        load(&state.stats.full_pushes),
        load(&state.stats.delta_pushes),
        load(&state.stats.up_to_date),
        load(&state.stats.refused_streams),
    );
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}

/// The resource as the admin API shows it: for an ApiKey, the credentials
/// become `status.secrets` (how many, and until when), never salts or
/// hashes; for a Certificate, `status` says what it is (subject, SANs,
/// issuer, validity) and the private key is left out.
pub fn shown(resource: &AnyResource) -> Value {
    let mut value = resource.to_value();
    // HMAC secrets of JWT verifiers can mint tokens: never shown either.
    if let AnyResource::JwtVerifier(_) = resource {
        strip_jwt_secrets(&mut value);
    }
    if let AnyResource::Certificate(cert) = resource {
        if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("privateKey");
        }
        value["status"] = match cert.spec.info() {
            Ok(info) => serde_json::to_value(info).unwrap_or(Value::Null),
            Err(e) => json!({ "error": e }),
        };
    }
    if let AnyResource::ApiKey(key) = resource {
        if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
            spec.remove("credentials");
        }
        let secrets: Vec<Value> = key
            .spec
            .credentials
            .iter()
            .map(|c| json!({ "notAfter": c.not_after }))
            .collect();
        value["status"] = json!({ "secrets": secrets });
    }
    value
}

/// Removes `spec.keys[].secret` (a write without it keeps the stored one).
pub fn strip_jwt_secrets(value: &mut Value) {
    if let Some(keys) = value
        .get_mut("spec")
        .and_then(|s| s.get_mut("keys"))
        .and_then(Value::as_array_mut)
    {
        for key in keys {
            if let Some(k) = key.as_object_mut() {
                k.remove("secret");
            }
        }
    }
}
