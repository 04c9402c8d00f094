//! The access log: one JSON line per request, written by a background task
//! so the request path only hands a record to a bounded channel. When the
//! writer falls behind, records are dropped and counted
//! (`nio_access_log_dropped_total`) rather than slowing requests down.
//!
//! The same record becomes the request's `GatewayEvent` (see
//! [`crate::events`]) when the route samples it.

use crate::metrics::Metrics;
use serde::Serialize;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Where access-log lines go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sink {
    #[default]
    Off,
    Stdout,
    File(PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Sink, Self::Err> {
        Ok(match s {
            "off" | "" => Sink::Off,
            "stdout" | "-" => Sink::Stdout,
            path => Sink::File(path.into()),
        })
    }
}

/// One request, as logged.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    pub request_id: String,
    pub client: IpAddr,
    pub method: String,
    pub host: String,
    pub path: String,
    pub protocol: &'static str,
    /// The route's name, shared with the route (no copy per request).
    pub route: Option<Arc<str>>,
    pub target: Option<String>,
    pub status: u16,
    /// The gateway's error code when the gateway answered (`X-Nio-Error`).
    pub error: Option<&'static str>,
    pub attempts: u32,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Until the backend's response headers.
    pub upstream_ms: Option<f64>,
    /// Until the last byte of the response.
    pub duration_ms: f64,
    /// The subject of the verified client certificate (mutual TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// Who the caller is: the ApiKey's name or the JWT's subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// The W3C trace id sent to the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip)]
    pub started: Instant,
    /// Write an access-log line (the route's `accessLog`).
    #[serde(skip)]
    pub write_line: bool,
    /// Send a GatewayEvent (the route's event sampling).
    #[serde(skip)]
    pub emit_event: bool,
}

impl Record {
    /// The request's GatewayEvent, taking the record's strings (the
    /// record is not written after).
    fn into_event(self) -> nio_proto::v1::event::Kind {
        nio_proto::v1::event::Kind::Gateway(nio_proto::v1::GatewayEvent {
            route: self.route.as_deref().unwrap_or_default().to_string(),
            backend: String::new(),
            target: self.target.unwrap_or_default(),
            method: self.method,
            host: self.host,
            path: self.path,
            status: u32::from(self.status),
            duration_ms: self.duration_ms,
            upstream_ms: self.upstream_ms.unwrap_or(0.0),
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            client_ip: self.client.to_string(),
            consumer: self.consumer.unwrap_or_default(),
            request_id: self.request_id,
            error: self.error.unwrap_or_default().to_string(),
            trace_id: self.trace_id.unwrap_or_default(),
        })
    }
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

#[derive(Debug)]
pub struct AccessLog {
    /// `None` with `--access-log off` (records then only become events).
    tx: Option<mpsc::Sender<Box<Record>>>,
    metrics: Arc<Metrics>,
}

/// Records waiting for the writer before new ones are dropped.
const QUEUE: usize = 16_384;

impl AccessLog {
    /// Starts the writer (none when the log is off).
    pub async fn start(sink: &Sink, metrics: Arc<Metrics>) -> std::io::Result<AccessLog> {
        let out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = match sink {
            Sink::Off => return Ok(AccessLog { tx: None, metrics }),
            Sink::Stdout => Box::new(tokio::io::stdout()),
            Sink::File(path) => Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .await?,
            ),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_lines(rx, out));
        Ok(AccessLog {
            tx: Some(tx),
            metrics,
        })
    }

    /// Whether lines are written at all.
    pub fn writes_lines(&self) -> bool {
        self.tx.is_some()
    }

    pub fn send(&self, mut record: Box<Record>) {
        record.duration_ms = millis(record.started.elapsed());
        let Some(tx) = self.tx.as_ref().filter(|_| record.write_line) else {
            if record.emit_event {
                crate::events::emit(Record::into_event(*record));
            }
            return;
        };
        if record.emit_event {
            // Both: the line keeps the record, the event gets a copy.
            crate::events::emit(Record::into_event((*record).clone()));
        }
        if tx.try_send(record).is_err() {
            self.metrics
                .access_log_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

pub fn millis(d: std::time::Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

async fn write_lines(
    mut rx: mpsc::Receiver<Box<Record>>,
    out: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
) {
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = Vec::with_capacity(512);
    while let Some(record) = rx.recv().await {
        let mut next = Some(record);
        // Write what is queued, then flush once.
        while let Some(record) = next {
            line.clear();
            if serde_json::to_writer(&mut line, &record).is_ok() {
                line.push(b'\n');
                if out.write_all(&line).await.is_err() {
                    return;
                }
            }
            next = rx.try_recv().ok();
        }
        if out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
}
