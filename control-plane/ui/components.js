// Shared pieces: page frame, form fields with their API error, dialogs,
// tables, charts, and the formatting every page uses.

import { html, useEffect, useRef, useState } from '/ui/vendor/preact-htm.js';
import { api } from '/ui/api.js';

// --- render timing (measured, shown in docs/ui.md; never asserted) ---
let navStart = 0;
export function markNavigation() { navStart = performance.now(); }
/** A page calls this once its data is on screen. */
export function markReady(page) {
  const ms = Math.round(performance.now() - navStart);
  window.nioRenderMs = { ...(window.nioRenderMs || {}), [page]: ms };
  const main = document.getElementById('main');
  if (main) main.dataset.ready = page;
}

export function useReady(page, loaded) {
  useEffect(() => { if (loaded) markReady(page); }, [page, loaded]);
}

/** Calls `load` now and every `ms` while the component is mounted. */
export function usePoll(load, ms, deps = []) {
  useEffect(() => {
    let stop = false;
    let timer;
    const tick = async () => {
      try { await load(); } catch (_) { /* shown by the page's own state */ }
      if (!stop) timer = setTimeout(tick, ms);
    };
    tick();
    return () => { stop = true; clearTimeout(timer); };
  }, deps);
}

export function Page({ title, actions, children }) {
  useEffect(() => { document.title = `${title} · Nio console`; }, [title]);
  return html`<section class="page">
    <header class="page-head"><h1>${title}</h1><div class="actions">${actions}</div></header>
    ${children}
  </section>`;
}

export function ErrorBox({ error }) {
  if (!error) return null;
  const details = error.details || [];
  return html`<div class="error-box" role="alert">
    <strong>${error.message}</strong>
    ${details.length > 0 && html`<ul>${details.map((d) => html`<li><code>${d.field}</code>: ${d.message}</li>`)}</ul>`}
  </div>`;
}

/**
 * The API's field errors (`details[].field`, e.g. `spec.targets[0].url`)
 * sorted to the form fields they belong to: each goes to the field with the
 * longest path that is a prefix of it; the rest are returned as `other`.
 */
export function sortFieldErrors(details, paths) {
  const byField = {};
  const other = [];
  for (const d of details || []) {
    const f = d.field || '';
    const owner = paths
      .filter((p) => f === p || f.startsWith(p + '.') || f.startsWith(p + '['))
      .sort((a, b) => b.length - a.length)[0];
    if (owner) (byField[owner] = byField[owner] || []).push(d.message);
    else other.push(d);
  }
  return { byField, other };
}

let fieldIds = 0;
export function Field({ label, path, errors, hint, children }) {
  const [id] = useState(() => `f${++fieldIds}`);
  const msgs = (errors && errors[path]) || [];
  const input = typeof children === 'function' ? children(id, msgs.length > 0, `${id}-msg`) : children;
  return html`<div class=${'field' + (msgs.length ? ' invalid' : '')}>
    <label for=${id}>${label}</label>
    ${input}
    ${hint && html`<small class="hint">${hint}</small>`}
    ${msgs.length > 0 && html`<p class="field-error" id=${`${id}-msg`} data-error-for=${path} role="alert">${msgs.join('; ')}</p>`}
  </div>`;
}

export function TextInput({ label, path, errors, value, onInput, hint, disabled, placeholder, list, type = 'text' }) {
  return html`<${Field} label=${label} path=${path} errors=${errors} hint=${hint}>
    ${(id, bad, msg) => html`<input id=${id} name=${path} type=${type} value=${value ?? ''} disabled=${disabled}
      placeholder=${placeholder} list=${list} aria-invalid=${bad ? 'true' : 'false'} aria-describedby=${bad ? msg : undefined}
      onInput=${(e) => onInput(e.target.value)} />`}
  <//>`;
}

/** A modal dialog (the platform's <dialog>: focus trapped, Esc closes). */
export function Dialog({ open, title, onClose, children, actions }) {
  const ref = useRef();
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return html`<dialog ref=${ref} onClose=${onClose} aria-labelledby="dialog-title">
    ${open && html`<h2 id="dialog-title">${title}</h2>
      <div class="dialog-body">${children}</div>
      <div class="dialog-actions">${actions}</div>`}
  </dialog>`;
}

