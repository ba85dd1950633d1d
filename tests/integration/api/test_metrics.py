"""Metrics through a real HTTP server: /v1/metrics/summary (JSON) and /metrics (Prometheus)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

RUNS = 10
FAILING = {0, 5}  # run indexes that take the always-failing branch


def _wid(label: str) -> str:
    return f"metrics-{label}-{uuid.uuid4().hex[:8]}"


def _branching_spec(workflow_id: str) -> dict[str, Any]:
    """check -> (false) flaky -> done, check -> (true) boom.

    ``flaky`` fails its first attempt and succeeds on the retry; ``boom`` fails both attempts,
    so a run with ``inputs.fail`` fails (and skips flaky and done), any other run succeeds
    (and skips boom).
    """
    retry = {"max_attempts": 2, "initial_backoff_ms": 5, "multiplier": 1.0, "max_backoff_ms": 5}
    return {
        "id": workflow_id,
        "nodes": [
            {"id": "check", "type": "branch", "config": {"expression": "inputs.fail"}},
            {"id": "flaky", "type": "fail", "config": {"message": "transient", "times": 1}, "retry": retry},
            {"id": "boom", "type": "fail", "config": {"message": "always"}, "retry": retry},
            {"id": "done", "type": "noop"},
        ],
        "edges": [
            {"from": "check", "to": "flaky", "when": "false"},
            {"from": "check", "to": "boom", "when": "true"},
            {"from": "flaky", "to": "done"},
        ],
    }


async def _run_to_end(api: httpx.AsyncClient, workflow_id: str, inputs: dict[str, Any]) -> int:
    """Start a run and wait for its terminal event; returns that event's global position."""
    accepted = await api.post(f"/v1/workflows/{workflow_id}/runs", json={"inputs": inputs})
    assert accepted.status_code == 202, accepted.text
    run_id = accepted.json()["run_id"]
    for _ in range(800):
        items = (await api.get(f"/v1/runs/{run_id}/events", params={"limit": 1000})).json()["items"]
        if items and items[-1]["type"] in ("run_finished", "run_cancelled"):
            return int(items[-1]["global_position"])
        await asyncio.sleep(0.025)
    raise AssertionError(f"run {run_id} did not end")


async def _caught_up(api: httpx.AsyncClient, position: int, workflow_id: str) -> dict[str, Any]:
    """The summary for ``workflow_id`` once every projection applied the log up to ``position``."""
    for _ in range(400):
        response = await api.get("/v1/metrics/summary", params={"workflow_id": workflow_id})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if all(p["position"] >= position for p in body["projections"]):
            return body
        await asyncio.sleep(0.025)
    raise AssertionError(f"projections did not reach position {position}: {body['projections']}")


async def _register(api: httpx.AsyncClient, spec: dict[str, Any]) -> None:
    response = await api.post("/v1/workflows", json=spec)
    assert response.status_code == 201, response.text


