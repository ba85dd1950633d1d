"""``flowledger bench load`` at smoke size: two short steps at low rates, against the bench's own
service and against a served app over HTTP; the table's shape and the runs really run (no
timing asserts: the figures are whatever this machine gives)."""

from __future__ import annotations

import re
import uuid

import asyncpg
import pytest
from click.testing import CliRunner

from service.bench.load import bench_load
from service.bench.load_model import is_saturated, parse_rates
from service.bench.runs import EVENTS_PER_RUN
from service.cli.main import cli
from service.config import Settings
from tests.helpers.servers import Servers
from tests.helpers.serving import serve_app

RATES = "3,6"
STEP_S = 2.0
HEADER = ("offered/s", "issued/s", "done/s", "events/s", "p50 ms", "p99 ms", "backlog", "PG CPU")


def _settings(servers: Servers) -> Settings:
    return Settings(database_url=servers.database_url, nats_url=servers.nats_url, home=servers.home)


def _table_rows(out: str) -> list[list[str]]:
    """The body rows of the printed table (the cells of lines starting with the box's bar)."""
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in out.splitlines()
        if line.startswith("│") and re.match(r"│\s*[\d,]+\s*│", line)
    ]


async def test_the_bench_load_steps_start_real_runs_and_print_a_row_each(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    result = await bench_load(_settings(servers), rates=RATES, step_seconds=STEP_S, concurrency=8)
    out = capsys.readouterr().out
    assert result.steps[0].offered == 3.0
    issued = sum(step.issued for step in result.steps)
    assert issued == result.issued > 0
    # bench_load drained and checked every run (run_finished, succeeded, every event relayed);
    # the steps saw runs finish and events appended, 18 per run at most in all
    assert sum(step.finished for step in result.steps) > 0
    assert 0 < sum(step.events for step in result.steps) <= issued * EVENTS_PER_RUN
    for step in result.steps:
        assert len(step.latencies_ms) == step.finished and step.backlog >= 0
        assert step.pg_cpu_s is not None and step.service_cpu_s is not None
    if result.saturation is None:
        assert len(result.steps) == 2
    else:
        assert is_saturated(result.saturation) and result.steps[-1] is result.saturation
    flat = " ".join(out.split())
    for column in HEADER:
        assert column in out or column in flat, out
    rows = _table_rows(out)
    assert len(rows) == len(result.steps) and all(len(row) == 11 for row in rows), out
    assert [row[0] for row in rows] == [f"{step.offered:,.0f}" for step in result.steps]
    assert re.search(r"saturation: (at|not reached up to) [\d,]+ runs/s offered", flat), out


async def test_bench_load_over_http_starts_the_runs_through_the_api(
    servers: Servers, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serve_app(servers, own_database=True) as client:
        token = client.headers["Authorization"].removeprefix("Bearer ")
        result = await bench_load(
            _settings(servers),
            rates="4",
            step_seconds=STEP_S,
            url=str(client.base_url),
            api_key=token,
            clients=4,
        )
        database_url = client.database_url  # type: ignore[attr-defined]
        conn = await asyncpg.connect(database_url)
        try:
            finished = await conn.fetchval(
                "SELECT count(*) FROM flowledger.events WHERE type = 'run_finished' AND data->>'status' = 'succeeded' "
                "AND workflow_id LIKE 'bench-load-%'"
            )
        finally:
            await conn.close()
    assert result.issued == result.steps[0].issued > 0
    assert finished == result.issued  # every run started over HTTP ran to success in the service's log
    rows = _table_rows(capsys.readouterr().out)
    assert (
        len(rows) == 1 and rows[0][0] == "4" and rows[0][7] == rows[0][8] == "-"
    )  # no service CPU over HTTP


def test_bad_rates_and_an_unreachable_url_are_one_line_errors(servers: Servers) -> None:
    env = {"FLOWLEDGER_DATABASE_URL": servers.database_url, "FLOWLEDGER_NATS_URL": servers.nats_url}
    for rates in ("0,5", "-1", "ten", ""):
        result = CliRunner().invoke(cli, ["bench", "load", "--rates", rates], env=env)
        assert result.exit_code == 2, result.output
        assert "--rates" in result.output and "Traceback" not in result.output
    with pytest.raises(ValueError, match="positive"):
        parse_rates("5,0")
    port_nobody_uses = f"http://127.0.0.1:1/{uuid.uuid4().hex}"
    result = CliRunner().invoke(
        cli, ["bench", "load", "--rates", "5", "--url", port_nobody_uses, "--api-key", "k"]
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flowledger: bench load: cannot reach"), result.output
