//! Host and path matching: which route serves a request.
//!
//! Lookup order, most specific first, falling through when a group has no
//! route that matches:
//!
//! 1. routes listing the exact host (hash lookup, case-insensitive, port
//!    ignored);
//! 2. routes listing a wildcard `*.suffix` that matches, longest suffix first
//!    (`*.eu.example.com` before `*.example.com`);
//! 3. routes that list no host at all.
//!
//! Within a group, of the routes whose path matches and whose method,
//! header and query conditions hold (checked by the caller's `accept`), the
//! winner is, in order: the one whose path has more segments; a path ending
//! in `/` over one that does not; an exact path over a prefix; more literal
//! segments over `:param` ones; more conditions (methods, headers, query);
//! the name that sorts first. So the outcome never depends on arrival order.
//!
//! Prefixes match on segment boundaries (`/orders` matches `/orders` and
//! `/orders/1`, not `/ordersx`). Paths are matched as sent, without
//! percent-decoding.

use nio_proto::model::{PathPattern, Segment};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What a match yields: the route and the path pattern that matched (for
/// strip-path and rewrites).
#[derive(Debug)]
pub struct Match<'a, R> {
    pub route: &'a Arc<R>,
    pub pattern: &'a PathPattern,
}

struct Entry<R> {
    pattern: Arc<PathPattern>,
    exact: bool,
    conditions: u32,
    name: Arc<str>,
    route: Arc<R>,
}

impl<R> Clone for Entry<R> {
    fn clone(&self) -> Self {
        Entry {
            pattern: self.pattern.clone(),
            exact: self.exact,
            conditions: self.conditions,
            name: self.name.clone(),
            route: self.route.clone(),
        }
    }
}

impl<R> std::fmt::Debug for Entry<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {}", self.pattern, self.name)
    }
}

impl<R> Entry<R> {
    /// Sort key: smaller is more specific (see the module docs).
    fn rank(&self) -> impl Ord + '_ {
        let p = &self.pattern;
        let literals = p
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (
            std::cmp::Reverse(p.segments.len()),
            !p.trailing_slash,
            !self.exact,
            std::cmp::Reverse(literals),
            std::cmp::Reverse(self.conditions),
            &*self.name,
        )
    }
}

/// The routes of one host group: entries most specific first, and a trie of
/// path segments over them, so a lookup walks the request path's segments
/// once instead of trying every route.
#[derive(Debug)]
struct Group<R> {
    entries: Vec<Entry<R>>,
    root: Node,
}

/// One path segment of the trie. `ends` indexes `entries` for the patterns
/// that end here, in rank order, each tagged (top two bits) with how its
/// path may go on: see [`End`].
///
/// Memory matters here (a 100,000-route table has a node per route), so a
/// node is 72 bytes: children in a short list until there are more than
/// [`FEW`], one list of ends instead of four, and lists shrunk to fit once
/// the group is built.
#[derive(Debug, Default)]
struct Node {
    literal: Children,
    param: Option<Box<Node>>,
    ends: Vec<u32>,
}

/// Literal children: searched in order while few, hashed beyond.
#[derive(Debug)]
enum Children {
    Few(Vec<(Box<str>, Node)>),
    Many(HashMap<Box<str>, Node, BuildFnv>),
}

impl Default for Children {
    fn default() -> Self {
        Children::Few(Vec::new())
    }
}

/// Up to this many literal children are kept in a list.
const FEW: usize = 8;

/// How a pattern ending at a node may match (the tag of an [`Node::ends`]
/// item). Entry indexes stay below `INDEX` (a billion paths per host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `/a/b`: the path may end here or go on.
    Prefix = 0,
    /// `/a/b/`: the path must go on.
    Trailing = 1,
    /// `/a/b` exactly.
    Exact = 2,
    /// `/a/b/` exactly.
    ExactTrailing = 3,
}

const INDEX: u32 = (1 << 30) - 1;

impl Children {
    fn get(&self, seg: &str) -> Option<&Node> {
        match self {
            Children::Few(list) => list.iter().find(|(k, _)| &**k == seg).map(|(_, n)| n),
            Children::Many(map) => map.get(seg),
        }
    }

