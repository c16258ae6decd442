// Map: every asset at its coordinates on the town's vector base (SVG, no tiles), coloured by its
// state (offline, open task, critical task, bad data, lit, ok) and kept current from the live feed.
// Selecting one shows its values and tasks, with a link to its detail page.

import { h, s, fill, ago, value, throttle } from '../dom.js';
import { t, label, lang } from '../i18n.js';
import { model, on, stateOf, tasksOf, linkOf, segmentNames } from '../model.js';
import { drawBase, projection } from '../town.js';
import { setQuery } from '../route.js';

const W = 1000;
const H = 600;
const GLYPH = {
  zh: { streetlight: '灯', waterlogging: '水', smartBin: '桶', dustMonitor: '尘', parkingCamera: '拍', encroachmentCamera: '摄', cabinet: '柜', rainGauge: '雨', warningLight: '警' },
  en: { streetlight: 'L', waterlogging: 'W', smartBin: 'B', dustMonitor: 'D', parkingCamera: 'P', encroachmentCamera: 'A', cabinet: 'C', rainGauge: 'R', warningLight: '!' },
};
const STATES = ['ok', 'lit', 'task', 'critical', 'bad', 'offline'];

export function render(main, r) {
  let selected = r.query.get('select');
  const hidden = new Set((r.query.get('hide') || '').split(',').filter(Boolean));
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'town-map', id: 'town-map', role: 'img', 'aria-label': t('map_title') });
  const base = s('g', { class: 'base' });
  const markers = s('g', { class: 'markers' });
  svg.append(base, markers);
  const panel = h('aside', { class: 'card map-panel', id: 'map-panel' });
  const kinds = h('div', { class: 'kinds' });
  const toolbar = h('div', { class: 'map-toolbar' },
    kinds,
    h('span', { class: 'spacer' }),
    h('button', { onclick: () => zoom(0.8), title: t('map_zoom_in') }, '+'),
    h('button', { onclick: () => zoom(1.25), title: t('map_zoom_out') }, '−'),
    h('button', { onclick: () => { view = { x: 0, y: 0, w: W, h: H }; applyView(); } }, t('map_zoom_reset')));
  const legend = h('div', { class: 'legend' }, STATES.map((st) => h('span', { class: 'legend-item' },
    h('i', { class: `dot state-${st}` }), t(`map_legend_${st === 'task' ? 'task' : st}`))));
  fill(main, h('div', { class: 'map-layout' },
    h('div', { class: 'card map-card' }, toolbar, h('div', { class: 'map-frame' }, svg), legend),
    panel));

  // Zoom and pan by the view box.
  let view = { x: 0, y: 0, w: W, h: H };
  const applyView = () => svg.setAttribute('viewBox', `${view.x} ${view.y} ${view.w} ${view.h}`);
  function zoom(f, cx = view.x + view.w / 2, cy = view.y + view.h / 2) {
    const w = Math.min(W * 2, Math.max(W / 12, view.w * f));
    const k = w / view.w;
    view = { x: cx - (cx - view.x) * k, y: cy - (cy - view.y) * k, w, h: view.h * k };
    applyView();
  }
  svg.addEventListener('wheel', (e) => {
    e.preventDefault();
    const pt = toSvg(e);
    zoom(e.deltaY < 0 ? 0.85 : 1.18, pt.x, pt.y);
  }, { passive: false });
  let drag = null;
  svg.addEventListener('pointerdown', (e) => {
    if (e.target.closest('.asset')) return;
    drag = { x: e.clientX, y: e.clientY, view: { ...view } };
    svg.setPointerCapture(e.pointerId);
  });
  svg.addEventListener('pointermove', (e) => {
    if (!drag) return;
    const k = view.w / svg.clientWidth;
    view = { ...drag.view, x: drag.view.x - (e.clientX - drag.x) * k, y: drag.view.y - (e.clientY - drag.y) * k };
    applyView();
  });
  svg.addEventListener('pointerup', () => { drag = null; });
  function toSvg(e) {
    const rect = svg.getBoundingClientRect();
    return { x: view.x + ((e.clientX - rect.left) / rect.width) * view.w, y: view.y + ((e.clientY - rect.top) / rect.height) * view.h };
  }

  let names = new Map();
  let project = null;
  const positions = new Map();

  function layout() {
    const placed = model.assets.filter((a) => a.location);
    if (!placed.length) return;
    project = projection(placed.map((a) => [a.location.lon, a.location.lat]), W, H);
    base.replaceChildren();
    const labels = Object.fromEntries([...names].map(([k, v]) => [k, v.name || k]));
    drawBase(base, project, placed, labels);
    // Assets at (nearly) the same spot are spread on a small ring so each can be picked.
    positions.clear();
    const groups = new Map();
    for (const a of placed) {
      const [x, y] = project([a.location.lon, a.location.lat]);
      const key = `${Math.round(x / 14)},${Math.round(y / 14)}`;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push({ a, x, y });
    }
    for (const g of groups.values()) {
      g.forEach(({ a, x, y }, i) => {
        if (g.length === 1) positions.set(a.id, [x, y]);
        else {
          const ang = (2 * Math.PI * i) / g.length - Math.PI / 2;
          positions.set(a.id, [x + 13 * Math.cos(ang), y + 13 * Math.sin(ang)]);
        }
      });
    }
    drawMarkers();
  }

  function drawKinds() {
    const all = [...new Set(model.assets.map((a) => a.kind))].sort();
    fill(kinds, h('span', { class: 'label' }, t('map_kinds')), all.map((k) => h('label', { class: 'chip' },
      h('input', {
        type: 'checkbox', checked: !hidden.has(k), 'data-kind': k,
        onchange: (e) => {
          if (e.target.checked) hidden.delete(k); else hidden.add(k);
          setQuery({ select: selected, hide: [...hidden].join(',') });
          drawMarkers();
        },
      }), label('kind', k))));
  }

  /** Where each shown asset's name goes: the first of four spots next to it that is free. */
  function labelSpots(shown) {
    const boxes = shown.map((a) => {
      const [x, y] = positions.get(a.id);
      return { x: x - 9, y: y - 9, w: 18, h: 18 };
    });
    const hit = (b) => boxes.some((o) => b.x < o.x + o.w && o.x < b.x + b.w && b.y < o.y + o.h && o.y < b.y + b.h);
    const spots = new Map();
    const order = [...shown].sort((p, q) => positions.get(p.id)[1] - positions.get(q.id)[1]);
    for (const a of order) {
      const [x, y] = positions.get(a.id);
      const w = a.id.length * 5.6 + 2;
      const tries = [[11, -13, 'start'], [11, 3, 'start'], [-11, -13, 'end'], [-11, 3, 'end'], [-w / 2, -24, 'middle'], [-w / 2, 12, 'middle']];
      const pick = tries.find(([dx, dy, anchor]) => !hit({ x: x + (anchor === 'end' ? dx - w : anchor === 'middle' ? -w / 2 : dx), y: y + dy, w, h: 11 })) || tries[0];
      const [dx, dy, anchor] = pick;
      boxes.push({ x: x + (anchor === 'end' ? dx - w : anchor === 'middle' ? -w / 2 : dx), y: y + dy, w, h: 11 });
      spots.set(a.id, { x: anchor === 'middle' ? 0 : dx, y: dy + 9, anchor });
    }
    return spots;
  }

  function drawMarkers() {
    const glyphs = GLYPH[lang()];
    markers.replaceChildren();
    const shown = model.assets.filter((a) => positions.get(a.id) && !hidden.has(a.kind));
    const spots = labelSpots(shown);
    for (const a of shown) {
      const p = positions.get(a.id);
      const spot = spots.get(a.id);
      const st = stateOf(a);
      const g = s('g', {
        class: `asset state-${st}${a.id === selected ? ' selected' : ''}`,
        transform: `translate(${p[0].toFixed(1)},${p[1].toFixed(1)})`,
        'data-asset': a.id, 'data-state': st, 'data-kind': a.kind, tabindex: 0,
        onclick: () => select(a.id),
        onkeydown: (e) => { if (e.key === 'Enter') select(a.id); },
      },
      s('title', {}, `${a.id} · ${label('kind', a.kind)}`),
      s('circle', { r: 9 }),
      s('text', { class: 'glyph', y: 3.5 }, glyphs[a.kind] || a.kind[0]),
      s('text', { class: 'asset-label', x: spot.x, y: spot.y, 'text-anchor': spot.anchor }, a.id));
      markers.append(g);
    }
  }

  /** Colours the markers again in place (the live feed changes states often). */
  function updateMarkers() {
    for (const g of markers.children) {
      const a = model.byId.get(g.dataset.asset);
      if (!a) continue;
      const st = stateOf(a);
      if (g.dataset.state !== st) {
        g.dataset.state = st;
        g.setAttribute('class', `asset state-${st}${a.id === selected ? ' selected' : ''}`);
      }
    }
  }

  function select(id) {
    selected = id;
    setQuery({ select: id, hide: [...hidden].join(',') });
    drawMarkers();
    drawPanel();
  }

  function drawPanel() {
    const a = selected && model.byId.get(selected);
    if (!a) {
      fill(panel, h('p', { class: 'hint' }, t('map_select')));
      return;
    }
    const tasks = tasksOf(a.id);
    const seg = names.get(a.road_segment);
    const latest = Object.entries(a.latest || {});
    fill(panel,
      h('h2', {}, a.id, ' ', h('span', { class: `badge state-${stateOf(a)}` }, t(`map_legend_${stateOf(a)}`))),
      h('dl', { class: 'facts' },
        h('dt', {}, t('asset_kind')), h('dd', {}, label('kind', a.kind)),
        h('dt', {}, t('asset_segment')), h('dd', {}, seg && seg.name ? seg.name : a.road_segment || '—'),
        h('dt', {}, t('asset_zone')), h('dd', {}, a.zone || '—'),
        h('dt', {}, t('asset_last_seen')), h('dd', {}, ago(a.last_seen)),
        h('dt', {}, t('gw_link')), h('dd', {}, linkOf(a) ? t(`link_${linkOf(a)}`) : '—')),
      latest.length ? h('table', { class: 'kv' }, h('tbody', {}, latest.slice(0, 8).map(([m, v]) => h('tr', { class: a.bad && a.bad[m] ? 'bad' : null },
        h('th', {}, label('metric', m)), h('td', { class: 'num' }, value(v, (a.units || {})[m])))))) : null,
      h('h3', {}, t('asset_tasks')),
      tasks.length ? h('ul', { class: 'task-links' }, tasks.map((x) => h('li', {},
        h('span', { class: `badge sev-${x.severity}` }, label('severity', x.severity)), ' ',
        h('a', { href: `#/tasks/${x.id}` }, `#${x.id} ${label('category', x.category)}`), ' · ', label('state', x.state)))) : h('p', { class: 'hint' }, t('asset_none')),
      h('p', {}, h('a', { class: 'button primary', id: 'open-detail', href: `#/assets/${encodeURIComponent(a.id)}` }, t('map_open_detail'))));
  }

  segmentNames().then((n) => {
    names = n;
    layout();
    drawPanel();
  });
  drawKinds();
  layout();
  drawPanel();

  const redraw = throttle(() => {
    updateMarkers();
    if (selected) drawPanel();
  }, 1000);
  const subs = [
    on('reading', redraw),
    on('tasks', redraw),
    on('gateways', redraw),
    on('assets', () => {
      drawKinds();
      layout();
      drawPanel();
    }),
  ];
  return () => subs.forEach((u) => u());
}
