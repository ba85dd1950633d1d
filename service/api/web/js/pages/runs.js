// The runs list (/runs?workflow_id=&status=&cursor=): filters kept in the URL, cursor paging, and
// live rows from the all-runs SSE stream (/v1/stream): a new run appears at the top, a row follows
// its run's events (coalesced: at most one GET /v1/runs/{id} per run per 200 ms). No polling.

import { stream } from "../api.js";
import { formatDuration, formatTime, h, shortId } from "../dom.js";

export const RUN_STATUSES = ["queued", "running", "waiting", "succeeded", "failed", "cancelled"];
/** Events after which a run not in the table may now belong in it (its status changed). */
const STATUS_EVENTS = new Set(["run_queued", "run_started", "run_recovered", "run_waiting", "run_resumed", "run_finished", "run_cancelled"]);
const COALESCE_MS = 200;
const LAG_RETRY_MS = 250; // first look again when the summary trails the events; doubles each time
const LAG_RETRIES = 6; // 250 ms ... 8 s
const PAGE_SIZE = 50;
const COLUMNS = ["Run", "Workflow", "Status", "Progress", "Current nodes", "Started", "Duration"];

function progressCell(run) {
  const value = Math.max(0, Math.min(100, Number(run.progress) || 0));
  return h(
    "td",
    {},
    h(
      "div",
      { class: "progress-cell" },
      h("progress", { max: "100", value: String(value), "aria-label": `Progress of run ${shortId(run.run_id)}` }),
      h("span", { text: `${value} %` }),
    ),
  );
}

function durationText(run) {
  if (run.duration_ms !== null && run.duration_ms !== undefined) return formatDuration(run.duration_ms);
  if (run.started_at && !run.finished_at) return "running…";
  return "—";
}

function runRow(run) {
  const current = run.current_nodes || [];
  const row = h(
    "tr",
    { "data-run-id": run.run_id },
    h("td", {}, h("a", { href: `/runs/${encodeURIComponent(run.run_id)}`, title: run.run_id }, h("code", { text: shortId(run.run_id) }))),
    h("td", {}, h("a", { href: `/workflows/${encodeURIComponent(run.workflow_id)}`, text: run.workflow_id })),
    h("td", { class: "status-cell", "data-status": run.status }, h("span", { class: `status status-${run.status}`, text: run.status })),
    progressCell(run),
    h("td", { class: "wrap" }, current.length ? current.join(", ") : h("span", { class: "muted", text: "—" })),
    h("td", { title: run.started_at || run.queued_at || "" }, formatTime(run.started_at || run.queued_at)),
    h("td", { class: "num" }, durationText(run)),
  );
  // Column names for the narrow layout, where each row is a card (console.css).
  [...row.children].forEach((td, i) => td.setAttribute("data-label", COLUMNS[i]));
  return row;
}

function labelled(id, label, control) {
  return h("div", { class: "field" }, h("label", { for: id, text: label }), control);
}

