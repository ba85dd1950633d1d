"""The push channel of ``schemas/asyncapi.json`` describes the WebSocket the service really serves.

The client messages are exactly those ``PushConnection.handle`` accepts, the server messages
exactly those ``push_messages`` can produce (plus ``error``), the close codes those
``service/api/push.py`` uses, and a real run's messages validate against the document's own
JSON Schemas (not only against the Structs they are generated from).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from schemas import push as push_schema
from schemas.codec import encode
from schemas.envelope import RawEnvelope
from schemas.events import (
    EVENT_TYPE_BY_TAG,
    Event,
    LogLine,
    NodeError,
    NodeExecuteAfter,
    NodeExecuteAfterData,
    NodeExecuteBefore,
    NodeLog,
    NodeRetryScheduled,
    NodeSkipped,
    RunCancelled,
    RunCancelRequested,
    RunFinished,
    RunQueued,
    RunRecovered,
    RunResumed,
    RunStarted,
    RunWaiting,
)
from schemas.push import (
    CLIENT_MESSAGES,
    CLOSE_CODES,
    SERVER_MESSAGES,
    decode_server_message,
)
from service.api import auth
from service.api import push as push_api
from service.api.auth import Principal
from service.config import Settings
from service.followers.push_messages import encode_message
from service.infra.nats import trimmed_payload
from tests.helpers.hash_chains import build_chain
from tests.helpers.paths import REPO_ROOT

ASYNCAPI_FILE = REPO_ROOT / "schemas" / "asyncapi.json"
RUN = uuid.UUID("01a23f93-66e6-73c6-8449-2e7560eafe08")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(ASYNCAPI_FILE.read_bytes())
    return loaded


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def _operation_messages(document: dict[str, Any], operation: str) -> dict[str, dict[str, Any]]:
    """``type`` -> message object of every message of a push operation."""
    op = document["operations"][operation]
    assert op["channel"]["$ref"] == "#/channels/push"
    messages = [_resolve(document, _resolve(document, m["$ref"])["$ref"]) for m in op["messages"]]
    return {message["name"]: message for message in messages}


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema validator of ``schema`` whose ``#/components/...`` references resolve
    in the document (the AsyncAPI Schema format is a superset of draft 07)."""
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    return jsonschema_rs.Draft7Validator({"allOf": [schema], "components": document["components"]})


def _check_against_document(document: dict[str, Any], messages: dict[str, Any], message: Any) -> None:
    """``message`` (decoded JSON) is one of ``messages`` by its type and valid for its payload."""
    assert message["type"] in messages, message["type"]
    errors = list(_validator(document, messages[message["type"]]["payload"]).iter_errors(message))
    assert not errors, [str(e) for e in errors]


# -- channel, server, security ---------------------------------------------------------------------


def test_the_channel_is_the_push_route_on_the_http_server(document: dict[str, Any]) -> None:
    channel = document["channels"]["push"]
    router = push_api.push_router()
    assert channel["address"] == push_schema.PUSH_PATH
    assert {router.path + path for path in push_api.push_channel.paths} == {push_schema.PUSH_PATH}

    (server_ref,) = channel["servers"]
    server = _resolve(document, server_ref["$ref"])
    assert server["protocol"] == "ws"
    assert server["host"] == f"{Settings().http_host}:{Settings().http_port}"
    schemes = [_resolve(document, ref["$ref"]) for ref in server["security"]]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes[0].items()
    assert {"type": "httpApiKey", "in": "cookie", "name": auth.SESSION_COOKIE}.items() <= schemes[1].items()
    assert push_schema.SESSION_COOKIE == auth.SESSION_COOKIE
    assert auth.ROUTE_SCOPES[push_api.push_channel.handler_name] == push_schema.READ_SCOPE

    binding = channel["bindings"]["ws"]
    assert binding["method"] == "GET"
    query = _resolve(document, binding["query"]["$ref"])
    assert query["type"] == "object" and query["required"] == ["pushRef"]
    assert (query["properties"]["pushRef"]["minLength"], query["properties"]["pushRef"]["maxLength"]) == (
        1,
        200,
    )


