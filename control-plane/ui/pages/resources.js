// Routes and Backends: a searchable list with where each is served, and an
// editor with two views of one resource — a form for the common fields
// (the API's validation message next to each field) and YAML for all of it.

import { html, useEffect, useState } from '/ui/vendor/preact-htm.js';
import { api, ApiError, resourcePath } from '/ui/api.js';
import {
  Badge, ConfirmDelete, ErrorBox, Field, Page, Search, Table, TextInput,
  parseLabels, showLabels, sortFieldErrors, splitList, useFleet, useReady,
} from '/ui/components.js';

const get = (o, path) => path.split('.').reduce((v, k) => (v == null ? v : v[k]), o);
function set(o, path, value) {
  const keys = path.split('.');
  let cur = o;
  keys.slice(0, -1).forEach((k) => { cur = cur[k] = cur[k] && typeof cur[k] === 'object' ? cur[k] : {}; });
  const last = keys[keys.length - 1];
  if (value === undefined || (Array.isArray(value) && !value.length) || value === '') delete cur[last];
  else cur[last] = value;
}

const listField = (label, path, hint) => ({
  label, path, hint,
  show: (r) => (get(r, path) || []).join(', '),
  put: (r, v) => set(r, path, splitList(v)),
});
const textField = (label, path, hint) => ({
  label, path, hint, show: (r) => get(r, path) ?? '', put: (r, v) => set(r, path, v.trim()),
});
const boolField = (label, path, hint) => ({ label, path, hint, bool: true, show: (r) => !!get(r, path), put: (r, v) => set(r, path, v || undefined) });
const labelsField = { label: 'Labels', path: 'metadata.labels', hint: 'key=value, comma-separated', show: (r) => showLabels(r.metadata.labels), put: (r, v) => set(r, 'metadata.labels', Object.keys(parseLabels(v)).length ? parseLabels(v) : undefined) };

export const KINDS = {
  routes: {
    kind: 'Route', plural: 'routes', title: 'Routes', one: 'route', more: 'plugins, header and query matchers, rewrites, TLS, data-plane selector',
    blank: () => ({ apiVersion: 'nio.dev/v1', kind: 'Route', metadata: { name: '' }, spec: { frontend: { hosts: [], paths: ['/'] }, backend: '' } }),
    fields: [
      listField('Hosts', 'spec.frontend.hosts', 'api.example.com, *.example.com — empty: any host'),
      listField('Paths', 'spec.frontend.paths', 'prefixes like /orders, :param segments'),
      listField('Methods', 'spec.frontend.methods', 'GET, POST… — empty: any method'),
      { ...textField('Backend', 'spec.backend', 'name of a Backend'), list: 'backend-names' },
      boolField('Strip the matched path', 'spec.frontend.stripPath'),
      labelsField,
    ],
    columns: ['Hosts', 'Paths', 'Backend'],
    cells: (r) => [(r.spec.frontend?.hosts || ['any']).join(', '), (r.spec.frontend?.paths || ['/']).join(', '), html`<a href="#/backends/${r.spec.backend}">${r.spec.backend}</a>`],
    selects: (r, labels) => Object.entries(r.spec.dataPlaneSelector?.matchLabels || {}).every(([k, v]) => labels[k] === v),
  },
  backends: {
    kind: 'Backend', plural: 'backends', title: 'Backends', one: 'backend', more: 'timeouts, retries, circuit breaker, health checks, TLS',
    blank: () => ({ apiVersion: 'nio.dev/v1', kind: 'Backend', metadata: { name: '' }, spec: { targets: [{ url: '' }] } }),
    fields: [
      { label: 'Load balancing', path: 'spec.loadBalancing.policy', select: ['', 'weightedRoundRobin', 'roundRobin', 'random', 'leastConnections', 'powerOfTwoChoices', 'consistentHash'],
        show: (r) => r.spec.loadBalancing?.policy || '', put: (r, v) => { set(r, 'spec.loadBalancing.policy', v || undefined); if (r.spec.loadBalancing && !Object.keys(r.spec.loadBalancing).length) delete r.spec.loadBalancing; } },
      labelsField,
    ],
    targets: true,
    columns: ['Targets', 'Balancing'],
    cells: (r) => [(r.spec.targets || []).map((t) => t.url).join(', '), r.spec.loadBalancing?.policy || 'weightedRoundRobin'],
    selects: () => true,
  },
};

