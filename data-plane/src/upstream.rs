//! Backend pools: the targets of one Backend and the load-balancing state
//! over them.
//!
//! Weighted round robin uses a schedule computed once when the pool is
//! built (smooth weighted round robin, so weights 1 and 2 give `a b b`
//! interleaved as `b a b`, not bursts) and one atomic counter: picking a
//! target takes no lock. A pool is reused across snapshots while its
//! Backend's spec is unchanged, so its position in the schedule survives a
//! configuration swap.

use http::uri::Authority;
use http::HeaderValue;
use nio_proto::model::{parse_target_url, BackendSpec};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Target {
    pub url: String,
    pub authority: Authority,
    /// The Host header sent to this target (its host and port).
    pub host_header: HeaderValue,
}

#[derive(Debug)]
pub struct BackendPool {
    pub name: String,
    pub spec: BackendSpec,
    pub targets: Vec<Target>,
    schedule: Vec<u32>,
    next: AtomicUsize,
}

/// Cap on the schedule length; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 10_000;

impl BackendPool {
    pub fn new(name: &str, spec: &BackendSpec) -> Result<BackendPool, String> {
        let mut targets = Vec::with_capacity(spec.targets.len());
        for (i, t) in spec.targets.iter().enumerate() {
            let addr =
                parse_target_url(&t.url).map_err(|e| format!("spec.targets[{i}].url: {e}"))?;
            let authority: Authority = addr
                .authority
                .parse()
                .map_err(|e| format!("spec.targets[{i}].url: {e}"))?;
            let host_header = HeaderValue::from_str(&addr.authority)
                .map_err(|e| format!("spec.targets[{i}].url: {e}"))?;
            targets.push(Target {
                url: t.url.clone(),
                authority,
                host_header,
            });
        }
        if targets.is_empty() {
            return Err("spec.targets: no targets".into());
        }
        let weights: Vec<u64> = spec
            .targets
            .iter()
            .map(|t| u64::from(t.weight.max(1)))
            .collect();
        Ok(BackendPool {
            name: name.to_string(),
            spec: spec.clone(),
            targets,
            schedule: smooth_wrr_schedule(&weights),
            next: AtomicUsize::new(0),
        })
    }

    /// The next target in weighted round-robin order.
    pub fn pick(&self) -> &Target {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let i = self.schedule[n % self.schedule.len()] as usize;
        &self.targets[i]
    }
}

/// One full cycle of smooth weighted round robin: each target appears
/// `weight` times (scaled down if the sum is huge), spread out evenly.
fn smooth_wrr_schedule(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let weights: Vec<i64> = if total > MAX_SCHEDULE {
        weights
            .iter()
            .map(|w| ((w * MAX_SCHEDULE / total).max(1)) as i64)
            .collect()
    } else {
        weights.iter().map(|w| *w as i64).collect()
    };
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::*;
    use nio_proto::model::TargetSpec;

    #[test]
    fn weighted_schedule_is_spread() {
        assert_eq!(smooth_wrr_schedule(&[1, 1]), vec![0, 1]);
        assert_eq!(smooth_wrr_schedule(&[1, 2]), vec![1, 0, 1]);
        let s = smooth_wrr_schedule(&[5, 1, 1]);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 5);
        assert!(smooth_wrr_schedule(&[1000; 1000]).len() <= MAX_SCHEDULE as usize);
    }

    #[test]
    fn pick_round_robins() {
        let spec = BackendSpec {
            targets: vec![
                TargetSpec {
                    url: "http://127.0.0.1:1".into(),
                    weight: 1,
                },
                TargetSpec {
                    url: "http://127.0.0.1:2".into(),
                    weight: 1,
                },
            ],
        };
        let pool = BackendPool::new("b", &spec).unwrap();
        let picks: Vec<_> = (0..4).map(|_| pool.pick().url.clone()).collect();
        assert_eq!(
            picks,
            [
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:1",
                "http://127.0.0.1:2"
            ]
        );
        assert_eq!(pool.pick().host_header, "127.0.0.1:1");
    }
}