def _close_codes_in(module: Any) -> set[int]:
    """Every literal close code passed to a ``.close(...)`` call in ``module``'s source."""
    codes: set[int] = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "close":
            arguments = [*node.args[:1], *(k.value for k in node.keywords if k.arg == "code")]
            codes |= {a.value for a in arguments if isinstance(a, ast.Constant) and isinstance(a.value, int)}
    return codes


def test_the_close_codes_are_the_ones_the_service_uses(document: dict[str, Any]) -> None:
    used = _close_codes_in(push_api)
    assert used == set(CLOSE_CODES) == {1001, 1008, 1013, 4008}
    assert document["channels"]["push"]["x-close-codes"] == {str(c): r for c, r in CLOSE_CODES.items()}


def test_operations_split_the_messages_by_direction(document: dict[str, Any]) -> None:
    received = _operation_messages(document, "receivePushRequests")
    sent = _operation_messages(document, "sendPushMessages")
    assert document["operations"]["receivePushRequests"]["action"] == "receive"
    assert document["operations"]["sendPushMessages"]["action"] == "send"
    assert set(received) == set(CLIENT_MESSAGES) and set(sent) == set(SERVER_MESSAGES)
    assert set(document["channels"]["push"]["messages"]) == set(received) | set(sent)
    for tag, (whole, trimmed) in SERVER_MESSAGES.items():
        payload = sent[tag]["payload"]
        refs = [p["$ref"] for p in payload["oneOf"]] if trimmed else [payload["$ref"]]
        assert refs == [f"#/components/schemas/{cls.__name__}" for cls in (whole, trimmed) if cls]
        for ref in refs:  # each payload's `type` is the message's name
            assert _resolve(document, ref)["properties"]["type"]["enum"] == [tag]


# -- what a client sends: PushConnection.handle -----------------------------------------------------


class _Store:
    """Knows no run of the caller's tenant: every lookup is ``no run <id>``."""

    async def run_tenant(self, run_id: uuid.UUID) -> str | None:
        return None

    async def read_run(self, run_id: uuid.UUID, **kwargs: Any) -> list[Any]:
        return []


def _connection(*scopes: str) -> push_api.PushConnection:
    runtime = SimpleNamespace(
        settings=SimpleNamespace(push_queue_size=100, push_send_timeout_s=1.0, max_json_depth=64),
        store=_Store(),
        push=None,
        queue=None,
    )
    principal = Principal("default", frozenset(scopes or {push_schema.READ_SCOPE}), "key:test")
    return push_api.PushConnection(None, runtime, "test", principal)  # type: ignore[arg-type]


async def _replies(connection: push_api.PushConnection, message: Any) -> list[dict[str, Any]]:
    """What ``handle`` answers to ``message``; every answer must be a documented ``error``."""
    await connection.handle(message)
    replies = []
    while not connection.queue.empty():
        reply = msgspec.json.decode(connection.queue.get_nowait())
        error = decode_server_message(reply)
        assert isinstance(error, push_schema.PushErrorMessage)
        replies.append(reply)
    return replies


async def test_the_documented_client_messages_are_exactly_those_handle_accepts(
    document: dict[str, Any],
) -> None:
    documented = set(_operation_messages(document, "receivePushRequests"))
    assert documented == set(CLIENT_MESSAGES) == {"subscribe", "unsubscribe", "resume", "cancel"}
    (refused,) = await _replies(_connection(), {"type": "nodeExecuteBefore", "data": {}})
    hint = re.fullmatch(r"unknown message type '\w+'; use (.+)", refused["data"]["message"])
    assert hint is not None
    assert set(re.split(r", | or ", hint.group(1))) == documented
    for tag in documented:  # each is a known type: refused only for its missing run id
        (reply,) = await _replies(_connection(), {"type": tag, "data": {}})
        assert reply["data"]["message"] == f"{tag} needs data.executionId, a run id"