/** Where a resource is served: the connected data planes it is meant for, and which of them applied its revision. */
function placement(kind, r, fleet) {
  const version = Number(r.metadata.resourceVersion || 0);
  const planes = (fleet?.items || []).filter((p) => p.connected && kind.selects(r, p.labels || {}));
  const serving = planes.filter((p) => p.appliedRevision >= version);
  return { version, planes, serving };
}

function Served({ kind, r, fleet }) {
  if (!fleet) return '…';
  const { planes, serving } = placement(kind, r, fleet);
  if (!planes.length) return html`<${Badge} tone="warn">no data plane<//>`;
  const tone = serving.length === planes.length ? 'ok' : 'warn';
  return html`<${Badge} tone=${tone}>${serving.length}/${planes.length} serving<//>`;
}

export function ResourceList({ kind }) {
  const [items, setItems] = useState(null);
  const [error, setError] = useState(null);
  const [q, setQ] = useState('');
  const [deleting, setDeleting] = useState(null);
  const fleet = useFleet();
  const load = async () => {
    try { setItems((await api(resourcePath(kind.plural))).items); setError(null); } catch (e) { setError(e); }
  };
  useEffect(() => { load(); }, [kind]);
  useReady(kind.plural, items !== null);
  const needle = q.trim().toLowerCase();
  const shown = (items || []).filter((r) => !needle || JSON.stringify([r.metadata, r.spec]).toLowerCase().includes(needle));
  return html`<${Page} title=${kind.title} actions=${html`<a class="button primary" href=${`#/${kind.plural}/new`} id="new-resource">New ${kind.one}</a>`}>
    <${ErrorBox} error=${error} />
    <div class="toolbar"><${Search} value=${q} onInput=${setQ} label=${`Search ${kind.title.toLowerCase()}`} />
      <span class="muted">${items ? `${shown.length} of ${items.length}` : 'loading…'}</span></div>
    <${Table} id="resource-list" head=${['Name', ...kind.columns, 'Revision', 'Status', '']}
      empty=${items && items.length ? 'Nothing matches the search.' : `No ${kind.title.toLowerCase()} yet.`}
      rows=${shown.map((r) => html`<tr data-name=${r.metadata.name}>
        <th scope="row"><a href=${`#/${kind.plural}/${r.metadata.name}`}>${r.metadata.name}</a></th>
        ${kind.cells(r).map((c) => html`<td>${c}</td>`)}
        <td>${r.metadata.resourceVersion}</td>
        <td><${Served} kind=${kind} r=${r} fleet=${fleet} /></td>
        <td class="row-actions"><button type="button" class="small danger" aria-label=${`Delete ${r.metadata.name}`} onClick=${() => setDeleting(r.metadata.name)}>Delete</button></td>
      </tr>`)} />
    <${ConfirmDelete} what=${deleting && `${kind.one} ${deleting}`} onCancel=${() => setDeleting(null)}
      onConfirm=${async () => { await api(resourcePath(kind.plural, deleting), { method: 'DELETE' }); setDeleting(null); await load(); }} />
  <//>`;
}

function Targets({ r, errors, onChange }) {
  const targets = r.spec.targets || [];
  const update = (i, patch) => onChange(targets.map((t, j) => (i === j ? { ...t, ...patch } : t)));
  return html`<fieldset class="targets"><legend>Targets</legend>
    ${targets.map((t, i) => html`<div class="target-row">
      <${TextInput} label=${`URL ${i + 1}`} path=${`spec.targets[${i}].url`} errors=${errors} value=${t.url}
        placeholder="http://10.0.0.12:8080" onInput=${(v) => update(i, { url: v.trim() })} />
      <${TextInput} label="Weight" type="number" path=${`spec.targets[${i}].weight`} errors=${errors} value=${t.weight ?? ''}
        placeholder="1" onInput=${(v) => update(i, { weight: v === '' ? undefined : Number(v) })} />
      <button type="button" class="small" aria-label=${`Remove target ${i + 1}`} onClick=${() => onChange(targets.filter((_, j) => j !== i))}>Remove</button>
    </div>`)}
    ${errors['spec.targets'] && html`<p class="field-error" data-error-for="spec.targets" role="alert">${errors['spec.targets'].join('; ')}</p>`}
    <button type="button" class="small" onClick=${() => onChange([...targets, { url: '' }])}>Add target</button>
  </fieldset>`;
}

