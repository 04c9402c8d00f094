//! What the data plane knows about one target's health, from three
//! sources: the circuit breaker (connection failures and timeouts of real
//! requests), passive outlier detection (5xx answers of real requests) and
//! active health checks (probes on a timer).
//!
//! Everything is atomics: recording an outcome or asking whether a target
//! may be used takes no lock. Races between requests only blur counts by a
//! request or two, which the thresholds absorb.
//!
//! ```text
//!            N failures in a row, or ratio ≥ R over ≥ M requests
//!   closed ───────────────────────────────────────────────▶ open
//!     ▲                                                      │ openFor
//!     │ probe succeeds                                       ▼
//!     └──────────────────────────────────────────────── half-open ── probe fails ──▶ open
//! ```

use nio_proto::model::{CircuitBreaker, HealthCheck, OutlierDetection};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Milliseconds since the process's first call; never 0.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// [`now_ms`] at a clock reading taken already (a clock read costs about
/// 25 ns; a request takes several).
pub fn ms_at(t: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    t.saturating_duration_since(epoch).as_millis() as u64 + 1
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// How a request to a target ended, as far as its health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered (`status`).
    Answered(u16),
    /// Could not connect, the connection broke, or no answer in time.
    Failed,
}

#[derive(Debug, Default)]
pub struct TargetState {
    /// Requests sent and not finished (response body not done).
    pub in_flight: AtomicU32,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Active health checks: false once `unhealthyThreshold` probes failed.
    unhealthy: AtomicBool,
    probe_streak: AtomicU32,
    // Circuit breaker.
    consecutive_failures: AtomicU32,
    window_start: AtomicU64,
    window_requests: AtomicU32,
    window_failures: AtomicU32,
    /// 0 = closed; otherwise when the breaker half-opens.
    open_until: AtomicU64,
    /// When the current half-open probe was let through.
    probe_at: AtomicU64,
    // Outlier detection.
    consecutive_5xx: AtomicU32,
    ejected_until: AtomicU64,
}

/// A target's condition, for `/metrics` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Up,
    Unhealthy,
    Ejected,
    CircuitOpen,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Up => "up",
            Condition::Unhealthy => "unhealthy",
            Condition::Ejected => "ejected",
            Condition::CircuitOpen => "circuit-open",
        }
    }
}

impl TargetState {
    pub fn condition(&self, now: u64) -> Condition {
        if self.unhealthy.load(Ordering::Relaxed) {
            Condition::Unhealthy
        } else if self.ejected_until.load(Ordering::Relaxed) > now {
            Condition::Ejected
        } else if self.open_until.load(Ordering::Relaxed) > now {
            Condition::CircuitOpen
        } else {
            Condition::Up
        }
    }

    /// Whether a request could go to this target now, claiming nothing:
    /// `Some(probe_at)` when its breaker is closed, or half-open with the
    /// probe slot free.
    fn open_slot(&self, now: u64, breaker: &CircuitBreaker) -> Option<u64> {
        if self.unhealthy.load(Ordering::Relaxed)
            || self.ejected_until.load(Ordering::Relaxed) > now
        {
            return None;
        }
        let open_until = self.open_until.load(Ordering::Relaxed);
        let probe_at = self.probe_at.load(Ordering::Relaxed);
        if open_until == 0 {
            return Some(probe_at);
        }
        if now < open_until {
            return None;
        }
        // Half-open: one probe at a time; a probe that never reported back
        // (cancelled request) frees the slot after openFor.
        let free = probe_at < open_until || now >= probe_at + ms(breaker.open_for);
        free.then_some(probe_at)
    }

    pub fn available(&self, now: u64, breaker: &CircuitBreaker) -> bool {
        self.open_slot(now, breaker).is_some()
    }

