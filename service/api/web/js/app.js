// The console's router: history API, same-origin link clicks, popstate. Every navigation checks
// the session (GET /v1/session); without one the sign-in page is shown and, once signed in, the
// page the user was going to. Pages are ES modules under pages/: `render(main, {params, query, ctx})`
// may return a cleanup function, called before the next page renders.

import { api, ApiError, onUnauthorized, session as fetchSession, signOut } from "./api.js";
import { h } from "./dom.js";

const ROUTES = [
  { pattern: /^\/$/, page: "runs", section: "runs" },
  { pattern: /^\/runs\/?$/, page: "runs", section: "runs" },
  { pattern: /^\/runs\/([^/]+)\/?$/, page: "run", keys: ["id"], section: "runs" },
  { pattern: /^\/workflows\/?$/, page: "workflows", section: "workflows" },
  { pattern: /^\/workflows\/([^/]+)\/?$/, page: "workflow", keys: ["id"], section: "workflows" },
  { pattern: /^\/stats\/?$/, page: "metrics", section: "stats" },
  { pattern: /^\/sign-in\/?$/, page: "signin", public: true },
];

/** Paths the router leaves to the browser (assets, the API, its schema). */
const NOT_PAGES = /^\/(console|v1|schema|metrics|health|ready)(\/|$)/;

const main = document.getElementById("main");
const nav = document.getElementById("main-nav");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");

let current = { session: null, cleanup: null };
let generation = 0;
let flash = null; // a message for the next sign-in page (session expired)

function setTitle(text) {
  document.title = text ? `${text} · Flowledger` : "Flowledger";
}

function match(pathname) {
  for (const route of ROUTES) {
    const m = route.pattern.exec(pathname);
    if (m) {
      const params = {};
      (route.keys || []).forEach((key, i) => {
        try {
          params[key] = decodeURIComponent(m[i + 1]);
        } catch {
          params[key] = m[i + 1];
        }
      });
      return { route, params };
    }
  }
  return null;
}

// When the session's cookie expires, go to sign-in by then (not on the next click). The server's
// answer decides (expires_at is rounded to the second, and clocks differ): at expires_at the timer
// asks GET /v1/session, and while the session still works asks again, backing off (1 s to 60 s).
let expiryTimer = null;
function watchExpiry(session, retry = 0) {
  clearTimeout(expiryTimer);
  expiryTimer = null;
  if (!session || !session.expires_at) return;
  const due = Date.parse(session.expires_at) - Date.now() + 250;
  if (Number.isNaN(due)) return;
  const wait = due > 0 ? due : Math.min(1000 * 2 ** retry, 60_000);
  expiryTimer = setTimeout(async () => {
    expiryTimer = null;
    let doc;
    try {
      doc = await fetchSession();
    } catch {
      doc = current.session; // the service is unreachable: ask again later
    }
    if (!doc) expire();
    else if (current.session) {
      current.session = doc;
      watchExpiry(doc, due > 0 ? 0 : retry + 1);
    }
  }, Math.min(wait, 2 ** 31 - 1));
}

function showSession(session) {
  if (!session || !current.session || session.expires_at !== current.session.expires_at) watchExpiry(session);
  current.session = session;
  nav.hidden = !session;
  who.replaceChildren();
  if (session) {
    who.append("Tenant ", h("strong", { text: session.tenant }));
    who.title = `${session.actor} · scopes: ${(session.scopes || []).join(", ")}`;
    // Without a cookie (a service run with --no-auth) there is nothing to sign out of.
    signOutButton.hidden = !session.csrf_token && !session.expires_at;
  }
}

