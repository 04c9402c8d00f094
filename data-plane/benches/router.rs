//! Route lookup cost as the route table grows: 10, 1,000 and 10,000 routes
//! spread over 100 hosts (with a wildcard and an any-host group), with a
//! mix of prefix, `:param` and method-restricted routes, looking up a route
//! in the middle of the table.
//!
//! `cargo bench -p nio-data-plane --bench router`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nio_data_plane::router::{RouteEntry, Router};
use nio_proto::model::PathPattern;
use std::hint::black_box;
use std::sync::Arc;

struct R {
    id: usize,
    post_only: bool,
}

fn table(n: usize) -> Router<R> {
    let specs: Vec<(String, Vec<String>, Vec<Arc<PathPattern>>)> = (0..n)
        .map(|i| {
            let host = match i % 10 {
                0 => "*.wild.test".to_string(),
                _ => format!("h{}.test", i % 100),
            };
            let path = match i % 4 {
                0 => format!("/api/v{}/r{i}/:id", i % 3),
                _ => format!("/api/v{}/r{i}", i % 3),
            };
            (
                format!("r{i}"),
                vec![host],
                vec![Arc::new(PathPattern::parse(&path).expect("valid path"))],
            )
        })
        .collect();
    Router::build(
        specs
            .iter()
            .enumerate()
            .map(|(i, (name, hosts, paths))| RouteEntry {
                name: name.as_str().into(),
                hosts,
                paths,
                exact: false,
                conditions: u32::from(i % 7 == 0),
                route: Arc::new(R {
                    id: i,
                    post_only: i % 7 == 0,
                }),
            }),
    )
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route lookup");
    for n in [10usize, 1_000, 10_000] {
        let router = table(n);
        let i = n / 2 + 1;
        let host = format!("h{}.test", i % 100);
        let path = format!("/api/v{}/r{i}/items/42", i % 3);
        let find = |host: &str, path: &str| {
            router
                .find(host, path, |r| !r.post_only)
                .map(|m| m.route.id)
        };
        assert_eq!(find(&host, &path), Some(i));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| find(black_box(&host), black_box(&path)))
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
