//! # nio-proto
//!
//! The one definition of what Nio's two planes exchange:
//!
//! - [`v1`]: the gRPC protocol generated from `proto/nio/v1/*.proto`
//!   (compiled by protox at build time, no system `protoc`).
//! - [`model`]: the resource types users write (`Route`, `Backend`, …), their
//!   validation, and [`model::Config`], the set of resources at one revision.
//! - [`quota`]: the calendar windows quotas are counted in.
//! - [`snapshot`]: conversion between a [`model::Config`] and the wire
//!   [`v1::Snapshot`], and the content hash both planes agree on.
//!
//! This crate does no IO. The control plane validates admin writes with the
//! same functions the data plane runs when it compiles a snapshot, so a
//! configuration the control plane accepted is one every data plane accepts.

pub mod model;
pub mod quota;
pub mod snapshot;

/// Generated protobuf and gRPC code for package `nio.v1`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("nio.v1");
}

/// API group and version of every resource (`apiVersion` field).
pub const API_VERSION: &str = "nio.dev/v1";

/// Software version shared by both planes; data planes announce it in `Hello`.
/// Upper bounds (milliseconds) of the request-latency histogram data
/// planes keep and report (`RouteMetrics.latency_buckets`); a last,
/// unbounded bucket follows.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10000];

/// Writes the samples of one route's latency histogram in Prometheus text
/// format: `cumulative` counts per bucket of [`LATENCY_BUCKETS_MS`] (then
/// +Inf) and the sum of durations in microseconds.
pub fn write_latency_histogram(
    out: &mut String,
    metric: &str,
    route: &str,
    cumulative: &[u64],
    sum_us: u64,
) {
    use std::fmt::Write;
    for (i, count) in cumulative.iter().enumerate() {
        let le = LATENCY_BUCKETS_MS
            .get(i)
            .map_or("+Inf".to_string(), |ms| format!("{}", *ms as f64 / 1000.0));
        let _ = writeln!(
            out,
            "{metric}_bucket{{route=\"{route}\",le=\"{le}\"}} {count}"
        );
    }
    let _ = writeln!(
        out,
        "{metric}_sum{{route=\"{route}\"}} {}\n{metric}_count{{route=\"{route}\"}} {}",
        sum_us as f64 / 1e6,
        cumulative.last().copied().unwrap_or(0)
    );
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
