// The vector base of the demo town (Xinjiekou, Nanjing): its roads, the crossing and the zones of
// deploy/rules/demo-town.toml, as lon/lat lines drawn in SVG. No tile server: a town's isolated
// network has none. A town without a base of its own still gets a map: drawBase() then sketches
// each road segment through its assets.

import { s } from './dom.js';

/** Roads: name, class (main | secondary | branch), where the name goes, and a line of [lon, lat]. */
export const ROADS = [
  { name: '中山南路', cls: 'main', at: [118.78433, 32.03800], line: [[118.78430, 32.04130], [118.78432, 32.03960], [118.78436, 32.03780], [118.78440, 32.03600]] },
  { name: '中山路', cls: 'main', at: [118.78428, 32.04300], line: [[118.78430, 32.04130], [118.78425, 32.04500]] },
  { name: '中山东路', cls: 'main', at: [118.78530, 32.04132], line: [[118.78430, 32.04130], [118.79200, 32.04140]] },
  { name: '汉中路', cls: 'secondary', at: [118.78150, 32.04123], line: [[118.78430, 32.04130], [118.77900, 32.04115], [118.77600, 32.04107], [118.77200, 32.04095]] },
  { name: '莫愁路', cls: 'branch', at: [118.77597, 32.03920], line: [[118.77600, 32.04450], [118.77600, 32.04107], [118.77590, 32.03600]] },
  { name: '淮海路', cls: 'branch', at: [118.78520, 32.03954], line: [[118.78434, 32.03955], [118.79000, 32.03950]] },
  { name: '白下路', cls: 'branch', at: [118.78100, 32.03781], line: [[118.77800, 32.03780], [118.78436, 32.03780], [118.79100, 32.03790]] },
  { name: '管家桥', cls: 'branch', at: [118.77330, 32.04250], line: [[118.77330, 32.04450], [118.77330, 32.04100], [118.77320, 32.03700]] },
];

/** The Xinjiekou roundabout. */
export const CROSSINGS = [{ name: '新街口', at: [118.78430, 32.04130], r: 38 }];

/** Zones from the rules file, as polygons of [lon, lat]. */
export const ZONES = [
  { id: 'np-zhongshan-s1', cls: 'forbidden', ring: [[118.78445, 32.04085], [118.78462, 32.04085], [118.78462, 32.03995], [118.78445, 32.03995]] },
  { id: 'hz-site-0417', cls: 'site', ring: [[118.77570, 32.04135], [118.77660, 32.04135], [118.77660, 32.04185], [118.77570, 32.04185]] },
];

/** Road-segment labels, placed by hand. */
export const SEGMENTS = [
  { id: 'zhongshan-rd-s1', at: [118.78395, 32.04000] },
  { id: 'zhongshan-rd-s2', at: [118.78395, 32.03900] },
  { id: 'hanzhong-rd-s1', at: [118.78050, 32.04095] },
  { id: 'hanzhong-rd-s2', at: [118.77575, 32.04070] },
];

const M_PER_DEG_LAT = 111320;

/**
 * A projection fitting `points` ([lon, lat]) into width × height with `pad` metres around them:
 * equirectangular at the points' mean latitude (a town is small), north up.
 */
export function projection(points, width, height, pad = 120) {
  const lons = points.map((p) => p[0]);
  const lats = points.map((p) => p[1]);
  const lat0 = (Math.min(...lats) + Math.max(...lats)) / 2;
  const kx = M_PER_DEG_LAT * Math.cos((lat0 * Math.PI) / 180);
  const ky = M_PER_DEG_LAT;
  const minX = Math.min(...lons) * kx - pad;
  const maxX = Math.max(...lons) * kx + pad;
  const minY = Math.min(...lats) * ky - pad;
  const maxY = Math.max(...lats) * ky + pad;
  const scale = Math.min(width / (maxX - minX), height / (maxY - minY));
  const ox = (width - (maxX - minX) * scale) / 2;
  const oy = (height - (maxY - minY) * scale) / 2;
  const project = ([lon, lat]) => [ox + (lon * kx - minX) * scale, height - (oy + (lat * ky - minY) * scale)];
  project.metres = (m) => m * scale;
  return project;
}

