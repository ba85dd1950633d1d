"""The committed ``schemas/asyncapi.json`` is current and describes what the relay really sends."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import asyncapi
from schemas.asyncapi import (
    TrimmedEventData,
    TrimmedEventEnvelope,
    asyncapi_document,
    asyncapi_is_current,
    render_asyncapi,
    write_asyncapi,
)
from schemas.codec import encode_event
from schemas.envelope import RawEnvelope
from schemas.events import EVENT_TYPE_BY_TAG, NodeExecuteAfterData
from service.infra import nats as nats_client
from tests.helpers.paths import REPO_ROOT

ASYNCAPI_FILE = REPO_ROOT / "schemas" / "asyncapi.json"


def _committed() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(ASYNCAPI_FILE.read_bytes())
    return document


def test_committed_asyncapi_document_is_current() -> None:
    assert asyncapi_is_current(ASYNCAPI_FILE), (
        "schemas/asyncapi.json is out of date with the msgspec Structs and schemas/asyncapi.py. "
        "Run `flowledger schemas export` (or `flowledger schemas asyncapi --out schemas/asyncapi.json`) "
        "and commit the result."
    )


def test_staleness_is_detected_and_writing_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "asyncapi.json"
    assert not asyncapi_is_current(path)
    assert write_asyncapi(path) is True
    assert asyncapi_is_current(path)
    assert write_asyncapi(path) is False
    path.write_bytes(path.read_bytes().replace(b"run_finished", b"run_exploded"))
    assert not asyncapi_is_current(path)


def test_rendering_is_deterministic_pretty_and_sorted() -> None:
    content = render_asyncapi()
    assert content == render_asyncapi()
    assert content.endswith(b"}\n") and b"\n  " in content
    text = content.decode()
    assert json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n" == text


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [
            r for key, value in node.items() if key not in ("enum", "const") for r in _refs(value)
        ]
    if isinstance(node, list):
        return [r for item in node for r in _refs(item)]
    return []


def test_every_reference_resolves() -> None:
    document = _committed()
    refs = _refs(document)
    assert len(refs) > 30
    for ref in refs:
        _resolve(document, ref)


def test_channels_describe_the_subjects_and_their_parameters() -> None:
    document = _committed()
    assert document["asyncapi"] == "3.0.0"
    addresses = {name: channel["address"] for name, channel in document["channels"].items()}
    assert addresses == {
        "runEvents": "flowledger.events.{tenant}.{workflow_id}.{run_id}.{type}",
        "replayEvents": "flowledger.replay.{tenant}.{workflow_id}.{run_id}.{type}",
        "push": "/v1/push",  # the WebSocket: tests/unit/schemas/test_asyncapi_push.py
    }
    assert document["channels"]["runEvents"]["x-jetstream-stream"] == nats_client.STREAM_NAME
    assert addresses["runEvents"].startswith(nats_client.SUBJECT_PREFIX + ".")
    for name, channel in document["channels"].items():
        servers = [_resolve(document, server["$ref"])["protocol"] for server in channel["servers"]]
        assert servers == (["ws"] if name == "push" else ["nats"]), name
        placeholders = re.findall(r"{(\w+)}", channel["address"])
        assert sorted(placeholders) == sorted(channel.get("parameters", {})), name
        for parameter in channel.get("parameters", {}).values():
            assert _resolve(document, parameter["$ref"])["description"]
    live, replayed = (
        {m["$ref"].rsplit("/", 1)[1] for m in document["channels"][name]["messages"].values()}
        for name in ("runEvents", "replayEvents")
    )
    assert live == {"RunEvent", "TrimmedRunEvent"}
    assert replayed == {"ReplayedRunEvent", "TrimmedReplayedRunEvent"}
    assert document["components"]["parameters"]["type"]["enum"] == list(EVENT_TYPE_BY_TAG)
    operations = document["operations"]
    nats = {name: op for name, op in operations.items() if op["channel"]["$ref"] != "#/channels/push"}
    assert {op["action"] for op in nats.values()} == {"send"}
    assert {op["action"] for op in operations.values()} == {"send", "receive"}
    for op in operations.values():
        channel = op["channel"]["$ref"]
        for message in op["messages"]:  # an operation's messages must belong to its channel
            assert message["$ref"].startswith(channel + "/messages/")
            _resolve(document, message["$ref"])


def test_payload_union_lists_every_event_type() -> None:
    document = _committed()
    schemas = document["components"]["schemas"]
    message = document["components"]["messages"]["RunEvent"]
    envelope = _resolve(document, message["payload"]["$ref"])
    assert envelope["title"] == "EventEnvelope"
    data = envelope["properties"]["data"]
    assert data["discriminator"] == "type"  # the AsyncAPI Schema form: a property name
    assert "anyOf" not in data
    mapping = data["x-discriminator-mapping"]
    assert set(mapping) == set(EVENT_TYPE_BY_TAG)
    assert sorted(v["$ref"] for v in data["oneOf"]) == sorted(mapping.values())
    for tag, ref in mapping.items():
        body = _resolve(document, ref)
        assert body["properties"]["type"]["enum"] == [tag]
        assert "type" in body["required"]
    for component in schemas.values():  # no OpenAPI-style discriminator object anywhere
        for value in _walk(component):
            if isinstance(value, dict) and "discriminator" in value:
                assert isinstance(value["discriminator"], str)
    assert {"event_id", "run_id", "seq", "global_position", "hash", "data"} <= set(envelope["required"])


def _walk(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [node, *(v for value in node.values() for v in _walk(value))]
    if isinstance(node, list):
        return [v for item in node for v in _walk(item)]
    return []


def test_headers_are_the_relays() -> None:
    document = _committed()
    messages = document["components"]["messages"]
    plain = _resolve(document, messages["RunEvent"]["headers"]["$ref"])
    trimmed = _resolve(document, messages["TrimmedRunEvent"]["headers"]["$ref"])
    sent = {"Nats-Msg-Id", nats_client.HEADER_SEQ, nats_client.HEADER_POSITION, nats_client.HEADER_SOURCE}
    assert set(plain["required"]) == sent
    assert set(trimmed["required"]) == sent | {nats_client.HEADER_TRIMMED}
    assert trimmed["properties"][nats_client.HEADER_TRIMMED]["const"] == "true"
    assert (
        asyncapi.HEADER_SEQ,
        asyncapi.HEADER_POSITION,
        asyncapi.HEADER_SOURCE,
        asyncapi.HEADER_TRIMMED,
    ) == (
        nats_client.HEADER_SEQ,
        nats_client.HEADER_POSITION,
        nats_client.HEADER_SOURCE,
        nats_client.HEADER_TRIMMED,
    )
    assert asyncapi_document()["channels"]["runEvents"]["x-jetstream-stream"] == nats_client.STREAM_NAME
    assert asyncapi.EVENTS_SUBJECT_PREFIX == nats_client.SUBJECT_PREFIX


def test_replayed_headers_are_the_republishers() -> None:
    document = _committed()
    messages = document["components"]["messages"]
    for name, trimmed in (("ReplayedRunEvent", False), ("TrimmedReplayedRunEvent", True)):
        headers = _resolve(document, messages[name]["headers"]["$ref"])
        assert headers["properties"]["Nats-Msg-Id"]["not"] == {}  # copies are never deduplicated
        assert headers["properties"][asyncapi.HEADER_REPLAY]["const"] == "true"
        expected = {nats_client.HEADER_SEQ, nats_client.HEADER_POSITION, asyncapi.HEADER_REPLAY}
        assert set(headers["required"]) == expected | ({nats_client.HEADER_TRIMMED} if trimmed else set())
        assert _resolve(document, messages[name]["payload"]["$ref"])["title"] == (
            "TrimmedEventEnvelope" if trimmed else "EventEnvelope"
        )
    republish = pytest.importorskip("service.followers.republish")
    assert asyncapi.HEADER_REPLAY == republish.HEADER_REPLAY
    assert asyncapi.REPLAY_SUBJECT_PREFIX == republish.DEFAULT_REPLAY_PREFIX


def test_a_real_trimmed_payload_decodes_as_the_documented_envelope() -> None:
    body = encode_event(NodeExecuteAfterData(node_id="big", output="x" * 100))
    event = RawEnvelope(
        event_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        seq=4,
        global_position=17,
        type="node_execute_after_data",
        tenant="default",
        workflow_id="wf",
        recorded_at=datetime(2024, 5, 1, tzinfo=UTC),
        schema_version=1,
        prev_hash="00" * 32,
        hash="11" * 32,
        data=msgspec.Raw(body),
    )
    payload = nats_client.trimmed_payload(event)
    decoded = msgspec.json.decode(payload, type=TrimmedEventEnvelope, strict=True)
    assert decoded.data == TrimmedEventData(
        trimmed=True,
        type="node_execute_after_data",
        size_bytes=len(body),
        sha256=decoded.data.sha256,
        events_url=f"/v1/runs/{event.run_id}/events?after_seq=3&limit=1",
        node_id="big",
    )
    assert (decoded.event_id, decoded.seq, decoded.hash) == (event.event_id, 4, event.hash)
    assert set(msgspec.json.decode(payload)["data"]) == set(msgspec.structs.asdict(decoded.data))
