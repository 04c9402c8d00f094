// Overview: the fleet at a glance, the current revision, each route's
// request rate, error rate and latency (charted from successive readings of
// `GET /api/v1/stats`), and recent alerts.

import { html, useState } from '/ui/vendor/preact-htm.js';
import { api } from '/ui/api.js';
import { Badge, ErrorBox, Page, Spark, Table, ago, usePoll, useReady } from '/ui/components.js';

const POINTS = 30;
// Kept across visits to the page, so the charts do not start empty again.
const history = { last: null, routes: {} };

/** The latency under which `q` of the requests between two readings finished (ms, from bucket bounds). */
function quantile(bounds, before, after, q) {
  const counts = after.map((c, i) => c - (before[i] || 0));
  const total = counts[counts.length - 1] || 0;
  if (total <= 0) return 0;
  const i = counts.findIndex((c) => c >= q * total);
  return i < bounds.length ? bounds[i] : bounds[bounds.length - 1];
}

function record(stats) {
  const prev = history.last;
  history.last = stats;
  if (!prev) return;
  const dt = (stats.timeMs - prev.timeMs) / 1000;
  if (dt <= 0) return;
  const before = Object.fromEntries(prev.routes.map((r) => [r.route, r]));
  for (const r of stats.routes) {
    const b = before[r.route] || { requests: 0, byClass: [0, 0, 0, 0, 0], durationUs: 0, latencyBuckets: [] };
    // A data plane that restarted reports from zero again: no negative rates.
    const n = Math.max(0, r.requests - b.requests);
    const errors = Math.max(0, r.byClass[4] - b.byClass[4]);
    const h = history.routes[r.route] || (history.routes[r.route] = { rate: [], errors: [], p95: [], mean: [] });
    const push = (a, v) => { a.push(v); if (a.length > POINTS) a.shift(); };
    push(h.rate, n / dt);
    push(h.errors, n ? (100 * errors) / n : 0);
    push(h.p95, n ? quantile(stats.latencyBucketsMs, b.latencyBuckets, r.latencyBuckets, 0.95) : 0);
    push(h.mean, n ? Math.max(0, r.durationUs - b.durationUs) / n / 1000 : 0);
    h.total = r.requests;
  }
}

function Stat({ label, value, tone, children, id }) {
  return html`<div class=${`stat ${tone || ''}`} id=${id}><div class="stat-label">${label}</div><div class="stat-value">${value}</div>${children}</div>`;
}

export function Overview() {
  const [fleet, setFleet] = useState(null);
  const [, setTick] = useState(0);
  const [alerts, setAlerts] = useState(null);
  const [error, setError] = useState(null);
  usePoll(async () => {
    try {
      const [f, s] = await Promise.all([api('/api/v1/dataplanes'), api('/api/v1/stats')]);
      record(s);
      setFleet(f);
      setTick((t) => t + 1);
      setError(null);
    } catch (e) { setError(e); throw e; }
  }, 2000);
  usePoll(async () => setAlerts((await api('/api/v1/events?kinds=alert&limit=8')).items.slice().reverse()), 10000);
  useReady('overview', fleet !== null && alerts !== null);

  const planes = fleet?.items || [];
  const connected = planes.filter((p) => p.connected);
  const current = connected.filter((p) => p.appliedRevision === fleet.revision);
  const nacks = planes.filter((p) => p.lastNack && p.lastNack.revision >= p.appliedRevision);
  const routes = Object.entries(history.routes).sort(([a], [b]) => a.localeCompare(b));
  const last = (a) => (a.length ? a[a.length - 1] : 0);
  const totalRate = routes.reduce((s, [, h]) => s + last(h.rate), 0);
  return html`<${Page} title="Overview">
    <${ErrorBox} error=${error} />
    <div class="stats">
      <${Stat} id="stat-revision" label="Current revision" value=${fleet ? fleet.revision : '…'} />
      <${Stat} id="stat-fleet" label="Data planes connected" value=${fleet ? `${connected.length} / ${planes.length}` : '…'} tone=${fleet && connected.length < planes.length ? 'warn' : ''}>
        <a href="#/dataplanes" class="muted">${fleet ? `${current.length} on the latest revision, ${connected.length - current.length} lagging` : ''}</a>
      <//>
      <${Stat} label="NACKs" value=${fleet ? nacks.length : '…'} tone=${nacks.length ? 'bad' : ''}>
        <span class="muted">${nacks.length ? nacks.map((p) => p.id).join(', ') : 'every data plane accepted its last push'}</span>
      <//>
      <${Stat} label="Requests / s (fleet)" value=${totalRate.toFixed(1)} />
    </div>
    <h2>Traffic per route</h2>
    <p class="muted">Rates from the data planes' reports, read every 2 s; the charts keep the last ${POINTS} readings.</p>
    <${Table} id="route-traffic" head=${['Route', 'Requests / s', 'Errors (5xx %)', 'Latency p95 (ms)', 'Mean (ms)', 'Total']}
      empty=${history.last ? 'No traffic reported yet.' : 'Waiting for a second reading…'}
      rows=${routes.map(([name, h]) => html`<tr>
        <th scope="row"><a href=${`#/routes/${name}`}>${name}</a></th>
        <td><${Spark} values=${h.rate} label="requests per second" /></td>
        <td class=${last(h.errors) > 1 ? 'bad' : ''}><${Spark} values=${h.errors} label="error rate" max=${5} format=${(v) => `${v.toFixed(1)} %`} /></td>
        <td><${Spark} values=${h.p95} label="p95 latency" format=${(v) => (v >= 10000 ? '>10000' : v.toFixed(0))} /></td>
        <td><${Spark} values=${h.mean} label="mean latency" format=${(v) => v.toFixed(1)} /></td>
        <td>${h.total}</td></tr>`)} />
    <h2>Recent alerts</h2>
    ${alerts && alerts.length === 0 ? html`<p class="muted" id="no-alerts">No alerts. <${Badge} tone="ok">all quiet<//></p>`
      : html`<ul class="alerts">${(alerts || []).map((e) => html`<li>
          <${Badge} tone=${e.alert.severity === 'critical' || e.alert.severity === 'error' ? 'bad' : 'warn'}>${e.alert.severity}<//>
          <strong>${e.alert.alert}</strong> ${e.alert.subject}: ${e.alert.message} <small class="muted">${ago(e.time)}</small></li>`)}</ul>`}
  <//>`;
}
