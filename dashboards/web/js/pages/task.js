// Task detail: the case, its data (plates as the hub returns them: masked for roles other than
// admin and enforcement), evidence images for enforcement roles, the readings around the trigger,
// the lifecycle actions the user's role allows in the task's state, the audit trail and the
// notifications' delivery state.

import { api, getJson, live, withToken } from '../api.js';
import { h, fill, when, ago, value, errorBox } from '../dom.js';
import { t, label } from '../i18n.js';
import { model, actionsFor, NEEDS_NOTE, isOverdue, mainMetric, plateOf } from '../model.js';
import { timeChart } from '../chart.js';

export function render(main, r) {
  const id = Number(r.id);
  let task = null;
  let chart = null;
  const message = h('p', { class: 'message hidden', id: 'action-message', role: 'status' });
  fill(main, h('p', { class: 'loading' }, t('loading')));

  async function load() {
    try {
      task = await getJson(`/api/v1/tasks/${id}`);
      draw();
    } catch (e) {
      fill(main, h('p', {}, h('a', { href: '#/tasks' }, `← ${t('task_back')}`)), errorBox(e));
    }
  }

  async function act(action, note, department) {
    if (NEEDS_NOTE.has(action) && !note) {
      showMessage(t('task_note_required'), true);
      return;
    }
    const body = { action };
    if (note) body.note = note;
    if (action === 'dispatch' && department && department !== task.department) body.department = department;
    try {
      await api(`/api/v1/tasks/${id}/actions`, { body });
      showMessage(t('task_done', { action: label('action', action) }), false);
      await load();
    } catch (e) {
      showMessage(e.message, true);
    }
  }

  function showMessage(text, bad) {
    message.textContent = text;
    message.className = `message ${bad ? 'error' : 'ok'}`;
  }

  function facts() {
    const overdue = isOverdue(task);
    const plate = plateOf(task);
    return h('dl', { class: 'facts' },
      h('dt', {}, t('kind')), h('dd', {}, label('kind', task.kind)),
      h('dt', {}, t('col_category')), h('dd', {}, `${label('category', task.category)} (${task.category})`),
      h('dt', {}, t('rule')), h('dd', {}, task.rule),
      h('dt', {}, t('severity')), h('dd', {}, h('span', { class: `badge sev-${task.severity}` }, label('severity', task.severity))),
      h('dt', {}, t('department')), h('dd', {}, label('department', task.department)),
      h('dt', {}, t('asset')), h('dd', {}, task.asset ? h('a', { href: `#/assets/${encodeURIComponent(task.asset)}` }, task.asset) : '—'),
      plate ? [h('dt', {}, t('task_plate')), h('dd', {}, h('span', { class: 'plate', id: 'task-plate' }, plate))] : null,
      h('dt', {}, t('subject')), h('dd', {}, task.subject),
      h('dt', {}, t('segment')), h('dd', {}, task.road_segment || '—'),
      h('dt', {}, t('grid')), h('dd', {}, task.grid || '—'),
      h('dt', {}, t('zone')), h('dd', {}, task.zone || '—'),
      h('dt', {}, t('opened')), h('dd', {}, `${when(task.opened_at, true)} (${ago(task.opened_at)})`),
      h('dt', {}, t('due')), h('dd', { class: overdue ? 'overdue' : null }, task.due_at ? `${when(task.due_at, true)} (${ago(task.due_at)})` : '—'),
      task.closed_at ? [h('dt', {}, t('closed_at')), h('dd', {}, when(task.closed_at, true))] : null);
  }

  function detailTable() {
    const rows = Object.entries(task.detail || {}).filter(([k]) => k !== 'evidence');
    if (!rows.length) return null;
    const shown = (k, v) => {
      if (typeof v === 'string' && /^\d{4}-\d\d-\d\dT/.test(v)) return when(v, true);
      if (k === 'plate') return h('span', { class: 'plate' }, v);
      if (k === 'plateColor' || k === 'vehicleType') return label('field', v);
      return typeof v === 'object' ? JSON.stringify(v) : value(v);
    };
    return h('table', { class: 'kv', id: 'task-detail' }, h('tbody', {}, rows.map(([k, v]) => h('tr', { 'data-field': k },
      h('th', {}, label('field', k), label('field', k) !== k ? h('span', { class: 'hint' }, ` ${k}`) : null),
      h('td', {}, shown(k, v))))));
  }

  function evidence() {
    const items = ((task.detail || {}).evidence || []).filter((e) => (e.images || []).length);
    if (!items.length) return null;
    const seesImages = ['admin', 'enforcement'].includes(model.who.role);
    return h('div', { class: 'card' }, h('h2', {}, t('task_evidence')),
      seesImages
        ? h('div', { class: 'evidence' }, items.flatMap((e) => e.images.map((sha) => h('figure', {},
          h('a', { href: withToken(`/api/v1/evidence/${sha}`), target: '_blank', rel: 'noopener' },
            h('img', { src: withToken(`/api/v1/evidence/${sha}`), alt: sha.slice(0, 12), loading: 'lazy' })),
          h('figcaption', {}, `${when(e.at, true)}${e.confidence ? ` · ${Math.round(e.confidence * 100)} %` : ''} · ${sha.slice(0, 12)}…`)))))
        : h('p', { class: 'hint', id: 'evidence-hidden' }, t('task_evidence_hidden')));
  }

  function actions() {
    const allowed = actionsFor(model.who, task);
    if (!allowed.length) return h('div', { class: 'card', id: 'task-actions' }, h('h2', {}, t('task_actions')), h('p', { class: 'hint' }, t('task_no_actions')), message);
    const note = h('textarea', { id: 'action-note', rows: 2, placeholder: t('task_note') });
    const dept = h('input', { id: 'action-department', value: task.department || '', size: 18 });
    return h('div', { class: 'card', id: 'task-actions' },
      h('h2', {}, t('task_actions')),
      h('label', { for: 'action-note' }, t('task_note')), note,
      allowed.includes('dispatch') ? h('label', {}, t('task_dept'), ' ', dept) : null,
      h('div', { class: 'buttons' }, allowed.map((a) => h('button', {
        class: ['cancel', 'reopen'].includes(a) ? 'danger' : 'primary', 'data-action': a,
        onclick: () => act(a, note.value.trim(), dept.value.trim()),
      }, label('action', a)))),
      message);
  }

  function history() {
    return h('div', { class: 'card' }, h('h2', {}, t('task_history')), h('table', { class: 'history', id: 'task-history' },
      h('thead', {}, h('tr', {}, ['h_at', 'h_actor', 'h_action', 'h_from', 'h_to', 'h_note'].map((k) => h('th', {}, t(k))))),
      h('tbody', {}, (task.history || []).map((e) => h('tr', { 'data-action': e.action },
        h('td', {}, when(e.at, true)), h('td', {}, e.actor), h('td', {}, label('action', e.action)),
        h('td', {}, e.from ? label('state', e.from) : '—'), h('td', {}, label('state', e.to)), h('td', {}, e.note || ''))))));
  }

  function notifications() {
    const list = task.notifications || [];
    return h('div', { class: 'card' }, h('h2', {}, t('task_notifications')), list.length
      ? h('table', { class: 'history', id: 'task-notifications' },
        h('thead', {}, h('tr', {}, ['n_channel', 'n_action', 'n_state', 'n_attempts', 'n_error', 'n_delivered'].map((k) => h('th', {}, t(k))))),
        h('tbody', {}, list.map((n) => h('tr', {},
          h('td', {}, n.channel), h('td', {}, label('action', n.action)),
          h('td', {}, h('span', { class: `badge nt-${n.state}` }, n.state)), h('td', { class: 'num' }, n.attempts),
          h('td', {}, n.lastError || ''), h('td', {}, when(n.deliveredAt, true))))))
      : h('p', { class: 'hint' }, t('task_no_notifications')));
  }

  async function readings(box) {
    const a = task.asset && model.byId.get(task.asset);
    const metric = a && mainMetric(a.kind, task.category);
    if (!metric) return;
    const at = new Date(task.opened_at).getTime();
    const from = new Date(at - 30 * 60e3);
    const to = new Date(Math.min(Date.now(), at + 30 * 60e3));
    try {
      const { data } = await api(`/api/v1/assets/${encodeURIComponent(a.id)}/readings?metric=${metric}&from=${from.toISOString()}&to=${to.toISOString()}&step=30s`);
      if (!data.length) return;
      box.classList.remove('hidden');
      if (chart) chart.destroy();
      chart = timeChart(box.querySelector('.chart'), data, { label: label('metric', metric), unit: (a.units || {})[metric] || '', height: 200, mark: task.opened_at });
    } catch { /* no chart */ }
  }

  function draw() {
    if (chart) chart.destroy();
    chart = null;
    const readingsBox = h('div', { class: 'card hidden', id: 'task-readings' }, h('h2', {}, t('task_readings')), h('div', { class: 'chart' }));
    fill(main,
      h('p', {}, h('a', { href: '#/tasks' }, `← ${t('task_back')}`)),
      h('div', { class: 'task-head', id: 'task-head', 'data-state': task.state },
        h('h1', {}, t('task_title', { id: task.id }), ' ', h('span', { class: `badge st-${task.state}`, id: 'task-state' }, label('state', task.state))),
        h('p', { class: 'task-title' }, `${label('category', task.category)} · ${task.title}`)),
      h('div', { class: 'grid-2' },
        h('div', {}, h('div', { class: 'card' }, h('h2', {}, t('task_facts')), facts()), actions()),
        h('div', {}, h('div', { class: 'card' }, h('h2', {}, t('task_detail')), detailTable() || h('p', { class: 'hint' }, '—')), evidence(), readingsBox)),
      history(),
      notifications());
    readings(readingsBox);
  }

  load();
  const unsub = live.subscribe('task', (x) => { if (x.id === id) load(); });
  return () => {
    unsub();
    if (chart) chart.destroy();
  };
}
