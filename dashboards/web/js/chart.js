// Time-series charts with uPlot (vendored, see vendor/README.md): a line of the readings, and,
// when the hub answered with buckets, a band from each bucket's min to its max.

import uPlot from '../vendor/uplot/uPlot.esm.js';

const pad = (n) => String(n).padStart(2, '0');

/** An x-axis label in 24-hour time, with the date when the range spans days. */
function tick(secs, span) {
  const d = new Date(secs * 1000);
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  const md = `${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  if (span > 3 * 86400) return md;
  if (span > 86400) return `${md} ${hm}`;
  if (span < 900) return `${hm}:${pad(d.getSeconds())}`;
  return hm;
}

/**
 * Draws `points` ([{ts, value, min?, max?}]) into `el`, sized to it; returns the uPlot instance
 * (destroy() it when the page goes). Non-numeric values (booleans) are drawn as 0/1.
 */
export function timeChart(el, points, { label = '', unit = '', height = 260, mark = null } = {}) {
  const xs = [];
  const ys = [];
  const lo = [];
  const hi = [];
  for (const p of points) {
    xs.push(new Date(p.ts).getTime() / 1000);
    const num = (v) => (typeof v === 'boolean' ? (v ? 1 : 0) : typeof v === 'number' ? v : null);
    ys.push(num(p.value));
    lo.push(p.min !== undefined ? num(p.min) : null);
    hi.push(p.max !== undefined ? num(p.max) : null);
  }
  const banded = lo.some((v) => v !== null);
  const series = [
    {},
    { label: `${label}${unit ? ` (${unit})` : ''}`, stroke: '#1f6feb', width: 2, spanGaps: false, points: { show: points.length < 60 } },
  ];
  const data = [xs, ys];
  if (banded) {
    series.push({ label: 'min', stroke: 'rgba(31,111,235,0.25)', width: 1 });
    series.push({ label: 'max', stroke: 'rgba(31,111,235,0.25)', width: 1 });
    data.push(lo, hi);
  }
  const opts = {
    width: Math.max(280, el.clientWidth || 600),
    height,
    series,
    bands: banded ? [{ series: [3, 2], fill: 'rgba(31,111,235,0.10)' }] : [],
    scales: { x: { time: true } },
    axes: [
      { stroke: '#555', grid: { stroke: '#eee' }, values: (u, splits) => splits.map((v) => tick(v, u.scales.x.max - u.scales.x.min)) },
      { stroke: '#555', grid: { stroke: '#eee' }, size: 60 },
    ],
    legend: { show: true },
    hooks: mark
      ? {
        draw: [
          (u) => {
            // A vertical line where the task was raised.
            const x = u.valToPos(new Date(mark).getTime() / 1000, 'x', true);
            if (!(x >= u.bbox.left && x <= u.bbox.left + u.bbox.width)) return;
            const ctx = u.ctx;
            ctx.save();
            ctx.strokeStyle = '#d1242f';
            ctx.setLineDash([5, 4]);
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
            ctx.restore();
          },
        ],
      }
      : {},
  };
  const chart = new uPlot(opts, data, el);
  const resize = () => chart.setSize({ width: Math.max(280, el.clientWidth || 600), height });
  window.addEventListener('resize', resize);
  const destroy = chart.destroy.bind(chart);
  chart.destroy = () => {
    window.removeEventListener('resize', resize);
    destroy();
  };
  return chart;
}
