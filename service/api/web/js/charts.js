// Small SVG charts for the metrics page, drawn with s() (no library): horizontal bars and grouped
// vertical bars, with axes, tick labels and value labels. Each chart is a <figure> whose <svg> has
// role="img" and an aria-label that states the figures (the page also shows them in a table).
// Colours come from CSS classes (console.css): bar-<status>, series-<i>.

import { h, s } from "./dom.js";

const CHAR_W = 6.6; // approximate width of a 12px system-font character

/** Round steps: 1, 2, 2.5, 5 × 10^n, giving about `count` ticks from 0 to at least max. */
export function niceTicks(max, count = 5, { integer = false } = {}) {
  if (!(max > 0)) return [0, 1];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) || 10 * mag;
  if (integer) step = Math.max(1, Math.ceil(step));
  const ticks = [];
  for (let v = 0; v < max + step * 0.999; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** Powers of ten covering [min, max] (both > 0). */
export function logTicks(min, max) {
  const lo = Math.floor(Math.log10(min));
  const hi = Math.max(Math.ceil(Math.log10(max)), lo + 1);
  const ticks = [];
  for (let e = lo; e <= hi; e++) ticks.push(10 ** e);
  return ticks;
}

function clip(text, chars) {
  text = String(text);
  return text.length > chars ? `${text.slice(0, Math.max(1, chars - 1))}…` : text;
}

function text(attrs, content) {
  const el = s("text", attrs);
  el.textContent = content;
  return el;
}

function figure(caption, svg, extra) {
  return h("figure", { class: "chart" }, h("figcaption", { text: caption }), svg, extra || null);
}

/**
 * Horizontal bars, one per row: `rows` = [{label, value, cls?, display?}] (value null: no data).
 * `max`: the scale's end (default: the largest value); `format(v)`: tick and value labels.
 */
export function horizontalBarChart({ caption, summary, rows, max, format = String, axisTitle = "", width = 440, integer = false }) {
  const labelW = Math.min(170, Math.max(48, Math.max(...rows.map((r) => String(r.label).length), 4) * CHAR_W + 10));
  const valueW = 64;
  const rowH = 24;
  const gap = 6;
  const top = 6;
  const plotW = Math.max(80, width - labelW - valueW);
  const scaleMax = max !== undefined ? max : Math.max(0, ...rows.map((r) => Number(r.value) || 0));
  const ticks = max !== undefined ? niceTicks(max, 4, { integer }).filter((t) => t <= max + 1e-9) : niceTicks(scaleMax, 4, { integer });
  const end = Math.max(ticks[ticks.length - 1], scaleMax) || 1;
  const x = (v) => labelW + (plotW * v) / end;
  const plotH = rows.length * (rowH + gap) - gap;
  const height = top + plotH + 34 + (axisTitle ? 12 : 0);

  const svg = s("svg", {
    class: "chart-svg hbar-chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": summary,
    preserveAspectRatio: "xMinYMin meet",
  });
  const grid = s("g", { class: "grid" });
  const axis = s("g", { class: "axis" });
  for (const t of ticks) {
    grid.append(s("line", { x1: x(t), x2: x(t), y1: top, y2: top + plotH }));
    axis.append(text({ class: "tick-label", x: x(t), y: top + plotH + 16, "text-anchor": "middle" }, format(t)));
  }
  axis.append(s("line", { x1: labelW, x2: labelW + plotW, y1: top + plotH + 0.5, y2: top + plotH + 0.5 }));
  axis.append(s("line", { x1: labelW + 0.5, x2: labelW + 0.5, y1: top, y2: top + plotH }));
  if (axisTitle) axis.append(text({ class: "axis-title", x: labelW + plotW / 2, y: height - 4, "text-anchor": "middle" }, axisTitle));
  svg.append(grid);

  const bars = s("g", { class: "bars" });
  rows.forEach((row, i) => {
    const y = top + i * (rowH + gap);
    const v = row.value === null || row.value === undefined ? null : Number(row.value);
    bars.append(text({ class: "row-label", x: labelW - 8, y: y + rowH / 2 + 4, "text-anchor": "end" }, clip(row.label, Math.floor((labelW - 10) / CHAR_W))));
    bars.append(s("rect", { class: "bar-track", x: labelW, y, width: plotW, height: rowH }));
    if (v !== null && v > 0) bars.append(s("rect", { class: `bar ${row.cls || ""}`, x: labelW, y, width: Math.max(1, x(v) - labelW), height: rowH, rx: 2 }));
    const shown = row.display !== undefined ? row.display : v === null ? "—" : format(v);
    bars.append(text({ class: "value-label", x: (v ? x(v) : labelW) + 6, y: y + rowH / 2 + 4 }, shown));
  });
  svg.append(bars, axis);
  return figure(caption, svg);
}

/**
 * Vertical bars in groups: `groups` = [{label, values: [v per series]}], `series` = names
 * (e.g. p50, p95, p99). `log`: a logarithmic value axis (values spanning orders of magnitude).
 */
export function groupedBarChart({ caption, summary, groups, series, format = String, axisTitle = "", log = false, height = 250 }) {
  const left = 64;
  const right = 10;
  const top = 10;
  const bottom = 44 + (axisTitle ? 0 : 0);
  const barW = 16;
  const groupGap = 26;
  const groupW = series.length * barW + groupGap;
  const width = Math.max(320, left + right + groups.length * groupW);
  const plotW = width - left - right;
  const plotH = height - top - bottom;
  const values = groups.flatMap((g) => g.values).filter((v) => v !== null && v !== undefined && Number(v) > 0).map(Number);
  let ticks;
  let y;
  if (log && values.length) {
    ticks = logTicks(Math.min(...values), Math.max(...values));
    const lo = Math.log10(ticks[0]);
    const hi = Math.log10(ticks[ticks.length - 1]);
    y = (v) => top + plotH - (plotH * (Math.log10(Math.max(v, ticks[0])) - lo)) / (hi - lo);
  } else {
    ticks = niceTicks(values.length ? Math.max(...values) : 1, 4);
    const end = ticks[ticks.length - 1];
    y = (v) => top + plotH - (plotH * v) / end;
  }

  const svg = s("svg", {
    class: "chart-svg grouped-chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": summary,
    preserveAspectRatio: "xMinYMin meet",
  });
  const grid = s("g", { class: "grid" });
  const axis = s("g", { class: "axis" });
  for (const t of ticks) {
    grid.append(s("line", { x1: left, x2: left + plotW, y1: y(t), y2: y(t) }));
    axis.append(text({ class: "tick-label", x: left - 6, y: y(t) + 4, "text-anchor": "end" }, format(t)));
  }
  axis.append(s("line", { x1: left, x2: left + plotW, y1: top + plotH + 0.5, y2: top + plotH + 0.5 }));
  axis.append(s("line", { x1: left + 0.5, x2: left + 0.5, y1: top, y2: top + plotH }));
  if (axisTitle) {
    axis.append(text({ class: "axis-title", x: 12, y: top + plotH / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${top + plotH / 2})` }, axisTitle));
  }
  svg.append(grid);

  const bars = s("g", { class: "bars" });
  const offset = (plotW - groups.length * groupW) / 2;
  groups.forEach((group, gi) => {
    const gx = left + offset + gi * groupW + groupGap / 2;
    group.values.forEach((raw, si) => {
      if (raw === null || raw === undefined || !(Number(raw) > 0)) return;
      const v = Number(raw);
      const by = y(v);
      const bar = s("rect", { class: `bar series-${si}`, x: gx + si * barW, y: by, width: barW - 2, height: Math.max(1, top + plotH - by), rx: 1 });
      const title = s("title", {});
      title.textContent = `${group.label} ${series[si]}: ${format(v)}`;
      bar.append(title);
      bars.append(bar);
    });
    const cx = gx + (series.length * barW) / 2;
    const label = text({ class: "tick-label group-label", x: cx, y: top + plotH + 16, "text-anchor": "middle" }, clip(group.label, Math.floor(groupW / 6)));
    const full = s("title", {});
    full.textContent = group.label;
    label.append(full);
    bars.append(label);
  });
  svg.append(bars, axis);
  if (log) svg.append(text({ class: "axis-title", x: left + plotW, y: height - 6, "text-anchor": "end" }, "log scale"));
  const legend = h(
    "ul",
    { class: "legend", "aria-hidden": "true" },
    series.map((name, i) => h("li", {}, h("span", { class: `swatch series-${i}` }), name)),
  );
  return figure(caption, svg, legend);
}
