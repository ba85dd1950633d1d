"""The console's run page (``/runs/<id>``) in a real Chromium against the real service: the DAG
follows a live run within a second of its events, the time-travel slider shows exactly what
``/state?at_seq=N`` says, ``?seq=N`` opens there, and Cancel, Fork, Diff and Verify work from the
page; another tenant's run is "not found"."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Page, expect

from tests.helpers.api import wait_ended
from tests.helpers.serving import api_key
from tests.helpers.stored_runs import tamper_row
from tests.integration.console.conftest import PageErrors, shoot, sign_in, token_of

NOT_FOUND_LOG = r"Failed to load resource.*404"


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


def _demo_spec() -> dict[str, Any]:
    """A branch, a node that fails once and is retried, a fan-in."""
    return {
        "id": _unique("console-demo"),
        "nodes": [
            {"id": "check", "type": "branch", "config": {"expression": "inputs.amount > `100`"}},
            {
                "id": "flaky",
                "type": "fail",
                "config": {"message": "service busy", "times": 1},
                "retry": {"max_attempts": 3, "initial_backoff_ms": 150},
            },
            {"id": "review", "type": "transform", "config": {"expression": "{route: 'manual review'}"}},
            {"id": "approve", "type": "transform", "config": {"expression": "{route: 'auto-approved'}"}},
            {"id": "notify", "type": "transform", "config": {"expression": "nodes.review || nodes.approve"}},
        ],
        "edges": [
            {"from": "check", "to": "flaky"},
            {"from": "check", "to": "review", "when": "true"},
            {"from": "check", "to": "approve", "when": "false"},
            {"from": "flaky", "to": "notify"},
            {"from": "review", "to": "notify"},
            {"from": "approve", "to": "notify"},
        ],
    }


def _console_status(view: dict[str, Any]) -> str:
    """The page's name for a ``/state`` node status: ``retry_wait`` is "retrying", an attempt
    that failed because the run was cancelled or stopped (kind ``cancelled``) is "cancelled"."""
    if view["status"] == "retry_wait":
        return "retrying"
    if view["status"] == "failed" and (view.get("error") or {}).get("kind") == "cancelled":
        return "cancelled"
    return str(view["status"])


async def _dag_statuses(page: Page) -> dict[str, str]:
    statuses: dict[str, str] = await page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.dag [data-node-id]')]
              .map((el) => [el.getAttribute('data-node-id'), el.getAttribute('data-status')]))"""
    )
    return statuses


@pytest.fixture
def console(page: Page) -> Page:
    """``page``: a browser with no session yet (each test signs in through a run's own URL)."""
    return page


async def _goto(page: Page, api: httpx.AsyncClient, path: str) -> None:
    """Open ``path``; the first time through the sign-in page, as a user following a shared link."""
    if any(c["name"] for c in await page.context.cookies()):
        await page.goto(path)
    else:
        await sign_in(page, token_of(api), path=path)


async def _open_run(page: Page, api: httpx.AsyncClient, run_id: str, query: str = "") -> None:
    await _goto(page, api, f"/runs/{run_id}{query}")
    await page.get_by_role("heading", name=re.compile(r"^Run ")).first.wait_for()
    await page.locator(".dag [data-node-id]").first.wait_for()


def _epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


