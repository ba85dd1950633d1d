// The DAG of a workflow or a run, drawn from the server's layout (`layout` of
// GET /v1/runs/{id}/lineage or GET /v1/workflows/{id}): node boxes coloured by state,
// edges as polylines with arrowheads, dashed when not taken. SVG only, no innerHTML.
//
//   const dag = renderDag(layout, nodes, edges, {onSelect});
//   parent.append(dag.element);
//   dag.setStatus("fetch", "running"); dag.setEdge(0, {taken: true, items: 3}); dag.select("fetch");
//
// `nodes`: [{id, type, status?}] (lineage nodes or workflow spec nodes); `edges`: [{from, to,
// when?, taken?, items?}] in the spec's order, the same order as `layout.edges`.

import { h, s } from "../dom.js";

export const STATES = [
  "pending",
  "queued",
  "running",
  "retrying",
  "waiting",
  "succeeded",
  "failed",
  "skipped",
  "cancelled",
];

/** The console's state for an API node status (`retry_wait` is shown as retrying). */
export function normalizeStatus(status) {
  if (status === "retry_wait") return "retrying";
  return STATES.includes(status) ? status : "pending";
}

let instances = 0;

/** Where the segment from the centre `c` of a w×h box toward `p` leaves the box. */
function boxExit(c, p, hw, hh) {
  const dx = p[0] - c[0];
  const dy = p[1] - c[1];
  if (dx === 0 && dy === 0) return c;
  const scale = Math.min(dx ? hw / Math.abs(dx) : Infinity, dy ? hh / Math.abs(dy) : Infinity);
  if (scale >= 1) return c;
  return [c[0] + dx * scale, c[1] + dy * scale];
}

/** The point halfway along a polyline, and the direction of its segment there. */
function midpoint(points) {
  let total = 0;
  for (let i = 1; i < points.length; i++) total += Math.hypot(points[i][0] - points[i - 1][0], points[i][1] - points[i - 1][1]);
  let left = total / 2;
  for (let i = 1; i < points.length; i++) {
    const [ax, ay] = points[i - 1];
    const [bx, by] = points[i];
    const len = Math.hypot(bx - ax, by - ay);
    if (len >= left && len > 0) return [ax + ((bx - ax) * left) / len, ay + ((by - ay) * left) / len];
    left -= len;
  }
  return points[0];
}