    fn get_or_insert(&mut self, seg: &str) -> &mut Node {
        if let Children::Few(list) = self {
            if list.len() >= FEW && !list.iter().any(|(k, _)| &**k == seg) {
                *self = Children::Many(list.drain(..).collect());
            }
        }
        match self {
            Children::Few(list) => match list.iter().position(|(k, _)| &**k == seg) {
                Some(i) => &mut list[i].1,
                None => {
                    list.push((seg.into(), Node::default()));
                    &mut list.last_mut().expect("just pushed").1
                }
            },
            Children::Many(map) => map.entry(seg.into()).or_default(),
        }
    }
}

impl Node {
    fn shrink(&mut self) {
        self.ends.shrink_to_fit();
        if let Some(p) = &mut self.param {
            p.shrink();
        }
        match &mut self.literal {
            Children::Few(list) => {
                list.shrink_to_fit();
                list.iter_mut().for_each(|(_, n)| n.shrink());
            }
            // A map already has the fewest buckets for its entries (it
            // grows by doubling); fewer would only lengthen probes.
            Children::Many(map) => map.values_mut().for_each(Node::shrink),
        }
    }
}

impl<R> Group<R> {
    fn new(mut entries: Vec<Entry<R>>) -> Group<R> {
        entries.sort_by(|a, b| a.rank().cmp(&b.rank()));
        let mut root = Node::default();
        for (i, e) in entries.iter().enumerate() {
            let mut node = &mut root;
            for seg in &e.pattern.segments {
                node = match seg {
                    Segment::Literal(l) => node.literal.get_or_insert(l),
                    Segment::Param(_) => node.param.get_or_insert_with(Default::default),
                };
            }
            let end = match (e.exact, e.pattern.trailing_slash) {
                (false, false) => End::Prefix,
                (false, true) => End::Trailing,
                (true, false) => End::Exact,
                (true, true) => End::ExactTrailing,
            };
            // Pushed in index order, so each node's list stays ranked.
            node.ends.push((end as u32) << 30 | (i as u32 & INDEX));
        }
        root.shrink();
        Group { entries, root }
    }

    /// The most specific entry whose path matches and that `accept` takes.
    fn find(&self, path: &str, accept: &mut impl FnMut(&R) -> bool) -> Option<Match<'_, R>> {
        let rest = path.strip_prefix('/')?;
        let mut best = u32::MAX;
        self.visit(&self.root, Some(rest), accept, &mut best);
        let e = self.entries.get(best as usize)?;
        Some(Match {
            route: &e.route,
            pattern: &e.pattern,
        })
    }

    /// `rest`: what follows this node's segment after a `/`; `None` when
    /// the path ends right after it.
    fn visit(
        &self,
        node: &Node,
        rest: Option<&str>,
        accept: &mut impl FnMut(&R) -> bool,
        best: &mut u32,
    ) {
        let fits = |end: u32| match rest {
            None => end == End::Prefix as u32 || end == End::Exact as u32,
            Some(more) => {
                end == End::Prefix as u32
                    || end == End::Trailing as u32
                    || (end == End::ExactTrailing as u32 && more.is_empty())
            }
        };
        // The list is in rank order: the first that fits and is accepted
        // is the best here.
        for &tagged in &node.ends {
            let i = tagged & INDEX;
            if i >= *best {
                break;
            }
            if fits(tagged >> 30) && accept(&self.entries[i as usize].route) {
                *best = i;
                break;
            }
        }
        if let Some(more) = rest {
            let (seg, next) = match more.split_once('/') {
                Some((seg, next)) => (seg, Some(next)),
                None => (more, None),
            };
            if let Some(child) = node.literal.get(seg) {
                self.visit(child, next, accept, best);
            }
            if let Some(child) = node.param.as_deref().filter(|_| !seg.is_empty()) {
                self.visit(child, next, accept, best);
            }
        }
    }
}

/// FNV-1a (with a final mix) for the segment maps: segments are short, and SipHash's
/// flooding resistance buys nothing here — the keys come from the
/// configuration, so a request can only look up, never add collisions.
#[derive(Debug, Default, Clone, Copy)]
struct BuildFnv;

struct Fnv(u64);

