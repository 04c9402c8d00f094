// Events: a live tail of the event log with filters (kinds, route, data
// plane), and the audit log of admin calls.

import { html, useEffect, useState } from '/ui/vendor/preact-htm.js';
import { api, followEvents } from '/ui/api.js';
import { Badge, ErrorBox, Page, Table, markNavigation, useReady } from '/ui/components.js';

const ALL_KINDS = ['gateway', 'audit', 'alert', 'fleet'];
const KEEP = 300;

function summary(e) {
  const b = e[e.kind] || {};
  switch (e.kind) {
    case 'gateway': return `${b.method} ${b.host}${b.path} → ${b.status} in ${b.durationMs} ms (route ${b.route || '—'})`;
    case 'audit': return `${b.actor} ${b.action} ${b.kind} ${b.name} → ${b.status}${b.newVersion ? ` (revision ${b.newVersion})` : ''}${b.message ? `: ${b.message}` : ''}`;
    case 'alert': return `${b.severity} ${b.alert} ${b.subject}: ${b.message}`;
    case 'fleet': return `${b.change}${b.revision ? ` revision ${b.revision}` : ''} ${b.message || ''}`;
    default: return JSON.stringify(b);
  }
}

const tone = (e) => {
  const b = e[e.kind] || {};
  if (e.kind === 'alert') return b.severity === 'critical' || b.severity === 'error' ? 'bad' : 'warn';
  if (b.status >= 500) return 'bad';
  if (b.status >= 400) return 'warn';
  return 'neutral';
};

function Live() {
  const [kinds, setKinds] = useState(ALL_KINDS);
  const [route, setRoute] = useState('');
  const [dataPlane, setDataPlane] = useState('');
  const [applied, setApplied] = useState({ kinds: ALL_KINDS, route: '', dataPlane: '' });
  const [events, setEvents] = useState(null);
  const [paused, setPaused] = useState(false);
  const [error, setError] = useState(null);
  useEffect(() => {
    if (paused) return undefined;
    const ctl = new AbortController();
    const q = new URLSearchParams({ kinds: applied.kinds.join(','), route: applied.route, dataPlane: applied.dataPlane });
    (async () => {
      let list = [];
      let from = null;
      // Reconnects (from the next sequence it has not seen) when the
      // stream ends, e.g. while the control plane restarts.
      while (!ctl.signal.aborted) {
        try {
          if (from === null) {
            const page = await api(`/api/v1/events?${q}&limit=100`, { signal: ctl.signal });
            list = page.items.slice().reverse();
            from = page.nextSequence;
            setEvents(list);
          }
          setError(null);
          q.set('fromSequence', from);
          await followEvents(q.toString(), (e) => {
            from = e.sequence + 1;
            list = [e, ...list].slice(0, KEEP);
            setEvents(list);
          }, ctl.signal);
        } catch (e) {
          if (e.name === 'AbortError' || ctl.signal.aborted) return;
          setError(e);
          if (e.status === 401) return;
        }
        await new Promise((r) => setTimeout(r, 2000));
      }
    })();
    return () => ctl.abort();
  }, [applied, paused]);
  useReady('events', events !== null);
  const toggleKind = (k) => setKinds(kinds.includes(k) ? kinds.filter((x) => x !== k) : [...kinds, k]);
  return html`<form class="filters" aria-label="Event filters" onSubmit=${(e) => { e.preventDefault(); setApplied({ kinds: kinds.length ? kinds : ALL_KINDS, route: route.trim(), dataPlane: dataPlane.trim() }); }}>
      <fieldset><legend>Kinds</legend>${ALL_KINDS.map((k) => html`<label class="check"><input type="checkbox" value=${k} checked=${kinds.includes(k)} onChange=${() => toggleKind(k)} /> ${k}</label>`)}</fieldset>
      <label>Route <input type="text" value=${route} onInput=${(e) => setRoute(e.target.value)} placeholder="any" /></label>
      <label>Data plane <input type="text" value=${dataPlane} onInput=${(e) => setDataPlane(e.target.value)} placeholder="any" /></label>
      <button type="submit">Apply filters</button>
      <button type="button" onClick=${() => setPaused(!paused)} aria-pressed=${paused}>${paused ? 'Resume' : 'Pause'}</button>
      <span class="muted" role="status">${paused ? 'paused' : 'live'}</span>
    </form>
    <${ErrorBox} error=${error} />
    <${Table} id="event-list" head=${['#', 'Time', 'Kind', 'Data plane', 'What']} empty=${events ? 'No event matches yet.' : 'Loading…'}
      rows=${(events || []).map((e) => html`<tr data-kind=${e.kind}>
        <td>${e.sequence}</td><td><time datetime=${e.time}>${(e.time || '').replace('T', ' ').slice(0, 19)}</time></td>
        <td><${Badge} tone=${tone(e)}>${e.kind}<//></td><td>${e.dataPlane || html`<span class="muted">control plane</span>`}</td>
        <td class="event-what">${summary(e)}</td></tr>`)} />`;
}

function Audit() {
  const [items, setItems] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => { api('/api/v1/events?kinds=audit&limit=200').then((p) => setItems(p.items.slice().reverse())).catch(setError); }, []);
  useReady('audit', items !== null);
  return html`<${ErrorBox} error=${error} />
    <${Table} id="audit-list" head=${['Time', 'Actor', 'Action', 'Resource', 'Versions', 'Status', 'Source']} empty=${items ? 'No admin call recorded yet.' : 'Loading…'}
      rows=${(items || []).map((e) => { const a = e.audit; return html`<tr>
        <td><time datetime=${e.time}>${(e.time || '').replace('T', ' ').slice(0, 19)}</time></td><td>${a.actor}</td><td>${a.action}</td>
        <td>${a.kind} ${a.name}<br /><small class="muted">${a.method} ${a.path}</small></td>
        <td>${a.oldVersion || '—'} → ${a.newVersion || '—'}</td>
        <td><${Badge} tone=${a.status >= 400 ? 'bad' : 'ok'}>${a.status}<//>${a.message && html` <small>${a.message}</small>`}</td><td>${a.sourceIp}</td></tr>`; })} />`;
}

export function Events() {
  const [tab, setTab] = useState('live');
  return html`<${Page} title="Events">
    <div class="tabs" role="tablist">
      <button type="button" role="tab" aria-selected=${tab === 'live'} onClick=${() => { markNavigation(); setTab('live'); }}>Live tail</button>
      <button type="button" role="tab" id="audit-tab" aria-selected=${tab === 'audit'} onClick=${() => { markNavigation(); setTab('audit'); }}>Audit log</button>
    </div>
    ${tab === 'live' ? html`<${Live} />` : html`<${Audit} />`}
  <//>`;
}
