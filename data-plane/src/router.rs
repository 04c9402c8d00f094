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

struct Entry<R> {
    prefix: String,
    name: String,
    route: Arc<R>,
}

impl<R> Clone for Entry<R> {
    fn clone(&self) -> Self {
        Entry {
            prefix: self.prefix.clone(),
            name: self.name.clone(),
            route: self.route.clone(),
        }
    }
}

impl<R> std::fmt::Debug for Entry<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.prefix, self.name)
    }
}

/// The routes of one host group: entries sorted longest prefix first, and a
/// trie of path segments over them, so a lookup walks the request path's
/// segments once instead of trying every prefix.
#[derive(Debug)]
struct Group<R> {
    /// Longest prefix first, then by route name.
    entries: Vec<Entry<R>>,
    root: Node,
}

/// One path segment. `exact`: the entry whose prefix ends here (`/a/b`);
/// `trailing`: the entry whose prefix ends here with a slash (`/a/b/`).
/// Both index `entries`; for equal prefixes the first entry (smallest route
/// name) wins.
#[derive(Debug, Default)]
struct Node {
    children: std::collections::BTreeMap<Box<str>, Node>,
    exact: Option<u32>,
    trailing: Option<u32>,
}

/// `/a/b` → (["a", "b"], false); `/a/b/` → (["a", "b"], true); `/` → ([], true).
fn prefix_segments(prefix: &str) -> (Vec<&str>, bool) {
    let body = prefix.strip_prefix('/').unwrap_or(prefix);
    let trailing = body.is_empty() || body.ends_with('/');
    let body = body.strip_suffix('/').unwrap_or(body);
    if prefix.len() <= 1 {
        return (Vec::new(), true);
    }
    (body.split('/').collect(), trailing)
}

impl<R> Group<R> {
    fn new(mut entries: Vec<Entry<R>>) -> Group<R> {
        entries.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut root = Node::default();
        for (i, e) in entries.iter().enumerate() {
            let (segments, trailing) = prefix_segments(&e.prefix);
            let mut node = &mut root;
            for seg in segments {
                node = node.children.entry(seg.into()).or_default();
            }
            let slot = if trailing {
                &mut node.trailing
            } else {
                &mut node.exact
            };
            slot.get_or_insert(i as u32);
        }
        Group { entries, root }
    }

    fn find(&self, path: &str) -> Option<Match<'_, R>> {
        // A short scan beats walking the trie for small groups (measured:
        // docs/benchmarks.md); both give the same answer.
        let i = if self.entries.len() <= LINEAR_MAX {
            self.scan(path)
        } else {
            self.walk(path)
        }?;
        let e = &self.entries[i];
        Some(Match {
            route: &e.route,
            prefix: &e.prefix,
        })
    }

    /// Longest prefix first: the first entry that matches.
    fn scan(&self, path: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| prefix_matches(&e.prefix, path))
    }

    /// The longest matching prefix by the trie: deeper beats shallower; at
    /// the same depth `/a/` beats `/a` (it is longer) when the path goes on.
    fn walk(&self, path: &str) -> Option<usize> {
        let rest = path.strip_prefix('/')?;
        let mut best = self.root.trailing;
        let mut node = &self.root;
        let mut segments = rest.split('/').peekable();
        while let Some(seg) = segments.next() {
            let Some(child) = node.children.get(seg) else {
                break;
            };
            node = child;
            if node.exact.is_some() {
                best = node.exact;
            }
            if segments.peek().is_some() && node.trailing.is_some() {
                best = node.trailing;
            }
        }
        best.map(|i| i as usize)
    }
}

/// Groups up to this size are scanned instead of walked.
const LINEAR_MAX: usize = 16;

/// Segment-aware prefix match.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// Which group a host pattern belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Exact(String),
    /// The suffix, e.g. `.example.com` for `*.example.com`.
    Wildcard(String),
    Any,
}