function clean(r) {
  const out = JSON.parse(JSON.stringify(r));
  delete out.status;
  if (out.spec?.targets) out.spec.targets = out.spec.targets.map((t) => Object.fromEntries(Object.entries(t).filter(([, v]) => v !== undefined)));
  return out;
}

export function ResourceEdit({ kind, name }) {
  const creating = !name;
  const [resource, setResource] = useState(creating ? kind.blank() : null);
  const [texts, setTexts] = useState({});
  const [tab, setTab] = useState('form');
  const [yaml, setYaml] = useState('');
  const [error, setError] = useState(null);
  const [saved, setSaved] = useState(null);
  const [backends, setBackends] = useState([]);
  const [deleting, setDeleting] = useState(false);
  // Often, so a saved change is seen reaching the data planes.
  const fleet = useFleet(1000);

  const adopt = (r) => {
    setResource(r);
    setTexts(Object.fromEntries(kind.fields.map((f) => [f.path, f.show(r)])));
  };
  useEffect(() => {
    (async () => {
      try {
        if (!creating) adopt(await api(resourcePath(kind.plural, name)));
        else adopt(kind.blank());
        if (kind.plural === 'routes') setBackends((await api(resourcePath('backends'))).items.map((b) => b.metadata.name));
      } catch (e) { setError(e); }
    })();
  }, [name]);
  useReady(`${kind.plural}-edit`, resource !== null);

  const fromForm = () => {
    const r = clean(resource);
    for (const f of kind.fields) f.put(r, texts[f.path]);
    return r;
  };
  const openYaml = async () => {
    setError(null);
    setSaved(null);
    try {
      const r = fromForm();
      // The API renders YAML: ask it for the stored one, or for this draft as JSON → shown as YAML by the same rules.
      setYaml(creating ? draftYaml(r) : await api(resourcePath(kind.plural, name), { accept: 'application/yaml' }));
      setTab('yaml');
    } catch (e) { setError(e); }
  };
  const save = async (e) => {
    e.preventDefault();
    setError(null);
    setSaved(null);
    try {
      let written;
      if (tab === 'yaml') {
        written = await api(creating ? resourcePath(kind.plural) : resourcePath(kind.plural, name), { method: creating ? 'POST' : 'PUT', body: yaml, yaml: true });
      } else {
        const r = fromForm();
        written = await api(creating ? resourcePath(kind.plural) : resourcePath(kind.plural, name), {
          method: creating ? 'POST' : 'PUT', body: r,
          headers: creating ? {} : { 'If-Match': `"${resource.metadata.resourceVersion}"` },
        });
      }
      setSaved(written.metadata.resourceVersion);
      if (creating) location.hash = `#/${kind.plural}/${written.metadata.name}`;
      else adopt(written);
    } catch (err) {
      setError(err instanceof ApiError ? err : new ApiError(0, { error: err.message }));
    }
  };

  if (!resource) return html`<${Page} title=${`${kind.kind} ${name}`}><${ErrorBox} error=${error} /><p class="muted">Loading…</p><//>`;
  const paths = ['metadata.name', ...kind.fields.map((f) => f.path), ...(kind.targets ? (resource.spec.targets || []).flatMap((_, i) => [`spec.targets[${i}].url`, `spec.targets[${i}].weight`]).concat('spec.targets') : [])];
  const { byField, other } = sortFieldErrors(error?.details, tab === 'form' ? paths : []);
  const general = error && (tab === 'yaml' || other.length || !error.details.length) ? { message: error.message, details: tab === 'yaml' ? error.details : other } : null;
  const title = creating ? `New ${kind.one}` : `${kind.kind} ${name}`;
  return html`<${Page} title=${title} actions=${html`<a class="button" href=${`#/${kind.plural}`}>Back to ${kind.title.toLowerCase()}</a>
      ${!creating && html`<button type="button" class="danger" onClick=${() => setDeleting(true)}>Delete</button>`}`}>
    <div class="tabs" role="tablist">
      <button type="button" role="tab" aria-selected=${tab === 'form'} onClick=${() => { setError(null); setTab('form'); }}>Form</button>
      <button type="button" role="tab" aria-selected=${tab === 'yaml'} id="yaml-tab" onClick=${openYaml}>YAML</button>
    </div>
    <div class="edit-layout">
    <form class="editor" onSubmit=${save} novalidate>
      ${general && html`<${ErrorBox} error=${general} />`}
      ${saved && html`<p class="notice" role="status" id="saved">Saved at revision ${saved}.</p>`}
      ${tab === 'form' ? html`
        <${TextInput} label="Name" path="metadata.name" errors=${byField} value=${resource.metadata.name} disabled=${!creating}
          hint="lowercase letters, digits and -" onInput=${(v) => setResource({ ...resource, metadata: { ...resource.metadata, name: v.trim() } })} />
        ${kind.targets && html`<${Targets} r=${resource} errors=${byField} onChange=${(targets) => setResource({ ...resource, spec: { ...resource.spec, targets } })} />`}
        ${kind.fields.map((f) => (f.bool
          ? html`<${Field} label=${f.label} path=${f.path} errors=${byField} hint=${f.hint}>
              ${(id) => html`<input id=${id} type="checkbox" checked=${texts[f.path]} onChange=${(e) => setTexts({ ...texts, [f.path]: e.target.checked })} />`}<//>`
          : f.select
            ? html`<${Field} label=${f.label} path=${f.path} errors=${byField}>
                ${(id) => html`<select id=${id} value=${texts[f.path]} onChange=${(e) => setTexts({ ...texts, [f.path]: e.target.value })}>
                  ${f.select.map((o) => html`<option value=${o}>${o || 'default (weightedRoundRobin)'}</option>`)}</select>`}<//>`
            : html`<${TextInput} label=${f.label} path=${f.path} errors=${byField} hint=${f.hint} list=${f.list} value=${texts[f.path]}
                onInput=${(v) => setTexts({ ...texts, [f.path]: v })} />`))}
        <datalist id="backend-names">${backends.map((b) => html`<option value=${b} />`)}</datalist>
        <p class="muted">Other fields (${kind.more}) are kept as they are; edit them in the YAML view.</p>`
      : html`<label for="yaml" class="sr-only">The whole resource as YAML</label>
        <textarea id="yaml" class="yaml" spellcheck="false" rows="22" value=${yaml} onInput=${(e) => setYaml(e.target.value)}></textarea>`}
      <div class="form-actions"><button type="submit" class="primary" id="save">${creating ? 'Create' : 'Save'}</button></div>
    </form>
    ${!creating && html`<aside class="placement" aria-labelledby="served-by"><h2 id="served-by">Served by</h2>
      <${PlacementTable} kind=${kind} r=${resource} fleet=${fleet} /></aside>`}
    </div>
    <${ConfirmDelete} what=${deleting && `${kind.one} ${name}`} onCancel=${() => setDeleting(false)}
      onConfirm=${async () => { await api(resourcePath(kind.plural, name), { method: 'DELETE' }); location.hash = `#/${kind.plural}`; }} />
  <//>`;
}