    /// Whether a request may go to this target now. A half-open breaker
    /// lets one probe request through per `openFor`; asking claims it.
    pub fn try_use(&self, now: u64, breaker: &CircuitBreaker) -> bool {
        let Some(probe_at) = self.open_slot(now, breaker) else {
            return false;
        };
        self.open_until.load(Ordering::Relaxed) == 0
            || self
                .probe_at
                .compare_exchange(probe_at, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
    }

    /// Records how a request ended. Returns what changed, for the log.
    pub fn record(
        &self,
        outcome: Outcome,
        now: u64,
        breaker: &CircuitBreaker,
        outlier: Option<&OutlierDetection>,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<Condition> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut changed = None;
        if breaker.enabled {
            changed = self.record_breaker(outcome, now, breaker);
        }
        if let (Some(od), Outcome::Answered(status)) = (outlier, outcome) {
            if status >= 500 {
                let n = self.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= od.consecutive_5xx && may_eject() {
                    self.consecutive_5xx.store(0, Ordering::Relaxed);
                    self.ejected_until
                        .store(now + ms(od.eject_for), Ordering::Relaxed);
                    changed = Some(Condition::Ejected);
                }
            } else {
                self.consecutive_5xx.store(0, Ordering::Relaxed);
            }
        }
        changed
    }

    fn record_breaker(&self, outcome: Outcome, now: u64, cb: &CircuitBreaker) -> Option<Condition> {
        // A fresh window once the old one is over.
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) > ms(cb.window)
            && self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.window_requests.store(0, Ordering::Relaxed);
            self.window_failures.store(0, Ordering::Relaxed);
        }
        let requests = self.window_requests.fetch_add(1, Ordering::Relaxed) + 1;
        let open_until = self.open_until.load(Ordering::Relaxed);
        match outcome {
            Outcome::Answered(_) => {
                self.consecutive_failures.store(0, Ordering::Relaxed);
                // The half-open probe came back: close.
                if open_until != 0 && now >= open_until {
                    self.open_until.store(0, Ordering::Relaxed);
                    self.window_requests.store(0, Ordering::Relaxed);
                    self.window_failures.store(0, Ordering::Relaxed);
                    return Some(Condition::Up);
                }
                None
            }
            Outcome::Failed => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let failures = self.window_failures.fetch_add(1, Ordering::Relaxed) + 1;
                let half_open_failed = open_until != 0 && now >= open_until;
                let tripped = (cb.consecutive_failures > 0 && streak >= cb.consecutive_failures)
                    || (requests >= cb.min_requests.max(1)
                        && f64::from(failures) >= cb.failure_ratio * f64::from(requests));
                if (open_until == 0 && tripped) || half_open_failed {
                    self.open_until
                        .store(now + ms(cb.open_for), Ordering::Relaxed);
                    return Some(Condition::CircuitOpen);
                }
                None
            }
        }
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Records an active probe. Returns the new condition when the target
    /// crossed a threshold.
    pub fn record_probe(&self, ok: bool, hc: &HealthCheck) -> Option<Condition> {
        let unhealthy = self.unhealthy.load(Ordering::Relaxed);
        // The streak counts probes that disagree with the current state.
        if ok != unhealthy {
            self.probe_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.probe_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = if unhealthy {
            hc.healthy_threshold
        } else {
            hc.unhealthy_threshold
        };
        if streak < threshold {
            return None;
        }
        self.probe_streak.store(0, Ordering::Relaxed);
        self.unhealthy.store(!unhealthy, Ordering::Relaxed);
        Some(if unhealthy {
            Condition::Up
        } else {
            Condition::Unhealthy
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker {
            consecutive_failures: 3,
            min_requests: 10,
            failure_ratio: 0.5,
            open_for: Duration::from_millis(100),
            ..CircuitBreaker::default()
        }
    }

    #[test]
    fn breaker_opens_half_opens_and_closes() {
        let (s, cb) = (TargetState::default(), breaker());
        let record = |o, now| s.record(o, now, &cb, None, || true);
        assert_eq!(record(Outcome::Failed, 10), None);
        assert_eq!(record(Outcome::Answered(200), 11), None, "streak broken");
        record(Outcome::Failed, 12);
        record(Outcome::Failed, 13);
        assert_eq!(record(Outcome::Failed, 14), Some(Condition::CircuitOpen));
        assert!(!s.try_use(50, &cb));
        assert_eq!(s.condition(50), Condition::CircuitOpen);
        // Half-open: exactly one probe.
        assert!(s.try_use(120, &cb));
        assert!(!s.try_use(121, &cb));
        // The probe fails: open again.
        assert_eq!(record(Outcome::Failed, 125), Some(Condition::CircuitOpen));
        assert!(!s.try_use(200, &cb));
        assert!(s.try_use(230, &cb));
        assert_eq!(record(Outcome::Answered(200), 231), Some(Condition::Up));
        assert!(s.try_use(232, &cb) && s.try_use(233, &cb));
    }

    #[test]
    fn breaker_opens_on_ratio() {
        let s = TargetState::default();
        let cb = CircuitBreaker {
            consecutive_failures: 0,
            ..breaker()
        };
        let mut opened = None;
        for i in 0..20u64 {
            let o = if i % 2 == 0 {
                Outcome::Failed
            } else {
                Outcome::Answered(200)
            };
            if let Some(c) = s.record(o, 10 + i, &cb, None, || true) {
                opened.get_or_insert((i, c));
            }
        }
        assert_eq!(
            opened,
            Some((10, Condition::CircuitOpen)),
            "5 of 10 requests failed at request 11"
        );
    }

    #[test]
    fn outliers_are_ejected_then_return() {
        let (s, cb) = (TargetState::default(), breaker());
        let od = OutlierDetection {
            consecutive_5xx: 2,
            eject_for: Duration::from_millis(50),
            max_ejected_percent: 50,
        };
        s.record(Outcome::Answered(500), 1, &cb, Some(&od), || true);
        assert_eq!(
            s.record(Outcome::Answered(503), 2, &cb, Some(&od), || true),
            Some(Condition::Ejected)
        );
        assert!(!s.try_use(10, &cb));
        assert!(s.try_use(60, &cb));
        // Not ejected when the cap says no.
        s.record(Outcome::Answered(500), 61, &cb, Some(&od), || false);
        s.record(Outcome::Answered(500), 62, &cb, Some(&od), || false);
        assert!(s.try_use(63, &cb));
    }

    #[test]
    fn probes_flip_on_thresholds() {
        let s = TargetState::default();
        let hc: HealthCheck = serde_json::from_value(
            serde_json::json!({"path": "/h", "healthyThreshold": 2, "unhealthyThreshold": 2}),
        )
        .unwrap();
        assert_eq!(s.record_probe(false, &hc), None);
        assert_eq!(s.record_probe(true, &hc), None, "streak broken");
        assert_eq!(s.record_probe(false, &hc), None);
        assert_eq!(s.record_probe(false, &hc), Some(Condition::Unhealthy));
        assert!(!s.try_use(1, &CircuitBreaker::default()));
        assert_eq!(s.record_probe(true, &hc), None);
        assert_eq!(s.record_probe(true, &hc), Some(Condition::Up));
    }
}
