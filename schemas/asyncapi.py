"""The AsyncAPI 3.0 document of Flowledger's messages (``schemas/asyncapi.json``): what it publishes
on NATS, and the n8n-compatible WebSocket push channel of its HTTP API (``schemas.push``).

Guarantees: ``asyncapi_document()`` is pure and deterministic (same rules as
``schemas.export``: sorted keys, normalised docstrings, readable component
names). Payload schemas are generated from the same msgspec Structs as the
envelope the relay encodes (and, for the push channel, from the Structs in
``schemas.push`` that the tests check every pushed message against), so the
document cannot describe a field the service does not send. The committed
file is checked against this module by
``tests/unit/schemas/test_asyncapi_current.py`` (the push channel by
``test_asyncapi_push.py`` beside it); regenerate it with
``flowledger schemas export``.

Schemas are written in the AsyncAPI Schema format (a superset of JSON Schema
draft 07), so the two spots where msgspec emits OpenAPI 3.1 style are
rewritten: a tagged union's ``anyOf`` + ``discriminator`` object becomes
``oneOf`` + ``discriminator: "type"`` (exactly one variant matches, the tags
are distinct) with the tag -> schema map kept in ``x-discriminator-mapping``.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import msgspec

from schemas.envelope import Envelope, EventEnvelope
from schemas.events import EVENT_TYPE_BY_TAG, SCHEMA_VERSION

# Same normalisation and rendering as the JSON Schema files, so both stay byte-stable alike.
from schemas.export import _DATA_KEYS, _normalise, _render
from schemas.names import (
    HEADER_EXPECTED_LAST_SEQUENCE,
    HEADER_MSG_ID,
    HEADER_POSITION,
    HEADER_REPLAY,
    HEADER_SEQ,
    HEADER_SOURCE,
    HEADER_TRIMMED,
    REPLAY_SUBJECT_PREFIX,
    STREAM_NAME,
    SUBJECT_PREFIX,
)
from schemas.push import (
    CANCEL_SCOPE,
    CLIENT_MESSAGES,
    CLOSE_CODES,
    PUSH_PATH,
    PUSH_REF_MAX_LENGTH,
    READ_SCOPE,
    SERVER_MESSAGES,
    SESSION_COOKIE,
    PushQuery,
    examples,
)

ASYNCAPI_VERSION = "3.0.0"
EVENTS_SUBJECT_PREFIX = SUBJECT_PREFIX
NATS_SERVER = "local"
HTTP_SERVER = "localHttp"
PUSH_CHANNEL = "push"

_REF = "#/components/schemas/{name}"
_DIGITS = r"^[0-9]+$"


class TrimmedEventData(msgspec.Struct, frozen=True):
    """Stands in for an event body too large for one NATS message; fetch the full event over REST.

    Sent instead of ``data`` when the encoded envelope would exceed the NATS
    server's max payload (header ``Flowledger-Trimmed: true``). The envelope
    around it (ids, seq, hash chain) is unchanged. ``events_url`` is relative
    to the HTTP API and returns exactly this one event.
    """

    # The relay publishes exactly this Struct (service.infra.nats.trimmed_payload).
    trimmed: bool
    type: str
    size_bytes: int
    sha256: str
    events_url: str
    node_id: str | None = None
    """The event's ``node_id`` when its type has one (so consumers can route without the body)."""


TrimmedEventEnvelope = Envelope[TrimmedEventData]
"""What a trimmed message carries: the usual envelope with ``data`` replaced by the pointer."""


