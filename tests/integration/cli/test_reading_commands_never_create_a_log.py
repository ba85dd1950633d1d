"""Commands that read an existing log never create one (issue 10, defect 4).

Run from a directory with no ``.flowledger`` and no URLs, ``audit verify --all``
used to start a new empty embedded PostgreSQL and report "ok: 0 events in 0 runs
verified" with exit 0: a false all-clear.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

FLOWLEDGER = str(Path(sys.executable).with_name("flowledger"))


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLEDGER_")}
    return subprocess.run(
        [FLOWLEDGER, *args], cwd=cwd, env={**base, **env}, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (["audit", "verify", "--all"], "database"),
        (["export", str(uuid.uuid4()), "-o", "out.ndjson"], "database"),
        (["projections", "status"], "database"),
        (["projections", "rebuild"], "database"),
        (["replay", str(uuid.uuid4()), "--republish"], "database"),
        (["tail"], "NATS server data"),
    ],
)
def test_with_no_database_they_say_so_and_exit_2(tmp_path: Path, args: list[str], missing: str) -> None:
    ran = _run(args, tmp_path)
    assert ran.returncode == 2, ran
    assert f"no Flowledger {missing} under {tmp_path / '.flowledger'}" in ran.stderr
    assert "ok:" not in ran.stdout
    assert not (tmp_path / ".flowledger").exists(), "a reading command created a data directory"


async def test_an_empty_log_is_said_to_be_empty(database_url: str, tmp_path: Path) -> None:
    name = f"empty_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = database_url.rsplit("/", 1)[0] + f"/{name}"
        ran = _run(["audit", "verify", "--all"], tmp_path, FLOWLEDGER_DATABASE_URL=url)
        assert ran.returncode == 0, ran
        assert "the log is empty" in ran.stdout
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
