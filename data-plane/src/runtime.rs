//! The compiled, immutable form of one snapshot, and the slot the proxy
//! reads it from.
//!
//! [`compile`] turns a validated [`Config`] into a [`Runtime`] off the
//! request path; the sync task then swaps it into the [`RuntimeSlot`]
//! atomically. A request loads the current `Arc<Runtime>` once and keeps it
//! to the end, so a swap never changes the rules under a request in flight.

use crate::metrics::RouteStats;
use crate::plugins::{Chain, CompiledKey, CompiledVerifier};
use crate::route::CompiledRoute;
use crate::router::{RouteEntry, Router};
use crate::tls::{client_auth_routes, BackendTlsSources, ServerTls};
use crate::upstream::BackendPool;
use arc_swap::ArcSwapOption;
use nio_proto::model::{AnyResource, ClientAuth, Config, Kind};
use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

/// Where the current runtime lives; `None` until the first configuration.
pub type RuntimeSlot = ArcSwapOption<Runtime>;

#[derive(Debug)]
pub struct Runtime {
    pub revision: u64,
    pub hash: String,
    pub router: Router<CompiledRoute>,
    pub backends: imbl::HashMap<String, Arc<BackendPool>>,
    /// By name (ordered: at 100,000 routes a B-tree takes a quarter of
    /// the memory of a hash trie).
    pub routes: imbl::OrdMap<Arc<str>, Arc<CompiledRoute>>,
    pub route_count: usize,
    /// API keys by client id.
    pub api_keys: imbl::HashMap<String, Arc<CompiledKey>>,
    /// JwtVerifiers by name; one is reused while its spec is unchanged, so
    /// its JWKS cache and refresh task survive swaps.
    pub jwt_verifiers: imbl::HashMap<String, Arc<CompiledVerifier>>,
    /// The GlobalConfig's plugins.
    pub global: Arc<Chain>,
    /// Certificates and client authentication for the HTTPS listener;
    /// `None` without any certificate to serve.
    pub tls: Option<Arc<ServerTls>>,
}

