// The run page, /runs/<id>[?seq=N][&node=<id>]: the run's DAG coloured live from its SSE stream,
// a timeline of node attempts, a node inspector, a time-travel slider (GET /state?at_seq=N),
// and the actions Cancel, Fork from a node, Diff with another run, Verify.

import { stream } from "../api.js";
import { formatDuration, formatTime, h, shortId } from "../dom.js";
import { cancelButton, diffPanel, verifyAction } from "../run/actions.js";
import { normalizeStatus, renderDag } from "../run/dag.js";
import { renderInspector } from "../run/inspector.js";
import { applyEvent, edgeFigures, emptyFold, fetchAllEvents, stateNodeForEdges, TERMINAL, viewStatus } from "../run/model.js";
import { renderSlider } from "../run/slider.js";
import { renderTimeline } from "../run/timeline.js";

const SLIDER_DEBOUNCE_MS = 120;
const SUMMARY_COALESCE_MS = 250;

function notFound(main, runId, ctx, reason) {
  ctx.setTitle("Run not found");
  main.replaceChildren(
    h(
      "section",
      { class: "run-page run-missing" },
      h("h1", { text: "Run not found" }),
      h(
        "p",
        { role: "alert" },
        "There is no run ",
        h("code", { text: runId }),
        reason || " that you can see: it does not exist, or it belongs to another tenant.",
      ),
      h("p", {}, h("a", { href: "/runs", text: "All runs" })),
    ),
  );
}

function problemText(err) {
  if (err && err.problem) return err.problem.detail || err.problem.title;
  return (err && err.message) || String(err);
}

