//! Fleet-wide quota counting (docs/quotas.md).
//!
//! ```text
//! data plane ── DataPlaneReport{quota_usage: running totals per key+window} ──▶
//!     record(): used += total − counted-before (per data plane and run), in
//!     one sled transaction with the new totals, flushed
//! data plane ◀── ReportAck{quotas: fleet used, counted for you, your throttle share}
//! ```
//!
//! Data planes send running totals (per run, per window), not deltas, so a
//! report sent twice, or again after a control-plane restart, adds nothing
//! twice, and usage counted during an outage arrives whole after it. Daily
//! and monthly counters are persisted (tree `quota-usage`), as is what was
//! counted of each data plane's run (tree `quota-seen`): a restarted
//! control plane goes on from there.
//!
//! Throttles are not counted here: each data plane gets a share of the
//! key's throttle, by the demand the data planes reported (requests that
//! asked, per second, smoothed), the shares adding up to the limit.

use crate::events::{self, EventLog};
use crate::store::{Store, StoreError};
use nio_proto::model::{AnyResource, ApiKey, ApiKeyQuotas, Kind};
use nio_proto::quota::{now_secs, Window};
use nio_proto::v1::{ApiKeyQuotaState, QuotaState, QuotaUsage, QuotaWindowState};
use serde_json::{json, Value};
use sled::Transactional;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

/// A data plane that has not reported for this long no longer takes part
/// in throttle shares and the fleet size.
const FRESH: Duration = Duration::from_secs(5);

/// A data plane's demand for one key's throttle.
#[derive(Debug)]
struct Demand {
    run: String,
    attempts: u64,
    admitted: u64,
    at: Instant,
    /// Requests that asked, per second (smoothed).
    rate: f64,
    /// Requests admitted, per second (smoothed).
    admitted_rate: f64,
}

#[derive(Default)]
struct Live {
    /// key → data plane → demand.
    demand: HashMap<String, HashMap<String, Demand>>,
    /// When each data plane last reported.
    reported: HashMap<String, Instant>,
    /// Throttle shares in force: key → data plane → share.
    allocations: HashMap<String, BTreeMap<String, u64>>,
    /// Alerts sent: (key, window, window id, alert).
    alerted: HashSet<(String, Window, u64, &'static str)>,
}

/// Usage counted from one report (or a reset), for the other data planes.
#[derive(Debug)]
pub struct UsageChange {
    /// The data plane that reported it ("" for a reset).
    pub from: String,
    /// (key, window, window id, the fleet's new `used`).
    items: Vec<(String, Window, u64, u64)>,
}

pub struct Quotas {
    usage: sled::Tree,
    changes: tokio::sync::broadcast::Sender<Arc<UsageChange>>,
    /// The keys with quotas at a revision.
    #[allow(clippy::type_complexity)]
    quota_keys: Mutex<(u64, Arc<Vec<(String, ApiKeyQuotas)>>)>,
    seen: sled::Tree,
    store: Arc<Store>,
    events: Arc<EventLog>,
    live: Mutex<Live>,
}

fn usage_key(key: &str, window: Window, id: u64) -> Vec<u8> {
    format!("{key}\0{}\0{id:016x}", window.as_str()).into_bytes()
}

fn seen_key(dp: &str, run: &str, key: &str, window: Window, id: u64) -> Vec<u8> {
    format!("{dp}\0{run}\0{key}\0{}\0{id:016x}", window.as_str()).into_bytes()
}

fn number(v: Option<sled::IVec>) -> u64 {
    v.and_then(|v| v.as_ref().try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// Splits `limit` by `weights` into whole numbers adding up to `limit`
/// (largest remainders get the rest).
fn split(limit: u64, weights: &[f64]) -> Vec<u64> {
    let total: f64 = weights.iter().sum();
    if weights.is_empty() || total <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| limit as f64 * w / total).collect();
    let mut shares: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
    let mut left = limit.saturating_sub(shares.iter().sum());
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| {
        let fa = exact[a] - exact[a].floor();
        let fb = exact[b] - exact[b].floor();
        fb.total_cmp(&fa).then(a.cmp(&b))
    });
    for i in order {
        if left == 0 {
            break;
        }
        shares[i] += 1;
        left -= 1;
    }
    shares
}

impl Quotas {
    pub fn open(store: Arc<Store>, events: Arc<EventLog>) -> Result<Arc<Quotas>, StoreError> {
        Ok(Arc::new(Quotas {
            usage: store.open_tree("quota-usage")?,
            changes: tokio::sync::broadcast::channel(1024).0,
            quota_keys: Mutex::default(),
            seen: store.open_tree("quota-seen")?,
            store,
            events,
            live: Mutex::default(),
        }))
    }

