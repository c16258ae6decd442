// Asset detail: where it is, its latest values (live), a chart of one metric over a chosen range
// downsampled by the hub (`step`), and its tasks.

import { api, getJson } from '../api.js';
import { h, fill, ago, when, value, duration, throttle, errorBox } from '../dom.js';
import { t, label } from '../i18n.js';
import { model, on, stateOf, linkOf, mainMetric, segmentNames } from '../model.js';
import { timeChart } from '../chart.js';
import { setQuery } from '../route.js';

/** Ranges offered, with the bucket width asked of the hub (about 120–360 points each). */
export const RANGES = [
  { key: '10m', ms: 600e3, step: '5s' },
  { key: '1h', ms: 3600e3, step: '30s' },
  { key: '6h', ms: 6 * 3600e3, step: '1m' },
  { key: '24h', ms: 24 * 3600e3, step: '5m' },
  { key: '7d', ms: 7 * 24 * 3600e3, step: '30m' },
];

export function render(main, r) {
  const id = r.id;
  const a = model.byId.get(id);
  if (!a) {
    fill(main, errorBox(`no asset ${id}`));
    return null;
  }
  const numeric = () => Object.entries(a.latest || {}).filter(([, v]) => typeof v === 'number' || typeof v === 'boolean').map(([m]) => m);
  let metric = r.query.get('metric') || mainMetric(a.kind) || numeric()[0];
  if (!numeric().includes(metric) && numeric().length) metric = numeric().includes(mainMetric(a.kind)) ? mainMetric(a.kind) : numeric()[0];
  let range = RANGES.find((x) => x.key === r.query.get('range')) || RANGES[1];

  const head = h('div', { class: 'asset-head' });
  const facts = h('div', { class: 'card' });
  const latest = h('div', { class: 'card', id: 'latest' });
  const chartBox = h('div', { class: 'chart', id: 'chart' });
  const chartNote = h('p', { class: 'hint', id: 'chart-note' });
  const controls = h('div', { class: 'chart-controls' });
  const tasksBox = h('div', { class: 'card', id: 'asset-tasks' });
  fill(main, head,
    h('div', { class: 'grid-2' }, facts, latest),
    h('div', { class: 'card' }, h('h2', {}, t('asset_chart')), controls, chartBox, chartNote),
    tasksBox);

  let names = new Map();
  function drawHead() {
    const st = stateOf(a);
    fill(head, h('h1', {}, t('asset_title', { id: a.id }), ' ',
      h('span', { class: 'badge' }, label('kind', a.kind)), ' ',
      h('span', { class: `badge state-${st}`, id: 'asset-state' }, t(`map_legend_${st}`))));
    const seg = names.get(a.road_segment);
    fill(facts, h('dl', { class: 'facts' },
      h('dt', {}, t('asset_gateway')), h('dd', {}, `${a.gateway} / ${a.device}`),
      h('dt', {}, t('asset_location')), h('dd', {}, a.location ? h('a', { href: `#/map?select=${encodeURIComponent(a.id)}` }, `${a.location.lon.toFixed(5)}, ${a.location.lat.toFixed(5)}`) : '—'),
      h('dt', {}, t('asset_segment')), h('dd', {}, seg ? `${seg.name} · ${seg.chief || ''}` : a.road_segment || '—'),
      h('dt', {}, t('asset_grid')), h('dd', {}, a.grid || '—'),
      h('dt', {}, t('asset_zone')), h('dd', {}, a.zone || '—'),
      h('dt', {}, t('gw_link')), h('dd', {}, linkOf(a) ? t(`link_${linkOf(a)}`) : '—'),
      h('dt', {}, t('asset_last_seen')), h('dd', { id: 'last-seen' }, `${when(a.last_seen, true)} (${ago(a.last_seen)})`)));
  }

  function drawLatest(changed) {
    const rows = Object.entries(a.latest || {}).sort(([x], [y]) => x.localeCompare(y));
    fill(latest, h('h2', {}, t('asset_latest')), h('table', { class: 'kv' },
      h('thead', {}, h('tr', {}, h('th', {}, t('asset_metric')), h('th', {}, t('asset_value')))),
      h('tbody', {}, rows.map(([m, v]) => h('tr', {
        'data-metric': m, class: [a.bad && a.bad[m] ? 'bad' : '', changed === m ? 'flash' : ''].join(' ').trim() || null,
      },
      h('th', {}, h('a', { href: '#', onclick: (e) => { e.preventDefault(); metric = m; drawControls(); loadChart(); } }, label('metric', m)), ` (${m})`),
      h('td', { class: 'num' }, value(v, (a.units || {})[m]), a.bad && a.bad[m] ? h('span', { class: 'badge state-bad' }, a.bad[m]) : null))))));
  }

  function drawControls() {
    fill(controls,
      h('label', {}, t('asset_metric'), ' ', h('select', {
        id: 'metric', onchange: (e) => { metric = e.target.value; loadChart(); },
      }, numeric().map((m) => h('option', { value: m, selected: m === metric ? 'selected' : null }, `${label('metric', m)} (${m})`)))),
      h('span', { class: 'range', role: 'group', 'aria-label': t('asset_range') }, RANGES.map((x) => h('button', {
        class: x === range ? 'active' : null, 'data-range': x.key,
        onclick: () => { range = x; drawControls(); loadChart(); },
      }, t(`range_${x.key}`)))));
  }

  let chart = null;
  let loading = 0;
  async function loadChart() {
    setQuery({ metric, range: range.key });
    if (!metric) return;
    const mine = ++loading;
    const to = new Date();
    const from = new Date(to.getTime() - range.ms);
    try {
      const { data, headers } = await api(`/api/v1/assets/${encodeURIComponent(id)}/readings?metric=${encodeURIComponent(metric)}&from=${from.toISOString()}&to=${to.toISOString()}&step=${range.step}`);
      if (mine !== loading) return;
      if (chart) chart.destroy();
      chart = null;
      chartBox.replaceChildren();
      const step = Number(headers.get('x-step-seconds'));
      chartBox.dataset.points = data.length;
      chartBox.dataset.step = step || '';
      if (!data.length) {
        chartBox.append(h('p', { class: 'empty' }, t('asset_no_data')));
      } else {
        chart = timeChart(chartBox, data, { label: label('metric', metric), unit: (a.units || {})[metric] || '' });
      }
      chartNote.textContent = step ? t('asset_step', { s: duration(step * 1000) }) : t('asset_raw');
    } catch (e) {
      fill(chartBox, errorBox(e));
    }
  }

  async function loadTasks() {
    try {
      const all = await getJson('/api/v1/tasks?status=all&limit=1000');
      const mine = all.filter((x) => x.asset === id);
      fill(tasksBox, h('h2', {}, t('asset_tasks')), mine.length ? h('table', { class: 'tasks' },
        h('thead', {}, h('tr', {}, ['col_id', 'col_severity', 'col_state', 'col_category', 'col_title', 'col_opened'].map((k) => h('th', {}, t(k))))),
        h('tbody', {}, mine.map((x) => h('tr', { 'data-task-id': x.id },
          h('td', {}, h('a', { href: `#/tasks/${x.id}` }, `#${x.id}`)),
          h('td', {}, h('span', { class: `badge sev-${x.severity}` }, label('severity', x.severity))),
          h('td', {}, h('span', { class: `badge st-${x.state}` }, label('state', x.state))),
          h('td', {}, label('category', x.category)),
          h('td', {}, x.title),
          h('td', {}, when(x.opened_at))))))
        : h('p', { class: 'hint' }, t('asset_none')));
    } catch (e) {
      fill(tasksBox, errorBox(e));
    }
  }

  segmentNames().then((n) => { names = n; drawHead(); });
  drawHead();
  drawLatest();
  drawControls();
  loadChart();
  loadTasks();

  const liveHead = throttle(drawHead, 2000);
  const subs = [
    on('reading', (x, r2) => {
      if (x !== a) return;
      drawLatest(r2.metric);
      liveHead();
    }),
    on('tasks', throttle(() => { loadTasks(); drawHead(); }, 2000)),
  ];
  // The recent ranges follow the clock.
  const timer = setInterval(() => { if (range.ms <= 6 * 3600e3) loadChart(); }, 15000);
  return () => {
    subs.forEach((u) => u());
    clearInterval(timer);
    if (chart) chart.destroy();
  };
}
