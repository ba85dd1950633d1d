"""The authorization matrix, generated from the running app's OpenAPI document.

Every operation (method + path) of ``GET /schema/openapi.json`` is called with its path
parameters filled with real objects of tenant A (a workflow, its node, two finished runs, a
schedule):

- without a credential (and with a wrong one): 401, a problem document with a challenge;
- as tenant B with every scope: a route naming an object answers 404 exactly as it does for an
  object that does not exist, and a collection route answers without any of A's objects;
- as tenant A without the route's scope: 403; with only that scope: neither 401 nor 403.

A route added later is covered without editing this test: one that forgets authentication, is
missing from the scope table, or lets another tenant reach A's objects fails here. The public
routes are listed below; the WebSocket (not in OpenAPI) is checked in
``tests/integration/followers/test_push_tenants.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.api import console
from service.api.app import create_app
from service.api.auth import ROUTE_SCOPES
from service.config import ALL_SCOPES, Settings
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app
from tests.helpers.tenants import TenantObjects, api_keys, bearer, make_objects

PUBLIC = {("GET", "/health"), ("GET", "/ready")}
"""Operations answered without a credential (besides ``/schema*``, the OpenAPI document)."""
NOT_IN_OPENAPI = {"/v1/push", *(_p.replace(":str", "") for _p in console.PAGES), "/console/{file_path}"}
"""Routes the OpenAPI document cannot describe (the WebSocket) or that are no API (the console's
pages and static files, public: they hold no tenant data), tested elsewhere."""
SESSION = {("POST", "/v1/session"), ("GET", "/v1/session"), ("DELETE", "/v1/session")}
"""Sign-in and sign-out: public by nature (tests/integration/api/test_session.py); ``GET`` (who am
I) takes any valid credential."""
READ_SCOPES = {"workflows:read", "runs:read", "audit", "admin"}
WRITE_SCOPES = {"workflows:write", "runs:write", "audit", "admin"}
SSE_WINDOW_S = 0.5
"""How long an event stream that does not end by itself is read (it catches up from the start of
the log at once: the test's database holds only this module's events)."""
MISSING = {
    "workflow_id": "wf-nobody-has-this",
    "node_id": "echo-nobody-has-this",
    "run_id": "00000000-0000-4000-8000-000000000001",
    "other_run_id": "00000000-0000-4000-8000-000000000002",
    "schedule_id": "00000000-0000-4000-8000-000000000003",
    "name": "approve",  # a signal name names no object: the same for every tenant
}
"""Path values naming nothing: another tenant's object must answer exactly as these do."""
RUN_PARAMS = ("run_id", "other_run_id")


@dataclass
class Answer:
    status: int
    headers: httpx.Headers
    text: str

    @property
    def is_problem(self) -> bool:
        return str(self.headers.get("content-type", "")).startswith("application/problem+json")

    def describe(self) -> str:
        return f"{self.status} {self.text[:300]!r}"


@dataclass
class World:
    client: httpx.AsyncClient
    """A client of the served app that sends no credential unless told to."""
    a: TenantObjects
    b: TenantObjects
    a_tokens: dict[str, str]
    """``none``, ``only:<scope>`` and ``but:<scope>`` keys of tenant A."""
    handlers: dict[tuple[str, str], str]
    """(method, OpenAPI path) -> the name of the handler serving it."""


def _openapi_path(route_path: str) -> str:
    return re.sub(r"\{(\w+):\w+\}", r"{\1}", route_path)


def _route_table() -> tuple[dict[tuple[str, str], str], set[str]]:
    """The app's HTTP operations (method, path) -> handler name, and every route path.
    The app is only built here, not started."""
    app = create_app(Settings())
    handlers: dict[tuple[str, str], str] = {}
    paths: set[str] = set()
    for route in app.routes:
        path = _openapi_path(route.path)
        if path == "/schema" or path.startswith("/schema/"):
            continue
        paths.add(path)
        for handler in getattr(route, "route_handlers", []):
            for method in getattr(handler, "http_methods", ()):
                if method != "OPTIONS":
                    handlers[(method, path)] = handler.handler_name
    return handlers, paths


