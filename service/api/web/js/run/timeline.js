// The run's timeline (a Gantt chart, SVG) built from its events: one row per node, one bar per
// attempt (node_execute_before -> node_execute_after), failed attempts marked, retry backoffs
// (node_retry_scheduled + delay_ms) hatched, skips as a tick, durations labelled, a time axis.

import { formatDuration, h, s } from "../dom.js";
import { afterStatus } from "./model.js";

const ROW = 28;
const AXIS = 26;
const LABEL_W = 150;
const MIN_WIDTH = 560;
const DEFAULT_WIDTH = 960;
const RIGHT = 70;

let instances = 0;

/** Attempts, backoffs and skips of a run's events, times in ms since the epoch. */
export function spansOf(events) {
  const open = new Map(); // "node#attempt" -> attempt span
  const attempts = [];
  const backoffs = [];
  const skips = [];
  let start = null;
  let end = null;
  let ended = false;
  for (const e of events) {
    const t = Date.parse(e.recorded_at);
    const d = e.data || {};
    if (start === null) start = t;
    if (e.type === "run_started" || e.type === "run_recovered") start = Math.min(start, t);
    end = end === null ? t : Math.max(end, t);
    if (e.type === "node_execute_before") {
      const span = { node: d.node_id, attempt: d.attempt || 1, start: t, end: null, status: "running", reused: Boolean(d.reused_from), seq: e.seq };
      open.set(`${d.node_id}#${span.attempt}`, span);
      attempts.push(span);
      for (const b of backoffs) if (b.node === d.node_id && b.until === null) b.until = t;
    } else if (e.type === "node_execute_after") {
      const key = `${d.node_id}#${d.attempt || 1}`;
      let span = open.get(key);
      if (!span) {
        span = { node: d.node_id, attempt: d.attempt || 1, start: t, end: null, status: "running", reused: false, seq: e.seq };
        attempts.push(span);
      }
      open.delete(key);
      span.end = t;
      span.status = afterStatus(d.status, d.error);
      span.durationMs = d.duration_ms;
      span.error = d.error ? `${d.error.kind}: ${d.error.message}` : null;
      span.reused = span.reused || Boolean(d.reused_from);
    } else if (e.type === "node_retry_scheduled") {
      backoffs.push({ node: d.node_id, attempt: d.attempt, start: t, delay: d.delay_ms || 0, until: null });
    } else if (e.type === "node_skipped") {
      skips.push({ node: d.node_id, at: t, reason: d.reason || "" });
    } else if (e.type === "run_cancelled" || e.type === "run_finished") {
      ended = true;
      for (const span of open.values()) {
        span.end = t;
        span.status = e.type === "run_cancelled" ? "cancelled" : "failed";
      }
      open.clear();
    }
  }
  return { attempts, backoffs, skips, start, end, ended };
}

