// Task board: the tasks the user may see, newest first, with filters (status, kind, category,
// department on the hub; severity and text here), fetched again as the live feed reports changes.
// Plates appear as the hub returns them: masked for roles other than admin and enforcement.

import { getJson, live } from '../api.js';
import { h, fill, when, ago, duration, throttle, errorBox } from '../dom.js';
import { t, label } from '../i18n.js';
import { model, isOverdue, plateOf, STATES } from '../model.js';
import { setQuery } from '../route.js';

export function render(main, r) {
  const f = {
    status: r.query.get('status') || 'open',
    kind: r.query.get('kind') || '',
    category: r.query.get('category') || '',
    department: r.query.get('department') || '',
    severity: r.query.get('severity') || '',
    q: r.query.get('q') || '',
  };
  let list = [];
  const seenCategories = new Set(f.category ? [f.category] : []);
  const seenDepartments = new Set(f.department ? [f.department] : []);
  const flashing = new Map();

  const filters = h('form', { class: 'filters', id: 'task-filters', onsubmit: (e) => e.preventDefault() });
  const count = h('span', { class: 'count', id: 'task-count' });
  const table = h('div', { class: 'table-wrap', id: 'task-board' });
  fill(main, h('div', { class: 'card' },
    h('div', { class: 'card-head' }, h('h1', {}, t('tasks_title')), count),
    filters, table));

  function select(name, options) {
    return h('label', {}, t(`f_${name}`), ' ', h('select', {
      name, 'data-filter': name,
      onchange: (e) => {
        f[name] = e.target.value;
        changed(['status', 'kind', 'category', 'department'].includes(name));
      },
    }, options.map(([v, text]) => h('option', { value: v, selected: v === f[name] ? 'selected' : null }, text))));
  }

  function drawFilters() {
    const all = ['', t('f_all')];
    fill(filters,
      select('status', [['open', t('status_open')], ['closed', t('status_closed')], ['all', t('status_all')],
        ...STATES.map((st) => [st, label('state', st)])]),
      select('kind', [all, ['enforcement', label('kind', 'enforcement')], ['maintenance', label('kind', 'maintenance')]]),
      select('category', [all, ...[...seenCategories].sort().map((c) => [c, label('category', c)])]),
      model.who.role === 'crew' ? null : select('department', [all, ...[...seenDepartments].sort().map((d) => [d, label('department', d)])]),
      select('severity', [all, ...['critical', 'high', 'warning', 'info'].map((s) => [s, label('severity', s)])]),
      h('label', {}, t('f_search'), ' ', h('input', {
        type: 'search', name: 'q', value: f.q, 'data-filter': 'q',
        oninput: throttle((e) => { f.q = e.target.value; changed(false); }, 300),
      })));
  }

  function changed(refetch) {
    setQuery(f);
    if (refetch) load();
    else drawTable();
  }

  function shown() {
    const q = f.q.trim().toLowerCase();
    return list.filter((x) => (!f.severity || x.severity === f.severity)
      && (!q || [x.id, x.title, x.asset, x.subject, x.category, label('category', x.category), x.road_segment, plateOf(x)]
        .some((v) => v != null && String(v).toLowerCase().includes(q))));
  }

  function drawTable() {
    const rows = shown();
    count.textContent = t('tasks_count', { n: rows.length });
    count.dataset.count = rows.length;
    const now = Date.now();
    fill(table, h('table', { class: 'tasks' },
      h('thead', {}, h('tr', {}, ['col_id', 'col_severity', 'col_state', 'col_category', 'col_title', 'col_subject', 'col_department', 'col_segment', 'col_opened', 'col_due']
        .map((k) => h('th', {}, t(k))))),
      h('tbody', {}, rows.length ? rows.map((x) => {
        const plate = plateOf(x);
        const overdue = isOverdue(x, now);
        return h('tr', {
          'data-task-id': x.id, 'data-state': x.state, 'data-category': x.category, 'data-department': x.department || '',
          class: [flashing.has(x.id) ? 'flash' : '', overdue ? 'late' : ''].join(' ').trim() || null,
          onclick: (e) => { if (!e.target.closest('a')) location.hash = `#/tasks/${x.id}`; },
        },
        h('td', {}, h('a', { href: `#/tasks/${x.id}` }, `#${x.id}`)),
        h('td', {}, h('span', { class: `badge sev-${x.severity}` }, label('severity', x.severity))),
        h('td', {}, h('span', { class: `badge st-${x.state}`, 'data-role': 'state' }, label('state', x.state))),
        h('td', {}, label('category', x.category)),
        h('td', { class: 'title' }, x.title),
        h('td', {}, x.asset ? h('a', { href: `#/assets/${encodeURIComponent(x.asset)}` }, x.asset) : x.zone || x.subject,
          plate ? h('span', { class: 'plate', 'data-role': 'plate' }, plate) : null),
        h('td', {}, label('department', x.department)),
        h('td', {}, x.road_segment || '—'),
        h('td', { title: when(x.opened_at, true) }, ago(x.opened_at, now)),
        h('td', { class: overdue ? 'overdue' : null }, x.due_at
          ? (overdue ? t('overdue', { d: duration(now - new Date(x.due_at).getTime()) }) : t('due_in', { d: duration(new Date(x.due_at).getTime() - now) }))
          : '—'));
      }) : h('tr', {}, h('td', { colspan: 10, class: 'empty' }, t('tasks_empty'))))));
  }

  let loading = 0;
  async function load() {
    const mine = ++loading;
    const q = new URLSearchParams({ status: f.status, limit: '1000' });
    for (const k of ['kind', 'category', 'department']) if (f[k]) q.set(k, f[k]);
    try {
      const data = await getJson(`/api/v1/tasks?${q}`);
      if (mine !== loading) return;
      list = data;
      let grew = false;
      for (const x of list) {
        if (!seenCategories.has(x.category)) { seenCategories.add(x.category); grew = true; }
        if (x.department && !seenDepartments.has(x.department)) { seenDepartments.add(x.department); grew = true; }
      }
      if (grew) drawFilters();
      drawTable();
      table.dataset.loaded = 'true';
    } catch (e) {
      fill(table, errorBox(e));
    }
  }

  // Every category and department the user may see, for the filters (not only this status's).
  getJson('/api/v1/tasks?status=all&limit=1000').then((all) => {
    all.forEach((x) => { seenCategories.add(x.category); if (x.department) seenDepartments.add(x.department); });
    drawFilters();
  }).catch(() => {});

  drawFilters();
  load();
  const reload = throttle(load, 800);
  const unsub = live.subscribe('task', (x) => {
    flashing.set(x.id, Date.now());
    setTimeout(() => { flashing.delete(x.id); }, 4000);
    reload();
  });
  const timer = setInterval(drawTable, 30000);
  return () => {
    unsub();
    clearInterval(timer);
  };
}
