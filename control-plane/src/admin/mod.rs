//! The admin API (HTTP, JSON or YAML), the only way to change configuration:
//! the UI and `nioctl` are clients of it.
//!
//! ```text
//! GET                      /healthz                      (no auth)
//! GET                      /metrics                      (no auth, Prometheus)
//! GET                      /api/v1/revision
//! GET                      /api/v1/dataplanes
//! POST                     /api/v1/dataplanes/{id}/revoke
//! GET                      /api/v1/events                [?kinds=&route=&dataPlane=&fromSequence=&limit=&follow=true]
//! GET                      /api/v1/stats                 (per-route counters, fleet-wide)
//! GET                      /api/v1/export                [?includeSecrets=true]
//! POST                     /api/v1/import                [?dryRun=true&from=otoroshi&rewriteTargets=URL]
//! GET, POST                /apis/nio.dev/v1/{plural}
//! GET, PUT, PATCH, DELETE  /apis/nio.dev/v1/{plural}/{name}
//! POST                     /apis/nio.dev/v1/apikeys/{name}/rotate
//! GET                      /apis/nio.dev/v1/apikeys/{name}/quotas
//! POST                     /apis/nio.dev/v1/apikeys/{name}/quotas/reset  [?window=daily|monthly]
//! GET                      /ui/…                         (no auth: the web UI's static files, see [`ui`])
//! ```
//!
//! Everything but health, metrics and the UI's files needs
//! `Authorization: Bearer <admin token>`. Every call that changes something, and every refused call,
//! becomes an AuditEvent on the event feed. Errors are `{"error", "code", "details": [{field, message}]}`:
//! 400 unreadable body, 401 no or wrong token, 404 unknown, 409 conflict
//! (exists, stale resourceVersion, in use), 422 invalid resource.

mod error;
mod events_api;
mod resources;
mod transfer;
pub mod ui;

pub use error::ApiError;

use crate::events;
use crate::fleet::Fleet;
use crate::store::Store;
use crate::tokens::{bearer, Token};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nio_proto::model::{AnyResource, Kind};
use nio_proto::v1::AuditEvent;
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
    pub events: Arc<crate::events::EventLog>,
    pub exporters: Arc<crate::exporters::Exporters>,
    pub quotas: Arc<crate::quotas::Quotas>,
    /// Ends open event streams (SSE) on shutdown.
    pub stopping: crate::telemetry::Stopping,
}

pub fn router(state: AdminState) -> Router {
    let authed = Router::new()
        .route("/api/v1/revision", get(revision))
        .route("/api/v1/dataplanes", get(dataplanes))
        .route("/api/v1/dataplanes/{id}/revoke", post(revoke))
        .route("/api/v1/events", get(events_api::list))
        .route("/api/v1/stats", get(stats))
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
        .route("/apis/nio.dev/v1/apikeys/{name}/quotas", get(quotas))
        .route(
            "/apis/nio.dev/v1/apikeys/{name}/quotas/reset",
            post(reset_quotas),
        )
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), audit))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .merge(authed)
        .merge(ui::router())
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
            let mut event = audit_event(&req, "anonymous", "refused");
            event.status = 401;
            event.message = "missing or wrong admin token".into();
            state.events.append(vec![events::audit(event)]);
            ApiError::unauthorized().into_response()
        }
    }
}

/// The audit record of a call, before its outcome.
fn audit_event(req: &Request, actor: &str, action: &str) -> AuditEvent {
    let path = req.uri().path();
    let mut parts = path
        .strip_prefix("/apis/nio.dev/v1/")
        .unwrap_or_default()
        .split('/');
    let kind = parts.next().and_then(Kind::parse);
    let name = parts.next().unwrap_or_default();
    AuditEvent {
        actor: actor.into(),
        action: action.into(),
        kind: kind.map(|k| k.as_str().to_string()).unwrap_or_default(),
        name: name.into(),
        source_ip: req
            .extensions()
            .get::<ConnectInfo<Peer>>()
            .map(|c| c.0 .0.ip().to_string())
            .unwrap_or_default(),
        method: req.method().to_string(),
        path: path.into(),
        ..Default::default()
    }
}

