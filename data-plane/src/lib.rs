//! # nio-data-plane
//!
//! A stateless HTTP proxy configured entirely by snapshots streamed from the
//! control plane.
//!
//! - [`sync`]: the stream to the control plane; applies snapshots, ACK/NACK.
//! - [`runtime`]: compiles a snapshot into an immutable [`runtime::Runtime`]
//!   and holds the current one in an `ArcSwap` slot.
//! - [`router`]: host and path matching, most specific first.
//! - [`upstream`]: backend pools and load balancing.
//! - [`proxy`]: the request path and the single error-to-response mapping.
//! - [`cache`]: the last good snapshot on disk, for starts without a
//!   control plane.
//! - [`metrics`]: counters for `/metrics`.
//! - [`server`]: listeners, ops endpoints and the shutdown drain.
//!
//! The request path never waits on the control plane and takes no lock:
//! it loads the current runtime (one atomic load) and works from that.

pub mod cache;
pub mod metrics;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod server;
pub mod sync;
pub mod upstream;
