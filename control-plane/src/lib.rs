//! # nio-control-plane
//!
//! Owns Nio's configuration and distributes it to the fleet.
//!
//! - [`store`]: resources in sled, the revision counter, durable writes.
//! - [`admin`]: the authenticated admin API (HTTP, JSON/YAML).
//! - [`publisher`]: coalesces revisions and computes, once per data-plane
//!   group (same labels), the selected resources and the delta.
//! - [`sync`]: the `ConfigSync` gRPC service that pushes deltas or snapshots
//!   to data planes and takes their ACK/NACKs; version checks, admission.
//! - [`fleet`]: what is known of each data plane, for the admin API.
//! - [`events`]: the event log (sequence numbers, retention) and the feed.
//! - [`exporters`]: EventExporter resources: webhooks fed from the log.
//! - [`quotas`]: API keys' daily and monthly quotas counted for the fleet,
//!   throttle shares.
//! - [`telemetry`]: data-plane reports, the event feed service, fleet-wide
//!   metrics.
//! - [`transfer`]: whole-configuration export and import (one transaction).
//! - [`otoroshi`]: converts an Otoroshi export into Nio resources, with a report.
//! - [`tokens`]: admin and join tokens (created on first start, never logged).
//! - [`pki`]: the CA for the gRPC listener and data-plane client
//!   certificates (enrollment, renewal, revocation).
//! - [`server`]: wires them together: [`server::run`] serves until shutdown.
//!
//! The binaries in `src/bin` only parse flags and call into this library.

pub mod admin;
pub mod apikeys;
pub mod events;
pub mod exporters;
pub mod fleet;
pub mod otoroshi;
pub mod pki;
pub mod publisher;
pub mod quotas;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tokens;
pub mod transfer;