def _headers_schema(*, trimmed: bool, replay: bool) -> dict[str, Any]:
    """The NATS headers of a live (relay) or replayed (republish) message, whole or trimmed."""
    absent: dict[str, Any] = {"not": {}}  # JSON Schema for "this header is never sent"
    properties: dict[str, Any] = {
        HEADER_SEQ: {
            "type": "string",
            "pattern": _DIGITS,
            "description": "The event's `seq` within its run, in decimal.",
        },
        HEADER_POSITION: {
            "type": "string",
            "pattern": _DIGITS,
            "description": "The event's `global_position` in the whole log, in decimal.",
        },
        HEADER_SOURCE: {
            "type": "string",
            "description": "`<installation id>/<schema>` of the Flowledger log the event comes from.",
        },
    }
    required = [HEADER_SEQ, HEADER_POSITION]
    if replay:
        properties[HEADER_MSG_ID] = {
            **absent,
            "description": "Absent: a replayed copy must never be deduplicated against the original.",
        }
        properties[HEADER_REPLAY] = {
            "type": "string",
            "const": "true",
            "description": "A copy of a stored event, republished on request (not the live relay).",
        }
        required.append(HEADER_REPLAY)
    else:
        properties[HEADER_MSG_ID] = {
            "type": "string",
            "format": "uuid",
            "description": "The event's `event_id` (UUID v7). JetStream deduplicates on it; consumers can too.",
        }
        properties[HEADER_EXPECTED_LAST_SEQUENCE] = {
            "type": "string",
            "pattern": _DIGITS,
            "description": (
                "The stream sequence the relay expected before this message (its in-order publishing "
                "guard; the server keeps the header). Consumers can ignore it."
            ),
        }
        required += [HEADER_MSG_ID, HEADER_SOURCE]
    if trimmed:
        properties[HEADER_TRIMMED] = {
            "type": "string",
            "const": "true",
            "description": "`data` was replaced by a pointer (`TrimmedEventData`) to the full event.",
        }
        required.append(HEADER_TRIMMED)
    else:
        properties[HEADER_TRIMMED] = {**absent, "description": "Absent: `data` is the whole event body."}
    return {"type": "object", "properties": properties, "required": required}


