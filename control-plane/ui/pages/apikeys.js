// API keys: create (the secret is shown once, in a dialog, and forgotten
// when it closes), rotate, enable/disable, delete, quota consumption and
// its reset.

import { html, useEffect, useState } from '/ui/vendor/preact-htm.js';
import { api, ApiError, resourcePath } from '/ui/api.js';
import {
  Badge, ConfirmDelete, CopyButton, Dialog, ErrorBox, Page, Search, Table, TextInput,
  ago, sortFieldErrors, splitList, usePoll, useReady,
} from '/ui/components.js';

/** `GET …/apikeys/{name}/quotas`; a 404 or no windows means no quota. */
function Quota({ name, refresh }) {
  const [q, setQ] = useState(undefined);
  // Consumption moves with traffic: read again every 3 s.
  usePoll(async () => {
    try {
      setQ((await api(`${resourcePath('apikeys', name)}/quotas`)).windows || []);
    } catch (e) {
      setQ(e instanceof ApiError && e.status === 404 ? [] : null);
    }
  }, 3000, [name, refresh]);
  if (q === undefined) return '…';
  if (q === null) return html`<span class="muted">unavailable</span>`;
  if (!q.length) return html`<span class="muted quota-none">no quota</span>`;
  return html`<ul class="quotas">${q.map((w) => {
    const share = w.limit ? w.used / w.limit : 0;
    return html`<li>
      <span class="quota-name">${w.window}${w.per ? ` (per ${w.per})` : ''}</span>
      <meter min="0" max=${w.limit} value=${w.used} high=${w.limit * 0.8} optimum="0" aria-label=${`${w.window} quota used`}></meter>
      <span class=${share >= 1 ? 'bad' : share >= 0.8 ? 'warn' : ''}>${w.used}/${w.limit}</span>
      ${w.resetsAt && html`<small class="muted"> resets ${ago(w.resetsAt)}</small>`}
    </li>`;
  })}</ul>`;
}

function SecretDialog({ shown, onClose }) {
  return html`<${Dialog} open=${!!shown} title=${shown && `Secret for ${shown.name}`} onClose=${onClose}
    actions=${html`<button type="button" class="primary" id="secret-done" onClick=${onClose}>I have stored it</button>`}>
    ${shown && html`<p><strong>Shown only now.</strong> The control plane keeps a salted hash and cannot show it again; rotate the key if it is lost.</p>
      <dl class="secret" id="secret">
        <dt>Token (send as <code>Authorization: Bearer …</code> or the key header)</dt>
        <dd><code id="secret-token">${shown.secret.token}</code> <${CopyButton} text=${shown.secret.token} /></dd>
        <dt>Client id</dt><dd><code>${shown.secret.clientId}</code> <${CopyButton} text=${shown.secret.clientId} /></dd>
        <dt>Client secret</dt><dd><code>${shown.secret.clientSecret}</code> <${CopyButton} text=${shown.secret.clientSecret} /></dd>
      </dl>`}
  <//>`;
}

