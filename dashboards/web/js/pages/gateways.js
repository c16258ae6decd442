// Gateways, for installers: state, last heartbeat, uptime, clock, spool depth and drops, evidence
// uploads, the configuration running (local file or hub version, rollbacks), and every device's link as the gateway last reported it (from /api/v1/gateways, read
// again when a gateway comes or goes and every 15 s).

import { h, fill, ago, when, duration } from '../dom.js';
import { t } from '../i18n.js';
import { model, on, loadGateways } from '../model.js';

function bytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// What configuration the gateway runs, from its heartbeat's `config` report.
function configText(c) {
  if (!c) return '—';
  const sha = (c.sha256 || '').slice(0, 12);
  if (c.source === 'hub') return t(c.trial ? 'gw_config_hub_trial' : 'gw_config_hub', { v: c.version, s: sha });
  if (c.version != null) return t('gw_config_local_override', { v: c.version, s: sha });
  return t('gw_config_local', { s: sha });
}

export function render(main) {
  const box = h('div', { id: 'gateways' });
  fill(main, h('h1', {}, t('gw_title')), box);

  function draw() {
    const now = Date.now();
    fill(box, model.gateways.map((g) => {
      const hb = g.last_heartbeat || null;
      const spool = (hb && hb.spool) || {};
      const ev = (hb && hb.evidence) || null;
      const devices = (hb && hb.devices) || [];
      const down = devices.filter((d) => d.link !== 'up').length;
      const clockState = (hb && hb.clock) || g.clock;
      return h('section', { class: `card gateway gw-${g.state}`, 'data-gateway': g.id, 'data-state': g.state },
        h('div', { class: 'card-head' },
          h('h2', {}, g.id),
          h('span', { class: `badge ${g.state === 'online' ? 'state-ok' : 'state-offline'}` }, t(g.state)),
          down ? h('span', { class: 'badge state-critical' }, `${t('link_down')} ${down}`) : null),
        h('dl', { class: 'facts cols' },
          h('dt', {}, t('gw_heartbeat')), h('dd', { 'data-field': 'heartbeat' }, hb ? `${when(hb.sentAt, true)} (${ago(hb.sentAt, now)})` : t('gw_no_heartbeat')),
          h('dt', {}, t('gw_uptime')), h('dd', {}, hb && hb.uptimeS != null ? duration(hb.uptimeS * 1000) : '—'),
          h('dt', {}, t('gw_clock')), h('dd', { class: clockState === 'synced' ? null : 'warn', 'data-field': 'clock' }, clockState ? t(`clock_${clockState}`) : '—'),
          h('dt', {}, t('gw_spool')), h('dd', { 'data-field': 'spool' }, t('gw_spool_depth', { n: spool.depth ?? '—', b: bytes(spool.bytes) })),
          h('dt', {}, t('gw_drops')), h('dd', { class: spool.dropped ? 'warn' : null, 'data-field': 'drops' }, String(spool.dropped ?? '—')),
          ev ? [h('dt', {}, t('gw_evidence')), h('dd', {}, t('gw_evidence_v', { p: ev.pending ?? 0, u: ev.uploaded ?? 0, d: ev.dropped ?? 0 }))] : null,
          h('dt', {}, t('gw_disk')), h('dd', {}, bytes(hb && hb.diskFreeBytes)),
          h('dt', {}, t('gw_mem')), h('dd', {}, bytes(hb && hb.memUsedBytes)),
          h('dt', {}, t('gw_agent')), h('dd', {}, `${g.agent || '—'} · ${g.config_version || ''}`),
          h('dt', {}, t('gw_config')), h('dd', { 'data-field': 'config' }, configText(hb && hb.config)),
          hb && hb.config && hb.config.failed ? [h('dt', {}, ''), h('dd', { class: 'warn', 'data-field': 'config-failed' },
            t(hb.config.failed.outcome === 'refused' ? 'gw_config_refused' : 'gw_config_rolled_back',
              { v: hb.config.failed.version, r: hb.config.failed.reason }))] : null,
          h('dt', {}, t('gw_connected')), h('dd', {}, when(g.connected_at, true))),
        h('h3', {}, t('gw_devices')),
        h('table', { class: 'links' },
          h('thead', {}, h('tr', {}, ['gw_device', 'gw_asset', 'gw_link', 'gw_failures', 'gw_last_success'].map((k) => h('th', {}, t(k))))),
          h('tbody', {}, devices.map((d) => {
            const a = model.byDevice.get(`${g.id}/${d.device}`);
            return h('tr', { 'data-device': d.device, 'data-link': d.link, class: d.link === 'up' ? null : 'bad' },
              h('td', {}, d.device),
              h('td', {}, a ? h('a', { href: `#/assets/${encodeURIComponent(a.id)}` }, a.id) : '—'),
              h('td', {}, h('span', { class: `badge ${d.link === 'up' ? 'state-ok' : 'state-critical'}` }, t(`link_${d.link}`))),
              h('td', { class: 'num' }, d.failures ?? 0),
              h('td', {}, d.lastSuccess ? ago(d.lastSuccess, now) : t('never')));
          }))));
    }));
  }

  draw();
  loadGateways().catch(() => {});
  const unsub = on('gateways', draw);
  const timer = setInterval(() => loadGateways().catch(() => {}), 5000);
  return () => {
    unsub();
    clearInterval(timer);
  };
}
