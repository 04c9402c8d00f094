// The admin API client: the UI's only way to data. The admin token lives in
// sessionStorage (this tab, until it closes or the operator logs out) and is
// sent as `Authorization: Bearer` on every call, never in a URL.

const TOKEN_KEY = 'nio.adminToken';

export const session = {
  token: () => sessionStorage.getItem(TOKEN_KEY),
  login: (t) => sessionStorage.setItem(TOKEN_KEY, t),
  logout: () => sessionStorage.removeItem(TOKEN_KEY),
};

const unauthorizedListeners = new Set();
/** Called when any call answers 401: the token is gone or wrong. */
export function onUnauthorized(f) {
  unauthorizedListeners.add(f);
  return () => unauthorizedListeners.delete(f);
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `the admin API answered ${status}`);
    this.status = status;
    this.details = (body && body.details) || [];
  }
}

/** Calls the admin API. `body`: an object (sent as JSON) or a YAML string. */
export async function api(path, { method = 'GET', body, yaml = false, accept, headers = {}, signal } = {}) {
  const h = { Authorization: `Bearer ${session.token() || ''}`, ...headers };
  if (body !== undefined) h['Content-Type'] = yaml ? 'application/yaml' : 'application/json';
  if (accept) h.Accept = accept;
  const resp = await fetch(path, {
    method,
    headers: h,
    body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    signal,
    cache: 'no-store',
  });
  if (resp.status === 401) {
    session.logout();
    unauthorizedListeners.forEach((f) => f());
    throw new ApiError(401, { error: 'not logged in, or the admin token changed: log in again' });
  }
  const text = await resp.text();
  let data = text;
  if ((resp.headers.get('content-type') || '').includes('json')) {
    try { data = JSON.parse(text); } catch (_) { /* keep the text */ }
  }
  if (!resp.ok) throw new ApiError(resp.status, typeof data === 'object' ? data : { error: text });
  return data;
}

export const resourcePath = (plural, name) =>
  `/apis/nio.dev/v1/${plural}${name ? '/' + encodeURIComponent(name) : ''}`;

/**
 * Follows `GET /api/v1/events?follow=true` (Server-Sent Events) with fetch,
 * so the token goes in a header as everywhere else (EventSource cannot send
 * one). Calls `onEvent(event)` per event until `signal` aborts.
 */
export async function followEvents(query, onEvent, signal) {
  const resp = await fetch(`/api/v1/events?${query}&follow=true`, {
    headers: { Authorization: `Bearer ${session.token() || ''}`, Accept: 'text/event-stream' },
    signal,
    cache: 'no-store',
  });
  if (resp.status === 401) {
    session.logout();
    unauthorizedListeners.forEach((f) => f());
    return;
  }
  if (!resp.ok) {
    let body = {};
    try { body = await resp.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, body);
  }
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let data = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let nl;
    while ((nl = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, nl).replace(/\r$/, '');
      buffer = buffer.slice(nl + 1);
      if (line === '') {
        if (data.length) {
          try { onEvent(JSON.parse(data.join('\n'))); } catch (_) { /* keep-alive or a notice */ }
        }
        data = [];
      } else if (line.startsWith('data:')) {
        data.push(line.slice(5).trimStart());
      }
    }
  }
}
