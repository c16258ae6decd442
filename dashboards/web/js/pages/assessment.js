// The monthly assessment (考核排名): ranking tables per road segment, road chief and department,
// with the score as a bar, the published formula, and the CSV the hub makes for each table.

import { getJson, withToken } from '../api.js';
import { h, fill, errorBox } from '../dom.js';
import { t, label } from '../i18n.js';
import { setQuery } from '../route.js';

const TABLES = ['segments', 'chiefs', 'departments'];

function pct(v) {
  return v == null ? '—' : `${(v * 100).toFixed(1)} %`;
}

export function render(main, r) {
  const now = new Date();
  let month = r.query.get('month') || `${now.getFullYear()}-${String(now.getMonth() + 1).padStart(2, '0')}`;
  let table = TABLES.includes(r.query.get('table')) ? r.query.get('table') : 'segments';
  let report = null;

  const tabs = h('div', { class: 'tabs', role: 'tablist' });
  const csv = h('a', { class: 'button', id: 'csv-link' }, t('as_csv'));
  const body = h('div', { id: 'assessment' });
  const formula = h('p', { class: 'hint', id: 'formula' });
  const monthInput = h('input', {
    type: 'month', id: 'month', value: month,
    onchange: (e) => { if (e.target.value) { month = e.target.value; load(); } },
  });
  fill(main, h('div', { class: 'card' },
    h('div', { class: 'card-head' }, h('h1', {}, t('as_title')),
      h('label', {}, t('as_month'), ' ', monthInput), csv),
    tabs, body, formula));

  function drawTabs() {
    fill(tabs, TABLES.map((k) => h('button', {
      role: 'tab', class: k === table ? 'active' : null, 'data-table': k,
      onclick: () => { table = k; drawTabs(); draw(); },
    }, t(`as_${k}`))));
    csv.href = withToken(`/api/v1/reports/assessment?month=${month}&format=csv&table=${table}`);
    csv.setAttribute('download', `assessment-${month}-${table}.csv`);
    setQuery({ month, table });
  }

  function draw() {
    if (!report) return;
    const rows = report[table] || [];
    formula.textContent = `${t('as_formula')}: ${report.formula || ''}`;
    if (!rows.length) {
      fill(body, h('p', { class: 'empty' }, t('as_empty')));
      return;
    }
    const name = (x) => (table === 'departments' ? label('department', x.key) : x.name || x.key);
    fill(body, h('table', { class: 'ranking', 'data-table': table },
      h('thead', {}, h('tr', {},
        h('th', {}, t('as_rank')), h('th', {}, t('as_name')), table === 'segments' ? h('th', {}, t('as_chief')) : null,
        ['as_raised', 'as_closed', 'as_cancelled', 'as_ontime', 'as_mean', 'as_recurring', 'as_lighting', 'as_violations'].map((k) => h('th', { class: 'num' }, t(k))),
        h('th', { class: 'score-col' }, t('as_score')))),
      h('tbody', {}, rows.map((x) => {
        const violations = Object.entries(x.violations || {});
        const total = violations.reduce((a, [, n]) => a + n, 0);
        return h('tr', { 'data-key': x.key, 'data-rank': x.rank },
          h('td', { class: 'num rank' }, x.rank),
          h('td', {}, name(x), name(x) !== x.key ? h('div', { class: 'hint' }, x.key) : null),
          table === 'segments' ? h('td', {}, x.chief || '—') : null,
          h('td', { class: 'num' }, x.raised), h('td', { class: 'num' }, x.closed), h('td', { class: 'num' }, x.cancelled),
          h('td', { class: 'num' }, pct(x.onTimeRate)),
          h('td', { class: 'num' }, x.meanHoursToClose == null ? '—' : x.meanHoursToClose.toFixed(1)),
          h('td', { class: 'num' }, x.recurring),
          h('td', { class: 'num' }, pct(x.lightingRate)),
          h('td', { class: 'num', title: violations.map(([k, n]) => `${label('category', k)} ${n}`).join(', ') }, total),
          h('td', { class: 'score-col' },
            h('span', { class: 'bar' }, h('span', { class: `fill ${x.score >= 90 ? 'ok' : x.score >= 75 ? 'warn' : 'bad'}`, style: `width:${Math.max(0, Math.min(100, x.score)).toFixed(1)}%` })),
            h('span', { class: 'num score' }, x.score.toFixed(1))));
      }))));
  }

  async function load() {
    drawTabs();
    fill(body, h('p', { class: 'loading' }, t('loading')));
    try {
      report = await getJson(`/api/v1/reports/assessment?month=${month}`);
      draw();
      body.dataset.loaded = 'true';
    } catch (e) {
      fill(body, errorBox(e));
    }
  }

  load();
  return null;
}
