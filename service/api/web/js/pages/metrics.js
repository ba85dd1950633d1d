// Metrics (/stats?workflow_id=): GET /v1/metrics/summary drawn as SVG charts per workflow (runs by
// status, success rates, duration percentiles), each with a table of the exact figures, and how far
// the read models trail the log.

import { formatDuration, formatPercent, h } from "../dom.js";
import { groupedBarChart, horizontalBarChart } from "../charts.js";

const STATUSES = ["queued", "running", "waiting", "succeeded", "failed", "cancelled"];
const MAX_UNFILTERED = 12;

function pct(rate) {
  return rate === null || rate === undefined ? "—" : formatPercent(rate, rate === 1 || rate === 0 ? 0 : 1);
}

function ms(v) {
  return v === null || v === undefined ? "—" : formatDuration(v);
}

function tickMs(v) {
  if (v >= 1000) return `${Number((v / 1000).toPrecision(3))} s`;
  if (v >= 1) return `${Number(v.toPrecision(3))} ms`;
  return `${Number(v.toPrecision(2))} ms`;
}

function statusChart(w) {
  const counts = STATUSES.map((st) => `${w[st]} ${st}`).join(", ");
  return horizontalBarChart({
    caption: "Runs by status",
    summary: `Runs of ${w.workflow_id} by status: ${w.runs} in all; ${counts}.`,
    rows: STATUSES.map((st) => ({ label: st, value: w[st], cls: `bar-${st}` })),
    format: (v) => String(v),
    axisTitle: "runs",
    integer: true,
  });
}

function successChart(w) {
  const rows = [{ label: "runs", value: w.success_rate === null ? null : w.success_rate * 100 }];
  for (const t of w.node_types) rows.push({ label: t.node_type, value: t.success_rate === null ? null : t.success_rate * 100 });
  const said = [`runs ${pct(w.success_rate)}`, ...w.node_types.map((t) => `${t.node_type} nodes ${pct(t.success_rate)}`)].join(", ");
  return horizontalBarChart({
    caption: "Success rate",
    summary: `Success rate of ${w.workflow_id}: ${said}.`,
    rows: rows.map((r) => ({ ...r, cls: "bar-succeeded", display: r.value === null ? "no data" : `${Number(r.value.toFixed(1))} %` })),
    max: 100,
    format: (v) => `${v} %`,
    axisTitle: "succeeded / ended",
  });
}

function durationChart(w) {
  const groups = [{ label: "whole run", values: [w.duration_p50_ms, w.duration_p95_ms, w.duration_p99_ms] }];
  for (const t of w.node_types) groups.push({ label: t.node_type, values: [t.duration_p50_ms, t.duration_p95_ms, t.duration_p99_ms] });
  const said = groups.map((g) => `${g.label}: p50 ${ms(g.values[0])}, p95 ${ms(g.values[1])}, p99 ${ms(g.values[2])}`).join("; ");
  return groupedBarChart({
    caption: "Duration percentiles (p50, p95, p99)",
    summary: `Durations of ${w.workflow_id}, runs and nodes by type; ${said}.`,
    groups,
    series: ["p50", "p95", "p99"],
    format: tickMs,
    axisTitle: "duration",
    log: true,
  });
}

