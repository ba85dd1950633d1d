// The run page's actions: Cancel, Verify (the run's hash chain) and Diff with another run.

import { formatDuration, h, shortId } from "../dom.js";
import { normalizeStatus } from "./dag.js";

function problemText(err) {
  if (err && err.problem) return err.problem.detail || err.problem.title || `HTTP ${err.status}`;
  return (err && err.message) || String(err);
}

/** A Cancel button: confirm, POST cancel; the page then shows the end from the stream. */
export function cancelButton(api, runId, { onDone } = {}) {
  const status = h("span", { class: "form-message", role: "status" });
  const button = h("button", {
    type: "button",
    class: "danger",
    text: "Cancel run",
    onclick: async () => {
      if (!window.confirm(`Cancel run ${shortId(runId)}? Running nodes are interrupted and the rest are skipped.`)) return;
      button.disabled = true;
      status.textContent = "Cancelling…";
      try {
        await api(`/v1/runs/${encodeURIComponent(runId)}/cancel`, { method: "POST", body: { reason: "cancelled from the console" } });
        status.textContent = "Cancel requested.";
        if (onDone) onDone();
      } catch (err) {
        button.disabled = false;
        status.textContent = problemText(err);
      }
    },
  });
  const element = h("span", { class: "cancel-action" }, button, status);
  return {
    element,
    hide() {
      element.hidden = true;
    },
  };
}

/** Verify: GET /audit -> "chain verified: N events" or the problems listed. */
export function verifyAction(api, runId) {
  const result = h("div", { class: "audit-result", role: "status", "aria-live": "polite" });
  const button = h("button", {
    type: "button",
    text: "Verify chain",
    onclick: async () => {
      button.disabled = true;
      result.replaceChildren(h("span", { class: "muted", text: "Verifying…" }));
      try {
        const audit = await api(`/v1/runs/${encodeURIComponent(runId)}/audit`);
        if (audit.ok) {
          result.replaceChildren(
            h("span", { class: "audit-ok", text: `✓ chain verified: ${audit.events} event${audit.events === 1 ? "" : "s"}` }),
          );
        } else {
          const list = h("ul", { class: "audit-problems" });
          for (const p of audit.problems || []) {
            list.append(h("li", {}, h("code", { text: p.kind }), p.seq != null ? ` at seq ${p.seq}: ` : ": ", p.problem || p.detail || ""));
          }
          result.replaceChildren(
            h("strong", { class: "audit-bad", text: `✗ chain verification failed (${(audit.problems || []).length} problem${(audit.problems || []).length === 1 ? "" : "s"}, ${audit.events} events)` }),
            list,
          );
        }
      } catch (err) {
        result.replaceChildren(h("span", { class: "error", text: problemText(err) }));
      } finally {
        button.disabled = false;
      }
    },
  });
  return { button, result };
}

function cell(text, cls) {
  return h("td", cls ? { class: cls, text } : { text });
}

function statusCell(status) {
  if (!status) return cell("—", "muted");
  const st = normalizeStatus(status);
  return h("td", {}, h("span", { class: `status status-${st}`, text: status }));
}

function changeText(node) {
  if (node.presence !== "both") return node.presence === "only_a" ? "only in this run" : "only in the other run";
  const parts = [];
  if (node.status_a !== node.status_b) parts.push("status");
  if (node.output === "changed") {
    const paths = (node.json_changes || []).slice(0, 3).map((c) => c.path);
    parts.push(paths.length ? `output (${paths.join(", ")}${(node.json_changes || []).length > 3 ? ", …" : ""})` : "output");
  } else if (node.output === "only_a" || node.output === "only_b") parts.push("output");
  if (node.branch_changed) parts.push(`branch ${node.branch_a} → ${node.branch_b}`);
  if (node.error_a !== node.error_b) parts.push("error");
  if (node.skip_reason_a !== node.skip_reason_b) parts.push("skip reason");
  return node.equal ? "equal" : parts.join("; ") || "changed";
}

function durationCell(ms) {
  return cell(ms == null ? "—" : formatDuration(ms));
}

/** Diff with another run: an input and a node-by-node table from GET /diff/{other}. */
export function diffPanel(api, runId) {
  const out = h("div", { class: "diff-result", "aria-live": "polite" });
  const input = h("input", { id: "diff-other", name: "other", type: "text", required: "", autocomplete: "off", spellcheck: "false", placeholder: "run id (UUID)" });
  const button = h("button", { type: "submit", text: "Diff" });
  const form = h(
    "form",
    {
      class: "diff-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        // a pasted run URL or "Run <id>" works too: take the UUID in it
        const typed = input.value.trim();
        const uuid = typed.match(/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/);
        const other = uuid ? uuid[0] : typed;
        if (!other) return;
        button.disabled = true;
        out.replaceChildren(h("p", { class: "muted", text: "Comparing…" }));
        try {
          const diff = await api(`/v1/runs/${encodeURIComponent(runId)}/diff/${encodeURIComponent(other)}`);
          out.replaceChildren(diffTable(diff));
        } catch (err) {
          out.replaceChildren(h("p", { class: "error", role: "alert", text: err && err.status === 404 ? `Run ${other} not found.` : problemText(err) }));
        } finally {
          button.disabled = false;
        }
      },
    },
    h("label", { for: "diff-other", text: "Other run id" }),
    h("div", { class: "inline-field" }, input, button),
  );
  const element = h("section", { class: "panel diff", "aria-labelledby": "diff-title" }, h("h2", { id: "diff-title", text: "Diff with another run" }), form, out);
  return { element };
}

function diffTable(diff) {
  const summary = h(
    "p",
    { class: "diff-summary" },
    diff.equal ? "The runs are equal. " : "",
    `${diff.nodes_equal} equal, ${diff.nodes_changed} changed`,
    diff.nodes_only_a ? `, ${diff.nodes_only_a} only in this run` : "",
    diff.nodes_only_b ? `, ${diff.nodes_only_b} only in the other` : "",
    ". Status ",
    h("span", { class: `status status-${normalizeStatus(diff.status_a)}`, text: diff.status_a }),
    " vs ",
    h("span", { class: `status status-${normalizeStatus(diff.status_b)}`, text: diff.status_b }),
    diff.inputs_equal ? "; same inputs." : `; inputs differ (${(diff.inputs_changes || []).map((c) => c.path).join(", ")}).`,
  );
  const other = h("a", { href: `/runs/${diff.run_b}`, text: shortId(diff.run_b) });
  const table = h(
    "table",
    { class: "data diff-table" },
    h("caption", {}, `Node by node: this run (${shortId(diff.run_a)}) and `, other),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ...["Node", "Status (this)", "Status (other)", "Duration (this)", "Duration (other)", "Output", "Difference"].map((t) => h("th", { scope: "col", text: t })),
      ),
    ),
  );
  const body = h("tbody", {});
  for (const n of diff.nodes) {
    body.append(
      h(
        "tr",
        { class: n.equal ? "diff-equal" : "diff-changed", "data-node-id": n.node_id },
        h("th", { scope: "row", text: n.node_id }),
        statusCell(n.status_a),
        statusCell(n.status_b),
        durationCell(n.duration_ms_a),
        durationCell(n.duration_ms_b),
        cell(n.output),
        cell(changeText(n)),
      ),
    );
  }
  table.append(body);
  return h("div", {}, summary, h("div", { class: "table-scroll" }, table));
}