impl std::hash::BuildHasher for BuildFnv {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn finish(&self) -> u64 {
        // Spread the bits: the table indexes by the low ones and tags by
        // the high ones.
        let h = (self.0 ^ (self.0 >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
}

/// Where the part of `path` that `pattern` matched ends (a byte offset):
/// what follows is kept by strip-path and rewrites.
pub fn matched_len(pattern: &PathPattern, path: &str) -> usize {
    let mut end = 0;
    for _ in &pattern.segments {
        // Each segment is `/` plus its text; a match guarantees they exist.
        end = path
            .get(end + 1..)
            .and_then(|s| s.find('/'))
            .map_or(path.len(), |i| end + 1 + i);
    }
    end
}

/// The value each `:param` of `pattern` took in `path`.
pub fn params<'p>(
    pattern: &'p PathPattern,
    path: &'p str,
) -> impl Iterator<Item = (&'p str, &'p str)> {
    pattern
        .segments
        .iter()
        .zip(path.get(1..).unwrap_or("").split('/'))
        .filter_map(|(seg, value)| match seg {
            Segment::Param(name) => Some((&**name, value)),
            Segment::Literal(_) => None,
        })
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
    // A host listed twice would put the route's entries in its group twice.
    let mut seen = HashSet::new();
    keys.retain(|k| seen.insert(k.clone()));
    keys
}

/// One route as the router sees it.
#[derive(Debug)]
pub struct RouteEntry<'a, R> {
    pub name: Arc<str>,
    /// No hosts: any host.
    pub hosts: &'a [String],
    /// No paths: `/`.
    pub paths: &'a [Arc<PathPattern>],
    /// The paths must match the whole request path.
    pub exact: bool,
    /// How many method, header and query conditions the route has (more
    /// wins a tie).
    pub conditions: u32,
    pub route: Arc<R>,
}

impl<R> RouteEntry<'_, R> {
    fn entries(&self) -> impl Iterator<Item = Entry<R>> + '_ {
        let root = self.paths.is_empty().then(|| {
            Arc::new(PathPattern {
                segments: Box::default(),
                trailing_slash: true,
            })
        });
        let name = self.name.clone();
        self.paths
            .iter()
            .cloned()
            .chain(root)
            .map(move |pattern| Entry {
                pattern,
                exact: self.exact,
                conditions: self.conditions,
                name: name.clone(),
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
                        .filter(|e| !gone.contains(&&*e.name))
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
    /// The route for `host` (the Host header or :authority; a port is
    /// ignored) and `path`, among those `accept` takes (method, header and
    /// query conditions).
    pub fn find(
        &self,
        host: &str,
        path: &str,
        mut accept: impl FnMut(&R) -> bool,
    ) -> Option<Match<'_, R>> {
        // `api.example.com.` (fully qualified) is `api.example.com`.
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(m) = self.exact.get(host).and_then(|g| g.find(path, &mut accept)) {
            return Some(m);
        }
        for (suffix, group) in &self.wildcard {
            if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                if let Some(m) = group.find(path, &mut accept) {
                    return Some(m);
                }
            }
        }
        self.any_host.find(path, &mut accept)
    }
}

