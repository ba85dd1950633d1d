// One workflow (/workflows/<id>[?version=]): its versions, the DAG of the chosen version (drawn by
// run/dag.js from the server's layout), a node's spec on selection, the spec as JSON, and a form
// that starts a run (POST /v1/workflows/{id}/runs) and opens it.

import { ApiError } from "../api.js";
import { formatTime, h } from "../dom.js";

const counted = (n, noun) => `${n} ${noun}${n === 1 ? "" : "s"}`;

function problemText(err) {
  if (err instanceof ApiError) {
    const p = err.problem;
    return p.detail && p.detail !== p.title ? `${p.title}: ${p.detail}` : p.title;
  }
  return String((err && err.message) || err);
}

function nodeList(spec) {
  return h(
    "ul",
    { class: "node-list", "aria-label": "Nodes" },
    spec.nodes.map((n) => h("li", {}, h("code", { text: n.id }), ` (${n.type})`)),
  );
}

async function drawDag(doc, onSelect) {
  const spec = doc.spec;
  if (!doc.layout) return { element: nodeList(spec), select: () => {} };
  try {
    const { renderDag } = await import("../run/dag.js");
    const nodes = spec.nodes.map((n) => ({ id: n.id, type: n.type, status: "pending" }));
    // A definition, not a run: draw every edge as a possible path (solid), with its label.
    const edges = spec.edges.map((e) => ({ from: e.from, to: e.to, when: e.when, taken: true, items: 0 }));
    return renderDag(doc.layout, nodes, edges, { onSelect });
  } catch (err) {
    console.warn("the DAG view is not available; listing the nodes", err);
    return { element: nodeList(spec), select: () => {} };
  }
}

function nodeDetails(spec, nodeId) {
  const node = spec.nodes.find((n) => n.id === nodeId);
  if (!node) return h("p", { class: "muted", text: "Select a node of the graph to see its definition." });
  const incoming = spec.edges.filter((e) => e.to === nodeId);
  const outgoing = spec.edges.filter((e) => e.from === nodeId);
  const edgeText = (e, other) => `${other}${e.when ? ` (when ${e.when})` : ""}`;
  return h(
    "div",
    { class: "node-details" },
    h("h3", { text: `Node ${node.id}` }),
    h(
      "dl",
      { class: "facts" },
      h("dt", { text: "Type" }),
      h("dd", {}, h("code", { text: node.type })),
      h("dt", { text: "After" }),
      h("dd", { text: incoming.length ? incoming.map((e) => edgeText(e, e.from)).join(", ") : "— (a start node)" }),
      h("dt", { text: "Before" }),
      h("dd", { text: outgoing.length ? outgoing.map((e) => edgeText(e, e.to)).join(", ") : "— (an end node)" }),
      h("dt", { text: "Retry" }),
      h("dd", { text: node.retry ? `up to ${node.retry.max_attempts} attempts` : "none" }),
      h("dt", { text: "Timeout" }),
      h("dd", { text: node.timeout_ms ? `${node.timeout_ms} ms` : "default" }),
    ),
    h("h4", { text: "Config" }),
    h("pre", { class: "json-block", text: JSON.stringify(node.config || {}, null, 2) }),
  );
}

function startForm(workflowId, version, isCurrent, ctx) {
  const inputs = h("textarea", { id: "run-inputs", name: "inputs", rows: "6", spellcheck: "false", "aria-describedby": "run-inputs-hint" });
  inputs.value = "{}";
  const key = h("input", { id: "run-key", name: "idempotency_key", type: "text", autocomplete: "off", maxlength: "200", "aria-describedby": "run-key-hint" });
  const alert = h("div", { class: "alert", role: "alert", id: "start-error" });
  const button = h("button", { type: "submit", class: "primary", text: "Start run" });
  const form = h(
    "form",
    { class: "start-form", "aria-labelledby": "start-heading", novalidate: true },
    h(
      "div",
      { class: "field" },
      h("label", { for: "run-inputs", text: "Inputs (JSON)" }),
      inputs,
      h("span", { class: "hint", id: "run-inputs-hint", text: "A JSON object: the run's inputs (inputs.* in expressions)." }),
    ),
    h(
      "div",
      { class: "field" },
      h("label", { for: "run-key", text: "Idempotency key (optional)" }),
      key,
      h("span", { class: "hint", id: "run-key-hint", text: "Repeating a request with the same key starts nothing new." }),
    ),
    alert,
    h("div", { class: "form-actions" }, button, isCurrent ? null : h("span", { class: "muted" }, "runs version ", h("code", { text: version }))),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alert.replaceChildren();
    inputs.removeAttribute("aria-invalid");
    let parsed;
    try {
      parsed = JSON.parse(inputs.value.trim() || "{}");
    } catch (err) {
      inputs.setAttribute("aria-invalid", "true");
      alert.textContent = `The inputs are not valid JSON: ${err.message}`;
      inputs.focus();
      return;
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
      inputs.setAttribute("aria-invalid", "true");
      alert.textContent = "The inputs must be a JSON object, like {\"name\": \"Ada\"}.";
      inputs.focus();
      return;
    }
    const body = { inputs: parsed };
    if (key.value.trim()) body.idempotency_key = key.value.trim();
    if (!isCurrent) body.version = version;
    button.disabled = true;
    try {
      const accepted = await ctx.api(`/v1/workflows/${encodeURIComponent(workflowId)}/runs`, { method: "POST", body });
      await ctx.navigate(`/runs/${encodeURIComponent(accepted.run_id)}`);
    } catch (err) {
      button.disabled = false;
      if (err instanceof ApiError && err.status === 401) return;
      alert.textContent = problemText(err);
    }
  });
  return form;
}

