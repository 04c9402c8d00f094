//! Quotas and rate limits, counted across the fleet (docs/quotas.md).
//!
//! An API key's **daily and monthly quotas** are counted by every data plane
//! locally and by the control plane for the fleet: the reporter sends this
//! data plane's running totals per window with each report (about every
//! second), and the control plane answers with the fleet's `used` and how
//! much of this data plane's total it has `counted`. A request is admitted
//! while
//!
//! ```text
//! used (fleet, as last heard) + admitted here − counted (already in used) < quota
//! ```
//!
//! so a data plane never refuses before the fleet really used the quota,
//! and the fleet overshoots by at most what other data planes admitted in
//! the time it takes their counts to come back (the bound in the doc). When
//! the control plane is away, the same rule runs on what was last heard, and
//! the running totals (never reset while the window lasts) carry the usage
//! to the control plane once it is back.
//!
//! A key's **throttle** (N per second or per window) is split: the control
//! plane gives each data plane a share of N by the demand each reported, and
//! a data plane admits up to its share per window. The shares add up to N,
//! so the fleet admits at most N per window whatever the spread.
//!
//! The **`rateLimit` plugin** (per route or global, by address, API key or
//! header) keeps counters only here, with the limit divided by the number
//! of data planes reporting (`fleet_size`): per-client counters could be
//! millions, too many to report.
//!
//! Counters live outside the compiled snapshot (a registry by key name, by
//! plugin place), so a configuration change does not reset them. Every
//! counter is behind its own small lock: two requests contend only when
//! they count against the same key or the same client's bucket shard.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use nio_proto::model::ApiKeyQuotas;
pub use nio_proto::quota::now_secs;
use nio_proto::quota::Window;
use nio_proto::v1::{ApiKeyQuotaState, QuotaState, QuotaUsage};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

/// Windows of one key kept while their usage is not counted yet (about two
/// months of days); older ones are dropped and counted.
const MAX_WINDOWS: usize = 64;
/// Distinct clients one `rateLimit` plugin tracks per window.
const SHARDS: usize = 16;
const SHARD_CLIENTS: usize = 8_192;

static LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Data planes reporting now, as the control plane last said (1 before).
static FLEET_SIZE: AtomicU32 = AtomicU32::new(1);
/// Counted usage dropped because a key had too many windows waiting.
pub static DROPPED_WINDOWS: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a client may still do, for the `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub limit: u64,
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset: u64,
}

impl Allowance {
    /// The one a client runs out of first.
    pub fn tighter(a: Option<Allowance>, b: Allowance) -> Allowance {
        match a {
            Some(a) if a.remaining <= b.remaining => a,
            _ => b,
        }
    }

    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds).
    pub fn write(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            (&LIMIT, self.limit),
            (&REMAINING, self.remaining),
            (&RESET, self.reset.max(1)),
        ] {
            headers.insert(name.clone(), HeaderValue::from(value));
        }
    }

    /// The headers of a refusal: the allowance and `Retry-After`.
    pub fn refusal_headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = HeaderMap::new();
        self.write(&mut h);
        h.insert(
            http::header::RETRY_AFTER,
            HeaderValue::from(self.reset.max(1)),
        );
        h.into_iter().filter_map(|(n, v)| Some((n?, v))).collect()
    }
}

/// One calendar window of one key, as this data plane counts it.
#[derive(Debug)]
struct Counted {
    window: Window,
    id: u64,
    /// Admitted here in this run.
    admitted: u64,
    /// How many of `admitted` the control plane's `used` includes.
    counted: u64,
    /// The fleet's usage, as last heard.
    used: u64,
}

#[derive(Debug, Default)]
struct Throttled {
    window: u64,
    /// Admitted in `window`.
    count: u64,
    /// This data plane's share per window (`None`: not heard yet, the
    /// whole limit).
    share: Option<u64>,
    /// Running totals for the demand report.
    attempts: u64,
    admitted: u64,
}

#[derive(Debug)]
struct KeyState {
    limits: ApiKeyQuotas,
    windows: Vec<Counted>,
    throttle: Throttled,
}

impl KeyState {
    fn counted(&mut self, window: Window, id: u64) -> &mut Counted {
        let i = match self
            .windows
            .iter()
            .position(|c| c.window == window && c.id == id)
        {
            Some(i) => i,
            None => {
                if self.windows.len() >= MAX_WINDOWS {
                    let old = self.windows.remove(0);
                    DROPPED_WINDOWS.fetch_add(old.admitted - old.counted, Ordering::Relaxed);
                }
                self.windows.push(Counted {
                    window,
                    id,
                    admitted: 0,
                    counted: 0,
                    used: 0,
                });
                self.windows.len() - 1
            }
        };
        &mut self.windows[i]
    }
}

/// An API key's quota counters on this data plane.
#[derive(Debug)]
pub struct KeyUsage {
    name: String,
    state: Mutex<KeyState>,
}

/// Why a request was refused: which limit, and until when.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    /// "throttle", "daily" or "monthly".
    pub quota: &'static str,
    pub allowance: Allowance,
}

impl KeyUsage {
    /// Counts one request at `now` (seconds) if every quota allows it: the
    /// tightest allowance left, or which quota refused.
    pub fn admit(&self, now: u64) -> Result<Option<Allowance>, Refused> {
        let mut st = lock(&self.state);
        let limits = st.limits.clone();
        let mut tightest: Option<Allowance> = None;
        if let Some(t) = &limits.throttle {
            let per = t.per.as_secs().max(1);
            let window = now / per;
            let th = &mut st.throttle;
            th.attempts += 1;
            if th.window != window {
                th.window = window;
                th.count = 0;
            }
            let share = th.share.unwrap_or(t.requests);
            let reset = (window + 1) * per - now;
            if th.count >= share {
                return Err(Refused {
                    quota: "throttle",
                    allowance: Allowance {
                        limit: t.requests,
                        remaining: 0,
                        reset,
                    },
                });
            }
            tightest = Some(Allowance {
                limit: t.requests,
                remaining: share - th.count - 1,
                reset,
            });
        }
        for (window, quota) in [
            (Window::Daily, limits.daily),
            (Window::Monthly, limits.monthly),
        ] {
            let Some(quota) = quota else { continue };
            let id = window.id(now);
            let c = st.counted(window, id);
            let used = c.used + (c.admitted - c.counted);
            let allowance = Allowance {
                limit: quota,
                remaining: quota.saturating_sub(used + 1),
                reset: window.end(id) - now,
            };
            if used >= quota {
                return Err(Refused {
                    quota: window.as_str(),
                    allowance: Allowance {
                        remaining: 0,
                        ..allowance
                    },
                });
            }
            tightest = Some(Allowance::tighter(tightest, allowance));
        }
        // Every quota allows it: count it everywhere.
        if limits.throttle.is_some() {
            st.throttle.count += 1;
            st.throttle.admitted += 1;
        }
        for (window, quota) in [
            (Window::Daily, limits.daily),
            (Window::Monthly, limits.monthly),
        ] {
            if quota.is_some() {
                st.counted(window, window.id(now)).admitted += 1;
            }
        }
        Ok(tightest)
    }

    fn report(&self, now: u64, out: &mut Vec<QuotaUsage>) {
        let mut st = lock(&self.state);
        // Windows that are over and fully counted are done.
        st.windows
            .retain(|c| c.id == c.window.id(now) || c.admitted > c.counted);
        for c in &st.windows {
            out.push(QuotaUsage {
                api_key: self.name.clone(),
                window: c.window.as_str().into(),
                window_id: c.id,
                admitted: c.admitted,
                attempts: 0,
            });
        }
        if st.limits.throttle.is_some() {
            out.push(QuotaUsage {
                api_key: self.name.clone(),
                window: "throttle".into(),
                window_id: 0,
                admitted: st.throttle.admitted,
                attempts: st.throttle.attempts,
            });
        }
    }

    fn apply(&self, state: &ApiKeyQuotaState) {
        let mut st = lock(&self.state);
        for w in &state.windows {
            let Some(window) = Window::parse(&w.window) else {
                continue;
            };
            let c = st.counted(window, w.window_id);
            c.used = w.used;
            c.counted = w.counted.min(c.admitted);
        }
        if let (Some(_), Some(share)) = (&st.limits.throttle, state.throttle_share) {
            st.throttle.share = Some(share);
        }
    }

    /// Nothing left to tell the control plane.
    fn settled(&self) -> bool {
        let st = lock(&self.state);
        st.windows.iter().all(|c| c.admitted == c.counted)
    }
}

/// API keys' usage by name, across snapshots.
static KEYS: LazyLock<Mutex<HashMap<String, Arc<KeyUsage>>>> = LazyLock::new(Default::default);

/// The counters of the key `name`, with its current quotas (called when a
/// snapshot is compiled, off the request path).
pub fn key_usage(name: &str, limits: &ApiKeyQuotas) -> Arc<KeyUsage> {
    let mut keys = lock(&KEYS);
    let usage = keys
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(KeyUsage {
                name: name.to_string(),
                state: Mutex::new(KeyState {
                    limits: limits.clone(),
                    windows: Vec::new(),
                    throttle: Throttled::default(),
                }),
            })
        })
        .clone();
    let mut st = lock(&usage.state);
    if st.limits.throttle != limits.throttle {
        st.throttle.share = None;
    }
    st.limits = limits.clone();
    drop(st);
    usage
}

/// This data plane's usage for a report; forgets keys no snapshot uses
/// any more once their usage is counted.
pub fn usage_report() -> Vec<QuotaUsage> {
    let now = now_secs();
    let mut keys = lock(&KEYS);
    keys.retain(|_, k| Arc::strong_count(k) > 1 || !k.settled());
    let mut out = Vec::new();
    for k in keys.values() {
        k.report(now, &mut out);
    }
    out
}

/// What the control plane answered: the fleet's usage and this data
/// plane's throttle shares.
pub fn apply(state: &QuotaState) {
    FLEET_SIZE.store(state.fleet_size.max(1), Ordering::Relaxed);
    let keys = lock(&KEYS);
    for s in &state.api_keys {
        if let Some(k) = keys.get(&s.api_key) {
            k.apply(s);
        }
    }
}

pub fn fleet_size() -> u64 {
    u64::from(FLEET_SIZE.load(Ordering::Relaxed))
}

/// The counters of one `rateLimit` plugin: per client, per window, in
/// shards.
#[derive(Debug)]
pub struct Buckets {
    shards: Vec<Mutex<HashMap<u64, (u64, u64)>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Buckets {
    fn new() -> Buckets {
        Buckets {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
        }
    }

    /// Counts one request of `client` against `limit` per `per` seconds
    /// (this data plane's part of it).
    pub fn hit(
        &self,
        client: impl Hash,
        limit: u64,
        per: u64,
        now: u64,
    ) -> Result<Allowance, Allowance> {
        let local = limit.div_ceil(fleet_size());
        let window = now / per;
        let reset = (window + 1) * per - now;
        let h = self.hasher.hash_one(client);
        let mut shard = lock(&self.shards[(h as usize) % SHARDS]);
        if shard.len() >= SHARD_CLIENTS && !shard.contains_key(&h) {
            shard.retain(|_, (w, _)| *w == window);
        }
        let allowance = |count: u64| Allowance {
            limit,
            remaining: local.saturating_sub(count),
            reset,
        };
        if shard.len() >= SHARD_CLIENTS && !shard.contains_key(&h) {
            // Too many clients in this window: this one is not tracked.
            return Ok(allowance(0));
        }
        let entry = shard.entry(h).or_insert((window, 0));
        if entry.0 != window {
            *entry = (window, 0);
        }
        if entry.1 >= local {
            return Err(allowance(local));
        }
        entry.1 += 1;
        Ok(allowance(entry.1))
    }
}

/// `rateLimit` plugins' counters by their place in the configuration.
static BUCKETS: LazyLock<Mutex<HashMap<String, Weak<Buckets>>>> = LazyLock::new(Default::default);

/// The counters for the plugin at `place` (kept across snapshots while
/// some runtime uses them).
pub fn buckets(place: &str) -> Arc<Buckets> {
    let mut all = lock(&BUCKETS);
    if let Some(b) = all.get(place).and_then(Weak::upgrade) {
        return b;
    }
    all.retain(|_, w| w.strong_count() > 0);
    let b = Arc::new(Buckets::new());
    all.insert(place.to_string(), Arc::downgrade(&b));
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use nio_proto::model::Throttle;
    use nio_proto::v1::QuotaWindowState;
    use std::time::Duration;

    fn usage(quotas: ApiKeyQuotas) -> KeyUsage {
        KeyUsage {
            name: "k".into(),
            state: Mutex::new(KeyState {
                limits: quotas,
                windows: Vec::new(),
                throttle: Throttled::default(),
            }),
        }
    }

    #[test]
    fn a_daily_quota_counts_the_fleet_and_this_data_plane() {
        let k = usage(ApiKeyQuotas {
            daily: Some(10),
            ..Default::default()
        });
        let now = 1_795_867_200;
        for _ in 0..4 {
            k.admit(now).unwrap();
        }
        let mut out = Vec::new();
        k.report(now, &mut out);
        assert_eq!(out[0].admitted, 4);
        // The fleet used 8, 3 of them ours; one more of ours since.
        k.apply(&ApiKeyQuotaState {
            api_key: "k".into(),
            windows: vec![QuotaWindowState {
                window: "daily".into(),
                window_id: Window::Daily.id(now),
                used: 8,
                counted: 3,
            }],
            throttle_share: None,
        });
        // 8 + (4 - 3) = 9 used: one left.
        let a = k.admit(now).unwrap().unwrap();
        assert_eq!((a.limit, a.remaining, a.reset), (10, 0, 12 * 3600));
        let r = k.admit(now).unwrap_err();
        assert_eq!(r.quota, "daily");
        assert_eq!(r.allowance.remaining, 0);
        // The next day starts from nothing heard.
        assert!(k.admit(now + 12 * 3600).is_ok());
    }

    #[test]
    fn a_throttle_admits_the_share_per_window() {
        let k = usage(ApiKeyQuotas {
            throttle: Some(Throttle {
                requests: 10,
                per: Duration::from_secs(1),
            }),
            ..Default::default()
        });
        k.apply(&ApiKeyQuotaState {
            api_key: "k".into(),
            windows: vec![],
            throttle_share: Some(4),
        });
        let now = 1000;
        let admitted = (0..10).filter(|_| k.admit(now).is_ok()).count();
        assert_eq!(admitted, 4);
        assert!(k.admit(now + 1).is_ok());
        let mut out = Vec::new();
        k.report(now + 1, &mut out);
        assert_eq!((out[0].attempts, out[0].admitted), (11, 5));
    }

    #[test]
    fn rate_limit_buckets_per_client_and_window() {
        let b = Buckets::new();
        let now = 100;
        for i in 0..3 {
            assert_eq!(b.hit("a", 3, 10, now).unwrap().remaining, 2 - i);
        }
        let refused = b.hit("a", 3, 10, now).unwrap_err();
        assert_eq!((refused.remaining, refused.reset), (0, 10));
        assert!(b.hit("b", 3, 10, now).is_ok());
        assert!(b.hit("a", 3, 10, now + 10).is_ok());
    }
}