async def test_the_dag_follows_a_live_run_within_a_second(
    console: Page, api: httpx.AsyncClient, page_errors: PageErrors
) -> None:
    page = console
    workflow = await _register(
        api,
        {
            "id": _unique("console-live"),
            "nodes": [
                {"id": "start", "type": "noop"},
                {"id": "wait", "type": "delay", "config": {"ms": 1500}},
                {"id": "done", "type": "transform", "config": {"expression": "nodes.wait"}},
            ],
            "edges": [{"from": "start", "to": "wait"}, {"from": "wait", "to": "done"}],
        },
    )
    run_id = await _start(api, workflow)
    await _open_run(page, api, run_id)
    wait_node = page.get_by_role("button", name="node wait (delay): waiting")
    await wait_node.wait_for(timeout=5000)
    # when did the DOM say succeeded? (the browser's clock is this machine's, like the server's)
    await page.evaluate(
        """() => {
            const el = document.querySelector('.dag [data-node-id="wait"]');
            window.__succeededAt = null;
            new MutationObserver(() => {
                if (window.__succeededAt === null && el.getAttribute('data-status') === 'succeeded') {
                    window.__succeededAt = Date.now();
                }
            }).observe(el, {attributes: true, attributeFilter: ['data-status']});
        }"""
    )
    await shoot(page, "run-live")
    await expect(page.locator('.dag [data-node-id="done"]')).to_have_attribute("data-status", "succeeded")
    events = await wait_ended(api, run_id)
    after = next(e for e in events if e["type"] == "node_execute_after" and e["data"]["node_id"] == "wait")
    seen_at = await page.evaluate("window.__succeededAt")
    assert seen_at is not None
    lag_ms = seen_at - _epoch_ms(after["recorded_at"])
    assert lag_ms < 1000, f"the page showed wait succeeded {lag_ms:.0f} ms after the event"
    # the run ended: the header says so, the slider reaches the last event, the timeline has every attempt
    await expect(page.locator(".run-head .status")).to_have_text("succeeded")
    await expect(page.get_by_label("Event seq")).to_have_attribute("max", str(events[-1]["seq"]))
    await expect(page.locator(".tl-attempt")).to_have_count(3)
    await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    assert await _dag_statuses(page) == {"start": "succeeded", "wait": "succeeded", "done": "succeeded"}


async def test_a_retry_shows_live_and_its_backoff_in_the_timeline(
    console: Page, api: httpx.AsyncClient
) -> None:
    page = console
    workflow = await _register(
        api,
        {
            "id": _unique("console-retry"),
            "nodes": [
                {"id": "gate", "type": "delay", "config": {"ms": 800}},
                {
                    "id": "flaky",
                    "type": "fail",
                    "config": {"message": "service busy", "times": 1},
                    "retry": {"max_attempts": 2, "initial_backoff_ms": 1500},
                },
            ],
            "edges": [{"from": "gate", "to": "flaky"}],
        },
    )
    run_id = await _start(api, workflow)
    await _open_run(page, api, run_id)
    await page.get_by_role("button", name="node flaky (fail): retrying").wait_for(timeout=5000)
    await expect(page.locator('.tl-attempt.tl-failed[data-node-id="flaky"]')).to_have_count(1)
    await expect(page.locator('.tl-backoff[data-node-id="flaky"]')).to_have_count(1)
    await page.get_by_role("button", name="node flaky (fail): succeeded").wait_for(timeout=5000)
    await expect(page.locator('.tl-attempt[data-node-id="flaky"]')).to_have_count(2)
    await expect(page.get_by_role("button", name="flaky attempt 2: succeeded", exact=False)).to_have_count(1)