/** The workflow's schedules (read-only here; the CLI and the API add and remove them). */
function schedulePanel(workflowId, page) {
  const items = (page && page.items) || [];
  const list = items.length
    ? h(
        "ul",
        { class: "schedules", "aria-label": "Schedules" },
        items.map((sc) =>
          h(
            "li",
            { "data-schedule-id": sc.id },
            h("strong", { text: sc.cron ? `cron ${sc.cron}` : `every ${sc.every}` }),
            ` (${sc.timezone}) · next ${formatTime(sc.next_fire_at)}`,
            sc.last_run_id ? [" · last run ", h("a", { href: `/runs/${sc.last_run_id}`, text: formatTime(sc.last_fire_at) })] : " · not fired yet",
            h("span", { class: "muted", text: ` · overlap ${sc.overlap}, catch-up ${sc.catchup}` }),
          ),
        ),
      )
    : h("p", { class: "muted" }, "None. Add one with ", h("code", { text: `flowledger schedules add ${workflowId} --every 5m` }), " or POST /v1/workflows/{id}/schedules.");
  return h("section", { class: "panel", "aria-labelledby": "schedules-heading" }, h("h2", { id: "schedules-heading", text: `Schedules (${items.length})` }), list);
}

export async function render(main, { params, query, ctx }) {
  const workflowId = params.id;
  const requested = query.get("version") || "";
  ctx.setTitle(`Workflow ${workflowId}`);
  let doc;
  try {
    doc = await ctx.api(`/v1/workflows/${encodeURIComponent(workflowId)}`, { query: { version: requested || undefined } });
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      main.append(
        h("h1", { text: requested ? `Workflow ${workflowId}: no version ${requested}` : "Workflow not found" }),
        h("p", { class: "alert", role: "alert", text: problemText(err) }),
        h("p", {}, h("a", { href: "/workflows", text: "All workflows" })),
      );
      return undefined;
    }
    throw err;
  }
  const spec = doc.spec;
  const versions = doc.versions || [];
  let schedules = null;
  try {
    schedules = await ctx.api(`/v1/workflows/${encodeURIComponent(workflowId)}/schedules`);
  } catch (err) {
    if (!(err instanceof ApiError && (err.status === 403 || err.status === 404))) throw err;
  }
  const current = versions.length ? versions[0].version : doc.version;
  const isCurrent = doc.version === current;

  // ---- versions
  const versionList = h(
    "ol",
    { class: "versions", "aria-label": "Versions, newest first" },
    versions.map((v, i) => {
      const chosen = v.version === doc.version;
      const href = i === 0 ? `/workflows/${encodeURIComponent(workflowId)}` : `/workflows/${encodeURIComponent(workflowId)}?version=${encodeURIComponent(v.version)}`;
      return h(
        "li",
        {},
        h("a", { href, "aria-current": chosen ? "true" : null }, h("code", { text: v.version })),
        " ",
        h("span", { class: "muted", text: `${formatTime(v.created_at)}${i === 0 ? " · current" : ""}` }),
      );
    }),
  );

  // ---- DAG and node details
  const details = h("div", { class: "node-slot", "aria-live": "polite" }, nodeDetails(spec, null));
  const dag = await drawDag(doc, (nodeId) => details.replaceChildren(nodeDetails(spec, nodeId)));

  main.append(
    h(
      "div",
      { class: "page-head" },
      h("h1", { text: `Workflow ${workflowId}` }),
      h("a", { href: `/runs?workflow_id=${encodeURIComponent(workflowId)}`, text: "Its runs →" }),
    ),
    h(
      "dl",
      { class: "facts workflow-facts" },
      spec.name ? [h("dt", { text: "Name" }), h("dd", { text: spec.name })] : null,
      h("dt", { text: "Version" }),
      h("dd", {}, h("code", { text: doc.version }), isCurrent ? " (current)" : " (not the current version)"),
      h("dt", { text: "Nodes" }),
      h("dd", { text: `${counted(spec.nodes.length, "node")}, ${counted(spec.edges.length, "edge")}` }),
      h("dt", { text: "On failure" }),
      h("dd", { text: spec.on_failure || "stop" }),
    ),
    h(
      "div",
      { class: "workflow-grid" },
      h("section", { class: "panel", "aria-labelledby": "graph-heading" }, h("h2", { id: "graph-heading", text: "Graph" }), dag.element, details),
      h(
        "div",
        {},
        h(
          "section",
          { class: "panel", "aria-labelledby": "start-heading" },
          h("h2", { id: "start-heading", text: "Start a run" }),
          startForm(workflowId, doc.version, isCurrent, ctx),
        ),
        h("section", { class: "panel", "aria-labelledby": "versions-heading" }, h("h2", { id: "versions-heading", text: `Versions (${versions.length})` }), versionList),
        schedules ? schedulePanel(workflowId, schedules) : null,
      ),
    ),
    h(
      "section",
      { class: "panel" },
      h("details", { class: "spec-details" }, h("summary", { text: "Spec (JSON)" }), h("pre", { class: "json-block", text: JSON.stringify(spec, null, 2) })),
    ),
  );
  return undefined;
}
