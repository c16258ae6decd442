// The hub's API as the console uses it: the token (kept in localStorage), JSON requests with it,
// and one shared live feed (server-sent events from /api/v1/stream) that pages subscribe to.

const TOKEN_KEY = 'city.token';

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  return localStorage.getItem(TOKEN_KEY);
}

export function setToken(tok) {
  if (tok) localStorage.setItem(TOKEN_KEY, tok);
  else localStorage.removeItem(TOKEN_KEY);
}

/** Listeners for "the token was refused" (the app signs out). */
const unauthorized = new Set();
export function onUnauthorized(fn) {
  unauthorized.add(fn);
}

/** GET (or, with `body`, POST) a path under the hub, as JSON. Throws ApiError with the hub's reason. */
export async function api(path, { method, body, tok } = {}) {
  const headers = { Accept: 'application/json' };
  const bearer = tok || token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {
    method: method || (body !== undefined ? 'POST' : 'GET'),
    headers,
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!resp.ok) {
    if (resp.status === 401 && !tok) unauthorized.forEach((f) => f());
    throw new ApiError(resp.status, (data && data.error) || `${resp.status} ${resp.statusText}`);
  }
  return { data, headers: resp.headers };
}

/** Just the JSON body. */
export async function getJson(path) {
  return (await api(path)).data;
}

/** A URL a browser opens itself (images, downloads), with the token in the query. */
export function withToken(path) {
  const sep = path.includes('?') ? '&' : '?';
  return `${path}${sep}token=${encodeURIComponent(token() || '')}`;
}

/**
 * The live feed: one EventSource for the whole console. subscribe(type, fn) returns an
 * unsubscribe function; onStatus(fn) hears 'connecting' | 'open' | 'lost'.
 */
class LiveFeed {
  constructor() {
    this.source = null;
    this.handlers = new Map();
    this.statusHandlers = new Set();
    this.status = 'connecting';
    this.received = 0;
  }

  start() {
    this.stop();
    const types = 'reading,event,presence,task';
    const es = new EventSource(withToken(`/api/v1/stream?types=${types}`));
    this.source = es;
    this.setStatus('connecting');
    es.onopen = () => this.setStatus('open');
    es.onerror = () => {
      // EventSource reconnects by itself; a refused token ends the session instead.
      this.setStatus('lost');
      api('/api/v1/whoami').catch(() => {});
    };
    for (const type of ['reading', 'event', 'presence', 'task', 'lagged']) {
      es.addEventListener(type, (m) => {
        let data;
        try {
          data = JSON.parse(m.data);
        } catch {
          return;
        }
        this.received += 1;
        for (const fn of this.handlers.get(type) || []) fn(data);
        for (const fn of this.handlers.get('*') || []) fn(type, data);
      });
    }
  }

  stop() {
    if (this.source) this.source.close();
    this.source = null;
  }

  setStatus(s) {
    this.status = s;
    this.statusHandlers.forEach((f) => f(s));
  }

  onStatus(fn) {
    this.statusHandlers.add(fn);
    fn(this.status);
    return () => this.statusHandlers.delete(fn);
  }

  subscribe(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type).delete(fn);
  }
}

export const live = new LiveFeed();
