// The crews' phone view: my open tasks as cards (a crew token sees its own department's only),
// with where to go (a small map of the spot, coordinates and a navigation link), and the steps a
// crew takes: accept, start, and mark handled with a note. Handled tasks wait below for the
// operators' verification.

import { api, getJson, live } from '../api.js';
import { h, s, fill, ago, when, throttle, errorBox } from '../dom.js';
import { t, label } from '../i18n.js';
import { model, actionsFor, isOverdue, plateOf, segmentNames } from '../model.js';
import { drawBase, projection } from '../town.js';

const WORK = ['accept', 'start', 'handle'];

export function render(main) {
  const who = model.who;
  const list = h('div', { class: 'crew-list', id: 'crew-tasks' });
  const done = h('div', { class: 'crew-list done', id: 'crew-done' });
  fill(main, h('div', { class: 'crew' },
    h('h1', {}, t('crew_title')),
    who.department ? h('p', { class: 'hint' }, t('crew_dept', { d: label('department', who.department) })) : null,
    list,
    h('h2', {}, t('crew_done')),
    done));

  let names = new Map();
  let tasks = [];
  const openNote = new Set();
  // What a crew has typed survives the redraws the live feed causes.
  const notes = new Map();

  /** Tasks this user works: those with a crew step open to them, or handled by now. */
  function mine(x) {
    return WORK.some((a) => actionsFor(who, { ...x, state: 'dispatched' }).includes(a) || actionsFor(who, x).includes(a));
  }

  async function load() {
    try {
      const all = await getJson('/api/v1/tasks?status=open&limit=1000');
      tasks = all.filter(mine);
      draw();
      list.dataset.loaded = 'true';
    } catch (e) {
      fill(list, errorBox(e));
    }
  }

  async function act(x, action, note) {
    const body = { action };
    if (note) body.note = note;
    const card = list.querySelector(`[data-task-id="${x.id}"]`);
    try {
      await api(`/api/v1/tasks/${x.id}/actions`, { body });
      openNote.delete(x.id);
      notes.delete(x.id);
      await load();
    } catch (e) {
      if (card) card.querySelector('.card-message').textContent = e.message;
    }
  }

  function miniMap(x) {
    const a = x.asset && model.byId.get(x.asset);
    if (!a || !a.location) return null;
    const nearby = model.assets.filter((o) => o.location && Math.abs(o.location.lat - a.location.lat) < 0.003 && Math.abs(o.location.lon - a.location.lon) < 0.004);
    const project = projection([[a.location.lon, a.location.lat]], 340, 150, 160);
    const g = s('g', { class: 'base' });
    drawBase(g, project, nearby.length ? nearby : [a], {}, { segments: false });
    const [px, py] = project([a.location.lon, a.location.lat]);
    return s('svg', { viewBox: '0 0 340 150', class: 'mini-map' }, g,
      s('circle', { cx: px, cy: py, r: 14, class: 'pulse' }),
      s('circle', { cx: px, cy: py, r: 7, class: 'target' }));
  }

  function card(x) {
    const a = x.asset && model.byId.get(x.asset);
    const seg = names.get(x.road_segment);
    const allowed = actionsFor(who, x).filter((ac) => WORK.includes(ac));
    const plate = plateOf(x);
    const overdue = isOverdue(x);
    const note = h('textarea', {
      rows: 3, class: 'handle-note', placeholder: t('crew_handle_note'), value: notes.get(x.id) || '',
      oninput: (e) => notes.set(x.id, e.target.value),
    });
    return h('article', { class: `task-card sev-border-${x.severity}`, 'data-task-id': x.id, 'data-state': x.state },
      h('header', {},
        h('span', { class: `badge sev-${x.severity}` }, label('severity', x.severity)), ' ',
        h('span', { class: `badge st-${x.state}`, 'data-role': 'state' }, label('state', x.state)),
        h('span', { class: overdue ? 'due overdue' : 'due' }, t('crew_due', { t: ago(x.due_at) }))),
      h('h2', {}, label('category', x.category), ' ', h('a', { href: `#/tasks/${x.id}` }, `#${x.id}`)),
      h('p', { class: 'task-title' }, x.title),
      plate ? h('p', {}, t('task_plate'), ': ', h('span', { class: 'plate' }, plate)) : null,
      h('div', { class: 'where' },
        h('strong', {}, t('crew_location')), ' ',
        seg && seg.name ? seg.name : x.road_segment || '', x.zone ? ` · ${x.zone}` : '',
        a && a.location ? h('div', { class: 'coords' },
          `${a.location.lat.toFixed(5)}, ${a.location.lon.toFixed(5)} · `,
          h('a', { href: `geo:${a.location.lat},${a.location.lon}`, class: 'nav-link' }, t('crew_navigate'))) : null,
        miniMap(x)),
      h('p', { class: 'hint' }, `${t('opened')} ${when(x.opened_at)}`),
      openNote.has(x.id) ? h('div', { class: 'handle-form' }, note,
        h('button', {
          class: 'primary big', 'data-action': 'handle-submit',
          onclick: () => {
            if (!note.value.trim()) { note.focus(); note.classList.add('invalid'); return; }
            act(x, 'handle', note.value.trim());
          },
        }, t('crew_submit_handle'))) : null,
      h('div', { class: 'buttons' }, allowed.map((ac) => h('button', {
        class: ac === 'handle' ? 'big' : 'primary big', 'data-action': ac,
        onclick: () => {
          if (ac === 'handle') {
            openNote.add(x.id);
            draw();
            const ta = list.querySelector(`[data-task-id="${x.id}"] textarea`);
            if (ta) ta.focus();
          } else act(x, ac);
        },
      }, label('action', ac)))),
      h('p', { class: 'card-message error', role: 'alert' }));
  }

  function draw() {
    const todo = tasks.filter((x) => ['dispatched', 'accepted', 'handling'].includes(x.state));
    const waiting = tasks.filter((x) => ['handled', 'verified'].includes(x.state));
    fill(list, todo.length ? todo.map(card) : h('p', { class: 'empty' }, t('crew_empty')));
    fill(done, waiting.map((x) => h('div', { class: 'done-row', 'data-task-id': x.id, 'data-state': x.state },
      h('span', { class: `badge st-${x.state}` }, label('state', x.state)), ' ',
      h('a', { href: `#/tasks/${x.id}` }, `#${x.id} ${label('category', x.category)}`), ' ', x.asset || '')));
  }

  segmentNames().then((n) => { names = n; draw(); });
  load();
  const reload = throttle(load, 800);
  const unsub = live.subscribe('task', reload);
  return unsub;
}
