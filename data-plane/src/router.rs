//! Host and path matching: which route serves a request.
//!
//! Lookup order, most specific first, falling through when a group has no
//! path that matches:
//!
//! 1. routes listing the exact host (hash lookup, case-insensitive, port
//!    ignored);
//! 2. routes listing a wildcard `*.suffix` that matches, longest suffix first
//!    (`*.eu.example.com` before `*.example.com`);
//! 3. routes that list no host at all.
//!
//! Within a group the longest path prefix wins; prefixes match on segment
//! boundaries (`/orders` matches `/orders` and `/orders/1`, not `/ordersx`).
//! Ties (the same host and prefix in two routes) go to the route whose name
//! sorts first, so the outcome never depends on arrival order.

use std::collections::HashMap;
use std::sync::Arc;

/// What a match yields: the route and the prefix that matched (for strip-path).
#[derive(Debug)]
pub struct Match<'a, R> {
    pub route: &'a Arc<R>,
    pub prefix: &'a str,
}

#[derive(Debug)]
struct Entry<R> {
    prefix: String,
    name: String,
    route: Arc<R>,
}

#[derive(Debug)]
struct Group<R> {
    /// Longest prefix first, then by route name.
    entries: Vec<Entry<R>>,
}

impl<R> Default for Group<R> {
    fn default() -> Self {
        Group {
            entries: Vec::new(),
        }
    }
}

impl<R> Group<R> {
    fn sort(&mut self) {
        self.entries.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| a.name.cmp(&b.name))
        });
    }

    fn find(&self, path: &str) -> Option<Match<'_, R>> {
        self.entries
            .iter()
            .find(|e| prefix_matches(&e.prefix, path))
            .map(|e| Match {
                route: &e.route,
                prefix: &e.prefix,
            })
    }
}

/// Segment-aware prefix match.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

#[derive(Debug)]
pub struct Router<R> {
    exact: HashMap<String, Group<R>>,
    /// (".example.com", group), longest suffix first.
    wildcard: Vec<(String, Group<R>)>,
    any_host: Group<R>,
}

impl<R> Default for Router<R> {
    fn default() -> Self {
        Router {
            exact: HashMap::new(),
            wildcard: Vec::new(),
            any_host: Group::default(),
        }
    }
}

/// Builds a [`Router`]; routes are added in any order.
#[derive(Debug)]
pub struct RouterBuilder<R> {
    router: Router<R>,
}

impl<R> Default for RouterBuilder<R> {
    fn default() -> Self {
        RouterBuilder {
            router: Router::default(),
        }
    }
}

impl<R> RouterBuilder<R> {
    /// Adds a route for every (host, path) pair; no hosts means any host,
    /// no paths means `/`.
    pub fn add(&mut self, name: &str, hosts: &[String], paths: &[String], route: Arc<R>) {
        let root = ["/".to_string()];
        let paths = if paths.is_empty() { &root[..] } else { paths };
        let push = |group: &mut Group<R>| {
            for path in paths {
                group.entries.push(Entry {
                    prefix: path.clone(),
                    name: name.to_string(),
                    route: route.clone(),
                });
            }
        };
        let r = &mut self.router;
        if hosts.is_empty() {
            push(&mut r.any_host);
        }
        for host in hosts {
            let host = host.to_ascii_lowercase();
            match host.strip_prefix('*') {
                Some(suffix) => {
                    let i = match r.wildcard.iter().position(|(s, _)| s == suffix) {
                        Some(i) => i,
                        None => {
                            r.wildcard.push((suffix.to_string(), Group::default()));
                            r.wildcard.len() - 1
                        }
                    };
                    push(&mut r.wildcard[i].1);
                }
                None => push(r.exact.entry(host).or_default()),
            }
        }
    }

    pub fn build(mut self) -> Router<R> {
        let r = &mut self.router;
        r.exact.values_mut().for_each(Group::sort);
        r.wildcard.iter_mut().for_each(|(_, g)| g.sort());
        r.wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        r.any_host.sort();
        self.router
    }
}

impl<R> Router<R> {
    /// `host` is the Host header or :authority (a port is ignored).
    pub fn find(&self, host: &str, path: &str) -> Option<Match<'_, R>> {
        let host = strip_port(host);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(m) = self.exact.get(host).and_then(|g| g.find(path)) {
            return Some(m);
        }
        for (suffix, group) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(m) = group.find(path) {
                    return Some(m);
                }
            }
        }
        self.any_host.find(path)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &[&str], &[&str])]) -> Router<String> {
        let mut b = RouterBuilder::default();
        for (name, hosts, paths) in routes {
            let hosts: Vec<String> = hosts.iter().map(|s| s.to_string()).collect();
            let paths: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
            b.add(name, &hosts, &paths, Arc::new(name.to_string()));
        }
        b.build()
    }

    fn find<'a>(r: &'a Router<String>, host: &str, path: &str) -> Option<&'a str> {
        r.find(host, path).map(|m| m.route.as_str())
    }

    #[test]
    fn precedence() {
        let r = router(&[
            ("exact-orders", &["api.example.com"], &["/orders"]),
            ("exact-root", &["api.example.com"], &["/"]),
            ("wild", &["*.example.com"], &["/"]),
            ("wild-eu", &["*.eu.example.com"], &["/"]),
            ("any", &[], &["/status"]),
        ]);
        assert_eq!(
            find(&r, "api.example.com", "/orders/1"),
            Some("exact-orders")
        );
        assert_eq!(
            find(&r, "API.example.com:8080", "/orders"),
            Some("exact-orders")
        );
        assert_eq!(find(&r, "api.example.com", "/ordersx"), Some("exact-root"));
        assert_eq!(find(&r, "shop.example.com", "/x"), Some("wild"));
        assert_eq!(find(&r, "a.b.eu.example.com", "/x"), Some("wild-eu"));
        assert_eq!(find(&r, "example.com", "/x"), None);
        assert_eq!(find(&r, "other.org", "/status"), Some("any"));
        assert_eq!(find(&r, "other.org", "/"), None);
    }

    #[test]
    fn host_groups_fall_through_and_ties_are_deterministic() {
        let r = router(&[
            ("b", &[], &["/api"]),
            ("a", &[], &["/api"]),
            ("h", &["h.test"], &["/only"]),
        ]);
        assert_eq!(find(&r, "h.test", "/api/x"), Some("a"));
        assert_eq!(find(&r, "h.test", "/only"), Some("h"));
    }

    #[test]
    fn segment_prefixes() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/a", "/a"));
        assert!(prefix_matches("/a", "/a/b"));
        assert!(!prefix_matches("/a", "/ab"));
        assert!(prefix_matches("/a/", "/a/b"));
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("h:80"), "h");
    }
}