fn keys(hosts: &[String]) -> Vec<Key> {
    if hosts.is_empty() {
        return vec![Key::Any];
    }
    let mut keys: Vec<Key> = hosts
        .iter()
        .map(|h| {
            let h = h.to_ascii_lowercase();
            match h.strip_prefix('*') {
                Some(suffix) => Key::Wildcard(suffix.to_string()),
                None => Key::Exact(h),
            }
        })
        .collect();
    keys.dedup();
    keys
}

/// One route as the router sees it.
#[derive(Debug)]
pub struct RouteEntry<'a, R> {
    pub name: &'a str,
    /// No hosts: any host.
    pub hosts: &'a [String],
    /// No paths: `/`.
    pub paths: &'a [String],
    pub route: Arc<R>,
}

impl<R> RouteEntry<'_, R> {
    fn entries(&self) -> impl Iterator<Item = Entry<R>> + '_ {
        let root: &[String] = &[];
        let paths = if self.paths.is_empty() {
            root
        } else {
            self.paths
        };
        let default = (self.paths.is_empty()).then(|| "/".to_string());
        paths.iter().cloned().chain(default).map(|prefix| Entry {
            prefix,
            name: self.name.to_string(),
            route: self.route.clone(),
        })
    }
}

/// Immutable and cheap to derive from: groups are shared (`Arc`) between a
/// router and the one [`Router::update`] makes from it, so a change to one
/// route rebuilds only the groups of that route's hosts.
#[derive(Debug)]
pub struct Router<R> {
    exact: imbl::HashMap<String, Arc<Group<R>>>,
    /// (".example.com", group), longest suffix first.
    wildcard: Vec<(String, Arc<Group<R>>)>,
    any_host: Arc<Group<R>>,
}

impl<R> Clone for Router<R> {
    fn clone(&self) -> Self {
        Router {
            exact: self.exact.clone(),
            wildcard: self.wildcard.clone(),
            any_host: self.any_host.clone(),
        }
    }
}

impl<R> Default for Router<R> {
    fn default() -> Self {
        Router {
            exact: imbl::HashMap::new(),
            wildcard: Vec::new(),
            any_host: Arc::new(Group::new(Vec::new())),
        }
    }
}