export async function render(main, { query, ctx }) {
  const { api } = ctx;
  ctx.setTitle("Runs");
  const workflowId = query.get("workflow_id") || "";
  const status = RUN_STATUSES.includes(query.get("status")) ? query.get("status") : "";
  const cursor = query.get("cursor") || "";
  const newer = (query.get("newer") || "").split(",").filter(Boolean); // cursors of the pages before
  const firstPage = !cursor;
  const asked = Number.parseInt(query.get("limit") || "", 10);
  const limit = asked >= 1 && asked <= 500 ? asked : PAGE_SIZE; // ?limit= (shareable, like the filters)

  // ---- filters
  const workflowSelect = h("select", { id: "filter-workflow", name: "workflow_id" }, h("option", { value: "", text: "All workflows" }));
  const statusSelect = h(
    "select",
    { id: "filter-status", name: "status" },
    h("option", { value: "", text: "Any status" }),
    RUN_STATUSES.map((st) => h("option", { value: st, text: st })),
  );
  statusSelect.value = status;
  if (workflowId) {
    workflowSelect.append(h("option", { value: workflowId, text: workflowId }));
    workflowSelect.value = workflowId;
  }

  function urlFor(changes) {
    const params = new URLSearchParams();
    const merged = { workflow_id: workflowId, status, limit: limit === PAGE_SIZE ? "" : String(limit), cursor: "", newer: "", ...changes };
    for (const [key, value] of Object.entries(merged)) if (value) params.set(key, value);
    const qs = params.toString();
    return qs ? `/runs?${qs}` : "/runs";
  }
  // Each control changes only its own filter (the other one's options may still be loading).
  workflowSelect.addEventListener("change", () => ctx.navigate(urlFor({ workflow_id: workflowSelect.value }), { keepFocus: true }));
  statusSelect.addEventListener("change", () => ctx.navigate(urlFor({ status: statusSelect.value }), { keepFocus: true }));

  const liveTag = h("span", { class: "live", "data-state": "connecting", role: "status", text: "connecting…" });
  const head = h("div", { class: "page-head" }, h("h1", { text: "Runs" }), liveTag);
  const filters = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter runs", onsubmit: (e) => e.preventDefault() },
    labelled("filter-workflow", "Workflow", workflowSelect),
    labelled("filter-status", "Status", statusSelect),
    workflowId || status ? h("a", { href: "/runs", class: "clear-filters", text: "Clear filters" }) : null,
  );
  main.append(head, filters);

  const [workflows, page] = await Promise.all([
    api("/v1/workflows", { query: { limit: 500 } }).catch(() => ({ items: [] })),
    api("/v1/runs", { query: { workflow_id: workflowId || undefined, status: status || undefined, cursor: cursor || undefined, limit } }),
  ]);
  // The log position the list reflects (the run_summaries projection's checkpoint, read in the
  // same snapshot as the rows): the stream starts right after it, so no run falls in between.
  const position = typeof page.position === "number" ? page.position : null;
  const ids = workflows.items.map((w) => w.id).filter((id) => id !== workflowId);
  for (const id of ids) workflowSelect.append(h("option", { value: id, text: id }));
  if (workflowId) [...workflowSelect.options].sort((a, b) => (a.value === "" ? -1 : b.value === "" ? 1 : a.value.localeCompare(b.value))).forEach((o) => workflowSelect.append(o));
  workflowSelect.value = workflowId;

  // ---- table
  const tbody = h("tbody", {});
  const table = h(
    "table",
    { class: "data runs-table", "aria-label": "Runs" },
    h("caption", { text: describe(workflowId, status) }),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        COLUMNS.map((c, i) => h("th", { scope: "col", class: i === 6 ? "num" : null, text: c })),
      ),
    ),
    tbody,
  );
  const empty =
    workflowId || status
      ? h("p", { class: "empty", text: "No runs match these filters." })
      : h(
          "p",
          { class: "empty" },
          "No runs yet. Register a workflow (",
          h("code", { text: "flowledger workflows add docs/examples/hello.yaml" }),
          ") and start one from its page on ",
          h("a", { href: "/workflows", text: "Workflows" }),
          ", or with ",
          h("code", { text: "flowledger run hello --follow" }),
          "; it appears here as it runs.",
        );
  const scroller = h("div", { class: "table-scroll", role: "region", "aria-label": "Runs table", tabindex: "0" }, table);
  main.append(scroller);

  const rows = new Map();
  function placeRow(run, { fresh = false } = {}) {
    const row = runRow(run);
    if (fresh) row.classList.add("row-new");
    const old = rows.get(run.run_id);
    rows.set(run.run_id, row);
    if (old) {
      old.replaceWith(row);
      return;
    }
    // Run ids are UUID v7: newest first is descending id order.
    const after = [...tbody.children].find((tr) => tr.dataset.runId < run.run_id);
    tbody.insertBefore(row, after || null);
  }
  for (const run of page.items) placeRow(run);
  const syncEmpty = () => {
    if (rows.size === 0) scroller.after(empty);
    else empty.remove();
  };
  syncEmpty();

  // ---- paging
  const pager = h("nav", { class: "pager", "aria-label": "Pages of runs" });
  if (cursor) {
    const previous = newer.slice(0, -1);
    const back = newer.length ? newer[newer.length - 1] : "";
    pager.append(h("a", { class: "button", href: urlFor({ cursor: back === "-" ? "" : back, newer: previous.join(",") }), text: "← Newer" }));
    pager.append(h("a", { class: "button", href: urlFor({}), text: "Newest" }));
  }
  if (page.next_cursor) {
    pager.append(h("a", { class: "button", href: urlFor({ cursor: page.next_cursor, newer: [...newer, cursor || "-"].join(",") }), text: "Next →" }));
  }
  if (pager.children.length) main.append(pager);

  // ---- live
  const timers = new Map(); // run id -> {timer, last}
  let closed = false;
  function matches(run) {
    return (!workflowId || run.workflow_id === workflowId) && (!status || run.status === status);
  }
  const seen = new Map(); // run id -> the highest seq its events have reached
  const lagRetries = new Map();
  async function refresh(runId, { insert }) {
    try {
      const run = await api(`/v1/runs/${encodeURIComponent(runId)}`);
      if (closed) return;
      if (rows.has(runId)) placeRow(run);
      else if (insert && matches(run)) {
        placeRow(run, { fresh: true });
        syncEmpty();
      }
      // The summary is a read model that can trail the log: until it reflects the last event
      // seen, look again (backing off), so that a row never stays behind its run.
      const want = seen.get(runId);
      if (want !== undefined && (run.last_seq ?? -1) < want && rows.has(runId)) {
        const n = lagRetries.get(runId) || 0;
        if (n < LAG_RETRIES) {
          lagRetries.set(runId, n + 1);
          schedule(runId, { delay: LAG_RETRY_MS * 2 ** n });
        }
      } else lagRetries.delete(runId);
    } catch (err) {
      if (err && err.status === 404) return; // not visible to us (yet)
      console.warn("run refresh failed", runId, err);
    }
  }
  function schedule(runId, { insert = false, delay = 0 } = {}) {
    const entry = timers.get(runId) || { timer: null, last: 0, due: 0, insert: false };
    entry.insert = entry.insert || insert;
    timers.set(runId, entry);
    const due = Date.now() + Math.max(delay, entry.last + COALESCE_MS - Date.now(), 0);
    if (entry.timer) {
      if (entry.due <= due) return; // a fetch is already coming, soon enough
      clearTimeout(entry.timer);
    }
    entry.due = due;
    entry.timer = setTimeout(() => {
      entry.timer = null;
      entry.last = Date.now();
      const ins = entry.insert;
      entry.insert = false;
      refresh(runId, { insert: ins });
    }, due - Date.now());
  }


  let close = null;
  if (position !== null) {
    const params = new URLSearchParams({ after_position: String(position) });
    if (workflowId) params.set("workflow_id", workflowId);
    close = stream(`/v1/stream?${params}`, {
      onOpen() {
        liveTag.dataset.state = "live";
        liveTag.textContent = "live";
      },
      onError(_event, source) {
        if (closed) return;
        const gone = source.readyState === EventSource.CLOSED;
        liveTag.dataset.state = gone ? "off" : "reconnecting";
        liveTag.textContent = gone ? "not live: reload the page" : "reconnecting…";
        // The browser gives up on a refused stream (e.g. a 401): if the session has ended, this
        // call's 401 sends the user to sign in.
        if (gone) api("/v1/session").catch(() => {});
      },
      onEvent(type, env) {
        if (!env || typeof env !== "object" || !env.run_id) return;
        const runId = env.run_id;
        const known = rows.has(runId);
        const insert = !known && firstPage && STATUS_EVENTS.has(type);
        if (!known && !insert) return;
        if (typeof env.seq === "number") seen.set(runId, Math.max(env.seq, seen.get(runId) ?? -1));
        lagRetries.delete(runId);
        schedule(runId, { insert });
      },
    });
  } else {
    liveTag.dataset.state = "off";
    liveTag.textContent = "not live";
  }

  return () => {
    closed = true;
    if (close) close();
    for (const entry of timers.values()) if (entry.timer) clearTimeout(entry.timer);
    timers.clear();
  };
}

function describe(workflowId, status) {
  const parts = ["Runs"];
  if (workflowId) parts.push(`of ${workflowId}`);
  if (status) parts.push(`with status ${status}`);
  return `${parts.join(" ")}, newest first`;
}