@pytest.fixture(scope="module")
async def world(servers: Servers) -> AsyncIterator[World]:
    async with serve_app(servers, own_database=True) as admin:
        database_url: str = admin.database_url  # type: ignore[attr-defined]
        every = {"all": ALL_SCOPES}
        a_tokens = await api_keys(
            database_url,
            "acme",
            {
                **every,
                "none": [],
                **{f"only:{s}": [s] for s in ALL_SCOPES},
                **{f"but:{s}": [x for x in ALL_SCOPES if x != s] for s in ALL_SCOPES},
            },
        )
        b_token = (await api_keys(database_url, "globex", every))["all"]
        async with httpx.AsyncClient(base_url=admin.base_url, timeout=10) as client:
            a = await make_objects(client, "acme", a_tokens["all"], "acme")
            b = await make_objects(client, "globex", b_token, "globex")
            handlers, _paths = _route_table()
            yield World(client, a, b, a_tokens, handlers)


async def _call(
    world: World, method: str, url: str, token: str | None, *, raw_header: str | None = None
) -> Answer:
    headers = bearer(token) if token is not None else {}
    if raw_header is not None:
        headers = {"Authorization": raw_header}
    body: Any = {} if method in ("POST", "PUT", "PATCH") else None
    async with world.client.stream(method, url, headers=headers, json=body) as response:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            chunks: list[str] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SSE_WINDOW_S):
                    async for chunk in response.aiter_text():
                        chunks.append(chunk)
            text = "".join(chunks)
        else:
            text = (await response.aread()).decode(errors="replace")
        return Answer(response.status_code, response.headers, text)