async def test_every_documented_client_example_is_understood(document: dict[str, Any]) -> None:
    expected = {
        "subscribe": [f"no run {RUN}"],
        "resume": [f"no run {RUN}"],
        "unsubscribe": [],
        "cancel": [f"subscribe to run {RUN} before cancelling it"],
    }
    for tag, message in _operation_messages(document, "receivePushRequests").items():
        assert message["examples"]
        for example in message["examples"]:
            _check_against_document(document, {tag: message}, example["payload"])
            msgspec.convert(example["payload"], push_schema.PushClientMessage, strict=True)
            replies = await _replies(_connection(), example["payload"])
            assert [r["data"]["message"] for r in replies] == expected[tag], example


@pytest.mark.parametrize(
    ("last_seq", "valid"),
    [(-2, False), (-1, True), (0, True), (push_schema.MAX_SEQ, True), (push_schema.MAX_SEQ + 1, False)]
    + [(value, False) for value in (True, "3", 1.5, None)],
)
async def test_resume_accepts_exactly_the_documented_last_seqs(last_seq: Any, valid: bool) -> None:
    message = {"type": "resume", "data": {"executionId": str(RUN), "lastSeq": last_seq}}
    try:
        msgspec.convert(message, push_schema.PushClientMessage, strict=True)
    except msgspec.ValidationError:
        documented = False
    else:
        documented = True
    assert documented is valid
    (reply,) = await _replies(_connection(), message)
    refused = reply["data"]["message"].startswith("resume needs data.lastSeq")
    assert refused is not valid  # a valid lastSeq gets as far as looking the run up
    assert push_schema.MAX_SEQ == push_api.MAX_SEQ


async def test_cancel_needs_the_documented_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    requested: list[tuple[uuid.UUID, str]] = []

    async def request_cancel(queue: Any, run_id: uuid.UUID, reason: str, actor: str, **kw: Any) -> None:
        requested.append((run_id, reason))

    monkeypatch.setattr(push_api, "request_cancel", request_cancel)
    cancel = {"type": "cancel", "data": {"executionId": str(RUN)}}
    for scopes, answers in (
        ((push_schema.READ_SCOPE,), [f"cancel needs the '{push_schema.CANCEL_SCOPE}' scope"]),
        ((push_schema.READ_SCOPE, push_schema.CANCEL_SCOPE), []),
    ):
        connection = _connection(*scopes)
        connection.pumps[str(RUN)] = asyncio.get_running_loop().create_future()  # type: ignore[assignment]
        assert [r["data"]["message"] for r in await _replies(connection, cancel)] == answers
    assert requested == [(RUN, "cancelled from push")]  # the documented default reason


# -- what the server sends: push_messages -----------------------------------------------------------

BODIES: dict[str, Event] = {
    "run_queued": RunQueued(workflow_version="v1", node_count=2),
    "run_started": RunStarted(worker_id="host:1:a"),
    "run_recovered": RunRecovered(worker_id="host:2:b", completed_nodes=["a"], lease_expired=True),
    "run_waiting": RunWaiting(reason="a signal", node_id="a"),
    "run_resumed": RunResumed(reason="a signal", actor="key:k"),
    "run_cancel_requested": RunCancelRequested(reason="stop", requested_by="key:k"),
    "run_cancelled": RunCancelled(reason="stop"),
    "run_finished": RunFinished(status="failed", error="node a failed", duration_ms=12.5),
    "node_execute_before": NodeExecuteBefore(node_id="a", node_type="python", attempt=2),
    "node_execute_after": NodeExecuteAfter(
        node_id="a",
        node_type="python",
        status="failed",
        attempt=2,
        duration_ms=3.5,
        error=NodeError(kind="ValueError", message="bad input", retryable=False),
    ),
    "node_execute_after_data": NodeExecuteAfterData(node_id="a", attempt=2, output={"rows": [1, 2]}),
    "node_retry_scheduled": NodeRetryScheduled(node_id="a", attempt=1, next_attempt=2, delay_ms=100),
    "node_skipped": NodeSkipped(node_id="b", reason="run stopped: node a failed"),
    "node_log": NodeLog(
        node_id="a", attempt=2, lines=[LogLine(at="2025-01-02T03:04:05.000Z", level="info", message="hi")]
    ),
}
"""One body of every event type."""