/// A Host header without its port.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep up to the closing bracket.
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, hosts, paths, exact, methods)
    type Spec<'a> = (&'a str, &'a [&'a str], &'a [&'a str], bool, &'a [&'a str]);

    struct TestRoute {
        name: String,
        methods: Vec<String>,
    }

    fn router(routes: &[Spec]) -> Router<TestRoute> {
        let owned: Vec<(Vec<String>, Vec<Arc<PathPattern>>)> = routes
            .iter()
            .map(|(_, h, p, _, _)| {
                (
                    h.iter().map(|s| s.to_string()).collect(),
                    p.iter()
                        .map(|s| Arc::new(PathPattern::parse(s).unwrap()))
                        .collect(),
                )
            })
            .collect();
        Router::build(routes.iter().zip(&owned).map(
            |((name, _, _, exact, methods), (hosts, paths))| RouteEntry {
                name: (*name).into(),
                hosts,
                paths,
                exact: *exact,
                conditions: u32::from(!methods.is_empty()),
                route: Arc::new(TestRoute {
                    name: name.to_string(),
                    methods: methods.iter().map(|m| m.to_string()).collect(),
                }),
            },
        ))
    }

    fn simple<'a>(routes: &'a [(&'a str, &'a [&'a str], &'a [&'a str])]) -> Vec<Spec<'a>> {
        routes
            .iter()
            .map(|(n, h, p)| (*n, *h, *p, false, &[][..]))
            .collect()
    }

    fn find<'a>(r: &'a Router<TestRoute>, host: &str, path: &str) -> Option<&'a str> {
        find_method(r, host, "GET", path)
    }

    fn find_method<'a>(
        r: &'a Router<TestRoute>,
        host: &str,
        method: &str,
        path: &str,
    ) -> Option<&'a str> {
        r.find(host, path, |route| {
            route.methods.is_empty() || route.methods.iter().any(|m| m == method)
        })
        .map(|m| m.route.name.as_str())
    }

    #[test]
    fn host_precedence() {
        let r = router(&simple(&[
            ("exact-orders", &["api.example.com"], &["/orders"]),
            ("exact-root", &["api.example.com"], &["/"]),
            ("wild", &["*.example.com"], &["/"]),
            ("wild-eu", &["*.eu.example.com"], &["/"]),
            ("any", &[], &["/status"]),
        ]));
        assert_eq!(
            find(&r, "api.example.com", "/orders/1"),
            Some("exact-orders")
        );
        assert_eq!(
            find(&r, "API.example.com:8080", "/orders"),
            Some("exact-orders")
        );
        assert_eq!(
            find(&r, "api.example.com.", "/orders"),
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
    fn path_precedence() {
        let r = router(&[
            ("users", &[], &["/users"], false, &[]),
            ("user", &[], &["/users/:id"], false, &[]),
            ("me", &[], &["/users/me"], false, &[]),
            ("orders", &[], &["/users/:id/orders"], false, &[]),
            ("health", &[], &["/health"], true, &[]),
            ("health-any", &[], &["/health"], false, &[]),
            ("writes", &[], &["/users"], false, &["POST", "PUT"]),
        ]);
        assert_eq!(find(&r, "h", "/users"), Some("users"));
        assert_eq!(find_method(&r, "h", "POST", "/users"), Some("writes"));
        assert_eq!(find_method(&r, "h", "DELETE", "/users"), Some("users"));
        assert_eq!(find(&r, "h", "/users/42"), Some("user"));
        assert_eq!(find(&r, "h", "/users/me"), Some("me"));
        assert_eq!(find(&r, "h", "/users/me/orders/1"), Some("orders"));
        assert_eq!(find(&r, "h", "/users/me/cart"), Some("me"));
        assert_eq!(
            find(&r, "h", "/users//orders"),
            Some("users"),
            "a param is never empty"
        );
        assert_eq!(find(&r, "h", "/health"), Some("health"));
        assert_eq!(find(&r, "h", "/health/deep"), Some("health-any"));
        assert_eq!(find(&r, "h", "/other"), None);
    }

    #[test]
    fn host_groups_fall_through_and_ties_are_deterministic() {
        let r = router(&simple(&[
            ("b", &[], &["/api"]),
            ("a", &[], &["/api"]),
            ("h", &["h.test"], &["/only"]),
        ]));
        assert_eq!(find(&r, "h.test", "/api/x"), Some("a"));
        assert_eq!(find(&r, "h.test", "/only"), Some("h"));
        // A host group whose only route refuses the method falls through.
        let r = router(&[
            ("post-only", &["h.test"], &["/"], false, &["POST"]),
            ("fallback", &[], &["/"], false, &[]),
        ]);
        assert_eq!(find(&r, "h.test", "/x"), Some("fallback"));
        assert_eq!(find_method(&r, "h.test", "POST", "/x"), Some("post-only"));
    }

    #[test]
    fn updates_equal_a_rebuild() {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let patterns = |v: &[&str]| {
            v.iter()
                .map(|s| Arc::new(PathPattern::parse(s).unwrap()))
                .collect::<Vec<_>>()
        };
        let r = router(&simple(&[
            ("a", &["x.test"], &["/a"]),
            ("b", &["x.test", "*.test"], &["/b"]),
            ("c", &[], &["/c"]),
        ]));
        // b moves to another host and path, c goes away, d arrives.
        let (bh, bp, dh) = (
            strings(&["y.test"]),
            patterns(&["/b2"]),
            strings(&["*.test"]),
        );
        let old_b = strings(&["x.test", "*.test"]);
        let entry = |name: &'static str, hosts, paths| RouteEntry {
            name: name.into(),
            hosts,
            paths,
            exact: false,
            conditions: 0,
            route: Arc::new(TestRoute {
                name: name.to_string(),
                methods: Vec::new(),
            }),
        };
        let updated = r.update(
            &[("b", &old_b), ("c", &[])],
            [entry("b", &bh, &bp), entry("d", &dh, &[])],
        );
        let rebuilt = router(&simple(&[
            ("a", &["x.test"], &["/a"]),
            ("b", &["y.test"], &["/b2"]),
            ("d", &["*.test"], &[]),
        ]));
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

    /// The plain rule, one pattern at a time.
    fn reference_matches(pattern: &PathPattern, exact: bool, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let segs: Vec<&str> = rest.split('/').collect();
        let n = pattern.segments.len();
        let segment_ok = |(p, s): (&Segment, &&str)| match p {
            Segment::Literal(l) => **l == **s,
            Segment::Param(_) => !s.is_empty(),
        };
        // "/" splits into one empty segment: the root pattern consumes none.
        let (consumed, remaining) = if n == 0 {
            (true, segs.len())
        } else {
            (
                segs.len() >= n && pattern.segments.iter().zip(&segs).all(segment_ok),
                segs.len() - n.min(segs.len()),
            )
        };
        if !consumed {
            return false;
        }
        let ends_with_slash = remaining == 1 && segs.last() == Some(&"");
        match (exact, pattern.trailing_slash) {
            (false, false) => n == 0 || remaining == 0 || remaining > 0,
            (false, true) => remaining > 0,
            (true, false) => remaining == 0,
            (true, true) => ends_with_slash,
        }
    }

    /// The trie agrees with the plain rule (every pattern tried, the most
    /// specific match wins) on every combination of these patterns and paths
    /// (with enough children under `/a` to turn its list into a map).
    #[test]
    fn trie_matches_the_plain_rule() {
        let many: Vec<String> = (0..=FEW).map(|i| format!("/a/c{i}")).collect();
        let mut patterns = vec![
            ("/", false),
            ("/a", false),
            ("/a/", false),
            ("/a/b", false),
            ("/a/:x", false),
            ("/a/b/", true),
            ("/ab", false),
            ("/:p/b/c", false),
            ("//", false),
            ("/x/", false),
            ("/a", true),
            ("/", true),
        ];
        patterns.extend(
            many.iter()
                .enumerate()
                .map(|(i, p)| (p.as_str(), i % 2 == 0)),
        );
        let paths = [
            "/", "/a", "/a/", "/a/b", "/a/bc", "/a/b/", "/a/b/c/d", "/ab", "/abc", "//", "//z",
            "/x", "/x/", "/x/y", "", "*", "/q/b/c", "/a//", "/a/c3", "/a/c8/z", "/a/c7/", "/a/c10",
        ];
        for n in 1..=patterns.len() {
            for start in 0..patterns.len() {
                let chosen: Vec<(Arc<PathPattern>, bool)> = patterns
                    .iter()
                    .cycle()
                    .skip(start)
                    .take(n)
                    .map(|(p, e)| (Arc::new(PathPattern::parse(p).unwrap()), *e))
                    .collect();
                let entries = chosen
                    .iter()
                    .enumerate()
                    .map(|(i, (p, exact))| Entry {
                        pattern: p.clone(),
                        exact: *exact,
                        conditions: 0,
                        name: format!("r{i:02}").into(),
                        route: Arc::new(i),
                    })
                    .collect();
                let group = Group::new(entries);
                for path in paths {
                    let plain = group
                        .entries
                        .iter()
                        .find(|e| reference_matches(&e.pattern, e.exact, path))
                        .map(|e| *e.route);
                    let trie = group.find(path, &mut |_| true).map(|m| **m.route);
                    assert_eq!(trie, plain, "patterns {chosen:?}, path {path:?}");
                }
            }
        }
    }

    #[test]
    fn matched_part_and_params() {
        let p = PathPattern::parse("/users/:id/").unwrap();
        assert_eq!(matched_len(&p, "/users/7/cart"), "/users/7".len());
        assert_eq!(
            params(&p, "/users/7/cart").collect::<Vec<_>>(),
            [("id", "7")]
        );
        let root = PathPattern::parse("/").unwrap();
        assert_eq!(matched_len(&root, "/x"), 0);
        assert_eq!(matched_len(&p, "/short"), "/short".len(), "never panics");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("h:80"), "h");
    }
}
