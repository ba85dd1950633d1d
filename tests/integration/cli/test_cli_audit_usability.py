"""``audit verify --workflow`` and ``export`` as a user runs them, on a database of their own."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner, Result

from service.cli.main import cli
from tests.helpers.databases import scratch_database_sync
from tests.helpers.servers import Servers
from tests.helpers.stored_runs import write_orders


def _invoke(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--database-url", url, "--log-level", "warning", *args])


def test_audit_verify_of_a_workflow_without_runs_fails(servers: Servers) -> None:
    with scratch_database_sync(servers.database_url, "audit") as url:
        asyncio.run(write_orders(url, runs=2))  # runs of workflow "orders"
        known = _invoke(url, "audit", "verify", "--workflow", "orders")
        assert known.exit_code == 0, known.output
        assert "2 runs verified" in known.stdout

        unknown = _invoke(url, "audit", "verify", "--workflow", "nope")
        assert unknown.exit_code == 1, unknown.output
        assert unknown.stdout.strip() == "no runs of workflow 'nope' exist; nothing was verified"
    assert "--workflow W has no" in _invoke("", "audit", "verify", "--help").stdout


def test_export_to_a_missing_directory_is_one_error_line(servers: Servers, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "bundle.ndjson"
    with scratch_database_sync(servers.database_url, "audit") as url:
        (run_id,) = asyncio.run(write_orders(url, runs=1))
        result = _invoke(url, "export", str(run_id), "-o", str(target))
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.stderr.strip() == (
        f"Error: cannot write {target}: directory {target.parent} does not exist"
    )
    assert not target.parent.exists()


def test_export_says_which_run_id_is_malformed(servers: Servers, tmp_path: Path) -> None:
    result = _invoke(servers.database_url, "export", "xyz", "-o", str(tmp_path / "b.ndjson"))
    assert result.exit_code == 2
    assert "'xyz' is not a valid run id" in result.stderr
