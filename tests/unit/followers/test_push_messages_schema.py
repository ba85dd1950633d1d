"""Every message ``push_messages`` produces is one the AsyncAPI document describes (``schemas.push``).

The Structs in ``schemas.push`` generate the push channel's JSON Schemas; a pushed message
converts strictly into exactly one of them (server messages forbid unknown fields, so a field
sent but not documented fails too) and converts back to the same JSON: nothing documented is
missing, nothing sent is undocumented. The document-level checks (the JSON Schemas themselves,
a real run, the client side) are in ``tests/unit/schemas/test_asyncapi_push.py``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import encode
from schemas.envelope import RawEnvelope
from schemas.events import (
    EVENT_TYPE_BY_TAG,
    Event,
    NodeError,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    RunCancelled,
    RunFinished,
    RunQueued,
    RunRecovered,
    RunStarted,
    RunWaiting,
)
from schemas.push import SERVER_MESSAGES, decode_server_message
from service.followers.push_messages import MAX_MESSAGE_BYTES, encode_message
from service.infra.nats import trimmed_payload
from tests.helpers.hash_chains import build_chain
from tests.helpers.strategies import EVENT_STRATEGIES, envelopes


def documented(message_json: bytes) -> msgspec.Struct:
    """The documented Struct ``message_json`` is, checked both ways."""
    message = msgspec.json.decode(message_json)
    struct = decode_server_message(message)  # raises unless it is exactly a documented message
    assert msgspec.to_builtins(struct) == message
    whole, trimmed = SERVER_MESSAGES[message["type"]]
    assert type(struct) is (trimmed if message["data"].get("trimmed") is True else whole)
    return struct


def _raw(wire: bytes) -> RawEnvelope:
    return msgspec.json.decode(wire, type=RawEnvelope)


@pytest.mark.parametrize("tag", sorted(EVENT_TYPE_BY_TAG))
@settings(max_examples=25)
@given(data=st.data())
def test_every_pushed_message_is_documented(tag: str, data: st.DataObject) -> None:
    body = data.draw(EVENT_STRATEGIES[EVENT_TYPE_BY_TAG[tag]], label="body")
    envelope = msgspec.structs.replace(data.draw(envelopes(), label="envelope"), type=tag, data=body)
    wire = encode(envelope)
    # As read from the log (whole), and as NATS delivers a body too large for it (trimmed).
    for source in (wire, trimmed_payload(_raw(wire))):
        message = encode_message(source)
        if message is not None:
            documented(message)


def _stored(event: Event) -> RawEnvelope:
    """``event`` as the log stores it, at seq 2 of a run of its own."""
    links: list[tuple[uuid.UUID, datetime, Event]] = [
        (uuid.uuid4(), datetime(2025, 1, 2, tzinfo=UTC), RunQueued(workflow_version="v"))
    ] * 2
    links.append((uuid.uuid4(), datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), event))
    return build_chain(uuid.uuid4(), "acme", "wf-1", links)[-1]


_HUGE = "x" * (MAX_MESSAGE_BYTES + 1)


@pytest.mark.parametrize(
    ("body", "n8n_type", "trimmed"),
    [
        # The huge field is not part of the message: sent whole.
        pytest.param(RunStarted(worker_id=_HUGE), "executionStarted", False, id="run_started"),
        pytest.param(RunRecovered(worker_id=_HUGE), "executionRecovered", False, id="run_recovered"),
        pytest.param(RunWaiting(reason=_HUGE), "executionWaiting", False, id="run_waiting"),
        pytest.param(
            NodeExecuteBefore(node_id="a", node_type=_HUGE),
            "nodeExecuteBefore",
            False,
            id="node_execute_before",
        ),
        # It is: the trimmed form of the same message.
        pytest.param(
            NodeExecuteAfter(
                node_id="a", node_type="python", status="failed", error=NodeError(kind="E", message=_HUGE)
            ),
            "nodeExecuteAfter",
            True,
            id="node_execute_after",
        ),
        pytest.param(
            NodeExecuteAfterData(node_id="a", output=_HUGE),
            "nodeExecuteAfterData",
            True,
            id="node_execute_after_data",
        ),
        pytest.param(RunFinished(status="failed", error=_HUGE), "executionFinished", True, id="run_finished"),
        pytest.param(RunCancelled(reason=_HUGE), "executionFinished", True, id="run_cancelled"),
    ],
)
def test_a_huge_event_read_from_the_log_is_pushed_as_a_documented_message_of_its_type(
    body: Event, n8n_type: str, trimmed: bool
) -> None:
    """Over ``MAX_MESSAGE_BYTES`` a message goes in its trimmed form, keeping its type: a run
    whose error is huge still ends with ``executionFinished``."""
    envelope = _stored(body)
    message = encode_message(encode(envelope))
    assert message is not None and len(message) <= MAX_MESSAGE_BYTES
    struct = documented(message)
    assert msgspec.json.decode(message)["type"] == n8n_type
    assert type(struct) is SERVER_MESSAGES[n8n_type][1 if trimmed else 0]
    if trimmed:
        data: Any = msgspec.json.decode(message)["data"]
        assert data["url"] == f"/v1/runs/{envelope.run_id}/events?after_seq=1&limit=1"
        assert len(message) < 1000
