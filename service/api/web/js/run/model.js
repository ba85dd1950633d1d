// What the run page knows of a run, folded from its events (GET /v1/runs/{id}/events and the
// SSE stream): each node's live state, and which edges were taken. Pure functions, no DOM.

export const TERMINAL = new Set(["run_finished", "run_cancelled"]);
export const ENDED_RUN = new Set(["succeeded", "failed", "cancelled"]);

/** A fresh fold: every node pending. `nodes`: [{id, type}]. */
export function emptyFold(nodes) {
  const fold = { nodes: new Map(), status: "queued", ended: false, lastSeq: -1 };
  for (const n of nodes) fold.nodes.set(n.id, blank(n.id, n.type));
  return fold;
}

function blank(id, type) {
  return { id, type: type || "", status: "pending", attempts: 0, itemCount: 0, branch: null, waiting: false };
}

function node(fold, id, type) {
  if (!fold.nodes.has(id)) fold.nodes.set(id, blank(id, type));
  const n = fold.nodes.get(id);
  if (type && !n.type) n.type = type;
  return n;
}

/**
 * Apply one event envelope to `fold` (in place). Returns the ids of the nodes whose
 * state changed (for a redraw of just those).
 */
export function applyEvent(fold, envelope) {
  const d = envelope.data || {};
  const type = envelope.type || d.type;
  if (typeof envelope.seq === "number") fold.lastSeq = Math.max(fold.lastSeq, envelope.seq);
  const changed = [];
  const set = (id, status, nodeType) => {
    const n = node(fold, id, nodeType);
    if (n.status !== status) {
      n.status = status;
      changed.push(id);
    }
    return n;
  };
  switch (type) {
    case "run_queued":
      fold.parentNodeId = d.parent_node_id || null;
      break;
    case "run_started":
      if (!fold.ended) fold.status = "running";
      break;
    case "node_execute_before": {
      const n = set(d.node_id, "running", d.node_type);
      n.attempts = Math.max(n.attempts, d.attempt || 1);
      if (fold.status === "queued") fold.status = "running";
      break;
    }
    case "node_execute_after": {
      const n = set(d.node_id, afterStatus(d.status, d.error), d.node_type);
      n.itemCount = d.item_count || 0;
      break;
    }
    case "node_execute_after_data": {
      const n = node(fold, d.node_id);
      const out = d.output;
      n.branch = out && typeof out === "object" && !Array.isArray(out) && typeof out.branch === "string" ? out.branch : null;
      changed.push(d.node_id);
      break;
    }
    case "node_retry_scheduled":
      set(d.node_id, "retrying");
      break;
    case "node_skipped":
      set(d.node_id, "skipped");
      break;
    case "run_waiting":
      fold.status = "waiting";
      if (d.node_id) set(d.node_id, "waiting").waiting = true;
      break;
    case "run_resumed":
      if (d.node_id) {
        set(d.node_id, "running").waiting = false;
      } else {
        for (const n of fold.nodes.values()) {
          if (n.status === "waiting") set(n.id, "running");
        }
      }
      fold.status = [...fold.nodes.values()].some((n) => n.status === "waiting") ? "waiting" : "running";
      break;
    case "run_recovered": {
      // Another worker took over: nodes it had not completed will start again.
      const done = new Set(d.completed_nodes || []);
      for (const n of fold.nodes.values()) {
        if ((n.status === "running" || n.status === "retrying") && !done.has(n.id)) set(n.id, "pending");
      }
      fold.status = "running";
      break;
    }
    case "run_cancelled":
      fold.status = "cancelled";
      fold.ended = true;
      for (const n of fold.nodes.values()) {
        if (n.status === "running" || n.status === "retrying" || n.status === "waiting") set(n.id, "cancelled");
      }
      break;
    case "run_finished":
      fold.status = d.status || "succeeded";
      fold.ended = true;
      break;
    case "node_log":
      changed.push(d.node_id); // no new status, but the inspector shows the node's lines
      break;
    default:
      break;
  }
  return changed;
}

/** A node attempt that failed because the run was cancelled or stopped (error kind
 * `cancelled`) is shown as cancelled, live and in time travel alike. */
export function afterStatus(status, error) {
  if (status === "succeeded") return "succeeded";
  return error && error.kind === "cancelled" ? "cancelled" : status || "failed";
}

/** The console's status of a `/state` node view. */
export function viewStatus(view) {
  if (!view) return "pending";
  return view.status === "failed" ? afterStatus("failed", view.error) : view.status;
}

/** An edge is taken when its source succeeded and, for a `when` edge, chose that label. */
export function edgeFigures(edge, source) {
  if (!source || source.status !== "succeeded") return { taken: false, items: 0 };
  if (edge.when != null && source.branch !== edge.when) return { taken: false, items: 0 };
  return { taken: true, items: source.itemCount || 0 };
}

/** The same from a `/state` document's node views (`status`, `item_count`, `output`). */
export function stateNodeForEdges(view) {
  if (!view) return null;
  const out = view.output;
  return {
    status: view.status,
    itemCount: view.item_count || 0,
    branch: out && typeof out === "object" && !Array.isArray(out) && typeof out.branch === "string" ? out.branch : null,
  };
}

/** Every event of a run, paging GET /v1/runs/{id}/events (1000 at a time). */
export async function fetchAllEvents(api, runId, afterSeq = -1) {
  const all = [];
  let after = afterSeq;
  for (;;) {
    const page = await api(`/v1/runs/${encodeURIComponent(runId)}/events`, { query: { after_seq: after, limit: 1000 } });
    all.push(...page.items);
    if (!page.next_cursor || page.items.length === 0) return all;
    after = Number(page.next_cursor);
  }
}
