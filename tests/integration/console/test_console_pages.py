"""The console's pages other than a run's, in a real Chromium against the real service: signing
in and out (a wrong token, an expired session), the runs list following runs live and keeping its
filters in the URL, the workflows list, a workflow's DAG and its start-run form, the metrics
charts, and a narrow phone-sized window. Every page is screenshotted under test-output/console/."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any

import asyncpg
import httpx
from playwright.async_api import Browser, Page, expect

from service.config import AuthSettings
from service.store.keys import KeyStore
from tests.helpers.api import wait_ended
from tests.helpers.servers import Servers
from tests.helpers.serving import api_key, serve_app
from tests.integration.console.conftest import PageErrors, shoot, sign_in, token_of

# The browser logs the 401 of a refused sign-in (a wrong token) or of an ended session's probe;
# tests that cause one expect it. "Am I signed in?" with no session at all is a quiet 204.
SESSION_401 = r"status of 401 \(Unauthorized\) \(http://[^)]*/v1/session\)"
RUN_URL = re.compile(r"/runs/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _register(api: httpx.AsyncClient, spec: dict[str, Any]) -> str:
    answer = await api.post("/v1/workflows", json=spec)
    assert answer.status_code in (200, 201), answer.text
    return str(spec["id"])


async def _start(api: httpx.AsyncClient, workflow_id: str, inputs: dict[str, Any] | None = None) -> str:
    answer = await api.post(f"/v1/workflows/{workflow_id}/runs", json={"inputs": inputs or {}})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["run_id"])


def _slow_spec(delay_ms: int = 800) -> dict[str, Any]:
    return {
        "id": _unique("console-slow"),
        "nodes": [
            {"id": "start", "type": "noop"},
            {"id": "wait", "type": "delay", "config": {"ms": delay_ms}},
            {"id": "done", "type": "transform", "config": {"expression": "{ok: `true`}"}},
        ],
        "edges": [{"from": "start", "to": "wait"}, {"from": "wait", "to": "done"}],
    }


def _branch_spec() -> dict[str, Any]:
    return {
        # Starts with a digit: sorts before the other tests' workflows on the first page of the list.
        "id": _unique("0-console-branch"),
        "name": "Console branch demo",
        "nodes": [
            {"id": "check", "type": "branch", "config": {"expression": "inputs.amount > `100`"}},
            {"id": "review", "type": "transform", "config": {"expression": "{route: 'review'}"}},
            {"id": "approve", "type": "transform", "config": {"expression": "{route: 'approve'}"}},
            {"id": "notify", "type": "transform", "config": {"expression": "nodes.review || nodes.approve"}},
        ],
        "edges": [
            {"from": "check", "to": "review", "when": "true"},
            {"from": "check", "to": "approve", "when": "false"},
            {"from": "review", "to": "notify"},
            {"from": "approve", "to": "notify"},
        ],
    }


def _row(page: Page, run_id: str) -> Any:
    return page.locator(f'tr[data-run-id="{run_id}"]')


async def test_sign_in_remembers_the_page_shows_a_wrong_token_and_signs_out(
    page: Page, api: httpx.AsyncClient, page_errors: PageErrors
) -> None:
    page_errors.allow(SESSION_401)  # the wrong token's refused POST
    await page.goto("/workflows")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    await expect(page.get_by_text(".flowledger/admin.token")).to_be_visible()

    await page.get_by_label("API token").fill("flk_nosuchkey_nosecret")
    await page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Unauthorized")
    await expect(alert).to_contain_text("unknown API key")
    await shoot(page, "sign-in-wrong-token")

    await page.get_by_label("API token").fill(token_of(api))
    await page.get_by_role("button", name="Sign in").click()
    # where the user was going, with the session shown in the header
    await expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
    assert page.url.endswith("/workflows")
    nav = page.get_by_role("navigation", name="Main")
    await expect(nav).to_contain_text("default")
    await expect(nav.get_by_role("link", name="Workflows")).to_have_attribute("aria-current", "page")
    assert await page.title() == "Workflows · Flowledger"
    # focus moved to the page's heading
    assert await page.evaluate("document.activeElement.tagName") == "H1"

    await nav.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_role("status").filter(has_text="signed out")).to_be_visible()
    await expect(nav).to_be_hidden()
    assert not [c for c in await page.context.cookies() if c["name"] == "flowledger_session" and c["value"]]
    # the cookie is gone: opening a page asks to sign in again
    await page.goto("/runs")
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await shoot(page, "sign-in")


async def test_an_expired_session_goes_back_to_sign_in(
    browser: Browser, servers: Servers, page_errors: PageErrors
) -> None:
    async with serve_app(servers, auth=AuthSettings(session_ttl_s=2)) as short:
        context = await browser.new_context(
            base_url=str(short.base_url), viewport={"width": 1280, "height": 860}
        )
        context.set_default_timeout(10_000)
        page = await context.new_page()
        page.on(
            "console", lambda m: page_errors.seen.append(f"console: {m.text}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: page_errors.seen.append(f"page error: {e.message}"))
        try:
            await sign_in(page, token_of(short), path="/workflows")
            await expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
            # staying on the page: when the session ends the console goes to sign-in by itself
            await expect(page.get_by_role("heading", name="Sign in")).to_be_visible(timeout=5000)
            await expect(page.get_by_role("alert")).to_have_text("Your session has expired; sign in again.")
            await shoot(page, "sign-in-expired")
            # signing in again returns to where the user was
            await page.get_by_label("API token").fill(token_of(short))
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
            assert page.url.endswith("/workflows")
        finally:
            await context.close()


async def test_a_revoked_key_ends_its_session(
    page: Page, api: httpx.AsyncClient, page_errors: PageErrors
) -> None:
    page_errors.allow(r"status of 401 \(Unauthorized\)")  # the page's calls once the key is revoked
    token = await api_key(api.database_url, "default", ["runs:read", "workflows:read"])  # type: ignore[attr-defined]

    async def revoke() -> None:
        pool = await asyncpg.create_pool(api.database_url, min_size=1, max_size=1)  # type: ignore[attr-defined]
        try:
            assert await KeyStore(pool).revoke(token.split("_")[1]) is not None
        finally:
            await pool.close()

    # on a page without a stream: the next click finds the session gone
    await sign_in(page, token, path="/workflows")
    await expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
    await revoke()
    await asyncio.sleep(0.3)  # the service hears of the revocation (NOTIFY)
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Metrics").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await expect(page.get_by_role("alert")).to_have_text("Your session has expired; sign in again.")
    assert "next=%2Fstats" in page.url


async def test_the_runs_list_shows_a_run_started_elsewhere_live(
    signed_in: Page, api: httpx.AsyncClient
) -> None:
    page = signed_in
    workflow = await _register(api, _slow_spec())
    await expect(page.get_by_role("status").filter(has_text="live")).to_be_visible()
    await page.evaluate("window.__sameDocument = true")

    summaries: list[str] = []
    page.on(
        "request", lambda r: summaries.append(r.url) if re.search(r"/v1/runs/[0-9a-f-]{36}$", r.url) else None
    )
    run_id = await _start(api, workflow)
    row = _row(page, run_id)
    await expect(row).to_be_visible(timeout=5000)
    assert await row.locator("td").nth(0).inner_text() == run_id.replace("-", "")[-8:]
    await expect(row.get_by_role("link", name=workflow)).to_be_visible()
    await expect(row.locator("[data-status]")).to_have_attribute(
        "data-status", "waiting", timeout=5000
    )  # the delay
    await expect(row.locator("[data-status]")).to_have_attribute("data-status", "succeeded", timeout=10_000)
    await expect(row.locator("progress")).to_have_attribute("value", "100")
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    # a burst of events is one fetch of the summary (per 200 ms), not one per event
    events = await wait_ended(api, run_id)
    fetched = [u for u in summaries if u.endswith(run_id)]
    assert 1 <= len(fetched) < len(events) - 2, (len(fetched), len(events))
    # newest first: the new run is the first row
    assert await page.locator("tbody tr").first.get_attribute("data-run-id") == run_id
    await shoot(page, "runs")

    # the run link opens the run's page
    await row.get_by_role("link", name=run_id.replace("-", "")[-8:]).click()
    await expect(page).to_have_url(re.compile(f"/runs/{run_id}$"))


async def test_runs_filters_live_in_the_url_and_survive_a_reload(
    signed_in: Page, api: httpx.AsyncClient
) -> None:
    page = signed_in
    mine = await _register(api, _branch_spec())
    other = await _register(api, _branch_spec())
    runs = [await _start(api, mine, {"amount": 5}), await _start(api, other, {"amount": 500})]
    for run_id in runs:
        await wait_ended(api, run_id)
    await page.reload()
    await page.get_by_label("Workflow").select_option(mine)
    await expect(page).to_have_url(re.compile(f"workflow_id={mine}"))
    await page.get_by_label("Status").select_option("succeeded")
    await expect(page).to_have_url(re.compile(f"workflow_id={mine}&status=succeeded"))
    await expect(_row(page, runs[0])).to_be_visible()
    await expect(_row(page, runs[1])).to_have_count(0)

    await page.reload()
    await expect(page.get_by_label("Workflow")).to_have_value(mine)
    await expect(page.get_by_label("Status")).to_have_value("succeeded")
    await expect(_row(page, runs[0])).to_be_visible()
    await expect(page.locator("tbody tr")).to_have_count(1)

    # the filters are shareable: the same URL in a fresh tab shows the same list
    shared = await page.context.new_page()
    await shared.goto(page.url)
    await expect(_row(shared, runs[0])).to_be_visible()
    await expect(shared.get_by_label("Status")).to_have_value("succeeded")
    await shared.close()

    await page.get_by_label("Status").select_option("failed")
    await expect(page.get_by_text("No runs match these filters.")).to_be_visible()
    await page.go_back()
    await expect(page.get_by_label("Status")).to_have_value("succeeded")
    await expect(_row(page, runs[0])).to_be_visible()


async def test_workflows_list_workflow_dag_and_start_a_run(
    signed_in: Page, api: httpx.AsyncClient, page_errors: PageErrors
) -> None:
    page = signed_in
    workflow = await _register(api, _branch_spec())
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Workflows").click()
    await expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
    table = page.get_by_role("table", name="Workflows")
    listed = table.locator(f'tr[data-workflow-id="{workflow}"]')
    await expect(listed).to_contain_text("Console branch demo")
    await expect(listed.locator("td").nth(3)).to_have_text("4")
    await shoot(page, "workflows")

    await listed.get_by_role("link", name=workflow).click()
    await expect(page.get_by_role("heading", name=f"Workflow {workflow}")).to_be_visible()
    assert page.url.endswith(f"/workflows/{workflow}")
    nodes = page.locator(".dag [data-node-id]")
    await expect(nodes).to_have_count(4)
    assert sorted(await nodes.evaluate_all("els => els.map(e => e.getAttribute('data-node-id'))")) == [
        "approve",
        "check",
        "notify",
        "review",
    ]
    await expect(page.locator(".dag [data-node-id][data-status='pending']")).to_have_count(4)
    # selecting a node shows its definition
    await page.get_by_role("button", name=re.compile(r"^node check \(branch\)")).click()
    await expect(page.get_by_role("heading", name="Node check")).to_be_visible()
    await expect(page.locator(".node-details")).to_contain_text("inputs.amount")
    # the spec, collapsed
    await page.get_by_text("Spec (JSON)").click()
    await expect(page.locator(".spec-details pre")).to_contain_text('"on_failure": "stop"')
    # its schedules: none yet, then the one the API added
    await expect(page.get_by_role("heading", name="Schedules (0)")).to_be_visible()
    added = await api.post(
        f"/v1/workflows/{workflow}/schedules", json={"every": "1h", "inputs": {"amount": 5}}
    )
    assert added.status_code == 201, added.text
    await page.reload()
    await expect(page.get_by_role("heading", name="Schedules (1)")).to_be_visible()
    await expect(page.get_by_role("list", name="Schedules")).to_contain_text("every 1h (UTC)")
    assert (await api.delete(f"/v1/schedules/{added.json()['id']}")).status_code == 204
    await shoot(page, "workflow")

    # invalid JSON: an error, and no call
    inputs = page.get_by_label("Inputs (JSON)")
    await inputs.fill("{amount: 5")
    await page.get_by_role("button", name="Start run").click()
    await expect(page.get_by_role("alert")).to_contain_text("not valid JSON")
    assert (await api.get("/v1/runs", params={"workflow_id": workflow})).json()["items"] == []
    await inputs.fill("[1, 2]")
    await page.get_by_role("button", name="Start run").click()
    await expect(page.get_by_role("alert")).to_contain_text("must be a JSON object")

    # an API 4xx shows the problem: an idempotency key already used for other inputs
    first = await api.post(
        f"/v1/workflows/{workflow}/runs", json={"inputs": {"amount": 1}, "idempotency_key": "console-k1"}
    )
    assert first.status_code == 202
    page_errors.allow(r"status of 409 \(Conflict\) \(http://[^)]*/runs\)")
    await inputs.fill('{"amount": 2}')
    await page.get_by_label("Idempotency key (optional)").fill("console-k1")
    await page.get_by_role("button", name="Start run").click()
    await expect(page.get_by_role("alert")).to_contain_text("Idempotency key reused")
    await expect(page.get_by_role("alert")).to_contain_text("console-k1")

    # a good start lands on the run's page; it carried the session's CSRF token
    await inputs.fill('{"amount": 250}')
    await page.get_by_label("Idempotency key (optional)").fill("")
    async with page.expect_request(lambda r: r.method == "POST" and r.url.endswith("/runs")) as sent:
        await page.get_by_role("button", name="Start run").click()
    csrf = (await (await page.context.request.get("/v1/session")).json())["csrf_token"]
    assert (await sent.value).headers.get("x-csrf-token") == csrf
    await expect(page).to_have_url(RUN_URL)
    run_id = page.url.rsplit("/", 1)[1]
    run = (await api.get(f"/v1/runs/{run_id}")).json()
    assert run["workflow_id"] == workflow
    events = await wait_ended(api, run_id)
    assert events[0]["data"]["inputs"] == {"amount": 250}


async def test_metrics_page_draws_its_charts(signed_in: Page, api: httpx.AsyncClient) -> None:
    page = signed_in
    workflow = await _register(api, _branch_spec())
    for amount in (5, 500, 7):
        await wait_ended(api, await _start(api, workflow, {"amount": amount}))
    await page.goto(f"/stats?workflow_id={workflow}")
    await expect(page.get_by_role("heading", name="Metrics")).to_be_visible()
    await expect(page.get_by_label("Workflow")).to_have_value(workflow)
    section = page.locator(f'section[data-workflow-id="{workflow}"]')
    charts = section.get_by_role("img")
    await expect(charts).to_have_count(3)
    labels = await charts.evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
    assert labels[0].startswith(f"Runs of {workflow} by status: 3 in all;"), labels[0]
    assert "3 succeeded" in labels[0]
    assert "runs 100 %" in labels[1], labels[1]
    assert "p50" in labels[2] and "whole run" in labels[2]
    # drawn: bars (succeeded), axes with tick labels, the three percentile series
    assert await section.locator("svg.hbar-chart rect.bar-succeeded").count() >= 1
    assert await section.locator("svg .tick-label").count() >= 6
    for series in range(3):
        assert await section.locator(f"svg.grouped-chart rect.series-{series}").count() >= 2
    # the exact figures beside the charts
    table = section.get_by_role("table", name=f"Figures of {workflow}")
    await expect(table.get_by_role("row", name=re.compile(r"^whole run 3 3 0"))).to_be_visible()
    await expect(table.get_by_role("row", name=re.compile(r"^branch nodes 3 3 0"))).to_be_visible()
    await shoot(page, "metrics")

    # all workflows
    await page.get_by_label("Workflow").select_option("")
    await expect(page).to_have_url(re.compile(r"/stats$"))
    await expect(page.locator("section.metrics-workflow").first).to_be_visible()


async def test_a_narrow_window_keeps_the_runs_list_usable(page: Page, api: httpx.AsyncClient) -> None:
    await page.set_viewport_size({"width": 390, "height": 844})
    workflow = await _register(api, _slow_spec(100))
    run_id = await _start(api, workflow)
    await wait_ended(api, run_id)
    await sign_in(page, token_of(api), path="/runs")
    nav = page.get_by_role("navigation", name="Main")
    for name in ("Runs", "Workflows", "Metrics"):
        link = nav.get_by_role("link", name=name)
        await expect(link).to_be_visible()
        box = await link.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (name, box)
    sign_out = nav.get_by_role("button", name="Sign out")
    box = await sign_out.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 390
    # the page itself does not scroll sideways; the table does, inside its region
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    row = _row(page, run_id)
    await expect(row).to_be_visible()
    await expect(page.get_by_label("Status")).to_be_visible()
    await shoot(page, "runs-narrow")
    await row.get_by_role("link", name=run_id.replace("-", "")[-8:]).click()
    await expect(page).to_have_url(re.compile(f"/runs/{run_id}$"))

    # the other pages fit too: nothing but their own scrolling regions is wider than the window
    for path, heading, name in [
        (f"/workflows/{workflow}", f"Workflow {workflow}", "workflow-narrow"),
        (f"/stats?workflow_id={workflow}", "Metrics", "metrics-narrow"),
        ("/workflows", "Workflows", "workflows-narrow"),
    ]:
        await page.goto(path)
        await expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
        await expect(page.locator("main > *").last).to_be_visible()
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390, path
        await shoot(page, name)


async def test_every_page_has_a_title_a_heading_and_no_errors(
    signed_in: Page, page_errors: PageErrors
) -> None:
    page = signed_in
    page_errors.allow(r"status of 404 \(Not Found\) \(http://[^)]*/v1/workflows/no-such-workflow\)")
    for path, heading in [
        ("/", "Runs"),
        ("/runs", "Runs"),
        ("/workflows", "Workflows"),
        ("/stats", "Metrics"),
        ("/workflows/no-such-workflow", "Workflow not found"),
    ]:
        await page.goto(path)
        await expect(page.get_by_role("heading", name=heading, level=1)).to_be_visible()
        assert (await page.title()).endswith("· Flowledger")
    # the skip link shows when focused, and leads to the main content
    skip = page.get_by_role("link", name="Skip to content")
    await expect(skip).not_to_be_in_viewport()
    await skip.focus()
    await expect(skip).to_be_in_viewport()
    await page.keyboard.press("Enter")
    await expect(page.locator("main#main")).to_be_focused()
    # a path the router does not know (reached inside the app): "Page not found"
    await page.evaluate(
        "history.pushState(null, '', '/runs/a/b'); dispatchEvent(new PopStateEvent('popstate'))"
    )
    await expect(page.get_by_role("heading", name="Page not found", level=1)).to_be_visible()
    await shoot(page, "not-found")


async def test_runs_pages_with_next_and_newer(signed_in: Page, api: httpx.AsyncClient) -> None:
    page = signed_in
    workflow = await _register(api, _branch_spec())
    runs = [await _start(api, workflow, {"amount": n}) for n in range(5)]
    for run_id in runs:
        await wait_ended(api, run_id)
    newest_first = runs[::-1]
    rows = page.locator("tbody tr")

    async def shown() -> list[str]:
        await expect(rows.first).to_be_visible()
        return [str(await r.get_attribute("data-run-id")) for r in await rows.all()]

    await page.goto(f"/runs?workflow_id={workflow}&limit=2")
    assert await shown() == newest_first[:2]
    pages = page.get_by_role("navigation", name="Pages of runs")
    await pages.get_by_role("link", name="Next").click()
    await expect(rows.first).to_have_attribute("data-run-id", newest_first[2])
    assert await shown() == newest_first[2:4]
    await pages.get_by_role("link", name="Next").click()
    await expect(rows.first).to_have_attribute("data-run-id", newest_first[4])
    assert await shown() == newest_first[4:]
    await expect(pages.get_by_role("link", name="Next")).to_have_count(0)
    await pages.get_by_role("link", name="Newer").click()
    await expect(rows.first).to_have_attribute("data-run-id", newest_first[2])
    await pages.get_by_role("link", name="Newer").click()
    await expect(rows.first).to_have_attribute("data-run-id", newest_first[0])
    await expect(pages.get_by_role("link", name="Newer")).to_have_count(0)
    assert "limit=2" in page.url and "cursor" not in page.url


async def test_a_workflow_page_shows_each_version(signed_in: Page, api: httpx.AsyncClient) -> None:
    page = signed_in
    spec = _branch_spec()
    workflow = await _register(api, spec)
    first = (await api.get(f"/v1/workflows/{workflow}")).json()["version"]
    spec["nodes"].append({"id": "audit", "type": "noop"})
    spec["edges"].append({"from": "notify", "to": "audit"})
    await _register(api, spec)
    await page.goto(f"/workflows/{workflow}")
    await expect(page.locator(".dag [data-node-id]")).to_have_count(5)
    versions = page.get_by_role("list", name="Versions, newest first")
    await expect(versions.get_by_role("listitem")).to_have_count(2)
    await versions.get_by_role("link", name=first).click()
    await expect(page).to_have_url(re.compile(f"version={first}$"))
    await expect(page.locator(".dag [data-node-id]")).to_have_count(4)
    await expect(versions.get_by_role("link", name=first)).to_have_attribute("aria-current", "true")
    await expect(page.get_by_text("(not the current version)")).to_be_visible()
    # a run started here runs the version shown
    await page.get_by_role("button", name="Start run").click()
    await expect(page).to_have_url(RUN_URL)
    run = (await api.get(f"/v1/runs/{page.url.rsplit('/', 1)[1]}")).json()
    assert run["workflow_version"] == first


async def test_without_auth_there_is_nothing_to_sign_in_to(
    browser: Browser, servers: Servers, page_errors: PageErrors
) -> None:
    async with serve_app(servers, auth=AuthSettings(enabled=False)) as open_service:
        workflow = await _register(open_service, _branch_spec())
        context = await browser.new_context(base_url=str(open_service.base_url))
        context.set_default_timeout(10_000)
        page = await context.new_page()
        page.on(
            "console", lambda m: page_errors.seen.append(f"console: {m.text}") if m.type == "error" else None
        )
        page.on("pageerror", lambda e: page_errors.seen.append(f"page error: {e.message}"))
        try:
            await page.goto(f"/workflows/{workflow}")
            await expect(page.get_by_role("heading", name=f"Workflow {workflow}")).to_be_visible()
            nav = page.get_by_role("navigation", name="Main")
            await expect(nav).to_contain_text("default")
            await expect(nav.get_by_role("button", name="Sign out")).to_be_hidden()
            # a change without a session cookie needs no CSRF token
            await page.get_by_role("button", name="Start run").click()
            await expect(page).to_have_url(RUN_URL)
        finally:
            await context.close()