function figuresTable(w) {
  const head = ["", "Runs / executions", "Succeeded", "Failed", "Other", "Success rate", "Retries", "p50", "p95", "p99"];
  const cell = (v, cls = "num") => h("td", { class: cls, text: v === null || v === undefined ? "—" : String(v) });
  return h(
    "div",
    { class: "table-scroll", role: "region", "aria-label": `Figures of ${w.workflow_id}`, tabindex: "0" },
    h(
      "table",
      { class: "data metrics-table" },
      h("caption", { text: `Figures of ${w.workflow_id}` }),
      h("thead", {}, h("tr", {}, head.map((c, i) => h("th", { scope: "col", class: i ? "num" : null, text: c })))),
      h(
        "tbody",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "row", text: "whole run" }),
          cell(w.runs),
          cell(w.succeeded),
          cell(w.failed),
          cell(`${w.queued + w.running + w.waiting} open, ${w.cancelled} cancelled`),
          cell(pct(w.success_rate)),
          cell("—"),
          cell(ms(w.duration_p50_ms)),
          cell(ms(w.duration_p95_ms)),
          cell(ms(w.duration_p99_ms)),
        ),
        w.node_types.map((t) =>
          h(
            "tr",
            {},
            h("th", { scope: "row" }, h("code", { text: t.node_type }), " nodes"),
            cell(t.executions),
            cell(t.succeeded),
            cell(t.failed),
            cell(`${t.in_progress} in progress, ${t.skipped} skipped`),
            cell(pct(t.success_rate)),
            cell(t.retries),
            cell(ms(t.duration_p50_ms)),
            cell(ms(t.duration_p95_ms)),
            cell(ms(t.duration_p99_ms)),
          ),
        ),
      ),
    ),
  );
}

function workflowSection(w) {
  const headingId = `wf-${w.workflow_id.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  return h(
    "section",
    { class: "panel metrics-workflow", "aria-labelledby": headingId, "data-workflow-id": w.workflow_id },
    h(
      "h2",
      { id: headingId },
      h("a", { href: `/workflows/${encodeURIComponent(w.workflow_id)}`, text: w.workflow_id }),
      h("span", { class: "muted", text: ` · ${w.runs} run${w.runs === 1 ? "" : "s"}` }),
    ),
    h("div", { class: "chart-grid" }, statusChart(w), successChart(w), durationChart(w)),
    figuresTable(w),
  );
}

export async function render(main, { query, ctx }) {
  ctx.setTitle("Metrics");
  const workflowId = query.get("workflow_id") || "";
  const [summary, workflows] = await Promise.all([
    ctx.api("/v1/metrics/summary", { query: { workflow_id: workflowId || undefined } }),
    ctx.api("/v1/workflows", { query: { limit: 500 } }).catch(() => ({ items: [] })),
  ]);

  const select = h("select", { id: "metrics-workflow", name: "workflow_id" }, h("option", { value: "", text: "All workflows" }));
  for (const w of workflows.items) select.append(h("option", { value: w.id, text: w.id }));
  select.value = workflowId;
  select.addEventListener("change", () => ctx.navigate(select.value ? `/stats?workflow_id=${encodeURIComponent(select.value)}` : "/stats", { keepFocus: true }));

  const lag = summary.projections || [];
  const freshness = lag.length
    ? h(
        "p",
        { class: "muted freshness" },
        "Read models: ",
        lag.map((p, i) => [i ? " · " : "", `${p.name} at ${p.position}`, p.lag_events ? ` (${p.lag_events} events, ${p.lag_seconds.toFixed(1)} s behind)` : " (up to date)"]),
      )
    : null;

  main.append(
    h("div", { class: "page-head" }, h("h1", { text: "Metrics" })),
    h(
      "form",
      { class: "filters", role: "search", "aria-label": "Filter metrics", onsubmit: (e) => e.preventDefault() },
      h("div", { class: "field" }, h("label", { for: "metrics-workflow", text: "Workflow" }), select),
    ),
    freshness,
  );

  let shown = summary.workflows;
  if (!workflowId) {
    shown = [...shown].sort((a, b) => b.runs - a.runs || a.workflow_id.localeCompare(b.workflow_id));
    const withRuns = shown.filter((w) => w.runs > 0);
    if (withRuns.length) shown = withRuns;
    if (shown.length > MAX_UNFILTERED) {
      main.append(h("p", { class: "notice", role: "note", text: `The ${MAX_UNFILTERED} busiest of ${summary.workflows.length} workflows; choose a workflow to see another.` }));
      shown = shown.slice(0, MAX_UNFILTERED);
    }
  }
  if (!shown.length) {
    main.append(h("p", { class: "empty panel", text: "No workflows yet: nothing to measure." }));
    return undefined;
  }
  for (const w of shown) main.append(workflowSection(w));
  return undefined;
}
