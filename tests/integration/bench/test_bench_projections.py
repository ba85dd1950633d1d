"""Smoke test of ``flowledger bench projections`` on the test servers: a tiny log, the whole path
except the HTTP load."""

from __future__ import annotations

import re

import pytest

from service.bench.projections import MEAN_EVENTS_PER_RUN, bench_projections
from service.config import Settings
from tests.helpers.servers import Servers

EVENTS = 5000


@pytest.mark.timeout(60)
async def test_rebuilds_beside_raw_reads(servers: Servers, capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings(database_url=servers.database_url, nats_url=servers.nats_url, home=servers.home)
    result = await bench_projections(settings, events=EVENTS, http=False, batch=1000)

    # The log holds at least EVENTS events and at most one run's worth more.
    assert EVENTS <= result.events < EVENTS + 16
    assert 10 < result.events / MEAN_EVENTS_PER_RUN < 1000
    assert result.http is None
    rows = result.rebuild_comparisons()
    assert [r.name for r in rows] == [
        "rebuild run_summaries",
        "rebuild node_executions",
        "rebuild both at once",
    ]
    assert all(r.ours > 0 and r.baseline == result.raw_rate > 0 for r in rows)

    out = " ".join(capsys.readouterr().out.split())  # rich wraps lines at the console width
    for row in rows:
        assert f"{row.ratio:.2f}x" in out, out
    assert re.search(r"raw read: [\d,]+ ev/s before the rebuilds, [\d,]+ ev/s after", out), out
    assert re.search(r"targets: rebuild >= 50,000 ev/s and >= 50% of the raw read rate: (met|MISSED)", out), (
        out
    )
    assert f"{result.events:,} events" in out
