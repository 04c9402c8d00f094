//! The compiled, immutable form of one snapshot, and the slot the proxy
//! reads it from.
//!
//! [`compile`] turns a validated [`Config`] into a [`Runtime`] off the
//! request path; the sync task then swaps it into the [`RuntimeSlot`]
//! atomically. A request loads the current `Arc<Runtime>` once and keeps it
//! to the end, so a swap never changes the rules under a request in flight.

use crate::metrics::{Metrics, RouteStats};
use crate::router::{Router, RouterBuilder};
use crate::upstream::BackendPool;
use arc_swap::ArcSwapOption;
use nio_proto::model::Config;
use std::collections::HashMap;
use std::sync::Arc;

/// Where the current runtime lives; `None` until the first configuration.
pub type RuntimeSlot = ArcSwapOption<Runtime>;

#[derive(Debug)]
pub struct CompiledRoute {
    pub name: String,
    /// The Route's resourceVersion this was compiled from.
    pub version: u64,
    pub backend: Arc<BackendPool>,
    pub strip_path: bool,
    pub stats: Arc<RouteStats>,
}

#[derive(Debug)]
pub struct Runtime {
    pub revision: u64,
    pub hash: String,
    pub router: Router<CompiledRoute>,
    pub backends: HashMap<String, Arc<BackendPool>>,
    pub routes: HashMap<String, Arc<CompiledRoute>>,
    pub route_count: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot compile revision {revision}: {reason}")]
pub struct CompileError {
    pub revision: u64,
    pub reason: String,
}

/// Builds the runtime for `config`. Backend pools whose spec did not change
/// since `previous` are reused, keeping their load-balancing position, and
/// so are compiled routes whose version and pool did not change: after a
/// one-route delta only the router's index is rebuilt.
pub fn compile(
    config: &Config,
    revision: u64,
    hash: &str,
    previous: Option<&Runtime>,
    metrics: &Metrics,
) -> Result<Runtime, CompileError> {
    let err = |reason: String| CompileError { revision, reason };
    let mut backends = HashMap::new();
    for b in config.backends() {
        let name = &b.metadata.name;
        let reused = previous
            .and_then(|p| p.backends.get(name))
            .filter(|pool| pool.spec == b.spec)
            .cloned();
        let pool = match reused {
            Some(pool) => pool,
            None => Arc::new(
                BackendPool::new(name, &b.spec)
                    .map_err(|e| err(format!("backend \"{name}\": {e}")))?,
            ),
        };
        backends.insert(name.clone(), pool);
    }
    let mut router = RouterBuilder::default();
    let mut routes = HashMap::with_capacity(previous.map_or(0, |p| p.routes.len()));
    for r in config.routes() {
        let name = &r.metadata.name;
        let backend = backends.get(&r.spec.backend).cloned().ok_or_else(|| {
            err(format!(
                "route \"{name}\": backend \"{}\" does not exist",
                r.spec.backend
            ))
        })?;
        let version = r.resource_version();
        let reused = previous
            .and_then(|p| p.routes.get(name))
            .filter(|c| c.version == version && Arc::ptr_eq(&c.backend, &backend))
            .cloned();
        let route = match reused {
            Some(c) => c,
            None => Arc::new(CompiledRoute {
                name: name.clone(),
                version,
                backend,
                strip_path: r.spec.frontend.strip_path,
                stats: metrics.route(name),
            }),
        };
        router.add(
            name,
            &r.spec.frontend.hosts,
            &r.spec.frontend.paths,
            route.clone(),
        );
        routes.insert(name.clone(), route);
    }
    let route_count = routes.len();
    Ok(Runtime {
        revision,
        hash: hash.to_string(),
        router: router.build(),
        backends,
        routes,
        route_count,
    })
}
