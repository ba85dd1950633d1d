"""The n8n-compatible WebSocket push protocol (``GET /v1/push?pushRef=...``) as msgspec Structs.

Every frame, both ways, is one JSON text frame ``{"type": ..., "data": {...}}``. These Structs
exist to describe the protocol: ``schemas.asyncapi`` generates the channel's JSON Schemas from
them, and the tests check that what the service sends (``service.followers.push_messages``)
and accepts (``service.api.push.PushConnection``) converts into them strictly.

Messages a client sends are open (the server ignores fields it does not know); messages the
server sends are closed (``forbid_unknown_fields``): they list exactly the fields it sends.
Every server message but ``error`` also comes in a trimmed form: the same ``type`` with
``trimmed: true`` and ``url``, the REST address of the one event the message stands for,
sent when the event arrived trimmed from NATS or the message would exceed 5 MiB.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal
from uuid import UUID

import msgspec

from schemas.events import Identifier, NodeError, OutputMarker

PUSH_PATH: Final = "/v1/push"
PUSH_REF_MAX_LENGTH: Final = 200
MAX_SEQ: Final = 2**31 - 1
"""The largest ``seq`` (an ``integer`` column), so the largest ``lastSeq`` a resume may name."""
READ_SCOPE: Final = "runs:read"
"""The scope a credential needs to open the channel."""
CANCEL_SCOPE: Final = "runs:write"
"""The scope a credential needs to ``cancel`` a run from the channel."""
SESSION_COOKIE: Final = "flowledger_session"
"""The console's session cookie, accepted instead of the ``Authorization`` header."""

CLOSE_CODES: Final[dict[int, str]] = {
    1001: "The service is shutting down: reconnect (here or to another instance) and `resume`.",
    1008: f"The `pushRef` query parameter is missing or longer than {PUSH_REF_MAX_LENGTH} characters.",
    1013: "The service is not ready yet (its live push is not running): try again shortly.",
    4008: (
        "The client is too slow: its send queue stayed full too long, or too many live events "
        "waited for it. Reconnect and `resume` each run from the last `seq` processed."
    ),
}
"""The WebSocket close codes the server uses, and why."""

Seq = Annotated[
    int, msgspec.Meta(ge=0, description="The event's `seq` in its run: keep the last one to `resume`.")
]
RunId = Annotated[UUID, msgspec.Meta(description="The run id (n8n calls runs executions).")]
EventUrl = Annotated[
    str,
    msgspec.Meta(
        description="REST address (relative to the HTTP API) that returns exactly the one event "
        "this message stands for: `/v1/runs/{run id}/events?after_seq={seq - 1}&limit=1`."
    ),
]


class PushQuery(msgspec.Struct, frozen=True):
    """The query string of the WebSocket upgrade request."""

    pushRef: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=PUSH_REF_MAX_LENGTH,
            description="Names the connection in the service log (n8n's editor sends its own push ref). "
            "Missing or too long: the server accepts, then closes with 1008.",
        ),
    ]


# -- what a client sends ---------------------------------------------------------------------------


class PushExecutionRef(msgspec.Struct, frozen=True):
    """The run a client message is about. ``runId`` is accepted in place of ``executionId``."""

    executionId: RunId


class PushResumeData(PushExecutionRef, frozen=True):
    """The run to follow, and the ``seq`` of the last of its messages the client processed."""

    lastSeq: Annotated[
        int,
        msgspec.Meta(
            ge=-1,
            le=MAX_SEQ,
            description="Messages start after this event; -1 (the default) sends the run from its "
            "first event. Past the run's last stored event: an `error`.",
        ),
    ] = -1


class PushCancelData(PushExecutionRef, frozen=True):
    """The run to cancel (the client must be subscribed to it) and why."""

    reason: Annotated[
        str | None,
        msgspec.Meta(description="Recorded with the cancel request; absent or empty: `cancelled from push`."),
    ] = None


class _ClientMessage(msgspec.Struct, frozen=True, tag_field="type"):
    pass


