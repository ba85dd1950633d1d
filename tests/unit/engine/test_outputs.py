"""Recording outputs: inline up to the cap, a self-verifying blob reference above it, refused over the limit."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from projections.run_state import NodeState, RunState
from schemas.workflow import WorkflowSpec
from service.domain.outputs import BlobRef, MissingBlob, blob_output, blob_ref, real_output
from service.domain.run_document import node_document
from service.domain.workflow_spec import build_graph
from service.engine.nodes.registry import NodeFailure
from service.engine.outputs import RunOutputs, record_output
from service.store.blobs import BlobUnavailable, decode_blob
from tests.helpers.strategies import json_values
from tests.helpers.workflows import wf


@given(json_values, st.integers(0, 300))
def test_every_value_is_kept_inline_or_as_a_blob_that_decodes_back_to_it(value: Any, cap: int) -> None:
    recorded = record_output("n", 1, value, cap_bytes=cap, max_bytes=10**9)
    encoded = msgspec.json.encode(value)
    data = recorded.data
    assert (data.output_bytes, data.output_sha256) == (len(encoded), hashlib.sha256(encoded).hexdigest())
    assert data.marker is None
    ref = blob_ref(data.output, data.output_sha256)
    if len(encoded) <= cap:
        assert ref is None and recorded.blob is None
        assert data.output == msgspec.json.decode(encoded)
    else:
        assert recorded.blob is not None and ref == BlobRef(data.output_sha256, len(encoded))
        assert recorded.blob.data == encoded
        node = NodeState("n", status="succeeded", output=data.output, output_sha256=data.output_sha256)
        value_back = decode_blob(ref.sha256, ref.size_bytes, recorded.blob.data)
        assert real_output(node, {ref.sha256: value_back}) == msgspec.json.decode(encoded)


@given(st.text(min_size=64, max_size=64), st.integers(0, 10**6))
def test_a_blob_shaped_value_of_a_node_is_never_taken_for_a_reference(sha: str, size: int) -> None:
    fake = {"$blob": {"sha256": sha, "size_bytes": size}}
    data = record_output("n", 1, fake, cap_bytes=10**6).data
    assert blob_ref(data.output, data.output_sha256) is None  # its own hash is not the one inside


def test_real_output_without_the_value_is_a_missing_blob() -> None:
    ref = BlobRef("ab" * 32, 10)
    node = NodeState("n", status="succeeded", output=blob_output(ref), output_sha256=ref.sha256)
    with pytest.raises(MissingBlob, match="ab" * 32):
        real_output(node, {})
    assert real_output(node, None) == blob_output(ref)  # no values given: the recorded reference


def test_over_the_hard_limit_is_output_too_large_and_not_retryable() -> None:
    with pytest.raises(NodeFailure) as failure:
        record_output("big", 1, "x" * 100, cap_bytes=10, max_bytes=50)
    assert (failure.value.kind, failure.value.retryable) == ("output_too_large", False)
    assert "102 bytes" in failure.value.message and "50 bytes" in failure.value.message
    record_output("ok", 1, "x" * 48, cap_bytes=10, max_bytes=50)  # exactly at the limit is fine


def test_decode_blob_refuses_bytes_that_are_not_the_referenced_ones() -> None:
    good = b'"hello"'
    sha = hashlib.sha256(good).hexdigest()
    assert decode_blob(sha, len(good), good) == "hello"
    with pytest.raises(BlobUnavailable, match="not in the blob store"):
        decode_blob(sha, len(good), None)
    with pytest.raises(BlobUnavailable, match="do not hash to it"):
        decode_blob(sha, len(good), b'"hellO"')


async def test_run_outputs_hand_blobs_to_their_append_once_and_load_only_missing_values() -> None:
    loaded: list[dict[str, int]] = []

    async def load(sizes: Any) -> dict[str, Any]:
        loaded.append(dict(sizes))
        return {sha: f"loaded {sha[:4]}" for sha in sizes}

    outputs = RunOutputs(load)
    recorded = record_output("a", 1, "y" * 100, cap_bytes=10)
    data = outputs.keep(recorded)
    assert recorded.blob is not None
    assert outputs.blobs_for([data]) == [recorded.blob]
    assert outputs.value_of(data) == "y" * 100
    outputs.written([recorded.blob])
    assert outputs.blobs_for([data]) == []  # durable: not written again (e.g. by a retry of the append)
    inline = outputs.keep(record_output("b", 1, "small", cap_bytes=10))
    assert outputs.blobs_for([inline]) == [] and outputs.value_of(inline) == "small"
    assert loaded == []


async def test_a_document_loads_the_blob_values_it_lacks_once() -> None:
    loaded: list[dict[str, int]] = []

    async def load(sizes: Any) -> dict[str, Any]:
        loaded.append(dict(sizes))
        return {sha: "from the store" for sha in sizes}

    spec = msgspec.convert(
        wf("w", [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}], [("a", "b")]), WorkflowSpec
    )
    graph = build_graph(spec)
    ref = BlobRef("cd" * 32, 42)
    node = NodeState("a", status="succeeded", output=blob_output(ref), output_sha256=ref.sha256)
    state = RunState(nodes={"a": node})
    outputs = RunOutputs(load)
    assert await outputs.document_values(graph, state, "b") == {ref.sha256: "from the store"}
    assert await outputs.document_values(graph, state, "b") == {ref.sha256: "from the store"}
    assert loaded == [{ref.sha256: 42}]  # recovery: read once, then kept
    assert node_document(graph, state, "b", {ref.sha256: "from the store"})["nodes"] == {
        "a": "from the store"
    }
