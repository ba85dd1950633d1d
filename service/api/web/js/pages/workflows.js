// The workflows list (/workflows?cursor=): the current version of every workflow, by id.

import { formatTime, h } from "../dom.js";

const PAGE_SIZE = 50;

export async function render(main, { query, ctx }) {
  ctx.setTitle("Workflows");
  const cursor = query.get("cursor") || "";
  const newer = (query.get("newer") || "").split(",").filter(Boolean);
  const page = await ctx.api("/v1/workflows", { query: { limit: PAGE_SIZE, cursor: cursor || undefined } });

  main.append(
    h(
      "div",
      { class: "page-head" },
      h("h1", { text: "Workflows" }),
      h("p", { class: "muted" }, "Register one with ", h("code", { text: "flowledger workflows add <file.yaml>" }), "."),
    ),
  );
  if (!page.items.length && !cursor) {
    main.append(h("p", { class: "empty panel", text: "No workflows are registered yet." }));
    return undefined;
  }
  const tbody = h(
    "tbody",
    {},
    page.items.map((w) =>
      h(
        "tr",
        { "data-workflow-id": w.id },
        h("td", {}, h("a", { href: `/workflows/${encodeURIComponent(w.id)}`, text: w.id })),
        h("td", { class: "wrap" }, w.name || h("span", { class: "muted", text: "—" })),
        h("td", {}, h("code", { text: w.version })),
        h("td", { class: "num", text: String(w.node_count) }),
        h("td", { title: w.created_at }, formatTime(w.created_at)),
      ),
    ),
  );
  main.append(
    h(
      "div",
      { class: "table-scroll", role: "region", "aria-label": "Workflows table", tabindex: "0" },
      h(
        "table",
        { class: "data", "aria-label": "Workflows" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Workflow", "Name", "Latest version", "Nodes", "Registered"].map((c, i) => h("th", { scope: "col", class: i === 3 ? "num" : null, text: c })),
          ),
        ),
        tbody,
      ),
    ),
  );

  const url = (c, n) => {
    const params = new URLSearchParams();
    if (c) params.set("cursor", c);
    if (n.length) params.set("newer", n.join(","));
    const qs = params.toString();
    return qs ? `/workflows?${qs}` : "/workflows";
  };
  const pager = h("nav", { class: "pager", "aria-label": "Pages of workflows" });
  if (cursor) {
    const back = newer.length ? newer[newer.length - 1] : "";
    pager.append(h("a", { class: "button", href: url(back === "-" ? "" : back, newer.slice(0, -1)), text: "← Previous" }));
  }
  if (page.next_cursor) pager.append(h("a", { class: "button", href: url(page.next_cursor, [...newer, cursor || "-"]), text: "Next →" }));
  if (pager.children.length) main.append(pager);
  return undefined;
}
