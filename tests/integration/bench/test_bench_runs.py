"""Smoke tests of ``flowledger bench runs`` on the test servers: tiny, but the whole path."""

from __future__ import annotations

import re

import pytest

from service.bench.runs import EVENTS_PER_RUN, bench_runs, percentile
from service.config import Settings
from tests.helpers.servers import Servers

RUNS = 20


def _settings(servers: Servers) -> Settings:
    return Settings(database_url=servers.database_url, nats_url=servers.nats_url, home=servers.home)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


async def test_ours_runs_every_run_to_success(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    result = await bench_runs(_settings(servers), runs=RUNS, concurrency=8, baseline=False)
    assert result.dbos is None and result.ratio is None
    assert result.ours.runs == RUNS and len(result.ours.latencies_ms) == RUNS
    assert result.ours.rate > 0 and 0 < result.ours.p50_ms <= result.ours.p99_ms
    out = " ".join(capsys.readouterr().out.split())  # rich wraps lines at the console width
    assert re.search(r"flowledger bench runs: [\d,]+ runs/s", out), out
    assert f"{RUNS * EVENTS_PER_RUN:,} events" in out


async def test_side_by_side_with_dbos(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("dbos")
    result = await bench_runs(_settings(servers), runs=RUNS, concurrency=8)
    assert result.dbos is not None and result.dbos.runs == RUNS and len(result.dbos.latencies_ms) == RUNS
    assert result.ratio is not None and result.ratio > 0
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(r"runs end to end .*runs/s.*DBOS.* \d+\.\d\dx ", out), out
    assert "p99" in out


async def test_worker_processes_run_every_run_and_the_scaling_is_printed(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await bench_runs(_settings(servers), runs=RUNS, concurrency=8, baseline=False, processes=2)
    assert result.scaling is not None
    count, one, two = result.scaling
    assert count == 2 and one.runs == two.runs == RUNS and result.ours is two
    assert len(one.latencies_ms) == len(two.latencies_ms) == RUNS  # every run checked succeeded
    out = " ".join(capsys.readouterr().out.split())
    assert "scaling: 2 worker" in out and re.search(r"1 -> [\d,]+ runs/s, 2 -> [\d,]+ runs/s", out), out