def _fill(template: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(name)
        return values[name]

    return re.sub(r"\{(\w+)\}", value, template)


def _normalized(answer: Answer, values: dict[str, str]) -> tuple[int, str]:
    """The answer with the path values replaced by their parameter names: what it would say about
    any object, whoever owns it."""
    text = answer.text
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(value, f"<{name}>")
    return answer.status, text


def _leaks(answer: Answer, owner: TenantObjects, url: str) -> list[str]:
    """The owner's identifiers and inputs in ``answer``, except those the caller put in the URL."""
    return [m for m in owner.markers if m in answer.text and m not in url]


async def _check_operation(world: World, method: str, template: str, query_names: list[str]) -> list[str]:
    """Every way ``method template`` breaks the matrix (empty: none). ``query_names``: its query
    parameters; those named like an object (``workflow_id``, ``run_id``) are tried with A's too."""
    op = f"{method} {template}"
    a, b = world.a, world.b
    params = re.findall(r"\{(\w+)\}", template)
    try:
        url = _fill(template, a.path_values)
    except KeyError as exc:
        return [f"{op}: the matrix does not know path parameter {exc}; teach it (tenants.TenantObjects)"]
    failures: list[str] = []

    def expect(ok: bool, what: str, answer: Answer) -> None:
        if not ok:
            failures.append(f"{op}: {what}; got {answer.describe()}")

    if (method, template) in SESSION:
        return failures
    if (method, template) in PUBLIC:
        anonymous = await _call(world, method, url, None)
        expect(anonymous.status == 200, "a public route answers without a credential", anonymous)
        return failures

    # (a) no credential, or a wrong one: 401 problem with a Bearer challenge
    for label, header in [
        ("no credential", None),
        ("an API key with a wrong secret", f"Bearer {a.token[:-4]}AAAA"),
        ("a made-up token", "Bearer not-a-token"),
        ("another scheme", f"Basic {a.token}"),
    ]:
        answer = await _call(world, method, url, None, raw_header=header)
        expect(
            answer.status == 401
            and answer.is_problem
            and answer.headers.get("www-authenticate", "").startswith("Bearer"),
            f"{label} must be a 401 problem with a Bearer challenge",
            answer,
        )
        expect(not _leaks(answer, a, url), f"{label}: the answer shows A's {_leaks(answer, a, url)}", answer)

    # (b) tenant B with every scope
    as_b = await _call(world, method, url, b.token)
    leaked = _leaks(as_b, a, url)
    expect(not leaked, f"tenant B's answer shows A's {leaked}", as_b)
    if params:
        expect(as_b.status == 404 and as_b.is_problem, "A's object must be a 404 problem for tenant B", as_b)
        missing = await _call(world, method, _fill(template, MISSING), b.token)
        expect(
            _normalized(as_b, a.path_values) == _normalized(missing, MISSING),
            f"A's object must answer tenant B exactly as a missing one ({missing.describe()})",
            as_b,
        )
        # A route naming two runs: one of B's own does not open the other.
        runs = [p for p in params if p in RUN_PARAMS]
        if len(runs) > 1:
            for own in runs:
                mixed = {**a.path_values, own: b.path_values[own]}
                mixed_url = _fill(template, mixed)
                answer = await _call(world, method, mixed_url, b.token)
                expect(
                    answer.status == 404 and not _leaks(answer, a, mixed_url),
                    f"with B's own {own}, A's other run must still be a 404",
                    answer,
                )
    elif method == "GET":
        expect(as_b.status == 200, "a collection route answers tenant B (with none of A's objects)", as_b)
    else:
        expect(as_b.status not in (401, 403), "tenant B has every scope", as_b)

    # ... and with A's objects in the query (a filter): as if they did not exist.
    for name in query_names:
        if name not in a.path_values:
            continue
        filtered_url = f"{url}?{name}={a.path_values[name]}"
        answer = await _call(world, method, filtered_url, b.token)
        missing = await _call(world, method, f"{url}?{name}={MISSING[name]}", b.token)
        # The path still names A's objects in both (e.g. ?node_id= on a run's logs): the missing
        # answer may quote those, and only the filter's value differs.
        in_path = {p: a.path_values[p] for p in params}
        expect(
            not _leaks(answer, a, filtered_url)
            and _normalized(answer, a.path_values) == _normalized(missing, {**MISSING, **in_path}),
            f"?{name}= of A's object must answer tenant B as a missing one ({missing.describe()})",
            answer,
        )

    # (c) scopes of tenant A's own credential
    handler = world.handlers.get((method, template))
    scope = ROUTE_SCOPES.get(handler or "")
    if handler is None:
        failures.append(f"{op}: in the OpenAPI document but not in the app's route table")
        return failures
    if scope is None:
        failures.append(f"{op}: handler {handler!r} declares no scope in auth.ROUTE_SCOPES (closed)")
        return failures
    fitting = READ_SCOPES if method in ("GET", "HEAD") else WRITE_SCOPES
    if scope not in fitting:
        failures.append(f"{op}: scope {scope!r} does not fit a {method}; expected one of {sorted(fitting)}")
    for label, token in [
        ("no scope", world.a_tokens["none"]),
        (f"every scope but {scope!r}", world.a_tokens[f"but:{scope}"]),
    ]:
        answer = await _call(world, method, url, token)
        expect(
            answer.status == 403 and answer.is_problem and scope in answer.text,
            f"tenant A with {label} must be a 403 problem naming {scope!r}",
            answer,
        )
    only = await _call(world, method, url, world.a_tokens[f"only:{scope}"])
    expect(only.status not in (401, 403), f"tenant A with only {scope!r} may call it", only)
    if method == "DELETE" and params:  # the call above deleted A's object: it reached it
        expect(only.status < 300, "tenant A with only that scope deletes its own object", only)
        return failures
    own = await _call(world, method, url, a.token)
    expect(
        own.status < 500 and own.status not in (401, 403, 404),
        "tenant A with every scope reaches its own objects",
        own,
    )
    return failures


async def test_every_openapi_operation_follows_the_matrix(world: World) -> None:
    document = (await world.client.get("/schema/openapi.json")).json()
    operations = [
        (method.upper(), path, [p["name"] for p in op.get("parameters", []) if p["in"] == "query"])
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in ("get", "post", "put", "patch", "delete", "head")
    ]
    assert len(operations) >= 19, operations  # the document is the whole API, not an empty one
    operations.sort(key=lambda op: op[0] == "DELETE")  # deleting A's objects last: the rest need them
    failures: list[str] = []
    for method, path, query_names in operations:
        failures += await _check_operation(world, method, path, query_names)
    assert not failures, "\n".join(failures)

    # Every route of the app is in the document (so in the loop above), or checked elsewhere.
    _handlers, paths = _route_table()
    undocumented = paths - set(document["paths"]) - NOT_IN_OPENAPI
    assert not undocumented, f"routes missing from OpenAPI, so from this matrix: {sorted(undocumented)}"


async def test_the_markers_would_be_seen_where_they_belong(world: World) -> None:
    """Tenant A's own collections show its objects: the absence checked for tenant B means something."""
    a = world.a
    for path in ("/v1/workflows", "/v1/runs", "/v1/metrics/summary", f"/v1/runs/{a.run_id}/events"):
        answer = await _call(world, "GET", path, a.token)
        assert answer.status == 200 and a.workflow_id in answer.text, (path, answer.describe())
    events = await _call(world, "GET", f"/v1/runs/{a.run_id}/events", a.token)
    assert a.secret_input in events.text
    stream = await _call(world, "GET", "/v1/stream", a.token)
    assert a.run_id in stream.text and a.secret_input in stream.text
    assert world.b.run_id not in stream.text


async def test_the_schema_and_probes_are_public(world: World) -> None:
    for path in ("/health", "/ready", "/schema/openapi.json", "/schema/openapi.yaml", "/schema"):
        assert (await world.client.get(path)).status_code == 200, path
