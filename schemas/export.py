"""JSON Schema files generated from the contract's Structs (``schemas/json/*.json``).

Guarantees: ``json_schemas()`` is pure and deterministic for a given msgspec
version: keys are sorted at every level, docstrings are normalised with
``inspect.cleandoc`` (Python 3.13 strips docstring indentation at compile time,
older versions do not) and no component name depends on ``repr`` of a typing
construct, so the files do not change with the Python version. Every file is
self-contained (its own ``$defs``). The committed files are checked against
this module by ``tests/unit/test_json_schemas_current.py``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import msgspec

from schemas.envelope import EventEnvelope
from schemas.events import EVENT_TYPE_BY_TAG, Event
from schemas.workflow import WorkflowSpec

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
"""The dialect msgspec generates."""

_GENERATED_NOTE = (
    "Generated from the msgspec Structs in the schemas package; do not edit. "
    "Regenerate with `flowledger schemas export`."
)

# Keys whose values are instance data (not schemas): never rewritten.
_DATA_KEYS = frozenset({"default", "const", "enum", "examples"})


def _sorted(value: Any) -> Any:
    """A copy with every mapping's keys in sorted order (msgspec keeps dict order)."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _normalise(value: Any, renames: dict[str, str]) -> Any:
    """Rewrite ``$ref``/discriminator targets per ``renames`` and clean docstrings."""
    if isinstance(value, list):
        return [_normalise(item, renames) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in _DATA_KEYS:
            out[key] = item
        elif key == "$ref" and isinstance(item, str):
            out[key] = renames.get(item, item)
        elif key == "mapping" and isinstance(item, dict):
            out[key] = {tag: renames.get(ref, ref) for tag, ref in item.items()}
        elif key == "description" and isinstance(item, str):
            out[key] = inspect.cleandoc(item)
        else:
            out[key] = _normalise(item, renames)
    return out


def _schema(tp: Any, name: str | None = None) -> dict[str, Any]:
    """Self-contained schema of ``tp``; ``name`` renames its root component.

    Generic Structs get component names (and titles) built from ``repr`` of
    their type arguments, e.g. ``Envelope[typing.Union[...]]``: unreadable and
    different across Python versions, hence the rename.
    """
    schema: dict[str, Any] = msgspec.json.schema(tp)
    renames: dict[str, str] = {}
    root = schema.get("$ref")
    if name is not None and isinstance(root, str):
        old = root.removeprefix("#/$defs/")
        defs: dict[str, Any] = schema["$defs"]
        component = defs.pop(old)
        component["title"] = name
        defs[name] = component
        renames[root] = f"#/$defs/{name}"
    schema = _normalise(schema, renames)
    schema["$schema"] = JSON_SCHEMA_DIALECT
    schema["$comment"] = _GENERATED_NOTE
    return schema


def _render(schema: dict[str, Any]) -> bytes:
    """Pretty JSON with sorted keys and a trailing newline."""
    return msgspec.json.format(msgspec.json.encode(_sorted(schema)), indent=2) + b"\n"


def json_schemas() -> dict[str, bytes]:
    """File name -> JSON Schema bytes for every published contract type.

    ``<tag>.json`` per event type, ``event.json`` (the tagged union),
    ``envelope.json`` (an envelope whose ``data`` is the union) and
    ``workflow_spec.json``.
    """
    files: dict[str, bytes] = {}
    for tag, cls in EVENT_TYPE_BY_TAG.items():
        files[f"{tag}.json"] = _render(_schema(cls))
    files["event.json"] = _render(_schema(Event))
    files["envelope.json"] = _render(_schema(EventEnvelope, "EventEnvelope"))
    files["workflow_spec.json"] = _render(_schema(WorkflowSpec))
    return dict(sorted(files.items()))


def write_json_schemas(directory: Path) -> list[Path]:
    """Write every schema file into ``directory`` (created if needed).

    Files whose bytes are already current are left untouched; ``*.json`` files
    there that are no longer produced are removed. Returns the paths of all
    produced files, sorted by name.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files = json_schemas()
    for stale in sorted(directory.glob("*.json")):
        if stale.name not in files:
            stale.unlink()
    paths: list[Path] = []
    for name, content in files.items():
        path = directory / name
        if not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
        paths.append(path)
    return paths


def stale_json_schemas(directory: Path) -> list[str]:
    """Names of files in ``directory`` that are missing, different or no longer produced.

    Empty when the directory holds exactly what ``write_json_schemas`` would write.
    """
    files = json_schemas()
    present = {p.name: p for p in directory.glob("*.json")} if directory.is_dir() else {}
    stale = [
        name
        for name, content in files.items()
        if name not in present or present[name].read_bytes() != content
    ]
    stale.extend(name for name in present if name not in files)
    return sorted(stale)