/** Whether the demo town's base covers these points (else the sketch of segments is drawn). */
function baseCovers(points) {
  const all = ROADS.flatMap((r) => r.line);
  const [minLon, maxLon] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  const [minLat, maxLat] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  return points.length > 0 && points.every(([lon, lat]) => lon >= minLon && lon <= maxLon && lat >= minLat && lat <= maxLat);
}

function path(project, line) {
  return line.map((p, i) => `${i ? 'L' : 'M'}${project(p).map((v) => v.toFixed(1)).join(',')}`).join('');
}

/** Draws the base into an SVG group: zones, roads (casing then fill), names. */
export function drawBase(g, project, assets, labels = {}, { segments = true } = {}) {
  const points = assets.filter((a) => a.location).map((a) => [a.location.lon, a.location.lat]);
  if (!baseCovers(points)) {
    // A sketch: one line per road segment through its assets, west to east or north to south.
    const bySeg = new Map();
    for (const a of assets) {
      if (!a.location || !a.road_segment) continue;
      if (!bySeg.has(a.road_segment)) bySeg.set(a.road_segment, []);
      bySeg.get(a.road_segment).push([a.location.lon, a.location.lat]);
    }
    for (const [seg, pts] of bySeg) {
      const wide = Math.max(...pts.map((p) => p[0])) - Math.min(...pts.map((p) => p[0]));
      const tall = Math.max(...pts.map((p) => p[1])) - Math.min(...pts.map((p) => p[1]));
      pts.sort((a, b) => (wide >= tall ? a[0] - b[0] : b[1] - a[1]));
      g.append(s('path', { d: path(project, pts), class: 'road road-secondary' }));
      const [x, y] = project(pts[0]);
      g.append(s('text', { x, y: y - 10, class: 'road-name' }, labels[seg] || seg));
    }
    return;
  }
  for (const z of ZONES) {
    g.append(s('path', { d: path(project, z.ring) + 'Z', class: `zone zone-${z.cls}` }, s('title', {}, labels[z.id] || z.id)));
  }
  for (const r of ROADS) g.append(s('path', { d: path(project, r.line), class: `road-casing road-${r.cls}` }));
  for (const r of ROADS) g.append(s('path', { d: path(project, r.line), class: `road road-${r.cls}` }));
  for (const c of CROSSINGS) {
    const [x, y] = project(c.at);
    g.append(s('circle', { cx: x, cy: y, r: project.metres(c.r), class: 'crossing' }));
    g.append(s('text', { x, y: y + 4, class: 'place-name' }, c.name));
  }
  for (const r of ROADS) {
    // The name runs along the road piece nearest to where it goes.
    const [x, y] = project(r.at);
    let best = null;
    for (let i = 1; i < r.line.length; i += 1) {
      const [x1, y1] = project(r.line[i - 1]);
      const [x2, y2] = project(r.line[i]);
      const d = Math.hypot((x1 + x2) / 2 - x, (y1 + y2) / 2 - y);
      if (!best || d < best.d) best = { d, angle: (Math.atan2(y2 - y1, x2 - x1) * 180) / Math.PI };
    }
    let angle = best ? best.angle : 0;
    if (angle > 90) angle -= 180;
    if (angle < -90) angle += 180;
    if (Math.abs(angle) > 45) {
      // Along a north–south road Chinese is written top to bottom, each character upright.
      const chars = [...r.name];
      g.append(s('text', { x, y: y - ((chars.length - 1) * 13) / 2 + 4, class: `road-name road-name-${r.cls} vertical` },
        chars.map((c, i) => s('tspan', { x, dy: i ? 13 : 0 }, c))));
    } else {
      g.append(s('text', { x, y: y + 4, class: `road-name road-name-${r.cls}`, transform: `rotate(${angle.toFixed(1)} ${x} ${y})` }, r.name));
    }
  }
  for (const seg of segments ? SEGMENTS : []) {
    const [x, y] = project(seg.at);
    g.append(s('text', { x, y, class: 'segment-name', 'text-anchor': 'end' }, labels[seg.id] || seg.id));
  }
}