export function ApiKeys() {
  const [items, setItems] = useState(null);
  const [error, setError] = useState(null);
  const [q, setQ] = useState('');
  const [form, setForm] = useState({ name: '', routes: '', daily: '' });
  const [formError, setFormError] = useState(null);
  const [secret, setSecret] = useState(null);
  const [deleting, setDeleting] = useState(null);
  const [tick, setTick] = useState(0);
  const load = async () => {
    try { setItems((await api(resourcePath('apikeys'))).items); setError(null); } catch (e) { setError(e); }
    setTick((t) => t + 1);
  };
  useEffect(() => { load(); }, []);
  useReady('apikeys', items !== null);

  const create = async (e) => {
    e.preventDefault();
    setFormError(null);
    const spec = {};
    if (splitList(form.routes).length) spec.routes = splitList(form.routes);
    if (form.daily.trim() !== '') spec.quotas = { daily: Number(form.daily) };
    try {
      const r = await api(resourcePath('apikeys'), { method: 'POST', body: { apiVersion: 'nio.dev/v1', kind: 'ApiKey', metadata: { name: form.name.trim() }, spec } });
      setSecret({ name: r.metadata.name, secret: r.secret });
      setForm({ name: '', routes: '', daily: '' });
      await load();
    } catch (err) { setFormError(err); }
  };
  const act = async (f) => {
    setError(null);
    try { await f(); await load(); } catch (e) { setError(e); }
  };
  const rotate = (name) => act(async () => {
    const r = await api(`${resourcePath('apikeys', name)}/rotate`, { method: 'POST', body: {} });
    setSecret({ name, secret: r.secret });
  });
  const resetQuota = (name) => act(() => api(`${resourcePath('apikeys', name)}/quotas/reset`, { method: 'POST' }));
  const toggle = (k) => act(() => api(resourcePath('apikeys', k.metadata.name), { method: 'PATCH', body: { spec: { enabled: k.spec.enabled === false } } }));

  const { byField, other } = sortFieldErrors(formError?.details, ['metadata.name', 'spec.routes', 'spec.quotas']);
  const needle = q.trim().toLowerCase();
  const shown = (items || []).filter((k) => !needle || JSON.stringify([k.metadata, k.spec]).toLowerCase().includes(needle));
  return html`<${Page} title="API keys">
    <form class="inline-form" onSubmit=${create} aria-label="New API key" id="new-apikey">
      <${TextInput} label="New key name" path="metadata.name" errors=${byField} value=${form.name} placeholder="mobile-app"
        onInput=${(v) => setForm({ ...form, name: v })} />
      <${TextInput} label="Routes it may call" path="spec.routes" errors=${byField} value=${form.routes} hint="comma-separated; empty: every route that takes API keys"
        onInput=${(v) => setForm({ ...form, routes: v })} />
      <${TextInput} label="Daily quota" type="number" path="spec.quotas" errors=${byField} value=${form.daily} hint="requests per UTC day; empty: none"
        onInput=${(v) => setForm({ ...form, daily: v })} />
      <button type="submit" class="primary" id="create-apikey">Create key</button>
      ${formError && (other.length || !formError.details.length) && html`<${ErrorBox} error=${{ message: formError.message, details: other }} />`}
    </form>
    <${ErrorBox} error=${error} />
    <div class="toolbar"><${Search} value=${q} onInput=${setQ} label="Search API keys" /></div>
    <${Table} id="apikey-list" head=${['Name', 'State', 'Routes', 'Secrets', 'Quota', '']} empty="No API keys yet."
      rows=${shown.map((k) => {
        const enabled = k.spec.enabled !== false;
        const secrets = k.status?.secrets || [];
        return html`<tr data-name=${k.metadata.name}>
          <th scope="row">${k.metadata.name}</th>
          <td>${enabled ? html`<${Badge} tone="ok">enabled<//>` : html`<${Badge} tone="bad">disabled<//>`}
            ${k.spec.expiresAt && html` <small class="muted">expires ${k.spec.expiresAt}</small>`}</td>
          <td>${(k.spec.routes || []).join(', ') || html`<span class="muted">any API-key route</span>`}</td>
          <td>${secrets.length}${secrets.some((s) => s.notAfter) && html` <small class="muted">(one ending)</small>`}</td>
          <td><${Quota} name=${k.metadata.name} refresh=${tick} /></td>
          <td class="row-actions">
            <button type="button" class="small" onClick=${() => rotate(k.metadata.name)}>Rotate</button>
            <button type="button" class="small" onClick=${() => toggle(k)}>${enabled ? 'Disable' : 'Enable'}</button>
            ${k.spec.quotas && html`<button type="button" class="small reset-quota" title="Start today's and this month's count from zero"
              onClick=${() => resetQuota(k.metadata.name)}>Reset quota</button>`}
            <button type="button" class="small danger" onClick=${() => setDeleting(k.metadata.name)}>Delete</button>
          </td></tr>`;
      })} />
    <${SecretDialog} shown=${secret} onClose=${() => setSecret(null)} />
    <${ConfirmDelete} what=${deleting && `API key ${deleting}`} onCancel=${() => setDeleting(null)}
      onConfirm=${async () => { await api(resourcePath('apikeys', deleting), { method: 'DELETE' }); setDeleting(null); await load(); }} />
  <//>`;
}