class PushSubscribeMessage(_ClientMessage, frozen=True, tag="subscribe"):
    """Follow a run: its messages from its first event, then live ones, until it ends.

    Subscribing again to a run restarts its messages from the start. No acknowledgement: the
    run's messages are the answer; an unknown run (or another tenant's) is an ``error``.
    """

    data: PushExecutionRef


class PushResumeMessage(_ClientMessage, frozen=True, tag="resume"):
    """Follow a run from after ``lastSeq``: how a client picks up after a reconnect."""

    data: PushResumeData


class PushUnsubscribeMessage(_ClientMessage, frozen=True, tag="unsubscribe"):
    """Stop sending this run's messages (nothing happens if the client was not subscribed)."""

    data: PushExecutionRef


class PushCancelMessage(_ClientMessage, frozen=True, tag="cancel"):
    """Request cancellation of a run the client is subscribed to; needs the ``runs:write`` scope.

    The run then ends as cancelled: ``executionFinished`` with status ``canceled``.
    Refused (an ``error``) without a subscription, without the scope, or when the run already ended.
    """

    data: PushCancelData


PushClientMessage = PushSubscribeMessage | PushResumeMessage | PushUnsubscribeMessage | PushCancelMessage
"""Every message a client sends; decoding dispatches on ``type``."""


# -- what the server sends -------------------------------------------------------------------------


class PushExecutionData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The fields every message about a run has."""

    executionId: RunId
    workflowId: str
    seq: Seq


class PushTrimmedExecutionData(PushExecutionData, frozen=True):
    """A message whose event was too large: its body's fields are behind ``url``."""

    trimmed: Literal[True]
    url: EventUrl


class PushExecutionStartedData(PushExecutionData, frozen=True):
    mode: Literal["trigger"]
    startedAt: Annotated[datetime, msgspec.Meta(tz=True, description="When the run started (UTC).")]


class PushTrimmedExecutionStartedData(PushTrimmedExecutionData, frozen=True):
    mode: Literal["trigger"]
    startedAt: Annotated[datetime, msgspec.Meta(tz=True)]