async def test_summary_counts_rates_and_percentiles(api: httpx.AsyncClient) -> None:
    wid = _wid("branchy")
    await _register(api, _branching_spec(wid))
    ends = await asyncio.gather(*[_run_to_end(api, wid, {"fail": i in FAILING}) for i in range(RUNS)])
    body = await _caught_up(api, max(ends), wid)

    [workflow] = body["workflows"]
    failed, succeeded = len(FAILING), RUNS - len(FAILING)
    assert {k: workflow[k] for k in ("workflow_id", "runs", "succeeded", "failed", "cancelled")} == {
        "workflow_id": wid,
        "runs": RUNS,
        "succeeded": succeeded,
        "failed": failed,
        "cancelled": 0,
    }
    assert workflow["queued"] == workflow["running"] == workflow["waiting"] == 0
    assert workflow["success_rate"] == pytest.approx(succeeded / RUNS)
    assert 0 < workflow["duration_p50_ms"] <= workflow["duration_p95_ms"] <= workflow["duration_p99_ms"]

    by_type = {n["node_type"]: n for n in workflow["node_types"]}
    assert sorted(by_type) == ["branch", "fail", "noop"]
    counts = {
        t: {k: n[k] for k in ("executions", "succeeded", "failed", "skipped", "in_progress", "retries")}
        for t, n in by_type.items()
    }
    assert counts == {
        # one check per run
        "branch": dict(executions=RUNS, succeeded=RUNS, failed=0, skipped=0, in_progress=0, retries=0),
        # flaky: succeeds on its retry or is skipped; boom: fails after its retry or is skipped
        "fail": dict(
            executions=2 * RUNS, succeeded=succeeded, failed=failed, skipped=RUNS, in_progress=0, retries=RUNS
        ),
        # done runs after flaky, and is skipped with it
        "noop": dict(
            executions=RUNS, succeeded=succeeded, failed=0, skipped=failed, in_progress=0, retries=0
        ),
    }
    assert by_type["fail"]["success_rate"] == pytest.approx(succeeded / RUNS)
    assert by_type["branch"]["success_rate"] == 1.0
    for n in by_type.values():
        assert 0 <= n["duration_p50_ms"] <= n["duration_p95_ms"] <= n["duration_p99_ms"]

    # The unfiltered summary has the same figures for this workflow among the others.
    everything = (await api.get("/v1/metrics/summary")).json()
    assert next(w for w in everything["workflows"] if w["workflow_id"] == wid) == workflow


async def test_workflow_filter(api: httpx.AsyncClient) -> None:
    first, second, idle = _wid("one"), _wid("two"), _wid("idle")
    for wid in (first, second, idle):
        await _register(api, {"id": wid, "nodes": [{"id": "only", "type": "noop"}]})
    ends = [
        await _run_to_end(api, first, {}),
        await _run_to_end(api, second, {}),
        await _run_to_end(api, second, {}),
    ]
    await _caught_up(api, max(ends), first)

    one = (await api.get("/v1/metrics/summary", params={"workflow_id": first})).json()["workflows"]
    two = (await api.get("/v1/metrics/summary", params={"workflow_id": second})).json()["workflows"]
    assert [(w["workflow_id"], w["runs"], w["succeeded"]) for w in one] == [(first, 1, 1)]
    assert [(w["workflow_id"], w["runs"], w["succeeded"]) for w in two] == [(second, 2, 2)]
    assert [n["node_type"] for n in two[0]["node_types"]] == ["noop"]

    all_ids = [w["workflow_id"] for w in (await api.get("/v1/metrics/summary")).json()["workflows"]]
    assert {first, second} <= set(all_ids) and all_ids == sorted(all_ids)

    # Registered without runs: zero figures; unknown: a problem document that says what to do.
    [empty] = (await api.get("/v1/metrics/summary", params={"workflow_id": idle})).json()["workflows"]
    assert (empty["runs"], empty["success_rate"], empty["duration_p50_ms"], empty["node_types"]) == (
        0,
        None,
        None,
        [],
    )
    missing = await api.get("/v1/metrics/summary", params={"workflow_id": _wid("nope")})
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert "GET /v1/workflows" in missing.json()["detail"]


