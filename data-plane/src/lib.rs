//! # nio-data-plane
//!
//! A stateless HTTP proxy configured entirely by snapshots streamed from the
//! control plane.
//!
//! - [`sync`]: the stream to the control plane; applies snapshots, ACK/NACK.
//! - [`identity`]: the data plane's client certificate (enrollment,
//!   renewal) toward a TLS control plane.
//! - [`runtime`]: compiles a snapshot into an immutable [`runtime::Runtime`]
//!   and holds the current one in an `ArcSwap` slot.
//! - [`router`]: host and path matching, most specific first.
//! - [`route`]: a Route compiled for the request path (conditions, rewrites,
//!   header rules).
//! - [`upstream`]: backend pools: load balancing, circuit breakers,
//!   outlier detection, health checks.
//! - [`plugins`]: the plugin pipeline (API keys, JWT, IP lists, CORS…).
//! - [`quota`]: API keys' quotas and rate limits, counted across the fleet.
//! - [`proxy`]: the request path, retries, upgrades, and the single
//!   error-to-response mapping.
//! - [`body`]: streamed bodies with idle timeouts and byte counts.
//! - [`events`]: gateway events, alerts and counters reported to the
//!   control plane (`Telemetry.Report`), buffered while it is away.
//! - [`forwarded`]: `X-Forwarded-*`/`Forwarded` and trusted proxies.
//! - [`access_log`]: one JSON line per request, written off the request path.
//! - [`cache`]: the last good snapshot on disk, for starts without a
//!   control plane.
//! - [`metrics`]: counters for `/metrics`.
//! - [`server`]: listeners, ops endpoints and the shutdown drain.
//! - [`front`]: our own HTTP/1.1 server for requests without a body
//!   (hyper serves the rest).
//! - [`stall`]: cutting clients that stop reading.
//! - [`tls`]: TLS termination by SNI, client certificates, and TLS toward
//!   backends.
//! - [`validate`]: refusing malformed and ambiguous requests before routing.
//!
//! The request path never waits on the control plane and takes no global
//! lock: it loads the current runtime (one atomic load) and works from that.

/// The methods of `tokio::io::AsyncWrite` for a wrapper whose writes go
/// straight to its field `$io` (the wrappers only change reads).
macro_rules! write_through {
    ($io:ident) => {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.get_mut().$io).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.get_mut().$io).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.$io.is_write_vectored()
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().$io).poll_flush(cx)
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.get_mut().$io).poll_shutdown(cx)
        }
    };
}

pub mod access_log;
pub mod body;
pub mod cache;
pub mod events;
pub mod forwarded;
pub mod front;
pub mod identity;
pub mod memory;
pub mod metrics;
pub mod plugins;
pub mod proxy;
pub mod quota;
pub mod route;
pub mod router;
pub mod runtime;
pub mod server;
pub mod stall;
pub mod sync;
pub mod tls;
pub mod upstream;
pub mod validate;
