// The console's shell: sign-in, the header with its navigation and live status, and hash routing
// (#/overview, #/map, #/assets/ID, #/tasks, #/tasks/ID, #/crew, #/gateways, #/assessment). Each page
// is a module whose render(main, route) draws into main and returns a cleanup function.

import { api, setToken, token, live, onUnauthorized } from './api.js';
import { h, fill } from './dom.js';
import { t, lang, setLang } from './i18n.js';
import * as model from './model.js';
import { route } from './route.js';
import * as signin from './pages/signin.js';
import * as overview from './pages/overview.js';
import * as map from './pages/map.js';
import * as asset from './pages/asset.js';
import * as tasks from './pages/tasks.js';
import * as task from './pages/task.js';
import * as crew from './pages/crew.js';
import * as gateways from './pages/gateways.js';
import * as assessment from './pages/assessment.js';

const NAV = [
  ['overview', 'nav_overview'],
  ['map', 'nav_map'],
  ['tasks', 'nav_tasks'],
  ['crew', 'nav_crew'],
  ['gateways', 'nav_gateways'],
  ['assessment', 'nav_assessment'],
];

const root = document.getElementById('app');
let cleanup = null;
let who = null;

function defaultPage() {
  return { crew: 'crew', installer: 'gateways', enforcement: 'tasks' }[who && who.role] || 'overview';
}

function header(current) {
  const status = h('span', { class: 'live-status', id: 'live-status' });
  const unsub = live.onStatus((st) => {
    status.dataset.state = st;
    status.textContent = t(st === 'open' ? 'live_connected' : st === 'lost' ? 'live_lost' : 'live_connecting');
  });
  const el = h('header', { class: 'top' },
    h('a', { class: 'brand', href: `#/${defaultPage()}` }, h('span', { class: 'brand-full' }, t('app_title')), h('span', { class: 'brand-short' }, t('app_short'))),
    h('nav', { class: 'nav' }, NAV.map(([page, key]) => h('a', {
      href: `#/${page}`, class: page === current ? 'active' : null, 'data-nav': page,
    }, t(key)))),
    h('div', { class: 'who' },
      status,
      h('span', { class: 'user', id: 'user' }, t('signed_in_as', { name: who.name, role: t(`role_${who.role}`) }),
        who.department ? ` · ${who.department}` : ''),
      h('button', { class: 'link', id: 'lang', onclick: () => { setLang(lang() === 'zh' ? 'en' : 'zh'); draw(); } }, t('lang_switch')),
      h('button', { class: 'link', id: 'sign-out', onclick: signOut }, t('sign_out'))));
  return { el, unsub };
}

let headerUnsub = null;

async function draw() {
  if (cleanup) {
    try {
      cleanup();
    } catch (e) {
      console.error(e);
    }
    cleanup = null;
  }
  if (headerUnsub) headerUnsub();
  headerUnsub = null;
  document.title = t('app_title');
  const r = route();
  if (!who) {
    document.body.dataset.page = 'signin';
    fill(root, signin.render(onSignedIn));
    return;
  }
  if (!r.page || r.page === 'signin') {
    location.replace(`#/${defaultPage()}`);
    return;
  }
  const pages = { overview, map, assets: asset, tasks: r.id ? task : tasks, crew, gateways, assessment };
  const page = pages[r.page] || overview;
  const nav = r.page === 'assets' ? 'map' : r.page;
  const hd = header(nav);
  headerUnsub = hd.unsub;
  const main = h('main', { id: 'view', class: `page-${r.page}` });
  document.body.dataset.page = r.page + (r.id ? '-detail' : '');
  fill(root, hd.el, main);
  try {
    cleanup = page.render(main, r) || null;
  } catch (e) {
    console.error(e);
    fill(main, h('div', { class: 'error' }, String(e)));
  }
}

async function onSignedIn(tok) {
  const { data } = await api('/api/v1/whoami', { tok });
  setToken(tok);
  await begin(data);
}

async function begin(principal) {
  who = principal;
  await model.start(who);
  live.start();
  if (!route().page || route().page === 'signin') location.hash = `#/${defaultPage()}`;
  else draw();
}

function signOut() {
  setToken(null);
  live.stop();
  model.stop();
  who = null;
  location.hash = '#/signin';
  location.reload();
}

onUnauthorized(() => {
  if (who) signOut();
});

window.addEventListener('hashchange', draw);

async function boot() {
  setLang(lang());
  // A link may carry the token (the demo prints one): keep it, then take it out of the address.
  const fromUrl = new URLSearchParams(location.search).get('token') || new URLSearchParams(location.hash.replace(/^#\/?[^?]*\??/, '')).get('token');
  if (fromUrl) {
    setToken(fromUrl);
    history.replaceState(null, '', location.pathname + location.hash.replace(/[?&]token=[^&]*/, ''));
  }
  if (!token()) return draw();
  try {
    const { data } = await api('/api/v1/whoami');
    await begin(data);
  } catch (e) {
    if (e.status === 401) setToken(null);
    who = null;
    draw();
  }
}

boot();
