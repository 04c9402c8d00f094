//! Route matching: routes made of fuzzed hosts and path patterns, looked up
//! with a fuzzed host and path.
//!
//! Input: lines; each `host path` line before the last is a route (only
//! valid patterns are kept), the last line is the `host path` looked up.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nio_data_plane::router::{RouteEntry, Router};
use nio_proto::model::PathPattern;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines: Vec<&str> = text.lines().collect();
    let Some(lookup) = lines.pop() else {
        return;
    };
    type Spec = (String, Vec<String>, Vec<Arc<PathPattern>>, bool);
    let specs: Vec<Spec> = lines
        .iter()
        .take(64)
        .enumerate()
        .filter_map(|(i, l)| {
            let (host, path) = l.split_once(' ')?;
            let pattern = PathPattern::parse(path).ok()?;
            Some((
                format!("r{i}"),
                vec![host.to_string()],
                vec![Arc::new(pattern)],
                i % 3 == 0,
            ))
        })
        .collect();
    let router = Router::build(
        specs
            .iter()
            .enumerate()
            .map(|(i, (name, hosts, paths, exact))| RouteEntry {
                name: name.as_str().into(),
                hosts,
                paths,
                exact: *exact,
                conditions: u32::from(i % 2 == 0),
                route: Arc::new(i),
            }),
    );
    let (host, path) = lookup.split_once(' ').unwrap_or((lookup, "/"));
    let found = router.find(host, path, |r| r % 4 != 1).map(|m| **m.route);
    if let Some(i) = found {
        // What matched was offered, and accepted.
        assert!(i < specs.len() && i % 4 != 1);
    }
    // The same table built incrementally answers the same.
    let half = specs.len() / 2;
    let entries = |range: std::ops::Range<usize>| {
        specs[range.clone()]
            .iter()
            .zip(range)
            .map(|((name, hosts, paths, exact), i)| RouteEntry {
                name: name.as_str().into(),
                hosts,
                paths,
                exact: *exact,
                conditions: u32::from(i % 2 == 0),
                route: Arc::new(i),
            })
            .collect::<Vec<_>>()
    };
    let incremental = Router::build(entries(0..half)).update(&[], entries(half..specs.len()));
    let again = incremental
        .find(host, path, |r| r % 4 != 1)
        .map(|m| **m.route);
    assert_eq!(found, again);
});
