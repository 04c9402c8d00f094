//! Load-balancing policies over a set of targets (the primaries, or the
//! backups). Each policy proposes targets in its order of preference; the
//! pool takes the first one that is available (healthy, not ejected,
//! breaker not open) and not already tried by this request.
//!
//! State is built once per Backend spec and shared by every request: a
//! schedule or a ring plus an atomic counter. No policy takes a lock.

use nio_proto::model::Policy;
use rand::Rng;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Cap on the weighted schedule and the ring; larger weight sums are
/// scaled down.
const MAX_SCHEDULE: u64 = 10_000;
/// Ring points per unit of weight (before scaling down).
const POINTS_PER_WEIGHT: u64 = 100;

#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    /// Target indices in the pool (for this tier).
    members: Vec<u32>,
    weights: Vec<u64>,
    /// Weighted round robin: member positions, spread out.
    schedule: Vec<u32>,
    /// Consistent hash: (point, member position), sorted by point.
    ring: Vec<(u64, u32)>,
    next: AtomicUsize,
}

/// What a policy needs to know about targets when it picks.
pub trait Targets {
    /// Requests in flight to the target at this pool index.
    fn load(&self, index: u32) -> u32;
    /// Whether the target could take a request (asks nothing of it).
    fn available(&self, index: u32) -> bool;
    /// Whether the target takes this request: available, and for a
    /// half-open breaker, claims its one probe.
    fn usable(&self, index: u32) -> bool;
}

/// How far a policy follows its own order before falling back to trying
/// every member once (all that matters when most targets are down).
const ORDER_STEPS: usize = 64;

impl Balancer {
    /// `members`: (pool index, weight, identity used on the hash ring).
    pub fn new(policy: Policy, members: &[(u32, u32, &str)]) -> Balancer {
        let weights: Vec<u64> = members.iter().map(|m| u64::from(m.1.max(1))).collect();
        let schedule = if policy == Policy::WeightedRoundRobin {
            smooth_wrr_schedule(&weights)
        } else {
            Vec::new()
        };
        let ring = if policy == Policy::ConsistentHash {
            ring(members, &weights)
        } else {
            Vec::new()
        };
        Balancer {
            policy,
            members: members.iter().map(|m| m.0).collect(),
            weights,
            schedule,
            ring,
            next: AtomicUsize::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// A usable target not in `tried`, by this balancer's policy; `key` is
    /// the request's hash key for consistent hashing.
    pub fn pick(&self, targets: &impl Targets, key: u64, tried: &[u32]) -> Option<u32> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let ok = |i: u32| !tried.contains(&i) && targets.usable(i);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        // Every member once, from the rotation's position.
        let scan = || {
            (0..n)
                .map(|k| self.members[(start + k) % n])
                .find(|&i| ok(i))
        };
        match self.policy {
            Policy::WeightedRoundRobin => (0..self.schedule.len().min(ORDER_STEPS))
                .map(|k| self.members[self.schedule[(start + k) % self.schedule.len()] as usize])
                .find(|&i| ok(i))
                .or_else(scan),
            Policy::RoundRobin => scan(),
            Policy::Random => {
                let first = self.weighted_random();
                (0..n)
                    .map(|k| self.members[(first + k) % n])
                    .find(|&i| ok(i))
            }
            Policy::LeastConnections => self.least_loaded(targets, start, tried),
            Policy::PowerOfTwoChoices => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n.max(2))) % n;
                let (ia, ib) = (self.members[a], self.members[b]);
                // Prefer the less loaded per unit of weight; check the
                // preferred one first so only the chosen probe is claimed.
                let (first, second) = if lighter(targets, ia, self.weights[a], ib, self.weights[b])
                {
                    (ia, ib)
                } else {
                    (ib, ia)
                };
                [first, second]
                    .into_iter()
                    .find(|&i| ok(i))
                    .or_else(|| self.least_loaded(targets, start, tried))
            }
            Policy::ConsistentHash => {
                // Clockwise from the key: a down target's keys go to the
                // next point's target, the rest stay where they are.
                let from = self.ring.partition_point(|(p, _)| *p < key);
                (0..self.ring.len().min(ORDER_STEPS))
                    .map(|k| self.members[self.ring[(from + k) % self.ring.len()].1 as usize])
                    .find(|&i| ok(i))
                    .or_else(scan)
            }
        }
    }

    fn weighted_random(&self) -> usize {
        let total: u64 = self.weights.iter().sum();
        let mut x = rand::rng().random_range(0..total.max(1));
        for (pos, w) in self.weights.iter().enumerate() {
            if x < *w {
                return pos;
            }
            x -= w;
        }
        0
    }

    /// The available member with the fewest requests in flight per unit
    /// of weight (ties go round robin from `start`); only that one is
    /// claimed, so a half-open probe is never spent on a target not picked.
    fn least_loaded(&self, targets: &impl Targets, start: usize, tried: &[u32]) -> Option<u32> {
        let n = self.members.len();
        let mut best: Option<(u32, u64, u64)> = None;
        for k in 0..n {
            let pos = (start + k) % n;
            let (i, w) = (self.members[pos], self.weights[pos]);
            if tried.contains(&i) || !targets.available(i) {
                continue;
            }
            let load = u64::from(targets.load(i));
            if best.is_none_or(|(_, bl, bw)| load * bw < bl * w) {
                best = Some((i, load, w));
            }
        }
        let (chosen, _, _) = best?;
        if targets.usable(chosen) {
            return Some(chosen);
        }
        // Lost the probe to another request: any usable member will do.
        (0..n)
            .map(|k| self.members[(start + k) % n])
            .find(|&i| !tried.contains(&i) && targets.usable(i))
    }
}