impl Runtime {
    /// Each route's counters, in name order.
    pub fn route_stats(&self) -> impl Iterator<Item = (&str, &RouteStats)> {
        self.routes.iter().map(|(name, r)| (&**name, &*r.stats))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot compile revision {revision}: {reason}")]
pub struct CompileError {
    pub revision: u64,
    pub reason: String,
}

/// Builds the runtime for `config`.
///
/// With a `previous` runtime and the list of resources that `changed` since
/// it (a delta), only those are recompiled: the rest, the backend pools
/// (with their load-balancing position) and the router groups of untouched
/// hosts are shared with `previous`, so a one-route change costs the same
/// with 10 routes or 100,000. Without (a full snapshot) everything is built,
/// still reusing pools whose spec did not change.
pub fn compile(
    config: &Config,
    revision: u64,
    hash: &str,
    previous: Option<&Runtime>,
    changed: Option<&[(Kind, String)]>,
) -> Result<Runtime, CompileError> {
    let err = |reason: String| CompileError { revision, reason };
    let empty = Runtime {
        revision: 0,
        hash: String::new(),
        router: Router::default(),
        backends: imbl::HashMap::new(),
        routes: imbl::OrdMap::new(),
        route_count: 0,
        api_keys: imbl::HashMap::new(),
        jwt_verifiers: imbl::HashMap::new(),
        global: Arc::default(),
        tls: None,
    };
    // A full build is an update of an empty runtime with everything changed.
    let (base, changed): (&Runtime, Vec<(Kind, String)>) = match (previous, changed) {
        (Some(p), Some(c)) => (p, c.to_vec()),
        _ => (
            &empty,
            config
                .iter()
                .map(|r| (r.kind(), r.name().to_string()))
                .collect(),
        ),
    };
    let reuse_from = previous.unwrap_or(&empty);

    let certificates_changed = changed.iter().any(|(k, _)| *k == Kind::Certificate);
    // Backends to rebuild: the changed ones, and with a Certificate
    // changed, those using one (checked against the pool's sources below).
    let mut backend_names: BTreeSet<&String> = changed
        .iter()
        .filter(|(k, _)| *k == Kind::Backend)
        .map(|(_, n)| n)
        .collect();
    if certificates_changed {
        backend_names.extend(config.iter().filter_map(|r| match r {
            AnyResource::Backend(b) if b.spec.tls != Default::default() => Some(&b.metadata.name),
            _ => None,
        }));
    }
    let mut backends = base.backends.clone();
    let mut changed_pools = HashSet::new();
    for name in backend_names {
        match config.get(Kind::Backend, name) {
            Some(AnyResource::Backend(b)) => {
                let bad = |e: String| err(format!("backend \"{name}\": {e}"));
                let sources = BackendTlsSources::resolve(config, &b.spec.tls).map_err(bad)?;
                let reused = reuse_from
                    .backends
                    .get(name)
                    .filter(|pool| pool.spec == b.spec && pool.tls_sources == sources)
                    .cloned();
                let pool = match reused {
                    Some(pool) => pool,
                    None => {
                        changed_pools.insert(name.clone());
                        BackendPool::new(name, &b.spec, sources).map_err(bad)?
                    }
                };
                backends.insert(name.clone(), pool);
            }
            _ => {
                changed_pools.insert(name.clone());
                backends.remove(name);
            }
        }
    }

    // Routes to recompile: the changed ones and those on a replaced pool.
    let mut route_names: BTreeSet<String> = changed
        .iter()
        .filter(|(k, _)| *k == Kind::Route)
        .map(|(_, n)| n.clone())
        .collect();
    if !changed_pools.is_empty() {
        route_names.extend(
            base.routes
                .values()
                .filter(|r| changed_pools.contains(&r.backend.name))
                .map(|r| r.name.to_string()),
        );
    }

    let mut routes = base.routes.clone();
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for name in &route_names {
        if let Some(old) = base.routes.get(name.as_str()) {
            removed.push(old.clone());
        }
        match config.get(Kind::Route, name) {
            Some(AnyResource::Route(r)) => {
                let backend = backends.get(&r.spec.backend).cloned().ok_or_else(|| {
                    err(format!(
                        "route \"{name}\": backend \"{}\" does not exist",
                        r.spec.backend
                    ))
                })?;
                // A recompiled route keeps its name (shared with the maps
                // and the router) and its counters.
                let (name, stats) = match reuse_from.routes.get(name.as_str()) {
                    Some(old) => (old.name.clone(), old.stats.clone()),
                    None => (name.as_str().into(), Arc::default()),
                };
                let route = Arc::new(
                    CompiledRoute::new(r, name.clone(), backend, stats)
                        .map_err(|e| err(format!("route \"{name}\": {e}")))?,
                );
                routes.insert(name, route.clone());
                added.push(route);
            }
            _ if changed.iter().any(|(k, n)| *k == Kind::Route && n == name) => {
                routes.remove(name.as_str());
            }
            // On a changed backend but not in the configuration given: a
            // delta must come with the routes on the backends it changes.
            _ => {
                return Err(err(format!(
                    "route \"{name}\" uses a changed backend but was not decoded"
                )))
            }
        }
    }
    let removed_keys: Vec<(&str, &[String])> = removed
        .iter()
        .map(|r| (&*r.name, r.hosts.as_slice()))
        .collect();
    let router = base.router.update(
        &removed_keys,
        added.iter().map(|r| RouteEntry {
            name: r.name.clone(),
            hosts: &r.hosts,
            paths: &r.paths,
            exact: r.exact,
            conditions: r.conditions(),
            route: r.clone(),
        }),
    );
    // The HTTPS side changes with the Certificates, and with routes that
    // ask (or asked) for client certificates.
    let client_auth = |r: &CompiledRoute| r.tls.client_auth != ClientAuth::None;
    let tls = if certificates_changed
        || removed.iter().chain(&added).any(|r| client_auth(r))
        || previous.is_none()
    {
        ServerTls::build(config, &client_auth_routes(routes.values().map(|r| &**r)))
            .map_err(err)?
            .map(Arc::new)
    } else {
        base.tls.clone()
    };
    let mut api_keys = base.api_keys.clone();
    let mut jwt_verifiers = base.jwt_verifiers.clone();
    let mut global = base.global.clone();
    for (kind, name) in &changed {
        match (kind, config.get(*kind, name)) {
            (Kind::ApiKey, Some(AnyResource::ApiKey(k))) => {
                let key =
                    CompiledKey::new(k).map_err(|e| err(format!("apikey \"{name}\": {e}")))?;
                api_keys.insert(name.clone(), Arc::new(key));
            }
            (Kind::ApiKey, _) => {
                api_keys.remove(name);
            }
            (Kind::JwtVerifier, Some(AnyResource::JwtVerifier(v))) => {
                let reused = reuse_from
                    .jwt_verifiers
                    .get(name)
                    .filter(|old| old.spec == v.spec)
                    .cloned();
                let verifier = match reused {
                    Some(verifier) => verifier,
                    None => Arc::new(
                        CompiledVerifier::new(name, &v.spec)
                            .map_err(|e| err(format!("jwtverifier \"{name}\": {e}")))?,
                    ),
                };
                jwt_verifiers.insert(name.clone(), verifier);
            }
            (Kind::JwtVerifier, _) => {
                jwt_verifiers.remove(name);
            }
            (Kind::GlobalConfig, Some(AnyResource::GlobalConfig(g))) => {
                global = Arc::new(
                    Chain::build(&g.spec.plugins, "spec.plugins", "global")
                        .map_err(|e| err(format!("globalconfig \"{name}\": {e}")))?,
                );
            }
            (Kind::GlobalConfig, _) => global = Arc::default(),
            _ => {}
        }
    }
    // Pools this runtime no longer uses stop their health checks; it is
    // installed as soon as it is returned.
    for name in &changed_pools {
        if let Some(old) = reuse_from.backends.get(name) {
            if !backends.get(name).is_some_and(|new| Arc::ptr_eq(new, old)) {
                old.retire();
            }
        }
    }
    Ok(Runtime {
        revision,
        hash: hash.to_string(),
        router,
        backends,
        route_count: routes.len(),
        routes,
        api_keys,
        jwt_verifiers,
        global,
        tls,
    })
}