def _samples(text: str) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    matching = [
        s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return float(matching[0])


async def test_prometheus_exposition(api: httpx.AsyncClient) -> None:
    wid = _wid("prom")
    await _register(api, _branching_spec(wid))
    ends = await asyncio.gather(*[_run_to_end(api, wid, {"fail": i in FAILING}) for i in range(RUNS)])
    summary = (await _caught_up(api, max(ends), wid))["workflows"][0]

    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = _samples(response.text)

    failed, succeeded = len(FAILING), RUNS - len(FAILING)
    assert _value(samples, "flowledger_runs_total", workflow_id=wid, status="succeeded") == succeeded
    assert _value(samples, "flowledger_runs_total", workflow_id=wid, status="failed") == failed
    assert _value(samples, "flowledger_runs_total", workflow_id=wid, status="cancelled") == 0
    assert _value(samples, "flowledger_runs_open", workflow_id=wid, status="running") == 0
    assert _value(samples, "flowledger_run_success_ratio", workflow_id=wid) == pytest.approx(succeeded / RUNS)
    quantiles = [
        _value(samples, "flowledger_run_duration_seconds", workflow_id=wid, quantile=q)
        for q in ("0.5", "0.95", "0.99")
    ]
    assert quantiles == pytest.approx(
        [summary[f"duration_p{p}_ms"] / 1000 for p in (50, 95, 99)]
    ) and quantiles == sorted(quantiles)

    fail = {"workflow_id": wid, "node_type": "fail"}
    assert _value(samples, "flowledger_node_executions_total", **fail, status="succeeded") == succeeded
    assert _value(samples, "flowledger_node_executions_total", **fail, status="failed") == failed
    assert _value(samples, "flowledger_node_executions_total", **fail, status="skipped") == RUNS
    assert _value(samples, "flowledger_node_retries_total", **fail) == RUNS
    assert _value(samples, "flowledger_node_executions_in_progress", **fail) == 0
    assert _value(samples, "flowledger_node_success_ratio", **fail) == pytest.approx(succeeded / RUNS)
    for q in ("0.5", "0.95", "0.99"):
        assert _value(samples, "flowledger_node_duration_seconds", **fail, quantile=q) >= 0

    # Service gauges: every projection, the queue, this process's runs, the log head, the relay.
    head = _value(samples, "flowledger_log_head_position")
    assert head >= max(ends)
    for projection in ("run_summaries", "node_executions"):
        assert _value(samples, "flowledger_projection_lag_events", projection=projection) >= 0
        assert _value(samples, "flowledger_projection_lag_seconds", projection=projection) >= 0
        assert _value(samples, "flowledger_projection_position", projection=projection) >= max(ends)
    assert _value(samples, "flowledger_run_queue_depth", status="queued") >= 0
    assert _value(samples, "flowledger_run_queue_depth", status="running") >= 0
    assert _value(samples, "flowledger_runs_in_flight") >= 0
    active = _value(samples, "flowledger_relay_active")
    assert active in (0, 1)
    if active:  # a standby relay (another process holds the lock) reports no lag of its own
        assert 0 <= _value(samples, "flowledger_relay_lag_events") <= head
    assert "process_resident_memory_bytes" in samples


async def test_in_flight_and_queue_gauges_see_a_running_run(api: httpx.AsyncClient) -> None:
    wid = _wid("slow")
    # 1.5 s: shorter than the 2 s after which a waiting run is parked (it stays in flight).
    await _register(api, {"id": wid, "nodes": [{"id": "wait", "type": "delay", "config": {"ms": 1500}}]})
    run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]
    try:
        for _ in range(400):
            samples = _samples((await api.get("/metrics")).text)
            if _value(samples, "flowledger_runs_in_flight") >= 1:
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError("the running run never showed in flowledger_runs_in_flight")
        assert _value(samples, "flowledger_run_queue_depth", status="running") >= 1
    finally:
        assert (await api.post(f"/v1/runs/{run_id}/cancel")).status_code in (202, 409)


async def test_a_parked_run_shows_in_the_waiting_queue_gauge(api: httpx.AsyncClient) -> None:
    wid = _wid("parked")
    await _register(api, {"id": wid, "nodes": [{"id": "ask", "type": "wait", "config": {"signal": "go"}}]})
    run_id = (await api.post(f"/v1/workflows/{wid}/runs", json={})).json()["run_id"]
    try:
        for _ in range(400):
            samples = _samples((await api.get("/metrics")).text)
            if _value(samples, "flowledger_run_queue_depth", status="waiting") >= 1:
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError("the parked run never showed in flowledger_run_queue_depth{status=waiting}")
    finally:
        assert (await api.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
