// Certificates (what each is, and when it expires) and the data-plane fleet.

import { html, useEffect, useState } from '/ui/vendor/preact-htm.js';
import { api, resourcePath } from '/ui/api.js';
import { Badge, ErrorBox, Page, Search, Table, ago, daysLeft, showLabels, until, useFleet, useReady } from '/ui/components.js';

/** Expiry with its urgency: past (bad), within `warnDays` (warn), later (ok). */
export function Expiry({ time, warnDays = 30 }) {
  if (!time) return html`<span class="muted">—</span>`;
  const d = daysLeft(time);
  const tone = d < 0 ? 'bad' : d < warnDays ? 'warn' : 'ok';
  return html`<span class=${`expiry ${tone}`} title=${time}>${time.slice(0, 10)} <${Badge} tone=${tone}>${d < 0 ? 'expired' : `in ${until(time)}`}<//></span>`;
}

export function Certificates() {
  const [items, setItems] = useState(null);
  const [error, setError] = useState(null);
  const [q, setQ] = useState('');
  useEffect(() => { api(resourcePath('certificates')).then((r) => setItems(r.items)).catch(setError); }, []);
  useReady('certificates', items !== null || error !== null);
  const needle = q.trim().toLowerCase();
  const shown = (items || []).filter((c) => !needle || JSON.stringify([c.metadata, c.status]).toLowerCase().includes(needle));
  return html`<${Page} title="Certificates">
    <${ErrorBox} error=${error} />
    <div class="toolbar"><${Search} value=${q} onInput=${setQ} label="Search certificates" /></div>
    <${Table} id="certificate-list" head=${['Name', 'Subject', 'SANs', 'Issuer', 'Expires', 'Key']} empty="No certificates yet."
      rows=${shown.map((c) => {
        const s = c.status || {};
        return html`<tr data-name=${c.metadata.name}>
          <th scope="row">${c.metadata.name}</th>
          <td>${s.subject || html`<span class="bad">${s.error || 'unreadable'}</span>`}${s.isCa && html` <${Badge}>CA<//>`}</td>
          <td>${(s.sans || []).join(', ')}</td>
          <td>${s.issuer}</td>
          <td><${Expiry} time=${s.notAfter} /></td>
          <td>${s.hasPrivateKey ? 'yes' : html`<span class="muted">trust only</span>`}</td>
        </tr>`;
      })} />
  <//>`;
}

export function DataPlanes() {
  const fleet = useFleet(2000);
  const [q, setQ] = useState('');
  const [error, setError] = useState(null);
  const [revoking, setRevoking] = useState(null);
  useReady('dataplanes', fleet !== null);
  const needle = q.trim().toLowerCase();
  const items = (fleet?.items || []).filter((p) => !needle || JSON.stringify(p).toLowerCase().includes(needle));
  const revision = fleet?.revision ?? 0;
  return html`<${Page} title="Data planes" actions=${fleet && html`<span class="muted">current revision <strong>${revision}</strong></span>`}>
    <${ErrorBox} error=${error} />
    <div class="toolbar"><${Search} value=${q} onInput=${setQ} label="Search data planes" /></div>
    <${Table} id="dataplane-list" head=${['Id', 'Status', 'Labels', 'Version', 'Applied revision', 'Lag', 'Last seen', 'Certificate expires', 'Last NACK', '']}
      empty=${fleet ? 'No data plane has connected yet.' : 'Loading…'}
      rows=${items.map((p) => {
        const lag = p.connected ? revision - p.appliedRevision : null;
        const tone = p.status === 'connected' ? (lag === 0 ? 'ok' : 'warn') : p.status === 'left' ? 'neutral' : 'bad';
        return html`<tr data-id=${p.id}>
          <th scope="row">${p.id}<br /><small class="muted">${p.address}</small></th>
          <td><${Badge} tone=${tone}>${p.status}<//>${p.lastError && html`<br /><small class="bad">${p.lastError}</small>`}</td>
          <td>${showLabels(p.labels) || html`<span class="muted">none</span>`}</td>
          <td>${p.version}</td>
          <td class="applied-revision">${p.appliedRevision}</td>
          <td>${lag === null ? '—' : lag === 0 ? html`<${Badge} tone="ok">current<//>` : html`<${Badge} tone="warn">${lag} behind<//>`}</td>
          <td title=${p.lastSeen}>${ago(p.lastSeen)}</td>
          <td>${p.certificateExpires ? html`<${Expiry} time=${p.certificateExpires} warnDays=${7} />` : html`<span class="muted">plaintext</span>`}</td>
          <td>${p.lastNack ? html`<span class="bad">rev ${p.lastNack.revision}: ${p.lastNack.reason}</span> <small class="muted">${ago(p.lastNack.at)}</small>` : html`<span class="muted">none</span>`}</td>
          <td class="row-actions">${p.certificateExpires && (revoking === p.id
            ? html`<button type="button" class="small danger" onClick=${async () => {
                try { await api(`/api/v1/dataplanes/${encodeURIComponent(p.id)}/revoke`, { method: 'POST' }); setRevoking(null); } catch (e) { setError(e); }
              }}>Confirm revoke</button> <button type="button" class="small" onClick=${() => setRevoking(null)}>Cancel</button>`
            : html`<button type="button" class="small" onClick=${() => setRevoking(p.id)}>Revoke…</button>`)}</td>
        </tr>`;
      })} />
  <//>`;
}