def _stored(event: Event, seq: int) -> RawEnvelope:
    links: list[tuple[uuid.UUID, datetime, Event]] = [
        (uuid.uuid4(), datetime(2025, 1, 2, tzinfo=UTC), RunQueued(workflow_version="v"))
    ] * seq
    links.append((uuid.uuid4(), datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC), event))
    return build_chain(RUN, "default", "wf-1", links)[-1]


def test_the_documented_server_messages_are_exactly_those_push_messages_produces(
    document: dict[str, Any],
) -> None:
    assert set(BODIES) == set(EVENT_TYPE_BY_TAG), "add the new event type to BODIES"
    whole: set[str] = set()
    trimmed: set[str] = set()
    for event in BODIES.values():
        envelope = _stored(event, seq=3)
        for wire, produced in ((encode(envelope), whole), (trimmed_payload(envelope), trimmed)):
            message = encode_message(wire)
            if message is not None:
                produced.add(msgspec.json.decode(message)["type"])
    sent = _operation_messages(document, "sendPushMessages")
    # `error` is PushConnection's answer to a refused client message (checked above).
    assert whole | {"error"} == set(sent) == set(SERVER_MESSAGES)
    assert trimmed == {tag for tag, message in sent.items() if "oneOf" in message["payload"]}
    assert trimmed == {tag for tag, (_, cls) in SERVER_MESSAGES.items() if cls is not None}


def _retry_demo_run() -> list[RawEnvelope]:
    """The ``retry-demo`` run of docs/push.md: node flaky fails twice, then it and done succeed."""
    failed = NodeError(kind="fail", message="service busy", retryable=True)
    bodies: list[Event] = [RunQueued(workflow_version="2fcfe36ef05a6022", node_count=2), RunStarted("w")]
    for attempt in (1, 2):
        bodies += [
            NodeExecuteBefore(node_id="flaky", node_type="python", attempt=attempt),
            NodeExecuteAfter(
                node_id="flaky", node_type="python", status="failed", attempt=attempt, error=failed
            ),
            NodeExecuteAfterData(node_id="flaky", attempt=attempt),
            NodeRetryScheduled(node_id="flaky", attempt=attempt, next_attempt=attempt + 1, delay_ms=200),
        ]
    for node, attempt in (("flaky", 3), ("done", 1)):
        bodies += [
            NodeExecuteBefore(node_id=node, node_type="python", attempt=attempt),
            NodeExecuteAfter(
                node_id=node, node_type="python", status="succeeded", attempt=attempt, item_count=1
            ),
            NodeExecuteAfterData(node_id=node, attempt=attempt, output={"attempt": 3}),
        ]
    bodies.append(RunFinished(status="succeeded", duration_ms=827.9))
    start = datetime(2026, 12, 4, 5, 42, 33, tzinfo=UTC)
    links = [(uuid.uuid4(), start + timedelta(milliseconds=40 * i), b) for i, b in enumerate(bodies)]
    return build_chain(RUN, "default", "retry-demo", links)


def _cancelled_run() -> list[RawEnvelope]:
    """A run cancelled from the push channel while its node was running, then recovered."""
    bodies: list[Event] = [
        RunQueued(workflow_version="v1", node_count=2),
        RunStarted("w1"),
        NodeExecuteBefore(node_id="slow", node_type="sleep"),
        RunRecovered(worker_id="w2", completed_nodes=[], lease_expired=True),
        NodeExecuteBefore(node_id="slow", node_type="sleep", attempt=2),
        RunCancelRequested(reason="stopped from the UI", requested_by="key:k"),
        NodeExecuteAfter(
            node_id="slow",
            node_type="sleep",
            status="failed",
            attempt=2,
            error=NodeError(kind="cancelled", message="node slow was cancelled", retryable=False),
        ),
        NodeSkipped(node_id="after", reason="run cancelled: stopped from the UI"),
        RunCancelled(reason="stopped from the UI"),
    ]
    start = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)
    links = [(uuid.uuid4(), start + timedelta(seconds=i), b) for i, b in enumerate(bodies)]
    return build_chain(uuid.uuid4(), "default", "slow-flow", links)