export async function render(main, { params, query, ctx }) {
  const runId = params.id;
  const api = ctx.api;
  const enc = encodeURIComponent(runId);
  const cleanups = [];
  let disposed = false;
  const cleanup = () => {
    disposed = true;
    for (const fn of cleanups.splice(0)) {
      try {
        fn();
      } catch {
        /* already gone */
      }
    }
  };

  ctx.setTitle(`Run ${shortId(runId)}`);
  main.replaceChildren(h("p", { class: "muted", role: "status", text: `Loading run ${runId}…` }));

  if (!/^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/.test(runId)) {
    notFound(main, runId, ctx, ": that is not a run id (a UUID).");
    return cleanup;
  }

  let summary;
  let lineage;
  let events;
  try {
    summary = await api(`/v1/runs/${enc}`);
    [lineage, events] = await Promise.all([api(`/v1/runs/${enc}/lineage`), fetchAllEvents(api, runId)]);
  } catch (err) {
    if (disposed) return cleanup;
    if (err && (err.status === 404 || err.status === 400)) {
      notFound(main, runId, ctx);
    } else {
      main.replaceChildren(
        h("section", { class: "run-page" }, h("h1", { text: `Run ${shortId(runId)}` }), h("p", { class: "error", role: "alert", text: `Could not load the run: ${problemText(err)}` })),
      );
    }
    return cleanup;
  }
  if (disposed) return cleanup;

  // ---------------------------------------------------------------- model
  const nodeOrder = lineage.nodes.map((n) => n.id);
  const nodeTypes = new Map(lineage.nodes.map((n) => [n.id, n.type]));
  const fold = emptyFold(lineage.nodes);
  for (const e of events) applyEvent(fold, e);
  let lastSeq = events.length ? events[events.length - 1].seq : summary.last_seq;
  const bySeq = new Map(events.map((e) => [e.seq, e]));

  const wanted = query.get ? query.get("seq") : query.seq;
  const wantedNode = query.get ? query.get("node") : query.node;
  let viewSeq = lastSeq;
  if (wanted !== null && wanted !== undefined && wanted !== "" && /^\d+$/.test(String(wanted))) {
    viewSeq = Math.min(Number(wanted), lastSeq);
  }
  let following = viewSeq === lastSeq;
  let selected = wantedNode && nodeTypes.has(wantedNode) ? wantedNode : null;
  let viewState = null; // the /state document shown (at viewSeq, or the latest when following)

  // ---------------------------------------------------------------- header
  const badge = h("span", { class: "status" });
  const facts = h("dl", { class: "facts run-facts" });
  const progress = h("progress", { max: "100", value: "0", "aria-label": "progress" });
  const progressText = h("span", { class: "muted" });
  const cancel = cancelButton(api, runId);
  const verify = verifyAction(api, runId);

  function paintHeader() {
    const status = fold.status; // from the events: ahead of the summary's read model
    badge.className = `status status-${normalizeStatus(status)}`;
    badge.textContent = status;
    badge.setAttribute("data-status", status);
    progress.value = summary.progress || 0;
    progressText.textContent = ` ${summary.progress || 0}%`;
    progress.setAttribute("aria-label", `progress: ${summary.progress || 0}% of ${summary.node_count} node${summary.node_count === 1 ? "" : "s"} settled`);
    const items = [
      ["Workflow", h("a", { href: `/workflows/${encodeURIComponent(summary.workflow_id)}`, text: summary.workflow_id }), " ", h("a", { class: "muted version", href: `/workflows/${encodeURIComponent(summary.workflow_id)}?version=${encodeURIComponent(summary.workflow_version)}`, text: `version ${summary.workflow_version}` })],
      ["Progress", progress, progressText],
      ["Queued", summary.queued_at ? formatTime(summary.queued_at) : "—"],
      ["Started", summary.started_at ? formatTime(summary.started_at) : "—"],
      ["Finished", summary.finished_at ? formatTime(summary.finished_at) : "—"],
      ["Duration", summary.duration_ms != null ? formatDuration(summary.duration_ms) : "—"],
    ];
    if (summary.retries) items.push(["Retries", String(summary.retries)]);
    if (summary.parent_run_id) items.push([fold.parentNodeId ? "Parent run" : "Forked from", h("a", { href: `/runs/${summary.parent_run_id}`, text: `run ${shortId(summary.parent_run_id)}`, "aria-label": `parent run ${summary.parent_run_id}` })]);
    if (summary.error) items.push(["Error", h("span", { class: "error", text: summary.error })]);
    facts.replaceChildren();
    for (const [term, ...values] of items) {
      facts.append(h("div", { class: term === "Workflow" || term === "Error" ? "fact-wide" : null }, h("dt", { text: term }), h("dd", {}, ...values)));
    }
    if (fold.ended) cancel.hide();
  }

  let summaryTimer = null;
  let summaryTries = 0;
  function refreshSummary() {
    if (summaryTimer !== null || disposed) return;
    summaryTimer = setTimeout(async () => {
      summaryTimer = null;
      try {
        const next = await api(`/v1/runs/${enc}`);
        if (disposed) return;
        summary = next;
        paintHeader();
        // the summary is a read model a moment behind the log: ask again until it caught up
        if ((summary.last_seq ?? lastSeq) < lastSeq && ++summaryTries < 40) refreshSummary();
        else summaryTries = 0;
      } catch {
        /* the next event asks again */
      }
    }, SUMMARY_COALESCE_MS);
  }
  cleanups.push(() => summaryTimer !== null && clearTimeout(summaryTimer));

  // ---------------------------------------------------------------- DAG, timeline, inspector
  const dag = renderDag(
    lineage.layout,
    lineage.nodes.map((n) => ({ id: n.id, type: n.type, status: fold.nodes.get(n.id)?.status || "pending" })),
    lineage.edges,
    { onSelect: (nodeId) => selectNode(nodeId) },
  );
  const graphPanel = h(
    "section",
    { class: "panel graph", "aria-labelledby": "graph-title" },
    h("div", { class: "panel-head" }, h("h2", { id: "graph-title", text: "Graph" }), h("span", { class: "muted graph-when" })),
    dag.element,
  );
  const graphWhen = graphPanel.querySelector(".graph-when");
  let streamState = "live"; // "live" | "reconnecting" (EventSource retries by itself)
  function paintWhen(text) {
    const live = following && !fold.ended;
    graphWhen.classList.toggle("live", live);
    if (live) graphWhen.setAttribute("data-state", streamState);
    else graphWhen.removeAttribute("data-state");
    graphWhen.textContent = text ?? (live ? (streamState === "live" ? "live" : "reconnecting…") : following ? "" : `as of seq ${viewSeq}`);
  }

  const timeline = renderTimeline(nodeOrder, events, { onSelect: (nodeId) => selectNode(nodeId) });
  cleanups.push(() => timeline.destroy());
  const timelinePanel = h("section", { class: "panel timeline-panel", "aria-labelledby": "timeline-title" }, h("h2", { id: "timeline-title", text: "Timeline" }), timeline.element);

  const inspectorSlot = h("div", { class: "inspector-slot" });

  function paintDag() {
    if (following) {
      for (const id of nodeOrder) dag.setStatus(id, fold.nodes.get(id)?.status || "pending");
      lineage.edges.forEach((edge, i) => dag.setEdge(i, edgeFigures(edge, fold.nodes.get(edge.from))));
      paintWhen();
      dag.element.setAttribute("data-view-seq", String(lastSeq));
      dag.element.setAttribute("data-live", "true");
    } else if (viewState && viewState.at_seq === viewSeq) {
      for (const id of nodeOrder) dag.setStatus(id, viewStatus(viewState.nodes[id]));
      lineage.edges.forEach((edge, i) => dag.setEdge(i, edgeFigures(edge, stateNodeForEdges(viewState.nodes[edge.from]))));
      paintWhen();
      dag.element.setAttribute("data-view-seq", String(viewSeq));
      dag.element.setAttribute("data-live", "false");
    }
  }

  /** The selected node's log lines from the run's node_log events (up to `upTo`, null = all). */
  function nodeLogLines(nodeId, upTo) {
    const lines = [];
    let partial = false;
    for (const e of events) {
      if (e.type !== "node_log" || !e.data || e.data.node_id !== nodeId) continue;
      if (upTo !== null && e.seq > upTo) continue;
      if (!Array.isArray(e.data.lines)) {
        partial = true; // trimmed on the stream
        continue;
      }
      for (const line of e.data.lines) lines.push({ ...line, attempt: e.data.attempt || 1, seq: e.seq });
    }
    return { lines, partial };
  }

  function paintInspector() {
    dag.select(selected);
    timeline.select(selected);
    if (!selected) {
      inspectorSlot.replaceChildren(
        h("section", { class: "panel inspector inspector-empty", "aria-label": "Node inspector" }, h("h2", { text: "Node" }), h("p", { class: "muted", text: "Select a node in the graph or the timeline to inspect it." })),
      );
      return;
    }
    const view = viewState && viewState.nodes ? viewState.nodes[selected] : undefined;
    // a redraw of the same node keeps what the user was doing in it (focus, override text)
    const same = inspectorSlot.querySelector(".inspector")?.getAttribute("data-node-id") === selected;
    const focusedInside = same && inspectorSlot.contains(document.activeElement) ? document.activeElement : null;
    const keepText = same ? inspectorSlot.querySelector("textarea.fork-override")?.value : null;
    const keepPayload = same ? inspectorSlot.querySelector("textarea.signal-payload")?.value : null;
    const keepOpen = same ? inspectorSlot.querySelector("details.fork")?.open : false;
    inspectorSlot.replaceChildren(
      renderInspector(selected, view, {
        runEnded: fold.ended,
        atSeq: following ? null : viewSeq,
        loading: viewState === null,
        logs: nodeLogLines(selected, following ? null : viewSeq),
        onFork: forkFrom,
        onSignal: sendSignal,
        onClose: () => {
          const was = selected;
          selectNode(null);
          dag.focus(was);
        },
      }),
    );
    const ta = inspectorSlot.querySelector("textarea.fork-override");
    if (ta && keepText) ta.value = keepText;
    const payload = inspectorSlot.querySelector("textarea.signal-payload");
    if (payload && keepPayload) payload.value = keepPayload;
    if (keepOpen) inspectorSlot.querySelector("details.fork").open = true;
    if (focusedInside && focusedInside.id) document.getElementById(focusedInside.id)?.focus();
  }

  function selectNode(nodeId) {
    selected = nodeId;
    syncUrl();
    paintInspector();
    if (selected && following) loadState();
  }

  async function sendSignal(name, payloadText) {
    const body = {};
    if (payloadText && payloadText.trim()) {
      try {
        body.payload = JSON.parse(payloadText);
      } catch (err) {
        throw new Error(`The payload is not valid JSON: ${err.message}`);
      }
    }
    try {
      await api(`/v1/runs/${enc}/signals/${encodeURIComponent(name)}`, { method: "POST", body });
    } catch (err) {
      throw new Error(problemText(err));
    }
  }

  async function forkFrom(nodeId, overrideText) {
    const body = { from_node: nodeId };
    if (overrideText && overrideText.trim()) {
      let value;
      try {
        value = JSON.parse(overrideText);
      } catch (err) {
        throw new Error(`The override is not valid JSON: ${err.message}`);
      }
      body.overrides = { [nodeId]: value };
    }
    let accepted;
    try {
      accepted = await api(`/v1/runs/${enc}/replay`, { method: "POST", body });
    } catch (err) {
      throw new Error(problemText(err));
    }
    ctx.navigate(`/runs/${accepted.run_id}`);
  }

  // ---------------------------------------------------------------- time travel
  let stateToken = 0;
  let sliderTimer = null;
  cleanups.push(() => sliderTimer !== null && clearTimeout(sliderTimer));

  async function loadState() {
    const token = ++stateToken;
    const seq = following ? null : viewSeq;
    try {
      const doc = await api(`/v1/runs/${enc}/state`, seq === null ? {} : { query: { at_seq: seq } });
      if (disposed || token !== stateToken) return; // a later request wins
      viewState = doc;
      paintDag();
      paintInspector();
      timeline.setCursor(following ? null : Date.parse(doc.recorded_at));
    } catch (err) {
      if (disposed || token !== stateToken) return;
      paintWhen(`could not load seq ${seq}: ${problemText(err)}`);
    }
  }

  function syncUrl() {
    const url = new URL(window.location.href);
    if (following) url.searchParams.delete("seq");
    else url.searchParams.set("seq", String(viewSeq));
    if (selected) url.searchParams.set("node", selected);
    else url.searchParams.delete("node");
    if (url.href !== window.location.href) history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }

  const slider = renderSlider({
    max: lastSeq,
    value: viewSeq,
    describe: (seq) => bySeq.get(seq) || null,
    onChange: (seq, { final }) => {
      viewSeq = seq;
      following = seq === lastSeq;
      syncUrl();
      if (sliderTimer !== null) clearTimeout(sliderTimer);
      if (following) {
        stateToken++; // drop requests in flight
        paintDag();
        timeline.setCursor(null);
        if (selected) loadState();
        else paintInspector();
        return;
      }
      sliderTimer = setTimeout(
        () => {
          sliderTimer = null;
          loadState();
        },
        final ? 0 : SLIDER_DEBOUNCE_MS,
      );
    },
  });

  // ---------------------------------------------------------------- live
  let inspectorTimer = null;
  cleanups.push(() => inspectorTimer !== null && clearTimeout(inspectorTimer));
  let closeStream = null;
  let catchingUp = null;

  function onEnvelope(env) {
    if (disposed || typeof env.seq !== "number" || env.seq <= lastSeq) return;
    if (env.seq > lastSeq + 1) {
      catchUp();
      return;
    }
    events.push(env);
    bySeq.set(env.seq, env);
    lastSeq = env.seq;
    const changed = applyEvent(fold, env);
    slider.setMax(lastSeq);
    if (following) {
      viewSeq = lastSeq;
      for (const id of changed) if (nodeTypes.has(id)) dag.setStatus(id, fold.nodes.get(id).status);
      lineage.edges.forEach((edge, i) => dag.setEdge(i, edgeFigures(edge, fold.nodes.get(edge.from))));
      dag.element.setAttribute("data-view-seq", String(lastSeq));
    }
    timeline.update(events);
    paintHeader();
    const type = env.type;
    if (type !== "node_execute_before" && type !== "node_execute_after_data") refreshSummary();
    if (type === "run_started" || TERMINAL.has(type)) refreshSummary();
    if (following && selected && (changed.includes(selected) || TERMINAL.has(type))) {
      if (inspectorTimer !== null) clearTimeout(inspectorTimer);
      inspectorTimer = setTimeout(() => {
        inspectorTimer = null;
        if (following) loadState();
      }, 150);
    }
    if (TERMINAL.has(type)) {
      if (closeStream) closeStream();
      closeStream = null;
      if (following) paintWhen();
      paintInspector(); // the fork form opens up
    }
  }

  async function catchUp() {
    if (catchingUp) return;
    catchingUp = (async () => {
      try {
        const missing = await fetchAllEvents(api, runId, lastSeq);
        for (const env of missing) onEnvelope(env);
      } catch {
        /* the stream resumes by itself */
      } finally {
        catchingUp = null;
      }
    })();
  }

  function openStream() {
    if (fold.ended) return;
    closeStream = stream(`/v1/runs/${enc}/stream?after_seq=${lastSeq}`, {
      onEvent(type, data) {
        let env = data;
        if (typeof env === "string") {
          try {
            env = JSON.parse(env);
          } catch {
            return;
          }
        }
        if (env && typeof env === "object" && env.seq !== undefined) onEnvelope(env);
      },
      onOpen() {
        streamState = "live";
        if (following) paintWhen();
      },
      onError() {
        if (fold.ended && closeStream) {
          closeStream();
          closeStream = null;
          return;
        }
        streamState = "reconnecting";
        if (following) paintWhen();
      },
    });
  }
  cleanups.push(() => {
    if (closeStream) closeStream();
    closeStream = null;
  });

  // ---------------------------------------------------------------- page
  const title = h("h1", {}, `Run ${shortId(runId)} `, badge);
  title.setAttribute("title", runId);
  const page = h(
    "article",
    { class: "run-page", "data-run-id": runId },
    h(
      "header",
      { class: "run-head" },
      title,
      h("p", { class: "muted run-id" }, h("code", { text: runId })),
      facts,
      h("div", { class: "run-actions", role: "group", "aria-label": "Run actions" }, cancel.element, verify.button),
      verify.result,
    ),
    slider.element,
    h("div", { class: "run-grid" }, graphPanel, inspectorSlot),
    timelinePanel,
    diffPanel(api, runId).element,
  );
  main.replaceChildren(page);
  paintHeader();
  paintDag();
  paintInspector();
  openStream();
  if (!following || selected) loadState();
  if ((summary.last_seq ?? lastSeq) < lastSeq) refreshSummary();
  return cleanup;
}
