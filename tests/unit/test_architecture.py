"""The import contract in ``pyproject.toml`` holds, and it really catches a wrong-way import.

``lint-imports`` runs as a subprocess on a copy of the packages, so the second
test can add a forbidden import without touching the working tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    for package in ("service", "schemas", "projections"):
        shutil.copytree(REPO_ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO_ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_import_contract_is_kept(tmp_path: Path) -> None:
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_engine_module_importing_the_cli_breaks_the_contract(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    executor = tree / "service" / "engine" / "executor.py"
    executor.write_text(executor.read_text() + "\nfrom service.cli import main as _upward  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "service.engine.executor -> service.cli" in result.stdout, result.stdout


def test_siblings_may_not_import_each_other(tmp_path: Path) -> None:
    tree = _copy(tmp_path)
    relay = tree / "service" / "followers" / "relay.py"
    relay.write_text(relay.read_text() + "\nfrom service.engine import worker as _sideways  # noqa\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "service.followers.relay -> service.engine.worker" in result.stdout, result.stdout
