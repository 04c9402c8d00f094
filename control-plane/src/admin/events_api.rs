//! `GET /api/v1/events`: the event log over HTTP, for the UI and scripts —
//! a page of events as JSON, or with `follow=true` a Server-Sent Events
//! stream (the stored events from `fromSequence`, then live ones; each
//! SSE event's `id` is the sequence number, so a browser's EventSource
//! resumes with `Last-Event-ID`).

use super::{AdminState, ApiError};
use crate::events::{self, Filter, Stop};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Params {
    /// Comma-separated: gateway, audit, alert, fleet.
    #[serde(default)]
    kinds: String,
    #[serde(default)]
    route: String,
    #[serde(default)]
    data_plane: String,
    /// From this sequence number; absent: the latest `limit` events (or,
    /// following, only new ones).
    from_sequence: Option<u64>,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    follow: bool,
}

fn default_limit() -> usize {
    100
}

pub async fn list(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Query(p): Query<Params>,
) -> Result<Response, ApiError> {
    let filter = Filter {
        kinds: p
            .kinds
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect(),
        route: p.route,
        data_plane: p.data_plane,
        fields: Default::default(),
    };
    filter.check().map_err(ApiError::bad_request)?;
    let log = state.events.clone();
    if p.follow {
        let resume = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(|id| id + 1);
        let from = resume.or(p.from_sequence).unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(256);
        let stopping = (state.stopping)();
        tokio::spawn(async move {
            let sender = tx.clone();
            let follow = events::follow(&log, &filter, from, 100_000, |e| {
                let tx = sender.clone();
                async move {
                    let sse = SseEvent::default()
                        .id(e.sequence.to_string())
                        .event(events::kind_name(&e))
                        .json_data(events::to_json(&e))
                        .unwrap_or_default();
                    tx.send(Ok(sse)).await.is_ok()
                }
            });
            let stop = tokio::select! {
                stop = follow => stop,
                () = stopping => return,
            };
            if let Stop::TooSlow { resume, .. } = stop {
                let _ = tx
                    .send(Ok(SseEvent::default().event("error").data(format!(
                        "too slow: reconnect with fromSequence={resume}"
                    ))))
                    .await;
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        return Ok(Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let limit = p.limit.clamp(1, 1000);
    let page = tokio::task::spawn_blocking(move || {
        let items = match p.from_sequence {
            Some(from) => log.read_matching(from, &filter, limit),
            None => log.read_latest(&filter, limit),
        };
        let (first, next) = log.bounds();
        (items, first, next)
    })
    .await
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (items, first, next) = page;
    Ok(Json(json!({
        "items": items.iter().map(events::to_json).collect::<Vec<_>>(),
        "firstSequence": first,
        "nextSequence": next,
    }))
    .into_response())
}