def _asyncapi_dialect(value: Any) -> Any:
    """Rewrite msgspec's OpenAPI-style tagged unions into the AsyncAPI Schema format (see module doc)."""
    if isinstance(value, list):
        return [_asyncapi_dialect(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        out[key] = item if key in _DATA_KEYS else _asyncapi_dialect(item)
    discriminator = out.get("discriminator")
    if isinstance(discriminator, dict):
        out["oneOf"] = out.pop("anyOf")
        out["discriminator"] = discriminator["propertyName"]
        out["x-discriminator-mapping"] = discriminator["mapping"]
    return out


_PUSH_TYPES: list[type[msgspec.Struct]] = [
    PushQuery,
    *CLIENT_MESSAGES.values(),
    *(cls for pair in SERVER_MESSAGES.values() for cls in pair if cls is not None),
]
"""The push channel's Structs: their component schemas are named after the classes."""


def _payload_schemas() -> dict[str, Any]:
    """Component schemas of both envelopes, the push channel's messages and everything they
    reference, from the msgspec Structs (one generation, so a shared Struct is one component)."""
    (event_ref, trimmed_ref, *_), components = msgspec.json.schema_components(
        [EventEnvelope, TrimmedEventEnvelope, *_PUSH_TYPES], ref_template=_REF
    )
    # Generic Structs get names built from repr of their type arguments: unreadable and
    # different across Python versions, hence the rename (as in schemas.export).
    renames: dict[str, str] = {}
    for ref, name, description in (
        (event_ref["$ref"], "EventEnvelope", None),
        (
            trimmed_ref["$ref"],
            "TrimmedEventEnvelope",
            "An envelope whose body exceeded the NATS max payload: every field as in `EventEnvelope` "
            "(same ids, seq, position and hash chain) except `data`, a pointer to the full event.",
        ),
    ):
        old = ref.removeprefix("#/components/schemas/")
        component = components.pop(old)
        component["title"] = name
        if description is not None:
            component["description"] = description
        components[name] = component
        renames[ref] = _REF.format(name=name)
    normalised: dict[str, Any] = _asyncapi_dialect(_normalise(components, renames))
    return normalised


def _parameters() -> dict[str, Any]:
    identifier = "[A-Za-z0-9_-]{1,64}"
    return {
        "tenant": {
            "description": f"Tenant id ({identifier}); `default` unless the installation is multi-tenant.",
            "examples": ["default"],
        },
        "workflow_id": {
            "description": f"Workflow id ({identifier}) as registered.",
            "examples": ["order-pipeline"],
        },
        "run_id": {
            "description": "Run id: a UUID (v7), lowercase and hyphenated.",
            "examples": ["0190f5c2-8a4e-7c3b-9d2f-4b6a1e0c9f21"],
        },
        "type": {
            "description": "The event type tag (also the envelope's `type` and `data.type`).",
            "enum": list(EVENT_TYPE_BY_TAG),
        },
    }


def _channel(address_prefix: str, title: str, description: str, messages: list[str]) -> dict[str, Any]:
    return {
        "address": f"{address_prefix}.{{tenant}}.{{workflow_id}}.{{run_id}}.{{type}}",
        "title": title,
        "description": description,
        "servers": [{"$ref": f"#/servers/{NATS_SERVER}"}],
        "parameters": {name: {"$ref": f"#/components/parameters/{name}"} for name in _parameters()},
        "messages": {
            name[0].lower() + name[1:]: {"$ref": f"#/components/messages/{name}"} for name in messages
        },
    }


def _message(name: str, title: str, summary: str, headers: str, payload: str) -> dict[str, Any]:
    return {
        "name": name[0].lower() + name[1:],
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "headers": {"$ref": _REF.format(name=headers)},
        "payload": {"$ref": _REF.format(name=payload)},
    }


def _title(tag: str) -> str:
    """``nodeExecuteAfterData`` -> ``Node execute after data``."""
    return re.sub(r"(?<!^)([A-Z])", lambda m: " " + m.group(1).lower(), tag).capitalize()


def _summary(cls: type[msgspec.Struct]) -> str:
    """The first paragraph of a Struct's docstring, in Markdown."""
    doc = inspect.cleandoc(cls.__doc__ or "").split("\n\n", 1)[0]
    return " ".join(doc.split()).replace("``", "`")


def _push_message_key(tag: str) -> str:
    return "Push" + tag[0].upper() + tag[1:]


def _push_message(
    tag: str,
    whole: type[msgspec.Struct],
    trimmed: type[msgspec.Struct] | None,
    samples: list[tuple[str, str, msgspec.Struct]],
) -> dict[str, Any]:
    """A push message: its payload is the whole Struct, or exactly one of the whole and the trimmed."""
    payload: dict[str, Any] = {"$ref": _REF.format(name=whole.__name__)}
    if trimmed is not None:
        payload = {"oneOf": [payload, {"$ref": _REF.format(name=trimmed.__name__)}]}
    return {
        "name": tag,
        "title": _title(tag),
        "summary": _summary(whole),
        "contentType": "application/json",
        "payload": payload,
        "examples": [
            {"name": name, "summary": summary, "payload": msgspec.to_builtins(message)}
            for name, summary, message in samples
        ],
    }


_PUSH_DESCRIPTION = f"""\
The n8n-compatible push channel of the HTTP API: `GET {PUSH_PATH}?pushRef=<1 to {PUSH_REF_MAX_LENGTH}
characters>`, upgraded to a WebSocket. Every frame, both ways, is one JSON text frame
`{{"type": ..., "data": {{...}}}}`; runs are called executions, identified by their run id in
`executionId`.

A client `subscribe`s to runs (or `resume`s one after the last `seq` it processed) and receives each
run's messages in `seq` order, from the stored log and then live, each exactly once, until the run
ends with `executionFinished`. Several runs' messages interleave. Events with no n8n message
(`run_queued`, `node_retry_scheduled`, `node_skipped`, `run_cancel_requested`, `run_resumed`,
`node_log`) are not sent, so `seq` has gaps. A refused client message gets an `error` and the connection stays
open. Every message but `error` may come trimmed (`trimmed: true`, `url`): GET `url` for the whole
event.

Credentials: `Authorization: Bearer <token>` or the console's session cookie, with the
`{READ_SCOPE}` scope (`cancel` needs `{CANCEL_SCOPE}`); without them the upgrade is refused (HTTP 401
or 403). The server's close codes are in `x-close-codes`: after 1001 or 4008, reconnect and `resume`
each run from the last `seq` processed. See docs/push.md."""


_TRIMMED_SUMMARY = (
    "An event too large for one NATS message: the envelope with `data` replaced by a pointer; "
    "GET its `events_url` from the HTTP API for the full event."
)


_EVENTS_DESCRIPTION = f"""\
Every event of every run, relayed from the PostgreSQL event log to the JetStream stream
`{STREAM_NAME}` (subjects `{EVENTS_SUBJECT_PREFIX}.>`; these are the defaults, a deployment can
configure another stream name and subject prefix). The stream holds each event exactly once
(`Nats-Msg-Id` deduplication plus an in-order publishing guard) and in global order, so a run's
events arrive in `seq` order. Filter by subject, e.g. `{EVENTS_SUBJECT_PREFIX}.*.*.*.run_finished`
(every finished run) or `{EVENTS_SUBJECT_PREFIX}.default.order-pipeline.>` (one workflow).
Durable consumers should ack explicitly and deduplicate side effects on `event_id`: redelivery
after a crash is at-least-once. See `examples/subscriber.py` and `flowledger tail`."""

_REPLAY_DESCRIPTION = f"""\
One stored run's events sent again on request (`flowledger replay RUN --republish`), for a
consumer that wants to see a past run again without touching the live stream. Core NATS, not
JetStream: subscribe before republishing; the events arrive in `seq` order. Same envelope as
live events (trimmed the same way), marked `{HEADER_REPLAY}: true` and without `{HEADER_MSG_ID}`.
The prefix (default `{REPLAY_SUBJECT_PREFIX}`) is configurable but never overlaps the live one,
so the `{STREAM_NAME}` stream does not capture these subjects."""


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document (keys not yet sorted; ``render_asyncapi`` sorts them)."""
    messages = {
        "RunEvent": _message(
            "RunEvent",
            "Run event",
            "One event of a run: the envelope with the whole event body.",
            "EventHeaders",
            "EventEnvelope",
        ),
        "TrimmedRunEvent": _message(
            "TrimmedRunEvent",
            "Trimmed run event",
            _TRIMMED_SUMMARY,
            "TrimmedEventHeaders",
            "TrimmedEventEnvelope",
        ),
        "ReplayedRunEvent": _message(
            "ReplayedRunEvent",
            "Replayed run event",
            "A copy of one stored event of a run, republished on request.",
            "ReplayedEventHeaders",
            "EventEnvelope",
        ),
        "TrimmedReplayedRunEvent": _message(
            "TrimmedReplayedRunEvent",
            "Trimmed replayed run event",
            _TRIMMED_SUMMARY,
            "TrimmedReplayedEventHeaders",
            "TrimmedEventEnvelope",
        ),
    }
    samples = examples()
    for tag, cls in CLIENT_MESSAGES.items():
        messages[_push_message_key(tag)] = _push_message(tag, cls, None, samples[tag])
    for tag, (whole, trimmed) in SERVER_MESSAGES.items():
        messages[_push_message_key(tag)] = _push_message(tag, whole, trimmed, samples[tag])
    schemas = _payload_schemas()
    schemas["EventHeaders"] = _headers_schema(trimmed=False, replay=False)
    schemas["TrimmedEventHeaders"] = _headers_schema(trimmed=True, replay=False)
    schemas["ReplayedEventHeaders"] = _headers_schema(trimmed=False, replay=True)
    schemas["TrimmedReplayedEventHeaders"] = _headers_schema(trimmed=True, replay=True)
    live = ["RunEvent", "TrimmedRunEvent"]
    replayed = ["ReplayedRunEvent", "TrimmedReplayedRunEvent"]
    channels = {
        "runEvents": _channel(EVENTS_SUBJECT_PREFIX, "Run events", _EVENTS_DESCRIPTION, live),
        "replayEvents": _channel(REPLAY_SUBJECT_PREFIX, "Replayed run events", _REPLAY_DESCRIPTION, replayed),
    }
    channels["runEvents"]["x-jetstream-stream"] = STREAM_NAME
    channels[PUSH_CHANNEL] = {
        "address": PUSH_PATH,
        "title": "Push (n8n-compatible WebSocket)",
        "description": _PUSH_DESCRIPTION,
        "servers": [{"$ref": f"#/servers/{HTTP_SERVER}"}],
        "messages": {
            tag: {"$ref": f"#/components/messages/{_push_message_key(tag)}"}
            for tag in [*CLIENT_MESSAGES, *SERVER_MESSAGES]
        },
        "bindings": {
            "ws": {
                "method": "GET",
                "query": {"$ref": _REF.format(name=PushQuery.__name__)},
                "bindingVersion": "0.1.0",
            }
        },
        "x-close-codes": {str(code): reason for code, reason in sorted(CLOSE_CODES.items())},
    }

    def operation(action: str, channel: str, summary: str, names: list[str] | None = None) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [
                {"$ref": f"#/channels/{channel}/messages/{name}"}
                for name in (channels[channel]["messages"] if names is None else names)
            ],
        }

    def send(channel: str, summary: str) -> dict[str, Any]:
        return operation("send", channel, summary)

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "Flowledger run events",
            "version": str(SCHEMA_VERSION),
            "description": (
                "What Flowledger publishes on NATS, and the n8n-compatible WebSocket push channel of "
                "its HTTP API. Generated from the msgspec Structs in the schemas package; do not edit. "
                "Regenerate with `flowledger schemas export`. `version` is the event body "
                "`schema_version`."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            NATS_SERVER: {
                "host": "127.0.0.1:4222",
                "protocol": "nats",
                "description": (
                    "A local nats-server with JetStream: FLOWLEDGER_NATS_URL, or the embedded server "
                    "`flowledger serve` starts (its port is in FLOWLEDGER_HOME/nats/port)."
                ),
            },
            HTTP_SERVER: {
                "host": "127.0.0.1:8000",
                "protocol": "ws",
                "description": (
                    "The HTTP API of `flowledger serve` (FLOWLEDGER_HTTP_HOST:FLOWLEDGER_HTTP_PORT), "
                    "which serves the push channel; `wss` behind a TLS-terminating proxy."
                ),
                "security": [
                    {"$ref": "#/components/securitySchemes/bearer"},
                    {"$ref": "#/components/securitySchemes/sessionCookie"},
                ],
            },
        },
        "channels": channels,
        "operations": {
            "publishRunEvents": send("runEvents", "The relay publishes every committed event, in log order."),
            "publishReplayEvents": send(
                "replayEvents", "Republishing sends a stored run's events again, in seq order."
            ),
            "receivePushRequests": operation(
                "receive",
                PUSH_CHANNEL,
                "A push client subscribes to runs, resumes, unsubscribes and cancels.",
                list(CLIENT_MESSAGES),
            ),
            "sendPushMessages": operation(
                "send",
                PUSH_CHANNEL,
                "The service sends the subscribed runs' messages, each run's in seq order, and an "
                "`error` for each refused client message.",
                list(SERVER_MESSAGES),
            ),
        },
        "components": {
            "messages": messages,
            "parameters": _parameters(),
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        "`Authorization: Bearer <token>`: a Flowledger API key (`flk_<key_id>_<secret>`) "
                        f"or an accepted JWT. The push channel needs the `{READ_SCOPE}` scope; its "
                        f"`cancel` needs `{CANCEL_SCOPE}`. Not checked under `serve --no-auth` "
                        "(loopback only)."
                    ),
                },
                "sessionCookie": {
                    "type": "httpApiKey",
                    "in": "cookie",
                    "name": SESSION_COOKIE,
                    "description": (
                        "The console's session cookie, which carries an API key: what a browser on the "
                        "console sends. Used when there is no Authorization header; same scopes."
                    ),
                },
            },
        },
    }


def render_asyncapi() -> bytes:
    """The document as pretty JSON: sorted keys, indent 2, trailing newline."""
    return _render(asyncapi_document())


def write_asyncapi(path: Path) -> bool:
    """Write the document to ``path`` unless it is already current; True when written."""
    content = render_asyncapi()
    if path.is_file() and path.read_bytes() == content:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return True


def asyncapi_is_current(path: Path) -> bool:
    """True when ``path`` holds exactly what ``write_asyncapi`` would write."""
    return path.is_file() and path.read_bytes() == render_asyncapi()