/// Records every call that can change something (all but GET and HEAD)
/// as an AuditEvent: who, what, the resource and its versions before and
/// after, the outcome. Stored (and flushed) before the answer goes out.
async fn audit(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if matches!(method, http::Method::GET | http::Method::HEAD) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let action = match (&method, path.as_str()) {
        (_, p) if p.ends_with("/rotate") => "rotate",
        (_, p) if p.ends_with("/revoke") => "revoke",
        (_, p) if p.ends_with("/quotas/reset") => "reset-quotas",
        (_, "/api/v1/import") => "import",
        (&http::Method::POST, _) => "create",
        (&http::Method::PUT, _) => "replace",
        (&http::Method::PATCH, _) => "patch",
        (&http::Method::DELETE, _) => "delete",
        _ => "call",
    };
    let mut event = audit_event(&req, "admin-token", action);
    if let Some(kind) = Kind::from_kind_field(&event.kind) {
        event.old_version = state
            .store
            .current()
            .config
            .get(kind, &event.name)
            .map_or(0, |r| r.metadata().version());
    }
    let resp = next.run(req).await;
    event.status = u32::from(resp.status().as_u16());
    if let Some(w) = resp.extensions().get::<WrittenResource>() {
        event.kind = w.kind.as_str().to_string();
        event.name.clone_from(&w.name);
        event.new_version = w.version;
    } else if resp.status().is_success() {
        event.new_version = resp
            .headers()
            .get("x-nio-revision")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
    }
    let log = state.events.clone();
    let _ = tokio::task::spawn_blocking(move || {
        log.append(vec![events::audit(event)]);
        log.flush();
    })
    .await;
    resp
}

/// What a write handler wrote, for the audit record.
#[derive(Debug, Clone)]
pub(crate) struct WrittenResource {
    pub kind: Kind,
    pub name: String,
    pub version: u64,
}

/// The peer address of an admin connection (plain or TLS).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

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

