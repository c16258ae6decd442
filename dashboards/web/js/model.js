// What the pages share: who is signed in, the assets with their latest values (kept current from
// the live feed), the gateways, and the open tasks (fetched again when the feed says a task moved).
// Also the rules of the task lifecycle as the hub applies them, so a page offers only the actions
// the user's role may take in the task's state (the hub checks again).

import { getJson, live } from './api.js';
import { throttle } from './dom.js';

export const model = {
  who: null,
  assets: [],
  byId: new Map(),
  byDevice: new Map(),
  gateways: [],
  openTasks: [],
  loaded: false,
};

const listeners = new Map();

/** on('assets' | 'reading' | 'tasks' | 'gateways', fn) → unsubscribe. */
export function on(what, fn) {
  if (!listeners.has(what)) listeners.set(what, new Set());
  listeners.get(what).add(fn);
  return () => listeners.get(what).delete(fn);
}

function emit(what, ...args) {
  for (const fn of listeners.get(what) || []) {
    try {
      fn(...args);
    } catch (e) {
      console.error(e);
    }
  }
}

export async function loadAssets() {
  const list = await getJson('/api/v1/assets');
  model.assets = list;
  model.byId = new Map(list.map((a) => [a.id, a]));
  model.byDevice = new Map(list.map((a) => [`${a.gateway}/${a.device}`, a]));
  emit('assets');
}

export async function loadGateways() {
  model.gateways = await getJson('/api/v1/gateways');
  emit('gateways');
}

export async function loadOpenTasks() {
  model.openTasks = await getJson('/api/v1/tasks?status=open&limit=1000');
  emit('tasks');
}

const refreshTasks = throttle(() => loadOpenTasks().catch(() => {}), 1000);
const refreshGateways = throttle(() => loadGateways().catch(() => {}), 2000);

let timers = [];

/** Loads everything and follows the live feed (once per sign-in). */
export async function start(who) {
  model.who = who;
  await Promise.all([loadAssets(), loadGateways(), loadOpenTasks()]);
  model.loaded = true;
  live.subscribe('reading', (r) => {
    const a = model.byDevice.get(`${r.gateway}/${r.device}`);
    if (!a) return;
    a.latest = a.latest || {};
    a.bad = a.bad || {};
    if (r.bad) {
      // As the assets API: a bad reading marks a metric it knows, and is no value.
      if (r.metric in a.latest) a.bad[r.metric] = r.bad;
    } else {
      if (r.value !== null && r.value !== undefined) a.latest[r.metric] = r.value;
      delete a.bad[r.metric];
    }
    if (r.unit) (a.units = a.units || {})[r.metric] = r.unit;
    if (!a.last_seen || r.ts > a.last_seen) a.last_seen = r.ts;
    emit('reading', a, r);
  });
  live.subscribe('event', (e) => {
    const a = model.byDevice.get(`${e.gateway}/${e.device}`);
    if (a && (!a.last_seen || e.ts > a.last_seen)) a.last_seen = e.ts;
  });
  live.subscribe('task', () => refreshTasks());
  live.subscribe('presence', () => refreshGateways());
  // Heartbeats are not on the feed: the gateways' link states are read again every 15 s, and the
  // assets every minute (for devices that only send events).
  timers.push(setInterval(() => refreshGateways(), 15000));
  timers.push(setInterval(() => loadAssets().catch(() => {}), 60000));
}

export function stop() {
  timers.forEach(clearInterval);
  timers = [];
  model.loaded = false;
}

// --- Tasks ---------------------------------------------------------------------------------------

export const SEVERITY_RANK = { info: 0, warning: 1, high: 2, critical: 3 };
export const OPEN_STATES = ['filed', 'dispatched', 'accepted', 'handling', 'handled', 'verified'];
export const STATES = [...OPEN_STATES, 'closed', 'cancelled'];

/** From which states each action applies (hub/src/tasks.rs, Action::apply). */
const FROM = {
  dispatch: ['filed'],
  accept: ['dispatched'],
  start: ['accepted'],
  handle: ['accepted', 'handling'],
  verify: ['handled'],
  close: ['verified'],
  reopen: ['handled', 'verified', 'closed'],
  cancel: OPEN_STATES,
};
export const ACTIONS = Object.keys(FROM);
export const NEEDS_NOTE = new Set(['handle', 'reopen', 'cancel']);
const WORK = new Set(['accept', 'start', 'handle']);