class PushNodeExecuteBeforeDetails(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    startTime: Annotated[datetime, msgspec.Meta(tz=True, description="When the attempt started (UTC).")]
    attempt: Annotated[int, msgspec.Meta(description="1 for the first attempt, 2 for the first retry...")]


class PushNodeExecuteBeforeData(PushExecutionData, frozen=True):
    nodeName: Identifier
    data: PushNodeExecuteBeforeDetails


class PushTrimmedNodeExecuteBeforeData(PushTrimmedExecutionData, frozen=True):
    """``data.attempt`` is always 1 here: the attempt number is in the event behind ``url``."""

    nodeName: Identifier
    data: PushNodeExecuteBeforeDetails


class PushNodeExecuteAfterDetails(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the attempt ended; ``error`` (the event's ``NodeError``) only when it failed."""

    executionStatus: Literal["success", "error"]
    executionTime: Annotated[float, msgspec.Meta(description="The attempt's duration in milliseconds.")]
    itemCount: int
    attempt: int
    error: NodeError | msgspec.UnsetType = msgspec.UNSET


class PushTrimmedNodeExecuteAfterDetails(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Placeholders: the attempt's status, duration, item count, number and error are in the
    event behind ``url``."""

    executionStatus: None
    executionTime: float
    itemCount: int
    attempt: int


class PushNodeExecuteAfterData(PushExecutionData, frozen=True):
    nodeName: Identifier
    data: PushNodeExecuteAfterDetails


class PushTrimmedNodeExecuteAfterData(PushTrimmedExecutionData, frozen=True):
    nodeName: Identifier
    data: PushTrimmedNodeExecuteAfterDetails


class PushNodeOutputData(PushExecutionData, frozen=True):
    nodeName: Identifier
    data: Annotated[Any, msgspec.Meta(description="The node's output (null when it has none).")]
    marker: Annotated[
        OutputMarker | None,
        msgspec.Meta(
            description="Set only in histories recorded before blobs existed, when the output was over "
            "the output cap: only its size and hash were recorded, and `data` is null. Newer outputs over "
            'the event cap are a `{"$blob": {sha256, size_bytes}}` reference in `data`.'
        ),
    ]


class PushTrimmedNodeOutputData(PushTrimmedExecutionData, frozen=True):
    nodeName: Identifier
    sizeBytes: Annotated[
        int, msgspec.Meta(description="Size of what was too large: the whole message, or the event body.")
    ]


class PushExecutionFinishedData(PushExecutionData, frozen=True):
    status: Literal["success", "error", "canceled"]
    error: Annotated[
        str | None,
        msgspec.Meta(description="The run's error, or the cancel reason as given; null when there is none."),
    ]


class PushTrimmedExecutionFinishedData(PushTrimmedExecutionData, frozen=True):
    """``status`` is ``canceled`` for a cancelled run, else null: the run's status and error are
    in the event behind ``url``."""

    status: Literal["canceled"] | None
    error: None


class PushErrorData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    message: Annotated[str, msgspec.Meta(description="Why the client's last message was refused.")]


class _ServerMessage(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True):
    pass


class PushExecutionStartedMessage(_ServerMessage, frozen=True, tag="executionStarted"):
    """The run started (event ``run_started``)."""

    data: PushExecutionStartedData


class PushTrimmedExecutionStartedMessage(_ServerMessage, frozen=True, tag="executionStarted"):
    """``executionStarted`` for a ``run_started`` event too large to send."""

    data: PushTrimmedExecutionStartedData


class PushExecutionRecoveredMessage(_ServerMessage, frozen=True, tag="executionRecovered"):
    """Another worker took the run over (event ``run_recovered``)."""

    data: PushExecutionData


class PushTrimmedExecutionRecoveredMessage(_ServerMessage, frozen=True, tag="executionRecovered"):
    """``executionRecovered`` for a ``run_recovered`` event too large to send."""

    data: PushTrimmedExecutionData


class PushExecutionWaitingMessage(_ServerMessage, frozen=True, tag="executionWaiting"):
    """A node of the run started waiting (event ``run_waiting``): for a signal, a timer or a child run."""

    data: PushExecutionData


class PushTrimmedExecutionWaitingMessage(_ServerMessage, frozen=True, tag="executionWaiting"):
    """``executionWaiting`` for a ``run_waiting`` event too large to send."""

    data: PushTrimmedExecutionData


class PushNodeExecuteBeforeMessage(_ServerMessage, frozen=True, tag="nodeExecuteBefore"):
    """A node attempt started (event ``node_execute_before``)."""

    data: PushNodeExecuteBeforeData


class PushTrimmedNodeExecuteBeforeMessage(_ServerMessage, frozen=True, tag="nodeExecuteBefore"):
    """``nodeExecuteBefore`` for a ``node_execute_before`` event too large to send."""

    data: PushTrimmedNodeExecuteBeforeData


class PushNodeExecuteAfterMessage(_ServerMessage, frozen=True, tag="nodeExecuteAfter"):
    """A node attempt ended (event ``node_execute_after``): n8n's status, duration, items, error.

    A failed attempt followed by a retry is ``executionStatus: "error"`` here, then a new
    ``nodeExecuteBefore`` with the next ``attempt``.
    """

    data: PushNodeExecuteAfterData


class PushTrimmedNodeExecuteAfterMessage(_ServerMessage, frozen=True, tag="nodeExecuteAfter"):
    """``nodeExecuteAfter`` for a ``node_execute_after`` event too large to send (a huge error)."""

    data: PushTrimmedNodeExecuteAfterData


class PushNodeExecuteAfterDataMessage(_ServerMessage, frozen=True, tag="nodeExecuteAfterData"):
    """A node attempt's output (event ``node_execute_after_data``)."""

    data: PushNodeOutputData


class PushTrimmedNodeExecuteAfterDataMessage(_ServerMessage, frozen=True, tag="nodeExecuteAfterData"):
    """``nodeExecuteAfterData`` for an output too large to send: its size, and where to GET it."""

    data: PushTrimmedNodeOutputData


class PushExecutionFinishedMessage(_ServerMessage, frozen=True, tag="executionFinished"):
    """The run ended (event ``run_finished`` or ``run_cancelled``): its last message."""

    data: PushExecutionFinishedData


class PushTrimmedExecutionFinishedMessage(_ServerMessage, frozen=True, tag="executionFinished"):
    """``executionFinished`` for a ``run_finished`` or ``run_cancelled`` event too large to send."""

    data: PushTrimmedExecutionFinishedData


class PushErrorMessage(_ServerMessage, frozen=True, tag="error"):
    """The client's last message was refused; the connection stays open."""

    data: PushErrorData


PushServerMessage = (
    PushExecutionStartedMessage
    | PushExecutionRecoveredMessage
    | PushExecutionWaitingMessage
    | PushNodeExecuteBeforeMessage
    | PushNodeExecuteAfterMessage
    | PushNodeExecuteAfterDataMessage
    | PushExecutionFinishedMessage
    | PushErrorMessage
)
"""Every message the server sends whole; decoding dispatches on ``type``."""

PushTrimmedServerMessage = (
    PushTrimmedExecutionStartedMessage
    | PushTrimmedExecutionRecoveredMessage
    | PushTrimmedExecutionWaitingMessage
    | PushTrimmedNodeExecuteBeforeMessage
    | PushTrimmedNodeExecuteAfterMessage
    | PushTrimmedNodeExecuteAfterDataMessage
    | PushTrimmedExecutionFinishedMessage
)
"""The trimmed forms (``data.trimmed`` is true); decoding dispatches on ``type``."""


def message_tag(cls: type[msgspec.Struct]) -> str:
    """The ``type`` of a push message Struct."""
    return str(cls.__struct_config__.tag)


CLIENT_MESSAGES: Final[dict[str, type[msgspec.Struct]]] = {
    message_tag(cls): cls
    for cls in PushClientMessage.__args__  # type: ignore[attr-defined]
}
"""``type`` -> Struct of every message a client may send."""

_TRIMMED: Final[dict[str, type[msgspec.Struct]]] = {
    message_tag(cls): cls
    for cls in PushTrimmedServerMessage.__args__  # type: ignore[attr-defined]
}

SERVER_MESSAGES: Final[dict[str, tuple[type[msgspec.Struct], type[msgspec.Struct] | None]]] = {
    message_tag(cls): (cls, _TRIMMED.get(message_tag(cls)))
    for cls in PushServerMessage.__args__  # type: ignore[attr-defined]
}
"""``type`` -> (the whole Struct, the trimmed one or None) of every message the server sends."""


def decode_server_message(message: Any) -> msgspec.Struct:
    """A server message (decoded JSON) as its Struct, strictly: raises ``msgspec.ValidationError``
    when it is not exactly one of the documented messages."""
    data = message.get("data") if isinstance(message, dict) else None
    trimmed = isinstance(data, dict) and data.get("trimmed") is True
    struct: msgspec.Struct = msgspec.convert(
        message,
        PushTrimmedServerMessage if trimmed else PushServerMessage,  # type: ignore[arg-type]
        strict=True,
    )
    return struct


# -- examples: the retry-demo run of docs/push.md ---------------------------------------------------

_RUN = UUID("01a23f93-66e6-73c6-8449-2e7560eafe08")
_WF = "retry-demo"
_EVENTS_URL = f"/v1/runs/{_RUN}/events?after_seq={{}}&limit=1"


def _at(stamp: str) -> datetime:
    return msgspec.convert(stamp, datetime)


def examples() -> dict[str, list[tuple[str, str, msgspec.Struct]]]:
    """``type`` -> its examples: (name, summary, message)."""
    ref = PushExecutionRef(executionId=_RUN)
    return {
        "subscribe": [("subscribe", "Follow a run from its first event.", PushSubscribeMessage(ref))],
        "resume": [
            (
                "resume",
                "Follow a run from after seq 9 (after a reconnect).",
                PushResumeMessage(PushResumeData(executionId=_RUN, lastSeq=9)),
            )
        ],
        "unsubscribe": [("unsubscribe", "Stop following a run.", PushUnsubscribeMessage(ref))],
        "cancel": [
            (
                "cancel",
                "Cancel a run, with a reason.",
                PushCancelMessage(PushCancelData(executionId=_RUN, reason="stopped from the UI")),
            )
        ],
        "executionStarted": [
            (
                "started",
                "The run started.",
                PushExecutionStartedMessage(
                    PushExecutionStartedData(
                        _RUN, _WF, 1, mode="trigger", startedAt=_at("2026-12-04T05:42:33.707751Z")
                    )
                ),
            )
        ],
        "executionRecovered": [
            (
                "recovered",
                "Another worker took the run over.",
                PushExecutionRecoveredMessage(PushExecutionData(_RUN, _WF, 7)),
            )
        ],
        "executionWaiting": [
            ("waiting", "The run waits.", PushExecutionWaitingMessage(PushExecutionData(_RUN, _WF, 7)))
        ],
        "nodeExecuteBefore": [
            (
                "firstAttempt",
                "The first attempt of node flaky started.",
                PushNodeExecuteBeforeMessage(
                    PushNodeExecuteBeforeData(
                        _RUN,
                        _WF,
                        2,
                        nodeName="flaky",
                        data=PushNodeExecuteBeforeDetails(
                            startTime=_at("2026-12-04T05:42:33.711751Z"), attempt=1
                        ),
                    )
                ),
            )
        ],
        "nodeExecuteAfter": [
            (
                "failedAttempt",
                "An attempt failed (a retry follows).",
                PushNodeExecuteAfterMessage(
                    PushNodeExecuteAfterData(
                        _RUN,
                        _WF,
                        3,
                        nodeName="flaky",
                        data=PushNodeExecuteAfterDetails(
                            executionStatus="error",
                            executionTime=0.039,
                            itemCount=0,
                            attempt=1,
                            error=NodeError(kind="fail", message="service busy", retryable=True),
                        ),
                    )
                ),
            ),
            (
                "succeededAttempt",
                "The third attempt succeeded.",
                PushNodeExecuteAfterMessage(
                    PushNodeExecuteAfterData(
                        _RUN,
                        _WF,
                        11,
                        nodeName="flaky",
                        data=PushNodeExecuteAfterDetails(
                            executionStatus="success", executionTime=0.107, itemCount=1, attempt=3
                        ),
                    )
                ),
            ),
        ],
        "nodeExecuteAfterData": [
            (
                "output",
                "The node's output.",
                PushNodeExecuteAfterDataMessage(
                    PushNodeOutputData(_RUN, _WF, 12, nodeName="flaky", data={"attempt": 3}, marker=None)
                ),
            ),
            (
                "trimmedOutput",
                "An output too large to send: GET url for the whole event.",
                PushTrimmedNodeExecuteAfterDataMessage(
                    PushTrimmedNodeOutputData(
                        _RUN,
                        _WF,
                        12,
                        trimmed=True,
                        url=_EVENTS_URL.format(11),
                        nodeName="flaky",
                        sizeBytes=6291456,
                    )
                ),
            ),
        ],
        "executionFinished": [
            (
                "succeeded",
                "The run succeeded.",
                PushExecutionFinishedMessage(
                    PushExecutionFinishedData(_RUN, _WF, 16, status="success", error=None)
                ),
            ),
            (
                "cancelled",
                "The run was cancelled.",
                PushExecutionFinishedMessage(
                    PushExecutionFinishedData(_RUN, _WF, 16, status="canceled", error="stopped from the UI")
                ),
            ),
        ],
        "error": [
            (
                "noRunId",
                "A subscribe without a run id.",
                PushErrorMessage(PushErrorData(message="subscribe needs data.executionId, a run id")),
            )
        ],
    }