function PlacementTable({ kind, r, fleet }) {
  if (!fleet) return html`<p class="muted">Loading the fleet…</p>`;
  const { version, planes } = placement(kind, r, fleet);
  return html`<${Table} id="placement" head=${['Data plane', 'Applied', `Revision ${version}`]}
    empty="No connected data plane is meant to serve it."
    rows=${planes.map((p) => html`<tr><th scope="row"><a href="#/dataplanes">${p.id}</a></th><td>${p.appliedRevision}</td>
      <td>${p.appliedRevision >= version ? html`<${Badge} tone="ok">serving<//>` : html`<${Badge} tone="warn">pending<//>`}</td></tr>`)} />`;
}

/** A small YAML writer for a new resource's draft (the stored ones come from the API). */
function toYaml(v, indent = '') {
  const scalar = (x) => (typeof x === 'string' ? (/^[\w./*:@-][\w ./*:@-]*$/.test(x) && !/^(true|false|null|yes|no|~|\d.*)$/i.test(x) ? x : JSON.stringify(x)) : JSON.stringify(x));
  if (Array.isArray(v)) {
    if (!v.length) return ' []';
    return v.map((x) => (x && typeof x === 'object' ? `\n${indent}-${toYaml(x, indent + '  ').replace(/^\n\s*/, ' ')}` : `\n${indent}- ${scalar(x)}`)).join('');
  }
  if (v && typeof v === 'object') {
    const keys = Object.keys(v);
    if (!keys.length) return ' {}';
    return keys.map((k) => `\n${indent}${k}:${v[k] && typeof v[k] === 'object' ? toYaml(v[k], indent + '  ') : ' ' + scalar(v[k])}`).join('');
  }
  return ` ${scalar(v)}`;
}
export const draftYaml = (r) => toYaml(r).replace(/^\n/, '') + '\n';
