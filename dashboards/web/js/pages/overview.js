// Overview: devices online, open tasks by category and severity, waterlogging points, today's
// violations, lamps lit and this month's lighting rate, and the live feed, all kept current from
// the hub's event stream without a reload.

import { getJson, live } from '../api.js';
import { h, fill, clock, value, throttle } from '../dom.js';
import { t, label } from '../i18n.js';
import { model, on, isOnline, isLit, isOverdue, SEVERITY_RANK } from '../model.js';

const SEVERITIES = ['critical', 'high', 'warning', 'info'];
const VIOLATIONS = ['parking_violation', 'truck_restricted', 'street_trading'];
const WATER_LIMIT_CM = 15;

export function render(main) {
  const tiles = h('section', { class: 'tiles' });
  const matrix = h('div', { class: 'card', id: 'by-category' });
  const water = h('div', { class: 'card', id: 'water-points' });
  const lastReading = h('p', { class: 'last-reading', id: 'last-reading' }, t('ov_feed_empty'));
  const feedList = h('ol', { class: 'feed', id: 'feed' });
  const recent = h('div', { class: 'card', id: 'recent-tasks' });
  fill(main,
    tiles,
    h('div', { class: 'grid-2' },
      h('div', {}, matrix, water),
      h('div', {}, h('div', { class: 'card' }, h('h2', {}, t('ov_feed')), lastReading, feedList), recent)));

  let violations = [];
  let monthRate = null;
  let readings = 0;

  const loadViolations = throttle(async () => {
    try {
      const all = await getJson('/api/v1/tasks?status=all&kind=enforcement&limit=1000');
      const midnight = new Date();
      midnight.setHours(0, 0, 0, 0);
      violations = all.filter((x) => new Date(x.opened_at) >= midnight);
      drawTiles();
    } catch { /* shown as 0 until the next change */ }
  }, 2000);

  getJson(`/api/v1/reports/assessment?month=${new Date().toISOString().slice(0, 7)}`).then((r) => {
    let lit = 0;
    let nights = 0;
    for (const s of r.segments || []) {
      if (s.lightingRate != null && s.lightingNights) {
        lit += s.lightingRate * s.lightingNights;
        nights += s.lightingNights;
      }
    }
    monthRate = nights ? lit / nights : null;
    drawTiles();
  }).catch(() => {});

  function tile(id, title, big, sub, tone) {
    return h('div', { class: `tile ${tone || ''}`, id },
      h('div', { class: 'tile-title' }, title),
      h('div', { class: 'tile-value' }, big),
      h('div', { class: 'tile-sub' }, sub));
  }

  function waterPoints() {
    return model.assets.filter((a) => a.kind === 'waterlogging' && a.latest && typeof a.latest.waterDepth === 'number');
  }

  function activeWater() {
    const withTask = new Set(model.openTasks.filter((x) => /^waterlogging/.test(x.category)).map((x) => x.asset));
    return waterPoints().filter((a) => withTask.has(a.id) || a.latest.waterDepth >= WATER_LIMIT_CM);
  }

  function drawTiles() {
    const online = model.assets.filter((a) => isOnline(a)).length;
    const gwOnline = model.gateways.filter((g) => g.state === 'online').length;
    const open = model.openTasks;
    const overdue = open.filter((x) => isOverdue(x)).length;
    const critical = open.some((x) => (SEVERITY_RANK[x.severity] ?? 0) >= 3);
    const points = waterPoints();
    const active = activeWater();
    const deepest = points.reduce((m, a) => Math.max(m, a.latest.waterDepth), 0);
    const count = (rule) => violations.filter((v) => v.rule === rule || v.category === rule).length;
    const lamps = model.assets.filter((a) => a.kind === 'streetlight');
    const lit = lamps.filter(isLit).length;
    fill(tiles,
      tile('tile-devices', t('ov_devices'), `${online} / ${model.assets.length}`,
        t('ov_devices_sub', { gw: gwOnline, gws: model.gateways.length }), online < model.assets.length ? 'warn' : 'ok'),
      tile('tile-tasks', t('ov_open_tasks'), String(open.length), t('ov_open_sub', { overdue }), critical ? 'bad' : open.length ? 'warn' : 'ok'),
      tile('tile-water', t('ov_water'), String(active.length),
        t('ov_water_sub', { n: points.length, max: value(deepest, 'cm') }), active.length ? 'bad' : 'ok'),
      tile('tile-violations', t('ov_violations'), String(violations.length),
        t('ov_violations_sub', { p: count(VIOLATIONS[0]), t: count(VIOLATIONS[1]), s: count(VIOLATIONS[2]) }), violations.length ? 'warn' : 'ok'),
      tile('tile-lighting', t('ov_lighting'), `${lit} / ${lamps.length}`,
        t('ov_lighting_sub', { rate: monthRate == null ? '—' : `${(monthRate * 100).toFixed(1)} %` })));
  }

  function drawMatrix() {
    const counts = new Map();
    for (const x of model.openTasks) {
      if (!counts.has(x.category)) counts.set(x.category, {});
      const c = counts.get(x.category);
      c[x.severity] = (c[x.severity] || 0) + 1;
    }
    const cats = [...counts.keys()].sort((a, b) => label('category', a).localeCompare(label('category', b)));
    fill(matrix,
      h('h2', {}, t('ov_by_category')),
      h('table', { class: 'matrix' },
        h('thead', {}, h('tr', {}, h('th', {}, t('ov_category')), SEVERITIES.map((s) => h('th', { class: `sev-${s}` }, label('severity', s))), h('th', {}, t('ov_total')))),
        h('tbody', {}, cats.length ? cats.map((c) => {
          const row = counts.get(c);
          const total = Object.values(row).reduce((a, b) => a + b, 0);
          return h('tr', { 'data-category': c },
            h('th', {}, h('a', { href: `#/tasks?category=${encodeURIComponent(c)}` }, label('category', c))),
            SEVERITIES.map((s) => h('td', { class: row[s] ? `num sev-${s}` : 'num zero' }, row[s] || '·')),
            h('td', { class: 'num total' }, total));
        }) : h('tr', {}, h('td', { colspan: SEVERITIES.length + 2, class: 'empty' }, t('tasks_empty'))))));
  }

  function drawWater() {
    const points = waterPoints().sort((a, b) => b.latest.waterDepth - a.latest.waterDepth);
    fill(water,
      h('h2', {}, t('ov_water_points')),
      h('ul', { class: 'bars' }, points.map((a) => {
        const d = a.latest.waterDepth;
        const pct = Math.max(0, Math.min(100, (d / 30) * 100));
        const tone = d >= 25 ? 'bad' : d >= WATER_LIMIT_CM ? 'warn' : 'ok';
        return h('li', { 'data-asset': a.id },
          h('a', { href: `#/assets/${encodeURIComponent(a.id)}?metric=waterDepth` }, a.id),
          h('span', { class: 'bar' }, h('span', { class: `fill ${tone}`, style: `width:${pct.toFixed(1)}%` })),
          h('span', { class: 'num' }, value(d, 'cm')));
      })));
  }

  function drawRecent() {
    const list = [...model.openTasks].sort((a, b) => b.id - a.id).slice(0, 8);
    fill(recent, h('h2', {}, t('ov_recent')), list.length ? h('table', { class: 'tasks compact' }, h('tbody', {}, list.map((x) => h('tr', { 'data-task-id': x.id },
      h('td', {}, h('a', { href: `#/tasks/${x.id}` }, `#${x.id}`)),
      h('td', {}, h('span', { class: `badge sev-${x.severity}` }, label('severity', x.severity))),
      h('td', {}, label('category', x.category)),
      h('td', {}, x.asset || x.zone || ''),
      h('td', {}, h('span', { class: `badge st-${x.state}` }, label('state', x.state)))))))
      : h('p', { class: 'empty' }, t('tasks_empty')));
  }

  const feedItems = [];
  function pushFeed(kind, text, href) {
    feedItems.unshift({ at: new Date(), kind, text, href });
    feedItems.length = Math.min(feedItems.length, 14);
    fill(feedList, feedItems.map((f) => h('li', { class: `feed-${f.kind}` },
      h('time', {}, clock(f.at)), ' ',
      f.href ? h('a', { href: f.href }, f.text) : f.text)));
  }

  const drawAll = () => {
    drawTiles();
    drawMatrix();
    drawWater();
    drawRecent();
  };
  drawAll();
  loadViolations();

  const drawLive = throttle(() => {
    drawTiles();
    drawWater();
  }, 1000);
  const subs = [
    on('tasks', drawAll),
    on('assets', drawAll),
    on('gateways', drawTiles),
    on('reading', (a, r) => {
      readings += 1;
      fill(lastReading,
        h('span', { class: 'label' }, t('ov_last_reading')), ' ',
        h('a', { href: `#/assets/${encodeURIComponent(a.id)}?metric=${encodeURIComponent(r.metric)}` }, a.id), ' ',
        label('metric', r.metric), ' ', h('strong', { id: 'last-reading-value' }, value(r.value, r.unit)), ' ',
        h('time', {}, clock(r.ts)), ' · ',
        h('span', { id: 'readings-count', 'data-count': readings }, t('ov_readings_count', { n: readings })));
      drawLive();
    }),
    live.subscribe('task', (x) => {
      pushFeed('task', `${label('action', x.action)} · ${label('category', x.category)} · ${x.asset || x.subject} → ${label('state', x.state)}`, `#/tasks/${x.id}`);
      if (x.kind === 'enforcement') loadViolations();
    }),
    live.subscribe('event', (e) => {
      const a = model.byDevice.get(`${e.gateway}/${e.device}`);
      const plate = e.attributes && (e.attributes.plate || e.attributes.licensePlate);
      pushFeed('event', `${a ? a.id : e.device} · ${e.event}${e.phase && e.phase !== 'instant' ? ` (${e.phase})` : ''}${plate ? ` · ${plate}` : ''}`,
        a ? `#/assets/${encodeURIComponent(a.id)}` : null);
    }),
    live.subscribe('presence', (p) => {
      pushFeed('presence', `${p.gateway || ''} · ${t(p.state || '')}`, '#/gateways');
    }),
  ];
  const ticker = setInterval(drawTiles, 30000);
  return () => {
    subs.forEach((u) => u());
    clearInterval(ticker);
  };
}
