"""Names that are part of the contract: the PostgreSQL schema, the JetStream stream, subject
prefixes and message headers. Defined once here; the service and the AsyncAPI document use these."""

from __future__ import annotations

from typing import Final

DB_SCHEMA: Final = "flowledger"
"""The PostgreSQL schema that holds the log, the queue and the read models."""

STREAM_NAME: Final = "FLOWLEDGER"
"""The JetStream stream that captures ``flowledger.events.>``."""
SUBJECT_PREFIX: Final = "flowledger.events"
"""Live events: ``<prefix>.<tenant>.<workflow_id>.<run_id>.<type>``."""
REPLAY_SUBJECT_PREFIX: Final = "flowledger.replay"
"""Republished history (``flowledger replay --republish``), never the live subjects."""

HEADER_MSG_ID: Final = "Nats-Msg-Id"
HEADER_EXPECTED_LAST_SEQUENCE: Final = "Nats-Expected-Last-Sequence"
HEADER_SEQ: Final = "Flowledger-Seq"
HEADER_POSITION: Final = "Flowledger-Global-Position"
HEADER_SOURCE: Final = "Flowledger-Source"
HEADER_TRIMMED: Final = "Flowledger-Trimmed"
HEADER_REPLAY: Final = "Flowledger-Replay"