/// `GET /api/v1/stats`: each route's counters summed over the data
/// planes' last reports (cumulative since each data plane started), for
/// clients that chart rates from two readings, like the UI's overview.
/// `/metrics` has the same numbers per data plane, in Prometheus text.
async fn stats(State(state): State<AdminState>) -> Json<Value> {
    use std::collections::BTreeMap;
    #[derive(Default)]
    struct Sum {
        by_class: [u64; 5],
        duration_us: u64,
        buckets: Vec<u64>,
    }
    let mut routes: BTreeMap<String, Sum> = BTreeMap::new();
    for (_, m) in state.fleet.reports() {
        for r in m.routes {
            let sum = routes.entry(r.route).or_default();
            for (total, n) in sum.by_class.iter_mut().zip(&r.by_class) {
                *total += n;
            }
            sum.duration_us += r.duration_us;
            if sum.buckets.len() < r.latency_buckets.len() {
                sum.buckets.resize(r.latency_buckets.len(), 0);
            }
            for (total, n) in sum.buckets.iter_mut().zip(&r.latency_buckets) {
                *total += n;
            }
        }
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Json(json!({
        "timeMs": now_ms,
        "latencyBucketsMs": nio_proto::LATENCY_BUCKETS_MS,
        "routes": routes.into_iter().map(|(route, s)| json!({
            "route": route,
            "requests": s.by_class.iter().sum::<u64>(),
            "byClass": s.by_class,
            "durationUs": s.duration_us,
            "latencyBuckets": s.buckets,
        })).collect::<Vec<_>>(),
    }))
}

/// An API key's quotas: limit, fleet-wide use and what is left per window.
async fn quotas(
    State(state): State<AdminState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<Value>, ApiError> {
    let q = state.quotas.clone();
    let key = name.clone();
    quota_answer(
        &name,
        tokio::task::spawn_blocking(move || q.view(&key)).await,
    )
}

#[derive(serde::Deserialize)]
struct ResetQuery {
    window: Option<String>,
}

/// Starts the key's current daily and monthly windows (or the one named)
/// from zero again, fleet-wide.
async fn reset_quotas(
    State(state): State<AdminState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::Query(query): axum::extract::Query<ResetQuery>,
) -> Result<Json<Value>, ApiError> {
    let only = match query.window.as_deref() {
        None => None,
        Some(w) => Some(nio_proto::quota::Window::parse(w).ok_or_else(|| {
            ApiError::bad_request(format!(
                "window: \"{w}\": use daily or monthly (or leave it out for both)"
            ))
        })?),
    };
    let q = state.quotas.clone();
    let key = name.clone();
    let view = tokio::task::spawn_blocking(move || {
        if !q.reset(&key, only)? {
            return Ok(None);
        }
        tracing::info!(apikey = %key, window = ?only, "quotas reset");
        q.view(&key)
    })
    .await;
    quota_answer(&name, view)
}

/// The quotas view of key `name` computed off the runtime, as an answer.
fn quota_answer(
    name: &str,
    view: Result<Result<Option<Value>, crate::store::StoreError>, tokio::task::JoinError>,
) -> Result<Json<Value>, ApiError> {
    let internal = |e: String| ApiError::new(http::StatusCode::INTERNAL_SERVER_ERROR, e);
    match view {
        Ok(Ok(Some(v))) => Ok(Json(v)),
        Ok(Ok(None)) => Err(ApiError::not_found(format!("ApiKey \"{name}\" not found"))),
        Ok(Err(e)) => Err(internal(e.to_string())),
        Err(e) => Err(internal(e.to_string())),
    }
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
    let mut body = body;
    use std::fmt::Write;
    let (first, next) = state.events.bounds();
    let dropped: u64 = planes.iter().map(|p| p.events_dropped).sum();
    let _ = write!(
        body,
        "# HELP nio_snapshot_bytes Size of the last full snapshot sent to a data plane.\n\
         # TYPE nio_snapshot_bytes gauge\n\
         nio_snapshot_bytes {}\n\
         # HELP nio_event_log_events Events retained in the event log.\n\
         # TYPE nio_event_log_events gauge\n\
         nio_event_log_events {}\n\
         # HELP nio_event_log_next_sequence Sequence number the next event gets.\n\
         # TYPE nio_event_log_next_sequence gauge\n\
         nio_event_log_next_sequence {next}\n\
         # HELP nio_store_bytes Bytes the store (configuration and event log) takes on disk.\n\
         # TYPE nio_store_bytes gauge\n\
         nio_store_bytes {}\n\
         # HELP nio_fleet_events_dropped Events data planes dropped because their buffer was full (as last reported).\n\
         # TYPE nio_fleet_events_dropped gauge\n\
         nio_fleet_events_dropped {dropped}\n\
         # HELP nio_push_ack_seconds Time from pushing a revision to each data plane's ACK of it.\n\
         # TYPE nio_push_ack_seconds histogram\n",
        load(&state.stats.snapshot_bytes),
        next - first,
        state.store.size_on_disk(),
    );
    let mut total = 0;
    for (i, c) in state.stats.ack_latency.iter().enumerate() {
        total += load(c);
        let le = crate::sync::ACK_BUCKETS
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(body, "nio_push_ack_seconds_bucket{{le=\"{le}\"}} {total}");
    }
    let _ = writeln!(
        body,
        "nio_push_ack_seconds_sum {}\nnio_push_ack_seconds_count {total}",
        load(&state.stats.ack_latency_us) as f64 / 1e6
    );
    crate::telemetry::render_fleet_metrics(&state.fleet, &mut body);
    state.exporters.render(&mut body);
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
}

/// An EventExporter's header values are credentials: shown as `<hidden>`.
pub fn hide_header_values(value: &mut Value) {
    if value["kind"] != "EventExporter" {
        return;
    }
    if let Some(headers) = value["spec"]
        .get_mut("headers")
        .and_then(Value::as_object_mut)
    {
        for v in headers.values_mut() {
            *v = Value::String(nio_proto::model::HIDDEN.into());
        }
    }
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
    hide_header_values(&mut value);
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
