// The node inspector: one node of a `/v1/runs/{id}/state` document (as the run was at a seq, or
// now): type, status, attempts, error, the document it saw, its output, where a fork reused it
// from; and the "Fork from this node" form.

import { formatDuration, formatTime, h, shortId } from "../dom.js";
import { normalizeStatus } from "./dag.js";
import { viewStatus } from "./model.js";

const COLLAPSE_BYTES = 2048;

function byteSize(text) {
  return new TextEncoder().encode(text).length;
}

export function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** A JSON value as a <pre>, inside a closed <details> (with its size) when over ~2 KB. */
export function jsonBlock(label, value, recordedBytes) {
  const text = JSON.stringify(value, null, 2) ?? "null";
  const size = recordedBytes || byteSize(JSON.stringify(value) ?? "null");
  const pre = h("pre", { class: "json", tabindex: "0", "aria-label": label, text });
  if (size > COLLAPSE_BYTES) {
    return h(
      "details",
      { class: "json-details" },
      h("summary", { text: `${label} (${formatBytes(size)})` }),
      pre,
    );
  }
  return h("div", { class: "json-block" }, h("h4", { text: `${label} (${formatBytes(size)})` }), pre);
}

function row(dl, term, ...values) {
  dl.append(h("dt", { text: term }), h("dd", {}, ...values));
}

const FIELD_LIMIT = 200;

/** A node's log lines (`lines`: [{seq, attempt, at, level, message, fields}]), oldest first. */
export function logBlock(nodeId, { lines, partial }, atSeq) {
  const when = atSeq === null || atSeq === undefined ? "" : " by this event";
  const box = h("div", { class: "node-logs" }, h("h4", { text: `Logs (${lines.length} ${lines.length === 1 ? "line" : "lines"}${when})` }));
  if (partial) box.append(h("p", { class: "muted", text: "Some log events were too large for the live stream: reload the page to see every line." }));
  if (!lines.length) {
    box.append(h("p", { class: "muted", text: `No log lines${when}.` }));
    return box;
  }
  const attempts = new Set(lines.map((l) => l.attempt)).size > 1;
  const list = h("ol", { class: "log-lines", tabindex: "0", "aria-label": `Log lines of ${nodeId}` });
  for (const line of lines) {
    const fields = Object.entries(line.fields || {}).map(([k, v]) => {
      const text = `${k}=${JSON.stringify(v)}`;
      return text.length > FIELD_LIMIT ? `${text.slice(0, FIELD_LIMIT)}…` : text;
    });
    list.append(
      h(
        "li",
        { class: `log-line log-${line.level}`, "data-seq": String(line.seq) },
        h("time", { datetime: line.at, text: String(line.at).slice(11, 23) }),
        " ",
        h("span", { class: "log-level", text: line.level.toUpperCase() }),
        attempts ? h("span", { class: "muted", text: ` #${line.attempt}` }) : "",
        " ",
        h("span", { class: "log-message", text: line.message }),
        fields.length ? h("span", { class: "log-fields muted", text: ` ${fields.join(" ")}` }) : "",
      ),
    );
  }
  box.append(list);
  return box;
}

/**
 * `view`: state.nodes[nodeId] (may be undefined while the state loads); `ctx`: {runId, runEnded,
 * atSeq (null = now), onFork(nodeId, overrideText) -> Promise, onSignal(name, payloadText) -> Promise,
 * logs: {lines, partial} (the node's log lines up to atSeq)}.
 */
