"""The n8n-compatible push protocol: our events mapped to n8n's message names (pure functions)."""

from __future__ import annotations

from typing import Any

import msgspec

MAX_MESSAGE_BYTES = 5 * 1024 * 1024
"""A message larger than this is never sent whole: it is trimmed, and the client fetches the output over REST."""

_n8n_status = {"succeeded": "success", "failed": "error", "cancelled": "canceled"}


def push_message(envelope: dict[str, Any]) -> dict[str, Any] | None:
    """The n8n push message for one of our envelopes, or None for events n8n has no message for."""
    data = envelope["data"]
    run_id = envelope["run_id"]
    base = {"executionId": run_id, "workflowId": envelope["workflow_id"], "seq": envelope["seq"]}
    kind = envelope["type"]
    trimmed = data.get("trimmed") is True
    if trimmed and kind == "node_execute_after_data":
        return trimmed_message(envelope, data.get("size_bytes", 0))
    if trimmed:
        # Any body can be over NATS' max payload (a huge error message): its fields are behind
        # the URL, so the message says it is trimmed and where the whole event is.
        base = {**base, "trimmed": True, "url": _event_url(envelope)}
    match kind:
        case "run_started":
            return {
                "type": "executionStarted",
                "data": {**base, "mode": "trigger", "startedAt": envelope["recorded_at"]},
            }
        case "run_recovered":
            return {"type": "executionRecovered", "data": base}
        case "run_waiting":
            return {"type": "executionWaiting", "data": base}
        case "node_execute_before":
            return {
                "type": "nodeExecuteBefore",
                "data": {
                    **base,
                    "nodeName": data.get("node_id"),
                    "data": {"startTime": envelope["recorded_at"], "attempt": data.get("attempt", 1)},
                },
            }
        case "node_execute_after":
            error = data.get("error")
            return {
                "type": "nodeExecuteAfter",
                "data": {
                    **base,
                    "nodeName": data.get("node_id"),
                    "data": {
                        "executionStatus": _n8n_status.get(data.get("status"), data.get("status")),
                        "executionTime": data.get("duration_ms", 0),
                        "itemCount": data.get("item_count", 0),
                        "attempt": data.get("attempt", 1),
                        **({"error": error} if error else {}),
                    },
                },
            }
        case "node_execute_after_data":
            return {
                "type": "nodeExecuteAfterData",
                "data": {
                    **base,
                    "nodeName": data.get("node_id"),
                    "data": data.get("output"),
                    "marker": data.get("marker"),
                },
            }
        case "run_finished" | "run_cancelled":
            status = "cancelled" if kind == "run_cancelled" else data.get("status")
            return {
                "type": "executionFinished",
                "data": {
                    **base,
                    "status": _n8n_status.get(status, status) if status else None,
                    "error": data.get("error") or data.get("reason"),
                },
            }
    return None


def trimmed_message(envelope: dict[str, Any], size_bytes: int) -> dict[str, Any]:
    data = envelope["data"]
    return {
        "type": "nodeExecuteAfterData",
        "data": {
            "executionId": envelope["run_id"],
            "workflowId": envelope["workflow_id"],
            "seq": envelope["seq"],
            "nodeName": data.get("node_id"),
            "trimmed": True,
            "sizeBytes": size_bytes,
            "url": _event_url(envelope),
        },
    }


def _event_url(envelope: dict[str, Any]) -> str:
    """The REST URL that returns exactly this one event."""
    return f"/v1/runs/{envelope['run_id']}/events?after_seq={envelope['seq'] - 1}&limit=1"


def encode_message(envelope_json: bytes) -> bytes | None:
    """The wire bytes of the push message for an envelope; trimmed above ``MAX_MESSAGE_BYTES``."""
    envelope = msgspec.json.decode(envelope_json)
    message = push_message(envelope)
    if message is None:
        return None
    encoded = msgspec.json.encode(message)
    if len(encoded) > MAX_MESSAGE_BYTES:
        # The same message in its trimmed form, as if the relay had trimmed the body: a huge
        # error still ends the run with executionFinished (not an output message).
        pointer = {
            "trimmed": True,
            "type": envelope["type"],
            "size_bytes": len(encoded),
            "node_id": envelope["data"].get("node_id"),
        }
        encoded = msgspec.json.encode(push_message({**envelope, "data": pointer}))
    return encoded
