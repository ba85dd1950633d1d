"""The fault drill in its CI form: 150 runs, every fault kind once or more, shorter outages.
`make chaos` runs the full one (1,000 runs); both are ``tests.chaos.drill``."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from tests.chaos.drill import Options, report, run_drill
from tests.chaos.faults import KINDS, SHORT

pytestmark = pytest.mark.slow


async def test_the_drill_in_its_short_form_finds_no_violation() -> None:
    progress = io.StringIO()
    result = await run_drill(
        Options(runs=150, seed=7, duration=40, limits=SHORT, drain_timeout=90), out=progress
    )
    text = io.StringIO()
    report(result, Console(file=text, width=140))
    print(progress.getvalue() + text.getvalue())
    assert {f.fault.kind for f in result.faults} == set(KINDS), text.getvalue()
    assert result.ok, progress.getvalue() + text.getvalue()
    assert [c.name for c in result.checks if not c.ok] == []