impl<R> Router<R> {
    /// A router for these routes, built from scratch.
    pub fn build<'a>(routes: impl IntoIterator<Item = RouteEntry<'a, R>>) -> Router<R>
    where
        R: 'a,
    {
        Router::default().update(&[], routes)
    }

    fn group(&self, key: &Key) -> Option<&Arc<Group<R>>> {
        match key {
            Key::Exact(h) => self.exact.get(h),
            Key::Wildcard(s) => self.wildcard.iter().find(|(w, _)| w == s).map(|(_, g)| g),
            Key::Any => Some(&self.any_host),
        }
    }

    /// A new router with the routes named in `removed` (with the hosts they
    /// had) taken out and `added` put in. A changed route is in both.
    pub fn update<'a>(
        &self,
        removed: &[(&str, &[String])],
        added: impl IntoIterator<Item = RouteEntry<'a, R>>,
    ) -> Router<R>
    where
        R: 'a,
    {
        let mut touched: HashMap<Key, (Vec<&str>, Vec<Entry<R>>)> = HashMap::new();
        for (name, hosts) in removed {
            for key in keys(hosts) {
                touched.entry(key).or_default().0.push(name);
            }
        }
        for route in added {
            for key in keys(route.hosts) {
                touched.entry(key).or_default().1.extend(route.entries());
            }
        }
        let mut next = self.clone();
        for (key, (gone, mut entries)) in touched {
            if let Some(old) = self.group(&key) {
                entries.extend(
                    old.entries
                        .iter()
                        .filter(|e| !gone.contains(&e.name.as_str()))
                        .cloned(),
                );
            }
            let group = Arc::new(Group::new(entries));
            let empty = group.entries.is_empty();
            match key {
                Key::Exact(h) if empty => {
                    next.exact.remove(&h);
                }
                Key::Exact(h) => {
                    next.exact.insert(h, group);
                }
                Key::Wildcard(s) => {
                    next.wildcard.retain(|(w, _)| *w != s);
                    if !empty {
                        next.wildcard.push((s, group));
                    }
                }
                Key::Any => next.any_host = group,
            }
        }
        next.wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        next
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
        let owned: Vec<(Vec<String>, Vec<String>)> = routes
            .iter()
            .map(|(_, h, p)| {
                (
                    h.iter().map(|s| s.to_string()).collect(),
                    p.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect();
        Router::build(
            routes
                .iter()
                .zip(&owned)
                .map(|((name, _, _), (hosts, paths))| RouteEntry {
                    name,
                    hosts,
                    paths,
                    route: Arc::new(name.to_string()),
                }),
        )
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
    fn updates_equal_a_rebuild() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = router(&[
            ("a", &["x.test"], &["/a"]),
            ("b", &["x.test", "*.test"], &["/b"]),
            ("c", &[], &["/c"]),
        ]);
        // b moves to another host and path, c goes away, d arrives.
        let (bh, bp, dh) = (
            strings(&["y.test"]),
            strings(&["/b2"]),
            strings(&["*.test"]),
        );
        let old_b = strings(&["x.test", "*.test"]);
        let updated = r.update(
            &[("b", &old_b), ("c", &[])],
            [
                RouteEntry {
                    name: "b",
                    hosts: &bh,
                    paths: &bp,
                    route: Arc::new("b".to_string()),
                },
                RouteEntry {
                    name: "d",
                    hosts: &dh,
                    paths: &[],
                    route: Arc::new("d".to_string()),
                },
            ],
        );
        let rebuilt = router(&[
            ("a", &["x.test"], &["/a"]),
            ("b", &["y.test"], &["/b2"]),
            ("d", &["*.test"], &[]),
        ]);
        for (host, path) in [
            ("x.test", "/a"),
            ("x.test", "/b"),
            ("y.test", "/b2"),
            ("z.test", "/c"),
            ("z.test", "/any"),
            ("q.org", "/c"),
        ] {
            assert_eq!(
                find(&updated, host, path),
                find(&rebuilt, host, path),
                "{host}{path}"
            );
        }
        assert_eq!(find(&updated, "y.test", "/b2"), Some("b"));
        assert_eq!(find(&updated, "x.test", "/b"), Some("d"));
        assert_eq!(
            find(&r, "x.test", "/b"),
            Some("b"),
            "the old router is unchanged"
        );
    }

    /// The trie agrees with the plain rule (longest matching prefix, then
    /// name) on every combination of these prefixes and paths.
    #[test]
    fn trie_matches_the_linear_rule() {
        let prefixes = [
            "/", "/a", "/a/", "/a/b", "/a/b/", "/ab", "/a/b/c", "//", "/x/",
        ];
        let paths = [
            "/", "/a", "/a/", "/a/b", "/a/bc", "/a/b/", "/a/b/c/d", "/ab", "/abc", "//", "//z",
            "/x", "/x/", "/x/y", "", "*",
        ];
        for n in 1..=prefixes.len() {
            for start in 0..prefixes.len() {
                let chosen: Vec<&str> = prefixes
                    .iter()
                    .cycle()
                    .skip(start)
                    .take(n)
                    .copied()
                    .collect();
                let entries = chosen
                    .iter()
                    .enumerate()
                    .map(|(i, p)| Entry {
                        prefix: p.to_string(),
                        name: format!("r{i}"),
                        route: Arc::new(i),
                    })
                    .collect();
                let group = Group::new(entries);
                for path in paths {
                    let linear = group
                        .entries
                        .iter()
                        .find(|e| prefix_matches(&e.prefix, path))
                        .map(|e| &e.prefix);
                    let trie = group.find(path).map(|m| m.prefix);
                    assert_eq!(
                        trie,
                        linear.map(String::as_str),
                        "prefixes {chosen:?}, path {path:?}"
                    );
                }
            }
        }
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