async def test_the_slider_shows_the_state_the_api_gives_for_each_seq(
    console: Page, api: httpx.AsyncClient
) -> None:
    page = console
    workflow = await _register(api, _demo_spec())
    run_id = await _start(api, workflow, {"amount": 250})
    events = await wait_ended(api, run_id)
    last = events[-1]["seq"]
    retry_seq = next(e["seq"] for e in events if e["type"] == "node_retry_scheduled")
    picks = [0, 2, retry_seq, (retry_seq + last) // 2, last - 1]

    async def assert_at(seq: int) -> None:
        await expect(page.locator(".dag")).to_have_attribute("data-view-seq", str(seq))
        state = (await api.get(f"/v1/runs/{run_id}/state", params={"at_seq": seq})).json()
        want = {node_id: _console_status(view) for node_id, view in state["nodes"].items()}
        assert await _dag_statuses(page) == want, f"at seq {seq}"
        await expect(page.locator(".seq-readout")).to_contain_text(f"seq {seq}")
        await expect(page.locator(".seq-readout")).to_contain_text(state["event_type"])

    # ?seq=N opens the page there
    await _open_run(page, api, run_id, f"?seq={retry_seq}")
    await expect(page.get_by_label("Event seq")).to_have_value(str(retry_seq))
    await assert_at(retry_seq)
    assert await page.get_by_role("button", name="node flaky (fail): retrying").count() == 1

    slider = page.get_by_label("Event seq")
    for seq in picks:
        await slider.fill(str(seq))
        await assert_at(seq)
        assert re.search(rf"[?&]seq={seq}(&|$)", page.url), page.url
    await shoot(page, "run-mid-slider")

    # the keyboard moves it one event at a time
    await slider.focus()
    await page.keyboard.press("ArrowRight")
    await assert_at(picks[-1] + 1 if picks[-1] + 1 <= last else last)
    # dragging fast: the latest position wins
    for seq in (1, 5, 3):
        await slider.fill(str(seq))
    await assert_at(3)
    # the end follows live again, and the URL drops seq
    await page.get_by_role("button", name=re.compile("Jump to the latest event")).click()
    await expect(page.locator(".dag")).to_have_attribute("data-live", "true")
    assert "seq=" not in page.url
    assert set((await _dag_statuses(page)).values()) <= {"succeeded", "skipped"}
    # edges: taken and item counts as the lineage says (the page derives them from the events)
    lineage = (await api.get(f"/v1/runs/{run_id}/lineage")).json()
    drawn = await page.evaluate(
        """() => [...document.querySelectorAll('.dag .dag-edge')].map((g) => ({
              from: g.getAttribute('data-from'), to: g.getAttribute('data-to'),
              taken: g.getAttribute('data-taken') === 'true',
              label: g.querySelector('.dag-edge-label').textContent}))"""
    )
    assert [(e["from"], e["to"], e["taken"]) for e in drawn] == [
        (e["from"], e["to"], e["taken"]) for e in lineage["edges"]
    ]
    for edge, shown in zip(lineage["edges"], drawn, strict=True):
        if edge["items"]:
            assert f"{edge['items']} item" in shown["label"]
        if edge["when"]:
            assert edge["when"] in shown["label"]


async def test_the_inspector_shows_a_node_as_it_was_and_the_url_carries_it(
    console: Page, api: httpx.AsyncClient
) -> None:
    page = console
    workflow = await _register(api, _demo_spec())
    run_id = await _start(api, workflow, {"amount": 250})
    events = await wait_ended(api, run_id)
    first_after = next(
        e["seq"] for e in events if e["type"] == "node_execute_after" and e["data"]["node_id"] == "flaky"
    )
    await _open_run(page, api, run_id, f"?seq={first_after}&node=flaky")
    inspector = page.locator("section.inspector")
    await expect(inspector.get_by_role("heading", name="Node flaky")).to_be_visible()
    await expect(inspector).to_contain_text(f"right after event {first_after}")
    await expect(inspector).to_contain_text("service busy")
    await expect(inspector.locator(".status")).to_have_text("failed")
    # select another node with the keyboard
    await page.get_by_role("button", name=re.compile(r"^node review \(transform\)")).focus()
    await page.keyboard.press("Enter")
    await expect(inspector.get_by_role("heading", name="Node review")).to_be_visible()
    assert "node=review" in page.url
    # arrow keys move between the DAG's nodes
    await page.get_by_role("button", name=re.compile(r"^node check \(branch\)")).focus()
    await page.keyboard.press("ArrowDown")
    focused = await page.evaluate("document.activeElement.getAttribute('data-node-id')")
    assert focused in {"flaky", "review", "approve"}
    await page.get_by_label("Event seq").fill(str(events[-1]["seq"]))
    await expect(inspector).to_contain_text("manual review")
    await expect(inspector).to_contain_text("As it is now")
    await shoot(page, "run-inspector")


async def test_the_inspector_shows_the_nodes_log_lines_as_of_the_viewed_event(
    console: Page, api: httpx.AsyncClient
) -> None:
    page = console
    workflow = await _register(
        api,
        {
            "id": _unique("console-logs"),
            "nodes": [
                {"id": "chat", "type": "python", "config": {"callable": "tests.helpers.log_nodes:chatty"}},
                {"id": "after", "type": "noop"},
            ],
            "edges": [{"from": "chat", "to": "after"}],
        },
    )
    run_id = await _start(api, workflow, {"token": "<b>not markup</b>"})
    events = await wait_ended(api, run_id)
    log_seq = next(e["seq"] for e in events if e["type"] == "node_log")
    await _open_run(page, api, run_id, "?node=chat")
    inspector = page.locator("section.inspector")
    lines = inspector.get_by_label("Log lines of chat")
    await expect(inspector.get_by_role("heading", name="Logs (7 lines)")).to_be_visible()
    await expect(lines.locator("li")).to_have_count(7)
    await expect(lines.locator("li").first).to_contain_text("INFO printed to stdout")
    await expect(lines.locator("li.log-warning").first).to_contain_text("printed to stderr")
    await expect(lines.locator("li", has_text="logged at info")).to_contain_text('logger="tests.log_nodes"')
    await expect(lines.locator("li", has_text="token is")).to_contain_text("token is <b>not markup</b>")
    await expect(lines.locator("b")).to_have_count(0)  # text, never HTML
    # time travel: just before the node_log event the node had logged nothing yet
    await page.get_by_label("Event seq").fill(str(log_seq - 1))
    await expect(inspector).to_contain_text("No log lines by this event.")
    await page.get_by_label("Event seq").fill(str(log_seq))
    await expect(inspector.get_by_role("heading", name="Logs (7 lines by this event)")).to_be_visible()


async def test_a_large_output_is_collapsed_with_its_size(console: Page, api: httpx.AsyncClient) -> None:
    page = console
    workflow = await _register(
        api,
        {
            "id": _unique("console-big"),
            "nodes": [{"id": "big", "type": "transform", "config": {"expression": "inputs.blob"}}],
            "edges": [],
        },
    )
    run_id = await _start(api, workflow, {"blob": ["x" * 60] * 80})
    await wait_ended(api, run_id)
    output_bytes = (await api.get(f"/v1/runs/{run_id}/state")).json()["nodes"]["big"]["output_bytes"]
    assert output_bytes > 2048
    await _open_run(page, api, run_id)
    node = page.get_by_role("button", name="node big (transform): succeeded")
    await node.focus()
    await page.keyboard.press(" ")
    inspector = page.locator("section.inspector")
    summary = inspector.locator("details.json-details summary", has_text="Output")
    await expect(summary).to_have_text(re.compile(r"^Output \(\d+\.\d KB\)$"))
    output = inspector.get_by_label("Output", exact=True)
    await expect(output).to_be_hidden()
    await summary.click()
    await expect(output).to_be_visible()
    await expect(output).to_contain_text("x" * 60)


async def test_cancel_from_the_page_ends_the_run(console: Page, api: httpx.AsyncClient) -> None:
    page = console
    workflow = await _register(
        api,
        {
            "id": _unique("console-cancel"),
            "nodes": [
                {"id": "long", "type": "delay", "config": {"ms": 60000}},
                {"id": "after", "type": "noop"},
            ],
            "edges": [{"from": "long", "to": "after"}],
        },
    )
    run_id = await _start(api, workflow)
    await _open_run(page, api, run_id)
    await page.get_by_role("button", name="node long (delay): waiting").wait_for()
    page.once("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    await page.get_by_role("button", name="Cancel run").click()
    await expect(page.locator(".run-head .status")).to_have_text("cancelled", timeout=5000)
    await expect(page.locator('.dag [data-node-id="long"]')).to_have_attribute("data-status", "cancelled")
    await expect(page.get_by_role("button", name="Cancel run")).to_be_hidden()
    events = await wait_ended(api, run_id, timeout=5)
    assert events[-1]["type"] == "run_cancelled"
    assert any(e["type"] == "run_cancel_requested" for e in events)


async def test_a_waiting_node_takes_a_signal_from_the_page(console: Page, api: httpx.AsyncClient) -> None:
    page = console
    workflow = await _register(
        api,
        {
            "id": _unique("console-signal"),
            "nodes": [
                {"id": "ask", "type": "wait", "config": {"signal": "approve"}},
                {"id": "book", "type": "transform", "config": {"expression": "nodes.ask.by"}},
            ],
            "edges": [{"from": "ask", "to": "book"}],
        },
    )
    run_id = await _start(api, workflow)
    await _open_run(page, api, run_id, "?node=ask")
    await expect(page.locator(".run-head .status")).to_have_text("waiting", timeout=5000)
    inspector = page.locator("section.inspector")
    await expect(inspector).to_contain_text("Waiting for")
    await expect(inspector.locator("code", has_text="approve").first).to_be_visible()
    payload = inspector.get_by_label("Payload for approve (JSON, optional)")
    await payload.fill("{not json")
    await inspector.get_by_role("button", name="Send signal approve").click()
    await expect(inspector.locator(".signal-form .form-message")).to_contain_text("not valid JSON")
    await payload.fill('{"by": "the console"}')
    await inspector.get_by_role("button", name="Send signal approve").click()
    await expect(page.locator(".run-head .status")).to_have_text("succeeded", timeout=5000)
    await expect(page.locator('.dag [data-node-id="book"]')).to_have_attribute("data-status", "succeeded")
    events = await wait_ended(api, run_id, timeout=5)
    outputs = {
        e["data"]["node_id"]: e["data"]["output"] for e in events if e["type"] == "node_execute_after_data"
    }
    assert outputs == {"ask": {"by": "the console"}, "book": "the console"}
    await shoot(page, "run-signal")


async def test_fork_from_a_node_with_an_override_opens_the_child_run(
    console: Page, api: httpx.AsyncClient
) -> None:
    page = console
    workflow = await _register(api, _demo_spec())
    parent = await _start(api, workflow, {"amount": 250})
    await wait_ended(api, parent)
    await _open_run(page, api, parent, "?node=review")
    inspector = page.locator("section.inspector")
    await inspector.get_by_text("Fork from this node").click()
    await inspector.get_by_label("Output override for review (JSON, optional)").fill("{not json")
    await inspector.get_by_role("button", name="Fork from review").click()
    await expect(inspector).to_contain_text("not valid JSON")
    await inspector.get_by_label("Output override for review (JSON, optional)").fill('{"route": "forced"}')
    await inspector.get_by_role("button", name="Fork from review").click()
    await page.wait_for_url(re.compile(r"/runs/(?!" + parent + r")[0-9a-f-]{36}"))
    child = page.url.split("/runs/")[1].split("?")[0]
    await expect(page.get_by_role("link", name=f"parent run {parent}")).to_be_visible()
    await wait_ended(api, child)
    await expect(page.locator(".run-head .status")).to_have_text("succeeded")
    state = (await api.get(f"/v1/runs/{child}/state")).json()
    assert state["parent_run_id"] == parent
    assert state["nodes"]["review"]["output"] == {"route": "forced"}
    assert state["nodes"]["notify"]["output"] == {"route": "forced"}
    assert state["nodes"]["check"]["reused_from"]["run_id"] == parent
    # the child's inspector names where a reused node came from
    await page.get_by_role("button", name=re.compile(r"^node check \(branch\)")).click()
    await expect(page.locator("section.inspector")).to_contain_text("Reused from")


async def test_diff_and_verify_show_their_results(
    console: Page, api: httpx.AsyncClient, page_errors: PageErrors
) -> None:
    page = console
    page_errors.allow(r"404 \(Not Found\) \(http://[^)]*/diff/")  # the unknown run, last
    workflow = await _register(api, _demo_spec())
    high = await _start(api, workflow, {"amount": 250})
    low = await _start(api, workflow, {"amount": 20})
    events = await wait_ended(api, high)
    await wait_ended(api, low)
    await _open_run(page, api, high)
    await page.get_by_label("Other run id").fill(low)
    await page.get_by_role("button", name="Diff", exact=True).click()
    table = page.get_by_role("table")
    await expect(table).to_be_visible()
    await expect(table.locator("tbody tr")).to_have_count(5)
    await expect(table.locator('tr[data-node-id="check"]')).to_contain_text("branch true → false")
    await expect(table.locator('tr[data-node-id="approve"]')).to_contain_text("skipped")
    await page.get_by_role("button", name="Verify chain").click()
    await expect(page.locator(".audit-result")).to_have_text(f"✓ chain verified: {len(events)} events")
    await shoot(page, "run-diff")
    # a stored event changed behind the log's back: Verify lists the problem
    tampered = await _start(api, workflow, {"amount": 20, "tag": "w1"})
    await wait_ended(api, tampered)
    conn = await asyncpg.connect(api.database_url)  # type: ignore[attr-defined]
    try:
        await tamper_row(conn, "flowledger", uuid.UUID(tampered), 0)
    finally:
        await conn.close()
    audit = (await api.get(f"/v1/runs/{tampered}/audit")).json()
    assert not audit["ok"]
    await _open_run(page, api, tampered)
    await page.get_by_role("button", name="Verify chain").click()
    result = page.locator(".audit-result")
    await expect(result).to_contain_text("chain verification failed")
    await expect(result.get_by_role("listitem")).to_have_count(len(audit["problems"]))
    await expect(result.get_by_role("listitem").first).to_contain_text(audit["problems"][0]["problem"])
    await shoot(page, "run-verify-failed")
    # a run id that does not exist: said in the diff panel
    await page.get_by_label("Other run id").fill(str(uuid.uuid4()))
    await page.get_by_role("button", name="Diff", exact=True).click()
    await expect(page.locator(".diff-result")).to_contain_text("not found")


async def test_another_tenants_run_is_not_found(
    console: Page, api: httpx.AsyncClient, page_errors: PageErrors
) -> None:
    page_errors.allow(NOT_FOUND_LOG)
    page = console
    tenant = _unique("other")
    token = await api_key(
        api.database_url,  # type: ignore[attr-defined]
        tenant,
        ["workflows:read", "workflows:write", "runs:read", "runs:write"],
    )
    async with httpx.AsyncClient(
        base_url=str(api.base_url), headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as other:
        workflow = await _register(
            other, {"id": _unique("secret"), "nodes": [{"id": "only", "type": "noop"}], "edges": []}
        )
        run_id = await _start(other, workflow)
        await wait_ended(other, run_id)
    for missing in (run_id, str(uuid.uuid4())):
        await _goto(page, api, f"/runs/{missing}")
        await expect(page.get_by_role("heading", name="Run not found")).to_be_visible()
        await expect(page.locator(".run-missing").get_by_role("alert")).to_contain_text(missing)
        assert await page.locator(".dag").count() == 0


async def test_the_run_page_works_at_390_px(console: Page, api: httpx.AsyncClient) -> None:
    page = console
    workflow = await _register(api, _demo_spec())
    run_id = await _start(api, workflow, {"amount": 20})
    await wait_ended(api, run_id)
    await page.set_viewport_size({"width": 390, "height": 844})
    await _open_run(page, api, run_id, "?node=flaky")
    await expect(page.locator("section.inspector").get_by_role("heading", name="Node flaky")).to_be_visible()
    started = time.monotonic()
    while (
        await page.evaluate("document.documentElement.scrollWidth") > 391 and time.monotonic() - started < 2
    ):
        await asyncio.sleep(0.05)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 391
    # panels stack: the inspector is below the graph, not beside it
    graph = await page.locator("section.graph").bounding_box()
    inspector = await page.locator("section.inspector").bounding_box()
    assert graph and inspector and inspector["y"] >= graph["y"] + graph["height"] - 1
    await page.get_by_label("Event seq").fill("3")
    await expect(page.locator(".dag")).to_have_attribute("data-view-seq", "3")
    await shoot(page, "run-narrow")