/** Whether `who` may do `action` to `task` (hub/src/tasks.rs, may). */
export function may(who, action, task) {
  if (!who) return false;
  switch (who.role) {
    case 'admin':
    case 'operator':
      return true;
    case 'crew':
      return WORK.has(action) && task.kind === 'maintenance' && !!task.department && task.department === who.department;
    case 'enforcement':
      return WORK.has(action) && task.kind === 'enforcement';
    default:
      return false;
  }
}

/** The actions `who` may take on `task` now. */
export function actionsFor(who, task) {
  return ACTIONS.filter((a) => FROM[a].includes(task.state) && may(who, a, task));
}

export function isOverdue(task, now = Date.now()) {
  return !!task.due_at && OPEN_STATES.includes(task.state) && new Date(task.due_at).getTime() < now;
}

/** The plate of an enforcement task as the hub returned it (masked for roles without the right). */
export function plateOf(task) {
  const d = task.detail || {};
  return d.plate || (d.evidence || []).map((e) => e.plate).find(Boolean) || null;
}

// --- Assets --------------------------------------------------------------------------------------

/** Kinds that report only events: silence is not a fault for them. */
const EVENT_ONLY = new Set(['parkingCamera', 'encroachmentCamera', 'cabinet', 'warningLight']);
const STALE_MS = 15 * 60 * 1000;

/** The link state the asset's gateway last reported for it ('up', 'down' or null). */
export function linkOf(asset) {
  const gw = model.gateways.find((g) => g.id === asset.gateway);
  if (!gw) return null;
  if (gw.state === 'offline') return 'down';
  const d = ((gw.last_heartbeat && gw.last_heartbeat.devices) || []).find((x) => x.device === asset.device);
  return d ? d.link : null;
}

export function isOnline(asset, now = Date.now()) {
  if (linkOf(asset) === 'down') return false;
  if (EVENT_ONLY.has(asset.kind)) return true;
  return !!asset.last_seen && now - new Date(asset.last_seen).getTime() < STALE_MS;
}

/** The open tasks about an asset, worst first. */
export function tasksOf(assetId) {
  return model.openTasks
    .filter((t) => t.asset === assetId)
    .sort((a, b) => (SEVERITY_RANK[b.severity] ?? 0) - (SEVERITY_RANK[a.severity] ?? 0));
}

/** How the map colours an asset: offline, critical, task, bad, lit or ok. */
export function stateOf(asset) {
  if (!isOnline(asset)) return 'offline';
  const tasks = tasksOf(asset.id);
  if (tasks.length) return (SEVERITY_RANK[tasks[0].severity] ?? 0) >= 2 ? 'critical' : 'task';
  if (asset.bad && Object.keys(asset.bad).length) return 'bad';
  if (isLit(asset)) return 'lit';
  return 'ok';
}

export function isLit(asset) {
  const l = asset.latest || {};
  return asset.kind === 'streetlight' && (typeof l.activePower === 'number' ? l.activePower > 15 : l.powerState === true);
}

/** The metric a chart of an asset (or a task about it) shows first. */
export function mainMetric(kind, category) {
  const byCategory = [
    [/^lamp|lighting/, 'activePower'],
    [/^waterlogging/, 'waterDepth'],
    [/^bin_/, 'fillingLevel'],
    [/^dust/, 'pm10'],
    [/^noise/, 'LAeq'],
  ];
  for (const [re, m] of byCategory) if (category && re.test(category)) return m;
  return {
    streetlight: 'activePower', waterlogging: 'waterDepth', smartBin: 'fillingLevel', dustMonitor: 'pm10',
    rainGauge: 'rainfall',
  }[kind] || null;
}

// --- Names of road segments and road chiefs (from the assessment, which carries the rules file's) --

let segmentsPromise = null;

/** segment id → {name, chief}, loaded once. */
export function segmentNames() {
  if (!segmentsPromise) {
    segmentsPromise = getJson(`/api/v1/reports/assessment?month=${new Date().toISOString().slice(0, 7)}`)
      .then((r) => new Map((r.segments || []).map((x) => [x.key, { name: x.name, chief: x.chief }])))
      .catch(() => new Map());
  }
  return segmentsPromise;
}
