// The console's client of the public /v1 API: same-origin fetch with the session cookie,
// the CSRF token on unsafe methods, RFC 9457 problems as ApiError, SSE through EventSource.

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export const EVENT_TYPES = [
  "run_queued",
  "run_started",
  "run_recovered",
  "node_execute_before",
  "node_execute_after",
  "node_execute_after_data",
  "node_retry_scheduled",
  "node_skipped",
  "run_waiting",
  "run_resumed",
  "run_cancel_requested",
  "run_cancelled",
  "run_finished",
  "node_log",
];

let csrfToken = null;
const unauthorizedListeners = new Set();

/** An answer that is not 2xx: `status`, and `problem` (the problem document, or a made-up one). */
export class ApiError extends Error {
  constructor(status, problem) {
    const title = (problem && problem.title) || `HTTP ${status}`;
    const detail = problem && problem.detail && problem.detail !== title ? `: ${problem.detail}` : "";
    super(`${title}${detail}`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem || { status, title, detail: "" };
  }
}

/** fn(error) is called when a request made with the session gets a 401 (expired or revoked). */
export function onUnauthorized(fn) {
  unauthorizedListeners.add(fn);
  return () => unauthorizedListeners.delete(fn);
}

function withQuery(path, query) {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value === null || value === undefined || value === "") continue;
    if (Array.isArray(value)) for (const v of value) params.append(key, String(v));
    else params.append(key, String(value));
  }
  const qs = params.toString();
  if (!qs) return path;
  return `${path}${path.includes("?") ? "&" : "?"}${qs}`;
}

async function readProblem(response) {
  const text = await response.text().catch(() => "");
  if (text) {
    try {
      const doc = JSON.parse(text);
      if (doc && typeof doc === "object") {
        return { ...doc, status: response.status, title: doc.title || response.statusText || `HTTP ${response.status}`, detail: doc.detail || "" };
      }
    } catch {
      /* not JSON */
    }
  }
  return { status: response.status, title: response.statusText || `HTTP ${response.status}`, detail: text.slice(0, 500) };
}

/**
 * Call the API: `api("/v1/runs", {query: {status: "failed"}})`, `api(path, {method: "POST", body})`.
 * Returns the parsed JSON (null for 204); throws ApiError (`.status`, `.problem`).
 * `quiet401`: do not tell the onUnauthorized listeners (the session probe and sign-in use it).
 */
export async function api(path, { method = "GET", body, query, headers = {}, quiet401 = false, signal } = {}) {
  method = method.toUpperCase();
  const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "same-origin", signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  if (UNSAFE.has(method) && csrfToken) init.headers["X-CSRF-Token"] = csrfToken;
  let response;
  try {
    response = await fetch(withQuery(path, query), init);
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, { status: 0, title: "The service cannot be reached", detail: String((err && err.message) || err) });
  }
  if (!response.ok) {
    const error = new ApiError(response.status, await readProblem(response));
    if (response.status === 401 && !quiet401) for (const fn of unauthorizedListeners) fn(error);
    throw error;
  }
  if (response.status === 204) return null;
  const text = await response.text();
  if (!text) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? JSON.parse(text) : text;
}

function remember(doc) {
  csrfToken = (doc && doc.csrf_token) || null;
  return doc;
}

/** The current session (GET /v1/session), or null when not signed in. */
export async function session() {
  try {
    return remember(await api("/v1/session", { quiet401: true }));
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      csrfToken = null;
      return null;
    }
    throw err;
  }
}

/** Sign in with an API token (POST /v1/session); throws ApiError (401: a bad token). */
export async function signIn(token) {
  return remember(await api("/v1/session", { method: "POST", body: { token }, quiet401: true }));
}

/** Sign out (DELETE /v1/session); the cookie is cleared even if the session had expired. */
export async function signOut() {
  try {
    await api("/v1/session", { method: "DELETE", quiet401: true });
  } finally {
    csrfToken = null;
  }
}

/**
 * Follow an SSE route: `stream("/v1/stream?workflow_id=x", {onEvent(type, envelope, message), onOpen(), onError(event)})`.
 * Every event type of the log is listened to (or only `handlers.types`). Reconnects are
 * EventSource's own (it resends the last id as Last-Event-ID). Returns a function that closes it.
 */
export function stream(path, handlers = {}) {
  const source = new EventSource(path, { withCredentials: true });
  const types = handlers.types || EVENT_TYPES;
  const listener = (message) => {
    let data = message.data;
    try {
      data = JSON.parse(message.data);
    } catch {
      /* pass the text on */
    }
    if (handlers.onEvent) handlers.onEvent(message.type, data, message);
  };
  for (const type of types) source.addEventListener(type, listener);
  source.addEventListener("open", () => handlers.onOpen && handlers.onOpen());
  source.addEventListener("error", (event) => {
    // A server "error" message (a client too slow) carries data; a connection error does not.
    if (handlers.onError) handlers.onError(event, source);
  });
  let closed = false;
  return () => {
    if (closed) return;
    closed = true;
    source.close();
  };
}
