// The route in the address's hash: #/page/id?query.

/** The route in the hash: {page, id, query}. */
export function route() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [path, q] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { page: parts[0] || '', id: parts[1] || null, query: new URLSearchParams(q || '') };
}

/** Rewrites the hash's query (filters, ranges) without drawing the page again. */
export function setQuery(query) {
  const r = route();
  const path = [r.page, r.id].filter(Boolean).map(encodeURIComponent).join('/');
  const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== '' && v != null)).toString();
  history.replaceState(null, '', `#/${path}${q ? `?${q}` : ''}`);
}
