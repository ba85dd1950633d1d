"""Every message ``push_messages`` produces is one the AsyncAPI document describes (``schemas.push``).

The Structs in ``schemas.push`` generate the push channel's JSON Schemas; a pushed message
converts strictly into exactly one of them (server messages forbid unknown fields, so a field
sent but not documented fails too) and converts back to the same JSON: nothing documented is
missing, nothing sent is undocumented. The document-level checks (the JSON Schemas themselves,
a real run, the client side) are in ``tests/unit/schemas/test_asyncapi_push.py``.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import encode
from schemas.envelope import RawEnvelope
from schemas.events import (
    EVENT_TYPE_BY_TAG,
)
from schemas.push import SERVER_MESSAGES, decode_server_message
from service.followers.push_messages import encode_message
from service.infra.nats import trimmed_payload
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
