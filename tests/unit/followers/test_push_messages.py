"""The n8n push protocol: each of our events becomes its n8n message, or none.

The WebSocket channel (``WS /v1/push``) sends ``encode_message(envelope JSON)`` for every
event of a subscribed run; the envelope JSON is what the push hub carries, from the log or
from NATS (where the relay may have replaced a too-large body by a pointer to it).
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
from schemas.envelope import EventEnvelope, RawEnvelope
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
)
from service.followers.push_messages import MAX_MESSAGE_BYTES, encode_message, push_message
from service.infra.nats import trimmed_payload
from tests.helpers.hash_chains import build_chain
from tests.helpers.strategies import EVENT_STRATEGIES, envelopes

N8N_TYPE = {
    "run_queued": None,
    "run_started": "executionStarted",
    "run_recovered": "executionRecovered",
    "run_waiting": "executionWaiting",
    "run_resumed": None,
    "run_cancel_requested": None,
    "run_cancelled": "executionFinished",
    "run_finished": "executionFinished",
    "node_execute_before": "nodeExecuteBefore",
    "node_execute_after": "nodeExecuteAfter",
    "node_execute_after_data": "nodeExecuteAfterData",
    "node_retry_scheduled": None,
    "node_skipped": None,
    "node_log": None,  # n8n has no such message: read logs with GET /v1/runs/{id}/logs
}
"""The n8n message each event type is pushed as (None: not pushed on the n8n channel)."""

N8N_STATUS = {"succeeded": "success", "failed": "error", "cancelled": "canceled"}


def expected_message(envelope: EventEnvelope) -> dict[str, Any] | None:
    """The n8n message for ``envelope``, spelled out field by field."""
    body: Any = envelope.data
    wire = msgspec.json.decode(encode(envelope))
    base = {"executionId": str(envelope.run_id), "workflowId": envelope.workflow_id, "seq": envelope.seq}
    match envelope.type:
        case "run_started":
            data = {**base, "mode": "trigger", "startedAt": wire["recorded_at"]}
        case "run_recovered" | "run_waiting":
            data = base
        case "node_execute_before":
            data = {
                **base,
                "nodeName": body.node_id,
                "data": {"startTime": wire["recorded_at"], "attempt": body.attempt},
            }
        case "node_execute_after":
            details = {
                "executionStatus": N8N_STATUS[body.status],
                "executionTime": body.duration_ms,
                "itemCount": body.item_count,
                "attempt": body.attempt,
            }
            if body.error is not None:
                details["error"] = msgspec.to_builtins(body.error)
            data = {**base, "nodeName": body.node_id, "data": details}
        case "node_execute_after_data":
            data = {
                **base,
                "nodeName": body.node_id,
                "data": body.output,
                "marker": msgspec.to_builtins(body.marker),
            }
        case "run_finished":
            data = {**base, "status": N8N_STATUS[body.status], "error": body.error or None}
        case "run_cancelled":
            data = {**base, "status": "canceled", "error": body.reason}  # the reason as given
        case _:
            return None
    return {"type": N8N_TYPE[envelope.type], "data": data}


def pushed(envelope_json: bytes) -> dict[str, Any] | None:
    message = encode_message(envelope_json)
    return None if message is None else msgspec.json.decode(message)


def stored(event: Event, *, seq: int = 0) -> RawEnvelope:
    """``event`` as the log stores it, at ``seq`` of a run of its own."""
    links = [(uuid.uuid4(), datetime(2025, 1, 2, tzinfo=UTC), RunQueued(workflow_version="v"))] * seq
    links.append((uuid.uuid4(), datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), event))
    return build_chain(uuid.uuid4(), "acme", "wf-1", links)[-1]


def test_every_event_type_has_a_decided_n8n_message() -> None:
    assert set(N8N_TYPE) == set(EVENT_TYPE_BY_TAG)


@pytest.mark.parametrize("tag", sorted(N8N_TYPE))
@settings(max_examples=25)
@given(data=st.data())
def test_every_event_is_pushed_as_its_n8n_message_or_not_at_all(tag: str, data: st.DataObject) -> None:
    body = data.draw(EVENT_STRATEGIES[EVENT_TYPE_BY_TAG[tag]], label="body")
    envelope = msgspec.structs.replace(data.draw(envelopes(), label="envelope"), type=tag, data=body)
    wire = encode(envelope)
    message = pushed(wire)
    assert message == expected_message(envelope)
    assert (message is None) == (N8N_TYPE[tag] is None)
    assert push_message(msgspec.json.decode(wire)) == message  # encode_message adds only the bytes


def test_a_message_up_to_the_limit_is_sent_whole_and_one_byte_more_is_trimmed() -> None:
    def after_data(output: str) -> bytes:
        return encode(stored(NodeExecuteAfterData(node_id="big", output=output), seq=4))

    overhead = len(encode_message(after_data("")) or b"")
    whole = encode_message(after_data("x" * (MAX_MESSAGE_BYTES - overhead)))
    assert whole is not None and len(whole) == MAX_MESSAGE_BYTES
    assert msgspec.json.decode(whole)["data"]["data"] == "x" * (MAX_MESSAGE_BYTES - overhead)

    envelope = stored(
        NodeExecuteAfterData(node_id="big", output="x" * (MAX_MESSAGE_BYTES - overhead + 1)), seq=4
    )
    trimmed = encode_message(encode(envelope))
    assert trimmed is not None and len(trimmed) < 1000
    assert msgspec.json.decode(trimmed) == {
        "type": "nodeExecuteAfterData",
        "data": {
            "executionId": str(envelope.run_id),
            "workflowId": "wf-1",
            "seq": 4,
            "nodeName": "big",
            "trimmed": True,
            "sizeBytes": MAX_MESSAGE_BYTES + 1,
            # exactly this one event
            "url": f"/v1/runs/{envelope.run_id}/events?after_seq=3&limit=1",
        },
    }


def test_an_output_the_relay_trimmed_is_pushed_as_a_pointer_to_the_event() -> None:
    event = stored(NodeExecuteAfterData(node_id="big", output="y" * 5000), seq=7)
    message = pushed(trimmed_payload(event))
    assert message == {
        "type": "nodeExecuteAfterData",
        "data": {
            "executionId": str(event.run_id),
            "workflowId": "wf-1",
            "seq": 7,
            "nodeName": "big",
            "trimmed": True,
            "sizeBytes": len(event.data),
            "url": f"/v1/runs/{event.run_id}/events?after_seq=6&limit=1",
        },
    }


def _trimmed_cases() -> list[Any]:
    huge = "e" * 2_000_000  # e.g. an exception message: over NATS' default 1 MB max payload
    return [
        pytest.param(RunQueued(workflow_version="v", inputs={"blob": huge}), id="run_queued"),
        pytest.param(NodeExecuteBefore(node_id="a", node_type="python", attempt=2), id="node_execute_before"),
        pytest.param(
            NodeExecuteAfter(
                node_id="a",
                node_type="python",
                status="failed",
                error=NodeError(kind="ValueError", message=huge),
            ),
            id="node_execute_after",
        ),
        pytest.param(
            RunFinished(status="failed", error=f"node a failed (ValueError: {huge})"),
            id="run_finished",
        ),
        pytest.param(RunCancelled(reason=huge), id="run_cancelled"),
    ]


@pytest.mark.parametrize("event", _trimmed_cases())
def test_a_body_the_relay_trimmed_still_gets_its_message_type(event: Event) -> None:
    """Any body can exceed NATS' max payload; the relay then publishes ``trimmed_payload``."""
    envelope = stored(event, seq=2)
    message = pushed(trimmed_payload(envelope))
    expected = N8N_TYPE[envelope.type]
    assert (message and message["type"]) == expected
    if message is not None:
        assert message["data"]["executionId"] == str(envelope.run_id) and message["data"]["seq"] == 2
        if envelope.type != "node_execute_before":  # a small body is never trimmed
            assert message["data"]["trimmed"] is True
            assert message["data"]["url"] == f"/v1/runs/{envelope.run_id}/events?after_seq=1&limit=1"
