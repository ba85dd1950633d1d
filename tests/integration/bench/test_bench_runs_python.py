"""``flowledger bench runs --node-type python``: the same whole path with every node a python node
run in the isolated worker processes (tiny smoke form)."""

from __future__ import annotations

import pytest

from service.bench.runs import bench_runs, bench_spec
from service.config import Settings
from tests.helpers.servers import Servers


async def test_python_nodes_run_every_run_to_success(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(database_url=servers.database_url, nats_url=servers.nats_url, home=servers.home)
    result = await bench_runs(settings, runs=10, concurrency=4, baseline=False, node_type="python")
    assert result.ours.runs == 10 and len(result.ours.latencies_ms) == 10  # every run succeeded
    out = " ".join(capsys.readouterr().out.split())
    assert "5-node linear python (json:dumps, isolated worker processes) workflow" in out


def test_the_node_type_is_checked() -> None:
    assert {n.type for n in bench_spec("python").nodes} == {"python"}
    assert {n.type for n in bench_spec().nodes} == {"noop"}
    with pytest.raises(ValueError, match="--node-type must be one of noop, python, got 'http'"):
        bench_spec("http")
