"""Where things are: the repository root, its examples, and the installed ``flowledger`` command."""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The repository root (the directory holding ``pyproject.toml``)."""

EXAMPLES = REPO_ROOT / "examples"

FLOWLEDGER = str(Path(sys.executable).parent / "flowledger")
"""The ``flowledger`` console script of the virtualenv running the tests."""
