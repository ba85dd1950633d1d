"""The committed ``schemas/json/*.json`` files match the Structs they are generated from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.events import EVENT_TYPE_BY_TAG
from schemas.export import json_schemas, stale_json_schemas, write_json_schemas
from tests.helpers.paths import REPO_ROOT

SCHEMA_DIR = REPO_ROOT / "schemas" / "json"


def test_committed_json_schemas_are_current() -> None:
    stale = stale_json_schemas(SCHEMA_DIR)
    assert stale == [], (
        f"schemas/json is out of date with the msgspec Structs ({', '.join(stale)} missing, changed or "
        'no longer produced). Run `flowledger schemas export` (or `python -c "from pathlib import Path; '
        "from schemas.export import write_json_schemas; write_json_schemas(Path('schemas/json'))\"`) "
        "and commit the result."
    )


def test_staleness_detects_missing_changed_and_extra_files(tmp_path: Path) -> None:
    assert stale_json_schemas(tmp_path / "absent") == sorted(json_schemas())
    written = write_json_schemas(tmp_path)
    assert sorted(p.name for p in written) == sorted(json_schemas())
    assert stale_json_schemas(tmp_path) == []

    (tmp_path / "run_queued.json").unlink()
    (tmp_path / "event.json").write_bytes(b"{}\n")
    (tmp_path / "run_exploded.json").write_bytes(b"{}\n")
    (tmp_path / "notes.txt").write_text("not a schema")
    assert stale_json_schemas(tmp_path) == ["event.json", "run_exploded.json", "run_queued.json"]

    write_json_schemas(tmp_path)
    assert stale_json_schemas(tmp_path) == []
    assert not (tmp_path / "run_exploded.json").exists()
    assert (tmp_path / "notes.txt").exists()


def test_rendering_is_deterministic_pretty_and_sorted() -> None:
    first, second = json_schemas(), json_schemas()
    assert first == second
    for name, content in first.items():
        assert content.endswith(b"}\n"), name
        assert b"\n  " in content, f"{name} is not indented"
        text = content.decode()
        assert json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n" == text, name


def _root(schema: dict[str, Any]) -> dict[str, Any]:
    ref: str = schema["$ref"]
    assert ref.startswith("#/$defs/")
    root: dict[str, Any] = schema["$defs"][ref.removeprefix("#/$defs/")]
    return root


def _tag_values(type_schema: dict[str, Any]) -> list[Any]:
    if "const" in type_schema:
        return [type_schema["const"]]
    values: list[Any] = type_schema["enum"]
    return values


def test_every_event_type_has_a_schema_that_pins_its_tag() -> None:
    files = json_schemas()
    assert len(EVENT_TYPE_BY_TAG) == 14
    for tag in EVENT_TYPE_BY_TAG:
        path = SCHEMA_DIR / f"{tag}.json"
        assert path.is_file(), f"no schema file for event type {tag!r}"
        assert f"{tag}.json" in files
        body = _root(json.loads(path.read_bytes()))
        assert body["type"] == "object"
        assert _tag_values(body["properties"]["type"]) == [tag], tag
        assert "type" in body["required"], tag
        assert body["additionalProperties"] is False, tag


def test_union_and_envelope_dispatch_on_every_tag() -> None:
    union = json.loads((SCHEMA_DIR / "event.json").read_bytes())
    mapping = union["discriminator"]["mapping"]
    assert union["discriminator"]["propertyName"] == "type"
    assert set(mapping) == set(EVENT_TYPE_BY_TAG)
    for tag, ref in mapping.items():
        body = union["$defs"][ref.removeprefix("#/$defs/")]
        assert _tag_values(body["properties"]["type"]) == [tag]

    envelope = json.loads((SCHEMA_DIR / "envelope.json").read_bytes())
    assert envelope["$ref"] == "#/$defs/EventEnvelope"
    root = _root(envelope)
    assert root["title"] == "EventEnvelope"
    assert set(root["properties"]["data"]["discriminator"]["mapping"]) == set(EVENT_TYPE_BY_TAG)
    assert {"event_id", "run_id", "seq", "global_position", "prev_hash", "hash", "data"} <= set(
        root["required"]
    )

    spec = json.loads((SCHEMA_DIR / "workflow_spec.json").read_bytes())
    assert _root(spec)["properties"]["id"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$"