@pytest.mark.parametrize(
    ("run", "types"),
    [
        pytest.param(
            _retry_demo_run,
            ["executionStarted"]
            + ["nodeExecuteBefore", "nodeExecuteAfter", "nodeExecuteAfterData"] * 4
            + ["executionFinished"],
            id="retry-demo",
        ),
        pytest.param(
            _cancelled_run,
            [
                "executionStarted",
                "nodeExecuteBefore",
                "executionRecovered",
                "nodeExecuteBefore",
                "nodeExecuteAfter",
                "executionFinished",
            ],
            id="cancelled",
        ),
    ],
)
def test_a_real_runs_messages_validate_against_the_document(
    document: dict[str, Any], run: Any, types: list[str]
) -> None:
    sent = _operation_messages(document, "sendPushMessages")
    envelopes = run()
    pushed = [m for e in envelopes if (m := encode_message(encode(e))) is not None]
    messages = [msgspec.json.decode(m) for m in pushed]
    assert [m["type"] for m in messages] == types
    seqs = [m["data"]["seq"] for m in messages]
    assert seqs == sorted(seqs) and all(
        m["data"]["executionId"] == str(envelopes[0].run_id) for m in messages
    )
    for message in messages:
        _check_against_document(document, sent, message)
        assert msgspec.to_builtins(decode_server_message(message)) == message
    # ... and the same run's events as NATS may deliver them: every body trimmed.
    for envelope in envelopes:
        message = encode_message(trimmed_payload(envelope))
        if message is not None:
            decoded = msgspec.json.decode(message)
            _check_against_document(document, sent, decoded)
            assert decoded["data"]["trimmed"] is True
            assert type(decode_server_message(decoded)) is SERVER_MESSAGES[decoded["type"]][1]


def test_the_examples_validate_and_match_the_docs_run(document: dict[str, Any]) -> None:
    sent = _operation_messages(document, "sendPushMessages")
    for tag, message in sent.items():
        assert message["examples"], tag
        for example in message["examples"]:
            _check_against_document(document, sent, example["payload"])
            assert example["payload"]["type"] == tag
            assert msgspec.to_builtins(decode_server_message(example["payload"])) == example["payload"]
    ours = {m["data"]["seq"]: m for m in map(msgspec.json.decode, _pushed(_retry_demo_run()))}
    for tag in ("nodeExecuteBefore", "nodeExecuteAfterData"):  # the docs' run, field for field
        example = sent[tag]["examples"][0]["payload"]
        assert example["data"].keys() == ours[example["data"]["seq"]]["data"].keys()


def _pushed(envelopes: list[RawEnvelope]) -> list[bytes]:
    return [m for e in envelopes if (m := encode_message(encode(e))) is not None]


def test_trimmed_and_whole_forms_never_both_match(document: dict[str, Any]) -> None:
    """``oneOf``: a whole message is not a valid trimmed one, nor the other way round."""
    sent = _operation_messages(document, "sendPushMessages")
    for tag, (whole, trimmed) in SERVER_MESSAGES.items():
        if trimmed is None:
            continue
        envelope = _stored(next(b for b in BODIES.values() if _n8n_type(b) == tag), seq=3)
        for wire, cls in ((encode(envelope), whole), (trimmed_payload(envelope), trimmed)):
            message = msgspec.json.decode(encode_message(wire) or b"null")
            _check_against_document(document, sent, message)
            schema = {"$ref": f"#/components/schemas/{cls.__name__}"}
            other = {"$ref": f"#/components/schemas/{(trimmed if cls is whole else whole).__name__}"}
            assert _validator(document, schema).is_valid(message)
            assert not _validator(document, other).is_valid(message)


def _n8n_type(event: Event) -> str | None:
    message = encode_message(encode(_stored(event, seq=1)))
    return None if message is None else str(msgspec.json.decode(message)["type"])