function fmt(n) {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

function edgeLabel(edge) {
  const parts = [];
  if (edge.when) parts.push(edge.when);
  if (edge.items > 0) parts.push(`${edge.items} item${edge.items === 1 ? "" : "s"}`);
  return parts.join(" · ");
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

export function renderDag(layout, nodes, edges, { onSelect } = {}) {
  const id = ++instances;
  const nw = layout.node_width || 168;
  const nh = layout.node_height || 48;
  const width = Math.max(layout.width || 0, nw);
  const height = Math.max(layout.height || 0, nh);
  const pad = 8;
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const placement = layout.nodes || {};
  const routes = layout.edges || [];

  const svg = s("svg", {
    class: "dag-svg",
    viewBox: `${-pad} ${-pad} ${width + 2 * pad} ${height + 2 * pad}`,
    width: String(width + 2 * pad),
    preserveAspectRatio: "xMidYMin meet",
    role: "group",
    "aria-label": `Graph of ${nodes.length} node${nodes.length === 1 ? "" : "s"}`,
  });
  const defs = s("defs", {});
  for (const kind of ["taken", "idle"]) {
    defs.append(
      s(
        "marker",
        {
          id: `dag${id}-arrow-${kind}`,
          class: `dag-arrow dag-arrow-${kind}`,
          viewBox: "0 0 10 10",
          refX: "9",
          refY: "5",
          markerWidth: "9",
          markerHeight: "9",
          orient: "auto-start-reverse",
          markerUnits: "userSpaceOnUse",
        },
        s("path", { d: "M0,0 L10,5 L0,10 z" }),
      ),
    );
  }
  svg.append(defs);

  const edgeLayer = s("g", { class: "dag-edges" });
  const nodeLayer = s("g", { class: "dag-nodes" });
  svg.append(edgeLayer, nodeLayer);

  // ---- edges
  const edgeEls = [];
  edges.forEach((edge, index) => {
    const route = routes[index] && routes[index].from === edge.from && routes[index].to === edge.to ? routes[index] : routes.find((r) => r.from === edge.from && r.to === edge.to);
    const a = placement[edge.from];
    const b = placement[edge.to];
    if (!a || !b) return;
    let points = route && route.points && route.points.length >= 2 ? route.points.map((p) => [p[0], p[1]]) : [[a.x, a.y], [b.x, b.y]];
    points[0] = boxExit([a.x, a.y], points[1], nw / 2, nh / 2);
    points[points.length - 1] = boxExit([b.x, b.y], points[points.length - 2], nw / 2 + 1, nh / 2 + 1);
    const d = points.map((p, i) => `${i ? "L" : "M"}${fmt(p[0])},${fmt(p[1])}`).join(" ");
    const path = s("path", { class: "dag-edge-line", d });
    const [mx, my] = midpoint(points);
    const label = s("text", { class: "dag-edge-label", x: fmt(mx + 6), y: fmt(my + 4) });
    const g = s("g", { class: "dag-edge", "data-from": edge.from, "data-to": edge.to, "data-index": String(index) }, path, label);
    edgeLayer.append(g);
    edgeEls[index] = { g, path, label, edge: { ...edge } };
    applyEdge(index, edge);
  });

  function applyEdge(index, { taken, items } = {}) {
    const e = edgeEls[index];
    if (!e) return;
    if (taken !== undefined && taken !== null) e.edge.taken = Boolean(taken);
    if (items !== undefined) e.edge.items = items || 0;
    // no `taken` at all (a workflow's graph, not a run's): a plain edge, neither taken nor idle
    const plain = e.edge.taken === undefined || e.edge.taken === null;
    e.g.classList.toggle("dag-edge-plain", plain);
    e.g.classList.toggle("dag-edge-taken", !plain && e.edge.taken);
    e.g.classList.toggle("dag-edge-idle", !plain && !e.edge.taken);
    if (plain) e.g.removeAttribute("data-taken");
    else e.g.setAttribute("data-taken", String(e.edge.taken));
    e.path.setAttribute("marker-end", `url(#dag${id}-arrow-${plain || e.edge.taken ? "taken" : "idle"})`);
    e.label.textContent = edgeLabel(e.edge);
  }

  // ---- nodes
  const nodeEls = new Map();
  const maxChars = Math.floor((nw - 16) / 7.6);
  for (const node of nodes) {
    const p = placement[node.id];
    if (!p) continue;
    const rect = s("rect", { class: "dag-box", x: "0", y: "0", width: fmt(nw), height: fmt(nh), rx: "8", ry: "8" });
    const title = s("title", {});
    const name = s("text", { class: "dag-node-id", x: "12", y: fmt(nh / 2 - 3) });
    name.textContent = clip(node.id, maxChars);
    const sub = s("text", { class: "dag-node-type", x: "12", y: fmt(nh / 2 + 13) });
    const dot = s("circle", { class: "dag-dot", cx: fmt(nw - 14), cy: "14", r: "5" });
    const g = s(
      "g",
      {
        class: "dag-node",
        transform: `translate(${fmt(p.x - nw / 2)},${fmt(p.y - nh / 2)})`,
        role: "button",
        tabindex: "0",
        "data-node-id": node.id,
        "aria-pressed": "false",
      },
      title,
      rect,
      dot,
      name,
      sub,
    );
    g.addEventListener("click", () => choose(node.id));
    g.addEventListener("keydown", (ev) => onKey(ev, node.id));
    nodeLayer.append(g);
    nodeEls.set(node.id, { g, sub, title, node, status: "pending", x: p.x, y: p.y });
    applyStatus(node.id, node.status || "pending");
  }

  function applyStatus(nodeId, status) {
    const e = nodeEls.get(nodeId);
    if (!e) return;
    const state = normalizeStatus(status);
    e.status = state;
    for (const st of STATES) e.g.classList.toggle(`node-${st}`, st === state);
    e.g.setAttribute("data-status", state);
    const type = e.node.type || "";
    e.g.setAttribute("aria-label", `node ${nodeId} (${type}): ${state}`);
    e.sub.textContent = clip(`${type} · ${state}`, Math.floor((nw - 16) / 6.4));
    e.title.textContent = `${nodeId} (${type}): ${state}`;
  }

  let selected = null;
  function select(nodeId) {
    if (selected && nodeEls.has(selected)) {
      nodeEls.get(selected).g.classList.remove("dag-selected");
      nodeEls.get(selected).g.setAttribute("aria-pressed", "false");
    }
    selected = nodeEls.has(nodeId) ? nodeId : null;
    if (selected) {
      nodeEls.get(selected).g.classList.add("dag-selected");
      nodeEls.get(selected).g.setAttribute("aria-pressed", "true");
    }
  }

  function choose(nodeId) {
    select(nodeId);
    if (onSelect) onSelect(nodeId);
  }

  const DIRS = { ArrowUp: [0, -1], ArrowDown: [0, 1], ArrowLeft: [-1, 0], ArrowRight: [1, 0] };
  function onKey(ev, nodeId) {
    if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      choose(nodeId);
      return;
    }
    const dir = DIRS[ev.key];
    if (!dir) return;
    ev.preventDefault();
    const from = nodeEls.get(nodeId);
    let best = null;
    let bestScore = Infinity;
    for (const [otherId, e] of nodeEls) {
      if (otherId === nodeId) continue;
      const dx = e.x - from.x;
      const dy = e.y - from.y;
      const along = dx * dir[0] + dy * dir[1];
      if (along <= 0) continue;
      const across = Math.abs(dx * dir[1]) + Math.abs(dy * dir[0]);
      const score = along + 2 * across;
      if (score < bestScore) {
        bestScore = score;
        best = e;
      }
    }
    if (best) best.g.focus();
  }

  // Scales down to its container, but not below a legible size: narrower windows scroll.
  svg.style.minWidth = `${Math.min(width + 2 * pad, 520)}px`;
  const element = h("div", { class: "dag" }, svg);
  return {
    element,
    setStatus: applyStatus,
    setEdge: applyEdge,
    select,
    status: (nodeId) => (nodeEls.has(nodeId) ? nodeEls.get(nodeId).status : null),
    focus: (nodeId) => nodeEls.has(nodeId) && nodeEls.get(nodeId).g.focus(),
  };
}
