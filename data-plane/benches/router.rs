//! Route lookup cost as the route table grows: 10, 1,000 and 10,000 routes
//! spread over 100 hosts (with a wildcard and an any-host group), looking up
//! a route in the middle of the table.
//!
//! `cargo bench -p nio-data-plane --bench router`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use nio_data_plane::router::{RouteEntry, Router};
use std::hint::black_box;
use std::sync::Arc;

fn table(n: usize) -> Router<usize> {
    let specs: Vec<(String, Vec<String>, Vec<String>)> = (0..n)
        .map(|i| {
            let host = match i % 10 {
                0 => "*.wild.test".to_string(),
                _ => format!("h{}.test", i % 100),
            };
            (
                format!("r{i}"),
                vec![host],
                vec![format!("/api/v{}/r{i}", i % 3)],
            )
        })
        .collect();
    Router::build(
        specs
            .iter()
            .enumerate()
            .map(|(i, (name, hosts, paths))| RouteEntry {
                name,
                hosts,
                paths,
                route: Arc::new(i),
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
        assert_eq!(router.find(&host, &path).map(|m| **m.route), Some(i));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                router
                    .find(black_box(&host), black_box(&path))
                    .map(|m| **m.route)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