function niceStep(span) {
  const raw = span / 6;
  const pow = 10 ** Math.floor(Math.log10(Math.max(raw, 1e-3)));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

/**
 * `rows`: node ids in display order. Returns {element, update(events), select(nodeId),
 * setCursor(timeMs|null), destroy()}.
 */
export function renderTimeline(rows, events, { onSelect } = {}) {
  const id = ++instances;
  const element = h("div", { class: "timeline" });
  let current = events;
  let selected = null;
  let cursor = null;
  let timer = null;
  let drawnWidth = 0;
  let frame = null;
  const resize = new ResizeObserver(() => {
    if (element.clientWidth && element.clientWidth !== drawnWidth) draw();
  });
  resize.observe(element);

  function draw() {
    const { attempts, backoffs, skips, start, end, ended } = spansOf(current);
    const running = !ended && attempts.some((a) => a.end === null);
    const now = Date.now();
    const t0 = start ?? now;
    let t1 = Math.max(end ?? t0, ...backoffs.map((b) => b.start + b.delay));
    if (running) t1 = Math.max(t1, now);
    const spanMs = Math.max(t1 - t0, 1);
    // drawn at the container's width in CSS pixels (text stays 12 px); narrower windows scroll
    const WIDTH = Math.max(element.clientWidth || DEFAULT_WIDTH, MIN_WIDTH);
    drawnWidth = element.clientWidth;
    const chartW = WIDTH - LABEL_W - RIGHT;
    const x = (t) => LABEL_W + ((t - t0) / spanMs) * chartW;
    const order = [...rows];
    for (const a of attempts) if (!order.includes(a.node)) order.push(a.node);
    const rowOf = new Map(order.map((n, i) => [n, i]));
    const height = AXIS + order.length * ROW + 6;

    const svg = s("svg", {
      class: "timeline-svg",
      viewBox: `0 0 ${WIDTH} ${height}`,
      width: String(WIDTH),
      role: "group",
      "aria-label": `Timeline of ${attempts.length} attempt${attempts.length === 1 ? "" : "s"}`,
    });
    svg.append(
      s(
        "defs",
        {},
        s(
          "pattern",
          { id: `tl${id}-hatch`, width: "6", height: "6", patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
          s("rect", { class: "tl-hatch-bg", width: "6", height: "6" }),
          s("line", { class: "tl-hatch-line", x1: "0", y1: "0", x2: "0", y2: "6" }),
        ),
      ),
    );

    // rows and labels
    order.forEach((nodeId, i) => {
      const y = AXIS + i * ROW;
      const row = s("g", { class: `tl-row${nodeId === selected ? " tl-selected" : ""}`, "data-node-id": nodeId });
      row.append(s("rect", { class: "tl-row-bg", x: "0", y: String(y), width: String(WIDTH), height: String(ROW) }));
      const label = s("text", { class: "tl-label", x: "8", y: String(y + ROW / 2 + 4) });
      label.textContent = nodeId.length > 20 ? `${nodeId.slice(0, 19)}…` : nodeId;
      row.append(label);
      svg.append(row);
    });

    // axis
    const axis = s("g", { class: "tl-axis" });
    const step = niceStep(spanMs);
    for (let v = 0; v <= spanMs + 1e-6; v += step) {
      const tx = x(t0 + v);
      axis.append(s("line", { class: "tl-tick", x1: tx.toFixed(1), x2: tx.toFixed(1), y1: String(AXIS - 4), y2: String(height) }));
      const t = s("text", { class: "tl-tick-label", x: tx.toFixed(1), y: String(AXIS - 8) });
      t.textContent = v === 0 ? "0" : formatDuration(v);
      axis.append(t);
    }
    svg.append(axis);

    const bars = s("g", { class: "tl-bars" });
    const labels = new Map(); // row -> [{x, text, cls, limit}]
    const addLabel = (row, lx, text, cls, limit) => {
      if (!labels.has(row)) labels.set(row, []);
      labels.get(row).push({ x: lx, text, cls, limit });
    };
    for (const b of backoffs) {
      const row = rowOf.get(b.node);
      const y = AXIS + row * ROW + 7;
      const until = b.start + b.delay;
      const w = Math.max(x(until) - x(b.start), 2);
      const g = s("g", { class: "tl-backoff", "data-node-id": b.node });
      const title = s("title", {});
      title.textContent = `${b.node}: retry backoff after attempt ${b.attempt}, ${formatDuration(b.delay)}`;
      g.append(title, s("rect", { x: x(b.start).toFixed(1), y: String(y), width: w.toFixed(1), height: String(ROW - 14), fill: `url(#tl${id}-hatch)`, rx: "2" }));
      addLabel(row, x(b.start) + 4, `wait ${formatDuration(b.delay)}`, "tl-backoff-label", x(b.start) + w - 2);
      bars.append(g);
    }
    for (const a of attempts) {
      const row = rowOf.get(a.node);
      const y = AXIS + row * ROW + 5;
      const stop = a.end ?? now;
      const x0 = x(a.start);
      const w = Math.max(x(stop) - x0, 3);
      const status = a.end === null ? "running" : a.status;
      const took = a.end === null ? stop - a.start : (a.durationMs ?? a.end - a.start);
      const label = `${a.node} attempt ${a.attempt}: ${status}${a.reused ? " (reused)" : ""}, ${formatDuration(took)}${a.error ? ` (${a.error})` : ""}`;
      const g = s("g", {
        class: `tl-attempt tl-${status}${a.reused ? " tl-reused" : ""}`,
        role: "button",
        tabindex: "0",
        "data-node-id": a.node,
        "data-attempt": String(a.attempt),
        "aria-label": label,
      });
      const title = s("title", {});
      title.textContent = label;
      g.append(title, s("rect", { class: "tl-bar", x: x0.toFixed(1), y: String(y), width: w.toFixed(1), height: String(ROW - 10), rx: "3" }));
      if (status === "failed" || status === "cancelled") {
        const cx = x0 + w;
        g.append(s("path", { class: "tl-fail-mark", d: `M${(cx - 4).toFixed(1)},${y + 5} l8,8 m0,-8 l-8,8` }));
      }
      addLabel(row, x0 + w + (status === "failed" || status === "cancelled" ? 10 : 4), `${a.attempt > 1 ? `#${a.attempt} ` : ""}${formatDuration(took)}${a.reused ? " (reused)" : ""}`, "tl-duration", WIDTH);
      g.addEventListener("click", () => onSelect && onSelect(a.node));
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          if (onSelect) onSelect(a.node);
        }
      });
      bars.append(g);
    }
    for (const sk of skips) {
      const row = rowOf.get(sk.node);
      if (row === undefined) continue;
      const y = AXIS + row * ROW;
      const g = s("g", { class: "tl-skip", "data-node-id": sk.node });
      const title = s("title", {});
      title.textContent = `${sk.node} skipped${sk.reason ? `: ${sk.reason}` : ""}`;
      g.append(title, s("path", { d: `M${x(sk.at).toFixed(1)},${y + 6} v${ROW - 12}` }));
      addLabel(row, x(sk.at) + 5, "skipped", "tl-duration tl-skip-label", WIDTH);
      bars.append(g);
    }
    svg.append(bars);

    // Labels last, over the bars; in a crowded row a label that would overlap the one to its
    // right is left out (the bar's tooltip and aria-label still say it): the last attempt's wins.
    const labelLayer = s("g", { class: "tl-labels", "aria-hidden": "true" });
    for (const [row, list] of labels) {
      list.sort((p, q) => q.x - p.x);
      let nextStart = WIDTH + 2;
      for (const l of list) {
        const w = l.text.length * 6.2;
        if (l.x + w > Math.min(nextStart - 4, l.limit)) continue;
        const t = s("text", { class: l.cls, x: l.x.toFixed(1), y: String(AXIS + row * ROW + ROW / 2) });
        t.textContent = l.text;
        labelLayer.append(t);
        nextStart = l.x;
      }
    }
    svg.append(labelLayer);

    if (cursor !== null && start !== null) {
      const cx = Math.min(Math.max(x(cursor), LABEL_W), WIDTH - RIGHT);
      // what had not happened yet at the travelled-to event is veiled
      svg.append(s("rect", { class: "tl-future", x: cx.toFixed(1), y: String(AXIS - 4), width: (WIDTH - cx).toFixed(1), height: String(height - AXIS + 4) }));
      svg.append(s("line", { class: "tl-cursor", x1: cx.toFixed(1), x2: cx.toFixed(1), y1: String(AXIS - 4), y2: String(height) }));
    }
    // a redraw keeps the keyboard focus on the same bar
    const active = element.contains(document.activeElement) ? document.activeElement : null;
    const focusKey = active ? [active.getAttribute("data-node-id"), active.getAttribute("data-attempt")] : null;
    if (attempts.length === 0 && skips.length === 0) {
      element.replaceChildren(h("p", { class: "muted", text: "No node has started yet." }));
    } else {
      element.replaceChildren(svg);
      if (focusKey) {
        for (const g of svg.querySelectorAll(".tl-attempt")) {
          if (g.getAttribute("data-node-id") === focusKey[0] && g.getAttribute("data-attempt") === focusKey[1]) g.focus();
        }
      }
    }

    // running bars grow: redraw twice a second while one is open (no API call)
    if (running && timer === null) {
      timer = setInterval(draw, 500);
    } else if (!running && timer !== null) {
      clearInterval(timer);
      timer = null;
    }
  }

  draw();
  return {
    element,
    update(next) {
      // many events in a burst: one redraw per frame
      current = next;
      if (frame === null) {
        frame = requestAnimationFrame(() => {
          frame = null;
          draw();
        });
      }
    },
    select(nodeId) {
      selected = nodeId;
      for (const row of element.querySelectorAll(".tl-row")) {
        row.classList.toggle("tl-selected", row.getAttribute("data-node-id") === nodeId);
      }
    },
    setCursor(timeMs) {
      cursor = timeMs;
      draw();
    },
    destroy() {
      resize.disconnect();
      if (frame !== null) cancelAnimationFrame(frame);
      if (timer !== null) clearInterval(timer);
      timer = null;
    },
  };
}