export function renderInspector(nodeId, view, { runEnded, atSeq, onFork, onSignal, onClose, loading, logs } = {}) {
  const heading = h("h2", { id: "inspector-title", text: `Node ${nodeId}` });
  const close = h("button", { type: "button", class: "link-button", text: "Close", "aria-label": "Close the node inspector", onclick: () => onClose && onClose() });
  const section = h("section", { class: "panel inspector", "aria-labelledby": "inspector-title", "data-node-id": nodeId }, h("div", { class: "panel-head" }, heading, close));
  if (!view) {
    section.append(h("p", { class: "muted", text: loading ? "Loading…" : `No node ${nodeId} in this run.` }));
    return section;
  }
  const state = normalizeStatus(viewStatus(view));
  section.append(
    h(
      "p",
      { class: "muted inspector-when" },
      atSeq === null || atSeq === undefined ? "As it is now" : `As it was right after event ${atSeq}`,
    ),
  );
  const dl = h("dl", { class: "facts" });
  row(dl, "Type", view.node_type || "");
  row(dl, "Status", h("span", { class: `status status-${state}`, text: state }));
  row(dl, "Attempts", `${view.attempts}${view.failures ? ` (${view.failures} failed)` : ""}`);
  if (view.attempts > 0 && view.status !== "running" && view.status !== "waiting") row(dl, "Duration", formatDuration(view.duration_ms || 0) + (view.attempts > 1 ? " (last attempt)" : ""));
  if (view.item_count) row(dl, "Items", String(view.item_count));
  if (view.retry_delay_ms != null && view.status === "retry_wait") row(dl, "Next retry in", formatDuration(view.retry_delay_ms));
  if (view.first_seq != null) row(dl, "Events", `seq ${view.first_seq} – ${view.last_seq}`);
  if (view.skip_reason) row(dl, "Skipped", view.skip_reason);
  if (view.status === "waiting") {
    if (view.signal) {
      row(dl, "Waiting for", "signal ", h("code", { text: view.signal }), view.wake_at ? ` (times out ${formatTime(view.wake_at)})` : "");
    } else if (view.child_run_id) {
      row(dl, "Waiting for", "its child run to end", view.wake_at ? ` (times out ${formatTime(view.wake_at)})` : "");
    } else if (view.wake_at) {
      row(dl, "Waiting until", formatTime(view.wake_at));
    }
  }
  if (view.child_run_id) {
    row(dl, "Child run", h("a", { href: `/runs/${view.child_run_id}`, text: `run ${shortId(view.child_run_id)}`, "aria-label": `child run ${view.child_run_id}` }));
  }
  if (view.reused_from) {
    const r = view.reused_from;
    row(
      dl,
      "Reused from",
      h("a", { href: `/runs/${r.run_id}?seq=${r.seq}`, text: `run ${shortId(r.run_id)}, seq ${r.seq}` }),
      r.overridden ? " (output overridden)" : "",
    );
  }
  section.append(dl);
  if (view.error) {
    section.append(
      h(
        "div",
        { class: "inspector-error", role: "note" },
        h("strong", { text: "Error " }),
        h("code", { text: view.error.kind }),
        ": ",
        view.error.message,
        view.error.retryable === false ? " (not retryable)" : "",
      ),
    );
  }
  if (view.inputs === null || view.inputs === undefined) {
    section.append(h("p", { class: "muted", text: "Inputs: not known yet (upstream nodes have not all ended)." }));
  } else {
    section.append(jsonBlock("Inputs", view.inputs));
  }
  if (view.marker) {
    section.append(
      h("p", { class: "muted" }, `Output: ${formatBytes(view.marker.size_bytes)}, too large to store (sha256 `, h("code", { text: view.marker.sha256.slice(0, 16) }), "…)."),
    );
  } else if (view.status === "succeeded" || view.output !== null) {
    section.append(jsonBlock("Output", view.output ?? null, view.output_bytes));
  }
  if (logs) section.append(logBlock(nodeId, logs, atSeq));

  if (view.status === "waiting" && view.signal && (atSeq === null || atSeq === undefined) && onSignal) {
    section.append(signalForm(nodeId, view.signal, onSignal));
  }

  // Fork from this node
  const fork = h("details", { class: "fork" }, h("summary", { text: "Fork from this node" }));
  const textareaId = `override-${nodeId}`;
  const textarea = h("textarea", { id: textareaId, class: "fork-override", rows: "5", spellcheck: "false", placeholder: '{"key": "value"}', "aria-describedby": `${textareaId}-help` });
  const help = h("p", { id: `${textareaId}-help`, class: "muted" }, `Runs ${nodeId} and everything downstream of it again, reusing the rest. With an output override, `, h("code", { text: nodeId }), " is given that output instead of running.");
  const message = h("p", { class: "form-message", role: "status" });
  const button = h("button", { type: "submit", class: "primary", text: `Fork from ${nodeId}` });
  if (!runEnded) {
    button.disabled = true;
    message.textContent = "A run can be forked once it has ended.";
  }
  const form = h(
    "form",
    {
      class: "fork-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        message.textContent = "";
        button.disabled = true;
        try {
          await onFork(nodeId, textarea.value);
        } catch (err) {
          message.textContent = err.message || String(err);
          message.classList.add("error");
        } finally {
          button.disabled = !runEnded;
        }
      },
    },
    h("label", { for: textareaId, text: `Output override for ${nodeId} (JSON, optional)` }),
    textarea,
    help,
    button,
    message,
  );
  fork.append(form);
  section.append(fork);
  return section;
}

/** "Send signal": resumes the waiting node (and any other waiting for the same signal). */
function signalForm(nodeId, signal, onSignal) {
  const id = `signal-${nodeId}`;
  const textarea = h("textarea", { id, class: "signal-payload", rows: "4", spellcheck: "false", placeholder: '{"approved_by": "you"}', "aria-describedby": `${id}-help` });
  const help = h("p", { id: `${id}-help`, class: "muted" }, "The payload becomes the output of every node waiting for ", h("code", { text: signal }), "; who sent it is recorded.");
  const message = h("p", { class: "form-message", role: "status" });
  const button = h("button", { type: "submit", class: "primary", text: `Send signal ${signal}` });
  const form = h(
    "form",
    {
      class: "signal-form",
      onsubmit: async (ev) => {
        ev.preventDefault();
        message.textContent = "";
        message.classList.remove("error");
        button.disabled = true;
        try {
          await onSignal(signal, textarea.value);
          message.textContent = `Signal ${signal} sent.`;
        } catch (err) {
          message.textContent = err.message || String(err);
          message.classList.add("error");
          button.disabled = false;
        }
      },
    },
    h("h3", { text: "Send a signal" }),
    h("label", { for: id, text: `Payload for ${signal} (JSON, optional)` }),
    textarea,
    help,
    button,
    message,
  );
  return form;
}