function markNav(section) {
  for (const link of nav.querySelectorAll("a[data-section]")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function runCleanup() {
  const fn = current.cleanup;
  current.cleanup = null;
  if (typeof fn === "function") {
    try {
      fn();
    } catch (err) {
      console.warn("page cleanup failed", err);
    }
  }
}

function here() {
  return `${location.pathname}${location.search}${location.hash}`;
}

/** Go to `url` (same origin). `replace`: replace the history entry; `keepFocus`: after rendering,
 * focus the element with the id that had focus (filters that re-render their page). */
export function navigate(url, { replace = false, keepFocus = false } = {}) {
  const target = new URL(url, location.href);
  const next = `${target.pathname}${target.search}${target.hash}`;
  if (replace) history.replaceState(null, "", next);
  else if (next !== here()) history.pushState(null, "", next);
  return route({ keepFocus });
}

function errorView(err, title = "Something went wrong") {
  const problem = err instanceof ApiError ? err.problem : null;
  setTitle(title);
  main.replaceChildren(
    h(
      "section",
      { class: "error-page" },
      h("h1", { text: title }),
      h(
        "div",
        { class: "alert", role: "alert" },
        h("strong", { text: problem ? problem.title : "Error" }),
        problem && problem.detail && problem.detail !== problem.title ? h("p", { text: problem.detail }) : null,
        !problem ? h("p", { text: String((err && err.message) || err) }) : null,
      ),
      h("p", {}, h("a", { href: "/runs", text: "Back to the runs" })),
    ),
  );
}

function notFoundView() {
  setTitle("Page not found");
  main.replaceChildren(
    h(
      "section",
      { class: "not-found" },
      h("h1", { text: "Page not found" }),
      h("p", {}, "There is no console page at ", h("code", { text: location.pathname }), "."),
      h("p", {}, h("a", { href: "/runs", text: "Go to the runs" })),
    ),
  );
}

function focusHeading(keepFocusId) {
  if (keepFocusId) {
    const el = document.getElementById(keepFocusId);
    if (el) {
      el.focus();
      return;
    }
  }
  const heading = main.querySelector("h1");
  const target = heading || main;
  if (heading && !heading.hasAttribute("tabindex")) heading.setAttribute("tabindex", "-1");
  target.focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

async function route({ keepFocus = false } = {}) {
  const mine = ++generation;
  const keepFocusId = keepFocus && document.activeElement ? document.activeElement.id : null;
  runCleanup();
  const found = match(location.pathname);
  const query = new URLSearchParams(location.search);

  let session = null;
  try {
    session = await fetchSession();
  } catch (err) {
    if (mine !== generation) return;
    showSession(null);
    errorView(err, "The service is not available");
    focusHeading();
    return;
  }
  if (mine !== generation) return;
  const hadSession = current.session !== null;
  showSession(session);

  if (!session && !(found && found.route.public)) {
    if (hadSession && !flash) flash = { text: "Your session has expired; sign in again.", alert: true };
    const next = here();
    const target = next === "/" ? "/sign-in" : `/sign-in?next=${encodeURIComponent(next)}`;
    history.replaceState(null, "", target);
    return route();
  }

  markNav(found ? found.route.section : null);
  if (!found) {
    notFoundView();
    focusHeading();
    return;
  }

  const ctx = {
    session,
    api,
    navigate,
    setTitle,
    flash: found.route.page === "signin" ? takeFlash() : null,
    onSignedIn: (doc) => showSession(doc),
  };
  let module;
  try {
    module = await import(`./pages/${found.route.page}.js`);
  } catch (err) {
    if (mine !== generation) return;
    console.error(err);
    errorView(new Error(`this page could not be loaded (${found.route.page}.js)`));
    focusHeading();
    return;
  }
  if (mine !== generation) return;
  main.replaceChildren();
  try {
    const cleanup = await module.render(main, { params: found.params, query, ctx });
    if (mine !== generation) {
      if (typeof cleanup === "function") cleanup();
      return;
    }
    current.cleanup = cleanup;
  } catch (err) {
    if (mine !== generation) return;
    if (err instanceof ApiError && err.status === 401) return; // onUnauthorized takes over
    if (!(err instanceof ApiError)) console.error(err);
    errorView(err);
  }
  if (mine === generation) focusHeading(keepFocusId);
}

function takeFlash() {
  const message = flash;
  flash = null;
  return message;
}

// A call that gets 401 while signed in: the session expired or its key was revoked.
let expiring = false;
onUnauthorized(() => expire());

function expire() {
  if (expiring || location.pathname === "/sign-in") return;
  expiring = true;
  flash = { text: "Your session has expired; sign in again.", alert: true };
  const next = here();
  runCleanup();
  showSession(null);
  history.replaceState(null, "", `/sign-in?next=${encodeURIComponent(next)}`);
  route().finally(() => {
    expiring = false;
  });
}

signOutButton.addEventListener("click", async () => {
  signOutButton.disabled = true;
  try {
    await signOut();
  } catch (err) {
    console.warn("sign-out failed", err);
  } finally {
    signOutButton.disabled = false;
  }
  runCleanup();
  showSession(null);
  current.session = null;
  flash = { text: "You are signed out.", alert: false };
  navigate("/sign-in");
});

document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target instanceof Element ? event.target.closest("a[href]") : null;
  if (!link || (link.target && link.target !== "_self") || link.hasAttribute("download")) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || NOT_PAGES.test(url.pathname)) return;
  if (url.pathname === location.pathname && url.search === location.search && url.hash) return; // in-page anchor
  event.preventDefault();
  navigate(url.href);
});

window.addEventListener("popstate", () => route());

route();
