"""`pip install .` (not editable) must carry everything read at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers.paths import REPO_ROOT


def test_wheel_ships_migrations_and_packages(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), str(REPO_ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("flowledger-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(p.name for p in (REPO_ROOT / "infra" / "postgres").glob("*.sql"))
    assert migrations
    for name in migrations:
        assert f"service/_infra/postgres/{name}" in names
    for package in (
        "schemas/__init__.py",
        "service/__init__.py",
        "projections/__init__.py",
        "service/cli/main.py",
    ):
        assert package in names
    console = sorted(
        str(p.relative_to(REPO_ROOT))
        for p in (REPO_ROOT / "service" / "api" / "web").rglob("*")
        if p.is_file()
    )
    assert "service/api/web/index.html" in console and "service/api/web/js/app.js" in console
    assert not set(console) - names, "the web console's files must be in the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "flowledger = service.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