fn lighter(targets: &impl Targets, a: u32, wa: u64, b: u32, wb: u64) -> bool {
    u64::from(targets.load(a)) * wb <= u64::from(targets.load(b)) * wa
}

/// One full cycle of smooth weighted round robin: each member appears
/// `weight` times (scaled down if the sum is huge), spread out evenly.
fn smooth_wrr_schedule(weights: &[u64]) -> Vec<u32> {
    let weights = scaled(weights);
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

fn scaled(weights: &[u64]) -> Vec<i64> {
    let total: u64 = weights.iter().sum();
    weights
        .iter()
        .map(|w| {
            if total > MAX_SCHEDULE {
                (w * MAX_SCHEDULE / total).max(1) as i64
            } else {
                *w as i64
            }
        })
        .collect()
}

/// Points on the ring come from each member's identity (its URL), not its
/// position, so removing a member leaves every other point where it was:
/// only the removed member's keys move.
fn ring(members: &[(u32, u32, &str)], weights: &[u64]) -> Vec<(u64, u32)> {
    let per_weight: Vec<u64> = weights.iter().map(|w| w * POINTS_PER_WEIGHT).collect();
    let points = scaled(&per_weight);
    let mut ring = Vec::new();
    for (pos, ((_, _, id), count)) in members.iter().zip(points).enumerate() {
        for replica in 0..count as u64 {
            ring.push((hash_parts(id.as_bytes(), replica), pos as u32));
        }
    }
    ring.sort_unstable();
    ring
}

/// A stable 64-bit hash (FNV-1a, then a mixer for spread), the same on
/// every data plane and every run, so a key lands on the same target
/// whichever data plane serves it.
pub fn hash_key(bytes: &[u8]) -> u64 {
    hash_parts(bytes, 0)
}

fn hash_parts(bytes: &[u8], salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finalizer.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fake {
        load: Vec<u32>,
        down: Vec<u32>,
    }

    impl Targets for Fake {
        fn load(&self, i: u32) -> u32 {
            self.load[i as usize]
        }
        fn available(&self, i: u32) -> bool {
            !self.down.contains(&i)
        }
        fn usable(&self, i: u32) -> bool {
            self.available(i)
        }
    }

    fn counts(b: &Balancer, t: &Fake, n: usize) -> HashMap<u32, usize> {
        let mut c = HashMap::new();
        for k in 0..n {
            let key = hash_key(&k.to_le_bytes());
            *c.entry(b.pick(t, key, &[]).unwrap()).or_default() += 1;
        }
        c
    }

    #[test]
    fn weighted_schedule_is_spread() {
        assert_eq!(smooth_wrr_schedule(&[1, 1]), vec![0, 1]);
        assert_eq!(smooth_wrr_schedule(&[1, 2]), vec![1, 0, 1]);
        let s = smooth_wrr_schedule(&[5, 1, 1]);
        assert_eq!(s.len(), 7);
        assert_eq!(s.iter().filter(|i| **i == 0).count(), 5);
        assert!(smooth_wrr_schedule(&[1000; 1000]).len() <= MAX_SCHEDULE as usize + 1000);
    }

    #[test]
    fn policies_honour_weights_and_skip_unusable() {
        let members = [(0, 1, "a"), (1, 3, "b"), (2, 1, "c")];
        let t = Fake {
            load: vec![0; 3],
            down: vec![],
        };
        for policy in [Policy::WeightedRoundRobin, Policy::Random] {
            let c = counts(&Balancer::new(policy, &members), &t, 10_000);
            let share = c[&1] as f64 / 10_000.0;
            assert!((share - 0.6).abs() < 0.05, "{policy:?}: {c:?}");
        }
        let c = counts(&Balancer::new(Policy::RoundRobin, &members), &t, 9_000);
        assert_eq!(c.values().copied().collect::<Vec<_>>(), vec![3_000; 3]);
        let down = Fake {
            load: vec![0; 3],
            down: vec![1],
        };
        for policy in [
            Policy::WeightedRoundRobin,
            Policy::RoundRobin,
            Policy::Random,
            Policy::LeastConnections,
            Policy::PowerOfTwoChoices,
            Policy::ConsistentHash,
        ] {
            let c = counts(&Balancer::new(policy, &members), &down, 1_000);
            assert!(!c.contains_key(&1), "{policy:?} used a down target");
            let b = Balancer::new(policy, &members);
            assert_eq!(b.pick(&down, 7, &[0, 2]), None, "{policy:?}");
        }
    }

    #[test]
    fn least_loaded_policies_prefer_idle_targets() {
        let members = [(0, 1, "a"), (1, 1, "b"), (2, 1, "c")];
        let t = Fake {
            load: vec![5, 0, 9],
            down: vec![],
        };
        let lc = Balancer::new(Policy::LeastConnections, &members);
        assert!((0..100).all(|_| lc.pick(&t, 0, &[]) == Some(1)));
        let p2c = counts(
            &Balancer::new(Policy::PowerOfTwoChoices, &members),
            &t,
            3_000,
        );
        // Target 2 (most loaded) only wins when paired with itself, never.
        assert!(!p2c.contains_key(&2), "{p2c:?}");
        assert!(p2c[&1] > p2c[&0], "{p2c:?}");
    }

    #[test]
    fn hash_ring_moves_only_the_removed_targets_keys() {
        let all = [(0, 1, "http://a"), (1, 1, "http://b"), (2, 1, "http://c")];
        let fewer = [(0, 1, "http://a"), (2, 1, "http://c")];
        let (before, after) = (
            Balancer::new(Policy::ConsistentHash, &all),
            Balancer::new(Policy::ConsistentHash, &fewer),
        );
        let t = Fake {
            load: vec![0; 3],
            down: vec![],
        };
        let mut moved = 0;
        for k in 0..10_000u32 {
            let key = hash_key(format!("user-{k}").as_bytes());
            let (b, a) = (before.pick(&t, key, &[]), after.pick(&t, key, &[]));
            assert_eq!(before.pick(&t, key, &[]), b, "stable for a key");
            if b != Some(1) {
                assert_eq!(a, b, "key {k} moved without its target leaving");
            } else {
                moved += 1;
            }
        }
        assert!(
            (2_500..4_200).contains(&moved),
            "b had {moved} of 10000 keys"
        );
    }
}
