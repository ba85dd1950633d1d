"""Golden histories: recorded event logs of representative runs and the state each folds to.

``<name>.history.json`` holds the workflow spec and the run's events (envelopes
exactly as ``GET /v1/runs/{id}/events`` returns them); ``<name>.expected.json``
holds ``msgspec.to_builtins(fold(events))``. See README.md for how to add one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from projections.run_state import fold
from schemas.envelope import EventEnvelope
from schemas.workflow import WorkflowSpec

GOLDEN_DIR = Path(__file__).resolve().parent
HISTORY_SUFFIX = ".history.json"
EXPECTED_SUFFIX = ".expected.json"


class GoldenHistory(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    description: str
    workflow: WorkflowSpec
    events: list[EventEnvelope]


def history_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}{HISTORY_SUFFIX}"


def expected_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}{EXPECTED_SUFFIX}"


def names() -> list[str]:
    """Every stored history, by name."""
    return sorted(p.name[: -len(HISTORY_SUFFIX)] for p in GOLDEN_DIR.glob(f"*{HISTORY_SUFFIX}"))


def load_history(name: str) -> GoldenHistory:
    return msgspec.json.decode(history_path(name).read_bytes(), type=GoldenHistory)


def folded(events: list[EventEnvelope]) -> Any:
    """The folded state as plain JSON values (what ``<name>.expected.json`` stores)."""
    return msgspec.json.decode(msgspec.json.encode(msgspec.to_builtins(fold(events))))


def _pretty(value: Any) -> bytes:
    return msgspec.json.format(msgspec.json.encode(value), indent=2) + b"\n"


def write_history(history: GoldenHistory) -> Path:
    path = history_path(history.name)
    path.write_bytes(_pretty(history))
    return path


def write_expected(name: str, events: list[EventEnvelope]) -> Path:
    path = expected_path(name)
    path.write_bytes(_pretty(folded(events)))
    return path
