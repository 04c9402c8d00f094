// The Nio console: login, the page frame and hash routing (`#/routes/web`).
// Every page is a client of the public admin API; see docs/ui.md.

import { html, render, useEffect, useState } from '/ui/vendor/preact-htm.js';
import { api, onUnauthorized, session } from '/ui/api.js';
import { markNavigation, markReady } from '/ui/components.js';
import { Overview } from '/ui/pages/overview.js';
import { ResourceList, ResourceEdit, KINDS } from '/ui/pages/resources.js';
import { ApiKeys } from '/ui/pages/apikeys.js';
import { Certificates, DataPlanes } from '/ui/pages/fleet.js';
import { Events } from '/ui/pages/events.js';

const NAV = [
  ['', 'Overview'],
  ['routes', 'Routes'],
  ['backends', 'Backends'],
  ['apikeys', 'API keys'],
  ['certificates', 'Certificates'],
  ['dataplanes', 'Data planes'],
  ['events', 'Events'],
];

const currentHash = () => location.hash.replace(/^#\/?/, '');

function Login({ onLogin }) {
  const [token, setToken] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => { document.title = 'Log in · Nio console'; markReady('login'); }, []);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      // Checked with a plain call so a wrong token is said here, not as a
      // logout.
      const r = await fetch('/api/v1/revision', { headers: { Authorization: `Bearer ${token.trim()}` }, cache: 'no-store' });
      if (r.status === 401) throw new Error('The admin API refused this token.');
      if (!r.ok) throw new Error(`The admin API answered ${r.status}.`);
      session.login(token.trim());
      onLogin();
    } catch (err) {
      setError(err.message === 'Failed to fetch' ? 'The control plane cannot be reached.' : err.message);
    }
    setBusy(false);
  };
  return html`<main id="main" class="login">
    <form onSubmit=${submit} class="login-card" aria-labelledby="login-title">
      <h1 id="login-title"><span class="logo" aria-hidden="true">N</span> Nio console</h1>
      <input type="text" name="username" autocomplete="username" value="admin" hidden />
      <label for="token">Admin token</label>
      <input id="token" type="password" autocomplete="current-password" required value=${token}
        aria-invalid=${error ? 'true' : 'false'} aria-describedby="token-help"
        onInput=${(e) => setToken(e.target.value)} autofocus />
      <small id="token-help" class="hint">In the control plane's data dir, file <code>admin-token</code> (or <code>NIO_ADMIN_TOKEN</code>).
        Kept for this browser tab only.</small>
      ${error && html`<p class="field-error" role="alert" id="login-error">${error}</p>`}
      <button type="submit" class="primary" disabled=${busy}>Log in</button>
    </form>
  </main>`;
}

/** The current revision, read again on every navigation and every 3 s. */
function Revision({ hash }) {
  const [rev, setRev] = useState(null);
  useEffect(() => {
    let stop = false;
    let timer;
    const tick = async () => {
      try { setRev((await api('/api/v1/revision')).revision); } catch (_) { /* 401 handled globally */ }
      if (!stop) timer = setTimeout(tick, 3000);
    };
    tick();
    return () => { stop = true; clearTimeout(timer); };
  }, [hash]);
  return html`<span class="revision" id="revision" title="Current configuration revision">revision ${rev ?? '…'}</span>`;
}

function pageFor(hash) {
  const [section, ...rest] = hash.split('/');
  const name = rest.join('/') ? decodeURIComponent(rest.join('/')) : '';
  if (KINDS[section]) {
    return name
      ? html`<${ResourceEdit} key=${hash} kind=${KINDS[section]} name=${name === 'new' ? '' : name} />`
      : html`<${ResourceList} key=${hash} kind=${KINDS[section]} />`;
  }
  switch (section) {
    case '': return html`<${Overview} />`;
    case 'apikeys': return html`<${ApiKeys} />`;
    case 'certificates': return html`<${Certificates} />`;
    case 'dataplanes': return html`<${DataPlanes} />`;
    case 'events': return html`<${Events} />`;
    default: return html`<section class="page"><h1>Not found</h1><p>No page at <code>#/${hash}</code>. <a href="#/">Overview</a></p></section>`;
  }
}

function Shell({ hash, onLogout }) {
  const section = hash.split('/')[0];
  return html`<div class="shell">
    <a class="skip" href="#main" onClick=${(e) => { e.preventDefault(); document.getElementById('main').focus(); }}>Skip to content</a>
    <header class="top">
      <a class="brand" href="#/"><span class="logo" aria-hidden="true">N</span> Nio</a>
      <${Revision} hash=${hash} />
      <button type="button" class="link" id="logout" onClick=${onLogout}>Log out</button>
    </header>
    <nav aria-label="Sections"><ul>
      ${NAV.map(([h, label]) => html`<li><a href=${`#/${h}`} aria-current=${section === h ? 'page' : undefined}>${label}</a></li>`)}
    </ul></nav>
    <main id="main" tabindex="-1">${pageFor(hash)}</main>
  </div>`;
}

function App() {
  const [loggedIn, setLoggedIn] = useState(!!session.token());
  const [hash, setHash] = useState(currentHash());
  useEffect(() => {
    const onHash = () => { markNavigation(); setHash(currentHash()); };
    addEventListener('hashchange', onHash);
    const off = onUnauthorized(() => setLoggedIn(false));
    return () => { removeEventListener('hashchange', onHash); off(); };
  }, []);
  if (!loggedIn) return html`<${Login} onLogin=${() => { markNavigation(); setLoggedIn(true); }} />`;
  return html`<${Shell} hash=${hash} onLogout=${() => { session.logout(); setLoggedIn(false); }} />`;
}

const root = document.getElementById('app');
root.textContent = '';
render(html`<${App} />`, root);