    /// The API keys that have quotas in `config` (at `revision`), worked
    /// out once per revision rather than per report.
    fn keys_with_quotas(
        &self,
        revision: u64,
        config: &nio_proto::model::Config,
    ) -> Arc<Vec<(String, ApiKeyQuotas)>> {
        let mut cache = self.quota_keys.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0 != revision || revision == 0 {
            let keys = config
                .of_kind(Kind::ApiKey)
                .filter_map(|r| match r {
                    AnyResource::ApiKey(k) => {
                        Some((k.metadata.name.clone(), k.spec.quotas.clone()?))
                    }
                    _ => None,
                })
                .collect();
            *cache = (revision, Arc::new(keys));
        }
        cache.1.clone()
    }

    /// Usage counted from now on, as it is counted.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<UsageChange>> {
        self.changes.subscribe()
    }

    fn live(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn api_key(&self, name: &str) -> Option<ApiKey> {
        match self.store.current().config.get(Kind::ApiKey, name) {
            Some(AnyResource::ApiKey(k)) => Some(k.clone()),
            _ => None,
        }
    }

    /// Adds what a data plane's report counted that was not counted yet
    /// (stored and flushed before it returns), and answers with the fleet's
    /// state for that data plane. Blocking (sled): call off the runtime.
    pub fn record(
        &self,
        dp: &str,
        run: &str,
        usage: &[QuotaUsage],
    ) -> Result<QuotaState, StoreError> {
        let windows: Vec<(&QuotaUsage, Window)> = usage
            .iter()
            .filter_map(|u| Some((u, Window::parse(&u.window)?)))
            .collect();
        let added: Vec<(String, Window, u64, u64)> = (&self.usage, &self.seen)
            .transaction(|(tx_usage, tx_seen)| {
                let mut added = Vec::new();
                for (u, window) in &windows {
                    let sk = seen_key(dp, run, &u.api_key, *window, u.window_id);
                    let before = number(tx_seen.get(&sk)?);
                    if u.admitted <= before {
                        continue;
                    }
                    let uk = usage_key(&u.api_key, *window, u.window_id);
                    let used = number(tx_usage.get(&uk)?) + (u.admitted - before);
                    tx_usage.insert(uk, &used.to_be_bytes())?;
                    tx_seen.insert(sk, &u.admitted.to_be_bytes())?;
                    added.push((u.api_key.clone(), *window, u.window_id, used));
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(added)
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(e) => StoreError::Sled(e),
                sled::transaction::TransactionError::Abort(()) => StoreError::Aborted,
            })?;
        if !added.is_empty() {
            self.usage.flush()?;
        }
        let now = Instant::now();
        {
            let mut live = self.live();
            live.reported.insert(dp.to_string(), now);
            for u in usage.iter().filter(|u| u.window == "throttle") {
                let per_dp = live.demand.entry(u.api_key.clone()).or_default();
                match per_dp.get_mut(dp) {
                    Some(d) if d.run == run => {
                        let secs = now.duration_since(d.at).as_secs_f64();
                        if secs >= 0.05 {
                            let rate = u.attempts.saturating_sub(d.attempts) as f64 / secs;
                            let admitted = u.admitted.saturating_sub(d.admitted) as f64 / secs;
                            // Smoothed, so shares do not swing with every report.
                            d.rate = (d.rate + rate) / 2.0;
                            d.admitted_rate = (d.admitted_rate + admitted) / 2.0;
                            (d.attempts, d.admitted, d.at) = (u.attempts, u.admitted, now);
                        }
                    }
                    _ => {
                        per_dp.insert(
                            dp.to_string(),
                            Demand {
                                run: run.to_string(),
                                attempts: u.attempts,
                                admitted: u.admitted,
                                at: now,
                                rate: 0.0,
                                admitted_rate: 0.0,
                            },
                        );
                    }
                }
            }
        }
        for (key, window, id, used) in &added {
            self.maybe_alert(key, *window, *id, *used);
        }
        if !added.is_empty() {
            let _ = self.changes.send(Arc::new(UsageChange {
                from: dp.to_string(),
                items: added,
            }));
        }
        self.state_for(dp, run, &windows)
    }

    /// A `quota-almost-exceeded` alert when a quota passes the key's
    /// threshold, `quota-exceeded` when it is used up: once per window.
    fn maybe_alert(&self, key: &str, window: Window, id: u64, used: u64) {
        if id != window.id(now_secs()) {
            return;
        }
        let Some(k) = self.api_key(key) else { return };
        let Some(q) = &k.spec.quotas else { return };
        let Some(limit) = (match window {
            Window::Daily => q.daily,
            Window::Monthly => q.monthly,
        }) else {
            return;
        };
        let (alert, severity) = if used >= limit {
            ("quota-exceeded", "warning")
        } else if used * 100 >= limit * u64::from(q.alert_at_percent) {
            ("quota-almost-exceeded", "warning")
        } else {
            return;
        };
        if !self
            .live()
            .alerted
            .insert((key.to_string(), window, id, alert))
        {
            return;
        }
        let mut e = events::alert(
            alert,
            severity,
            &format!("apikey/{key}"),
            format!(
                "API key {key} used {used} of its {} quota of {limit}",
                window.as_str()
            ),
        );
        if let Some(nio_proto::v1::event::Kind::Alert(a)) = &mut e.kind {
            a.labels.insert("window".into(), window.as_str().into());
            a.labels.insert("used".into(), used.to_string());
            a.labels.insert("limit".into(), limit.to_string());
        }
        self.events.append(vec![e]);
    }

    /// Data planes that reported lately.
    fn fresh(live: &Live, now: Instant) -> impl Iterator<Item = &String> {
        live.reported
            .iter()
            .filter(move |(_, at)| now.duration_since(**at) < FRESH)
            .map(|(dp, _)| dp)
    }

    /// Every fresh data plane's share of `key`'s throttle of `limit`.
    ///
    /// Shares follow demand with some inertia: the allocation in force is
    /// kept while the same data planes report and none would move by more
    /// than a tenth of the limit. Every move lets a window admit more than
    /// the limit for a moment (one data plane still on its old, larger
    /// share while another has its new one), so shares move only for a
    /// real change in where the traffic goes.
    fn shares(live: &mut Live, key: &str, limit: u64, now: Instant) -> BTreeMap<String, u64> {
        let Some(per_dp) = live.demand.get(key) else {
            return BTreeMap::new();
        };
        let fresh: Vec<(&String, &Demand)> = per_dp
            .iter()
            .filter(|(_, d)| now.duration_since(d.at) < FRESH)
            .collect();
        let total: f64 = fresh.iter().map(|(_, d)| d.rate).sum();
        // Idle data planes keep a little, so a client moving to one is not
        // refused before the next report.
        let floor = (total / (10.0 * fresh.len().max(1) as f64)).max(0.001);
        let weights: Vec<f64> = fresh.iter().map(|(_, d)| d.rate + floor).collect();
        let wanted: BTreeMap<String, u64> = fresh
            .iter()
            .map(|(dp, _)| (*dp).clone())
            .zip(split(limit, &weights))
            .collect();
        let slack = (limit / 10).max(1);
        let current = live.allocations.entry(key.to_string()).or_default();
        let keep = current.len() == wanted.len()
            && current.values().sum::<u64>() == limit
            && wanted
                .iter()
                .all(|(dp, w)| current.get(dp).is_some_and(|c| c.abs_diff(*w) <= slack));
        if !keep {
            *current = wanted;
        }
        current.clone()
    }

    fn state_for(
        &self,
        dp: &str,
        run: &str,
        reported: &[(&QuotaUsage, Window)],
    ) -> Result<QuotaState, StoreError> {
        let now = now_secs();
        let config = self.store.current();
        let mut live = self.live();
        let instant = Instant::now();
        let mut keys: BTreeMap<&str, ApiKeyQuotaState> = BTreeMap::new();
        let window_state =
            |key: &str, window: Window, id: u64| -> Result<QuotaWindowState, StoreError> {
                Ok(QuotaWindowState {
                    window: window.as_str().into(),
                    window_id: id,
                    used: number(self.usage.get(usage_key(key, window, id))?),
                    counted: number(self.seen.get(seen_key(dp, run, key, window, id))?),
                })
            };
        let with_quotas = self.keys_with_quotas(config.revision, &config.config);
        for (name, q) in with_quotas.iter() {
            let name = name.as_str();
            let mut state = ApiKeyQuotaState {
                api_key: name.to_string(),
                ..Default::default()
            };
            for (window, limit) in [(Window::Daily, q.daily), (Window::Monthly, q.monthly)] {
                if limit.is_some() {
                    state
                        .windows
                        .push(window_state(name, window, window.id(now))?);
                }
            }
            if let Some(t) = &q.throttle {
                let share = Self::shares(&mut live, name, t.requests, instant)
                    .get(dp)
                    .copied()
                    // Not heard from yet: an equal part.
                    .unwrap_or(
                        t.requests
                            .div_ceil(Self::fresh(&live, instant).count().max(1) as u64),
                    );
                state.throttle_share = Some(share);
            }
            keys.insert(name, state);
        }
        // Past windows the data plane still reports, so it can forget them
        // once counted.
        for (u, window) in reported {
            if u.window_id == window.id(now) {
                continue;
            }
            let w = window_state(&u.api_key, *window, u.window_id)?;
            match keys.get_mut(u.api_key.as_str()) {
                Some(s) => s.windows.push(w),
                None => {
                    keys.insert(
                        &u.api_key,
                        ApiKeyQuotaState {
                            api_key: u.api_key.clone(),
                            windows: vec![w],
                            throttle_share: None,
                        },
                    );
                }
            }
        }
        Ok(QuotaState {
            fleet_size: Self::fresh(&live, instant).count().max(1) as u32,
            api_keys: keys.into_values().collect(),
        })
    }

    /// What `changes` (others' usage) means for the data plane `dp`: the
    /// keys they touched, with the fleet's latest count and what it
    /// counted of this data plane. Blocking (sled).
    pub fn pushed(
        &self,
        dp: &str,
        run: &str,
        changes: &[Arc<UsageChange>],
    ) -> Result<QuotaState, StoreError> {
        let mut latest: BTreeMap<(&str, &str, u64), (Window, u64)> = BTreeMap::new();
        for (key, window, id, used) in changes.iter().flat_map(|c| &c.items) {
            // Later changes are newer.
            latest.insert((key.as_str(), window.as_str(), *id), (*window, *used));
        }
        let mut keys: BTreeMap<&str, ApiKeyQuotaState> = BTreeMap::new();
        for ((key, _, id), (window, used)) in latest {
            let counted = number(self.seen.get(seen_key(dp, run, key, window, id))?);
            keys.entry(key)
                .or_insert_with(|| ApiKeyQuotaState {
                    api_key: key.to_string(),
                    ..Default::default()
                })
                .windows
                .push(QuotaWindowState {
                    window: window.as_str().into(),
                    window_id: id,
                    used,
                    counted,
                });
        }
        let live = self.live();
        Ok(QuotaState {
            fleet_size: Self::fresh(&live, Instant::now()).count().max(1) as u32,
            api_keys: keys.into_values().collect(),
        })
    }

    /// The key's quotas, what the fleet used and what is left, for the
    /// admin API (`None`: no such key).
    pub fn view(&self, name: &str) -> Result<Option<Value>, StoreError> {
        let Some(k) = self.api_key(name) else {
            return Ok(None);
        };
        let now = now_secs();
        let mut windows = Vec::new();
        let Some(q) = &k.spec.quotas else {
            return Ok(Some(json!({"apiKey": name, "windows": windows})));
        };
        if let Some(t) = &q.throttle {
            let mut live = self.live();
            let instant = Instant::now();
            let per = t.per.as_secs_f64();
            let used = live.demand.get(name).map_or(0.0, |per_dp| {
                per_dp
                    .values()
                    .filter(|d| instant.duration_since(d.at) < FRESH)
                    .map(|d| d.admitted_rate * per)
                    .sum()
            });
            let used = used.round() as u64;
            windows.push(json!({
                "window": "throttle",
                "limit": t.requests,
                "per": humantime::format_duration(t.per).to_string(),
                "used": used,
                "remaining": t.requests.saturating_sub(used),
                "shares": Self::shares(&mut live, name, t.requests, instant),
            }));
        }
        for (window, limit) in [(Window::Daily, q.daily), (Window::Monthly, q.monthly)] {
            let Some(limit) = limit else { continue };
            let id = window.id(now);
            let used = number(self.usage.get(usage_key(name, window, id))?);
            let resets = UNIX_EPOCH + Duration::from_secs(window.end(id));
            windows.push(json!({
                "window": window.as_str(),
                "limit": limit,
                "used": used,
                "remaining": limit.saturating_sub(used),
                "resetsAt": humantime::format_rfc3339_seconds(resets).to_string(),
            }));
        }
        Ok(Some(json!({"apiKey": name, "windows": windows})))
    }

    /// Sets the current window's usage of the key back to zero (both
    /// windows, or the one named); `false`: no such key.
    pub fn reset(&self, name: &str, only: Option<Window>) -> Result<bool, StoreError> {
        if self.api_key(name).is_none() {
            return Ok(false);
        }
        let now = now_secs();
        for window in [Window::Daily, Window::Monthly] {
            if only.is_some_and(|w| w != window) {
                continue;
            }
            let id = window.id(now);
            self.usage
                .insert(usage_key(name, window, id), &0u64.to_be_bytes())?;
            self.live()
                .alerted
                .retain(|(k, w, i, _)| !(k == name && *w == window && *i == id));
        }
        self.usage.flush()?;
        Ok(true)
    }

    /// Forgets windows that ended more than `keep` windows ago (run once a
    /// day).
    pub fn prune(&self) {
        let now = now_secs();
        let old = |key: &[u8]| -> bool {
            let text = String::from_utf8_lossy(key);
            let mut parts = text.rsplitn(3, '\0');
            let (Some(id), Some(window)) = (parts.next(), parts.next()) else {
                return false;
            };
            let (Some(window), Ok(id)) = (Window::parse(window), u64::from_str_radix(id, 16))
            else {
                return false;
            };
            let keep = match window {
                Window::Daily => 62,
                Window::Monthly => 13,
            };
            id + keep < window.id(now)
        };
        for tree in [&self.usage, &self.seen] {
            for key in tree.iter().keys().flatten() {
                if old(&key) {
                    let _ = tree.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Retention;

    fn used(q: &Quotas, window: &str) -> u64 {
        let view = q.view("client").unwrap().unwrap();
        view["windows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["window"] == window)
            .unwrap()["used"]
            .as_u64()
            .unwrap()
    }

    #[tokio::test]
    async fn running_totals_count_once_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let events = EventLog::open(&store, Retention::default()).unwrap();
            (store.clone(), Quotas::open(store, events).unwrap())
        };
        let (store, q) = open();
        let key = AnyResource::from_value(serde_json::json!({
            "apiVersion": "nio.dev/v1", "kind": "ApiKey", "metadata": {"name": "client"},
            "spec": {"quotas": {"daily": 100, "monthly": 1000}}
        }))
        .unwrap();
        store.create(key).await.unwrap();
        let now = now_secs();
        let day = Window::Daily.id(now);
        let usage = |admitted| {
            vec![QuotaUsage {
                api_key: "client".into(),
                window: "daily".into(),
                window_id: day,
                admitted,
                attempts: 0,
            }]
        };
        q.record("dp-1", "run-a", &usage(10)).unwrap();
        // The same total again (a report resent): nothing more.
        let state = q.record("dp-1", "run-a", &usage(10)).unwrap();
        assert_eq!(used(&q, "daily"), 10);
        let w = &state.api_keys[0].windows[0];
        assert_eq!((w.used, w.counted), (10, 10));
        // Another data plane, and a new run of the first; what dp-2 counted
        // is passed on to dp-1 between its reports.
        let mut changes = q.subscribe();
        q.record("dp-2", "run-b", &usage(5)).unwrap();
        let change = changes.try_recv().unwrap();
        assert_eq!(change.from, "dp-2");
        let pushed = q.pushed("dp-1", "run-a", &[change]).unwrap();
        let w = &pushed.api_keys[0].windows[0];
        assert_eq!((w.used, w.counted), (15, 10));
        assert_eq!(pushed.api_keys[0].throttle_share, None);
        let state = q.record("dp-1", "run-c", &usage(3)).unwrap();
        assert_eq!(used(&q, "daily"), 18);
        assert_eq!(state.api_keys[0].windows[0].counted, 3);
        assert_eq!(used(&q, "monthly"), 0, "only what was reported for it");
        drop((q, store));
        let (_store, q) = open();
        assert_eq!(used(&q, "daily"), 18);
        q.record("dp-1", "run-c", &usage(4)).unwrap();
        assert_eq!(used(&q, "daily"), 19);
        assert!(q.reset("client", Some(Window::Daily)).unwrap());
        assert_eq!(used(&q, "daily"), 0);
        q.record("dp-1", "run-c", &usage(6)).unwrap();
        assert_eq!(used(&q, "daily"), 2, "after a reset, only what came since");
    }

    #[test]
    fn shares_follow_demand_with_inertia() {
        let mut live = Live::default();
        let now = Instant::now();
        let demand = |live: &mut Live, dp: &str, rate: f64| {
            live.demand.entry("k".into()).or_default().insert(
                dp.into(),
                Demand {
                    run: "r".into(),
                    attempts: 0,
                    admitted: 0,
                    at: now,
                    rate,
                    admitted_rate: 0.0,
                },
            );
        };
        demand(&mut live, "a", 100.0);
        demand(&mut live, "b", 100.0);
        let first = Quotas::shares(&mut live, "k", 50, now);
        assert_eq!(first.values().copied().collect::<Vec<_>>(), [25, 25]);
        // A little noise in the demand: the same shares.
        demand(&mut live, "a", 110.0);
        assert_eq!(Quotas::shares(&mut live, "k", 50, now), first);
        // The traffic moved: so do the shares, still adding up to 50.
        demand(&mut live, "a", 300.0);
        let moved = Quotas::shares(&mut live, "k", 50, now);
        assert!(moved["a"] > 30, "{moved:?}");
        assert_eq!(moved.values().sum::<u64>(), 50);
    }

    #[test]
    fn shares_add_up_to_the_limit() {
        assert_eq!(split(50, &[1.0, 1.0]), vec![25, 25]);
        assert_eq!(split(50, &[3.0, 1.0]), vec![38, 12]);
        assert_eq!(split(10, &[1.0, 1.0, 1.0]), vec![4, 3, 3]);
        assert_eq!(split(1, &[1.0, 1.0, 1.0]).iter().sum::<u64>(), 1);
        assert_eq!(split(7, &[]), Vec::<u64>::new());
    }
}