export function ConfirmDelete({ what, onConfirm, onCancel }) {
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  return html`<${Dialog} open=${!!what} title=${`Delete ${what}?`} onClose=${onCancel}
    actions=${html`<button type="button" onClick=${onCancel}>Cancel</button>
      <button type="button" class="danger" id="confirm-delete" disabled=${busy} onClick=${async () => {
        setBusy(true);
        try { await onConfirm(); setError(null); } catch (e) { setError(e); }
        setBusy(false);
      }}>Delete</button>`}>
    <p>This removes it from every data plane at the next revision.</p>
    <${ErrorBox} error=${error} />
  <//>`;
}

export function CopyButton({ text, label = 'Copy' }) {
  const [done, setDone] = useState(false);
  return html`<button type="button" class="small" onClick=${async () => {
    try { await navigator.clipboard.writeText(text); setDone(true); } catch (_) {
      // Without clipboard permission: select the text so Ctrl+C works.
      setDone(false);
    }
  }}>${done ? 'Copied' : label}</button>`;
}

export function Search({ value, onInput, label }) {
  return html`<input type="search" class="search" aria-label=${label} placeholder=${label}
    value=${value} onInput=${(e) => onInput(e.target.value)} />`;
}

export function Table({ head, rows, empty = 'Nothing here yet.', id }) {
  return html`<div class="table-wrap"><table id=${id}>
    <thead><tr>${head.map((h) => html`<th scope="col">${h}</th>`)}</tr></thead>
    <tbody>${rows.length ? rows : html`<tr><td colspan=${head.length} class="empty">${empty}</td></tr>`}</tbody>
  </table></div>`;
}

export function Badge({ tone = 'neutral', children }) {
  return html`<span class=${`badge ${tone}`}>${children}</span>`;
}

/**
 * A line chart of the last `slots` values, newest on the right (SVG; no
 * styles set inline).
 */
export function Spark({ values, label, format = (v) => v.toFixed(1), max, slots = 30 }) {
  const w = 110;
  const h = 32;
  const vs = values.length ? values.slice(-slots) : [0];
  const top = Math.max(max ?? 0, ...vs, 1e-9);
  // Until the window is full, the readings so far span the whole width.
  const line = vs.length === 1 ? [vs[0], vs[0]] : vs;
  const step = w / (line.length - 1);
  const y = (v) => (h - 2 - (v / top) * (h - 4)).toFixed(1);
  const points = line.map((v, i) => `${(i * step).toFixed(1)},${y(v)}`).join(' ');
  const last = vs[vs.length - 1];
  return html`<span class="spark" data-points=${values.length}>
    <svg viewBox=${`0 0 ${w} ${h}`} width=${w} height=${h} role="img" aria-label=${`${label}: ${format(last)}`}>
      <line x1="0" y1=${h - 1} x2=${w} y2=${h - 1} stroke="#dde1e6" stroke-width="1" />
      <polyline points=${points} fill="none" stroke="currentColor" stroke-width="1.5" stroke-linejoin="round" />
    </svg>
    <span class="spark-value">${format(last)}</span>
  </span>`;
}

export function ago(time) {
  if (!time) return '—';
  const t = new Date(time).getTime();
  if (Number.isNaN(t)) return time;
  const s = Math.round((Date.now() - t) / 1000);
  if (s < 0) return `in ${until(time)}`;
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export function until(time) {
  const s = Math.round((new Date(time).getTime() - Date.now()) / 1000);
  if (s < 0) return 'expired';
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

/** Days until `time` (negative once past). */
export const daysLeft = (time) => (new Date(time).getTime() - Date.now()) / 86400000;

export const splitList = (s) => s.split(',').map((x) => x.trim()).filter(Boolean);

export function parseLabels(s) {
  const out = {};
  for (const kv of splitList(s)) {
    const i = kv.indexOf('=');
    if (i > 0) out[kv.slice(0, i).trim()] = kv.slice(i + 1).trim();
    else out[kv] = '';
  }
  return out;
}

export const showLabels = (labels) =>
  Object.entries(labels || {}).map(([k, v]) => `${k}=${v}`).join(', ');

/** The fleet, refreshed while a page that shows it is open. */
export function useFleet(ms = 3000) {
  const [fleet, setFleet] = useState(null);
  usePoll(async () => setFleet(await api('/api/v1/dataplanes')), ms);
  return fleet;
}
