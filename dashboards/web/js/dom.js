// Small DOM and formatting helpers shared by the pages (no framework: pages build elements with
// h() and replace them when their data changes).

import { t, lang } from './i18n.js';

/** h('div', {class: 'x', onclick: f}, child, 'text', [more]) → an element. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

const SVG_NS = ['http:', '', 'www.w3.org', '2000', 'svg'].join('/');

/** An SVG element with attributes. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat()) if (c != null) el.append(c instanceof Node ? c : String(c));
  return el;
}

/** Replaces an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

function locale() {
  return lang() === 'zh' ? 'zh-CN' : 'en-GB';
}

/** A timestamp as local date and time (seconds when `secs`). */
export function when(ts, secs = false) {
  if (!ts) return '—';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  return d.toLocaleString(locale(), {
    month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit',
    second: secs ? '2-digit' : undefined, hour12: false,
  });
}

/** A clock time only. */
export function clock(ts) {
  if (!ts) return '—';
  return new Date(ts).toLocaleTimeString(locale(), { hour12: false });
}

/** How long ago (or, negative, how long until): "3 分钟前" / "3 min ago". */
export function ago(ts, now = Date.now()) {
  if (!ts) return t('never');
  const ms = now - new Date(ts).getTime();
  const future = ms < 0;
  const d = duration(Math.abs(ms));
  return future ? t('in_time', { d }) : t('ago', { d });
}

/** A span of milliseconds in the largest sensible unit. */
export function duration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 60) return t('dur_s', { n: s });
  const m = Math.round(s / 60);
  if (m < 60) return t('dur_m', { n: m });
  const hr = Math.floor(m / 60);
  if (hr < 48) return t('dur_h', { n: hr, m: m % 60 });
  return t('dur_d', { n: Math.floor(hr / 24) });
}

/** A value with its unit, numbers rounded to what a person reads. */
export function value(v, unit) {
  if (v === null || v === undefined) return '—';
  if (typeof v === 'boolean') return v ? t('on_true') : t('off_false');
  if (typeof v === 'number') {
    const a = Math.abs(v);
    const digits = a >= 1000 ? 0 : a >= 100 ? 1 : a >= 1 ? 2 : 3;
    let text = Number(v.toFixed(digits)).toLocaleString(locale());
    if (unit === '1' && a <= 1.5) text = Number((v * 100).toFixed(1)) + ' %';
    else if (unit && unit !== '1') text += ' ' + unitLabel(unit);
    return text;
  }
  return String(v);
}

function unitLabel(u) {
  return { Cel: '°C', cel: '°C', 'ug/m3': 'µg/m³', dBA: 'dB(A)' }[u] || u;
}

/** Calls `fn` at most once per `ms`; a call in between runs once at the end with its arguments. */
export function throttle(fn, ms) {
  let timer = null;
  let pending = null;
  const later = () => {
    timer = null;
    if (pending) {
      const args = pending;
      pending = null;
      fn(...args);
      timer = setTimeout(later, ms);
    }
  };
  return (...args) => {
    if (timer) { pending = args; return; }
    fn(...args);
    timer = setTimeout(later, ms);
  };
}

/** A message box for errors. */
export function errorBox(e) {
  return h('div', { class: 'error', role: 'alert' }, e && e.message ? e.message : String(e));
}
