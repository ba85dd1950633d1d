"""Recording node outputs: inline in the event, as a blob when over the event cap, refused over the limit.

Guarantees:
- the recorded output is the handler's value, JSON-normalised, never replaced: up to the event
  payload cap it is inline in ``node_execute_after_data``; above it the event carries a
  ``{"$blob": ...}`` reference (``service.domain.outputs``) and the JSON bytes are written as a
  blob in the same transaction as the event (``RunOutputs.blobs_for`` -> ``EventStore.append``);
- above the hard limit the attempt fails with ``output_too_large`` (not retried);
- a node's document gets the real values of its upstream blob outputs: those this executor
  recorded are kept in memory by SHA-256, others (recovery, a fork's reused nodes) are read
  from the blob store and checked against their SHA-256 before use.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from projections.run_state import RunState
from schemas.events import Event, NodeExecuteAfterData
from service.domain.outputs import BlobRef, blob_output, blob_ref, document_blob_refs
from service.domain.workflow_spec import WorkflowGraph
from service.engine.nodes.registry import NodeFailure
from service.store.blobs import Blob

DEFAULT_OUTPUT_CAP_BYTES = 1024 * 1024
"""Outputs whose JSON encoding is larger are stored as blobs (``FLOWLEDGER_OUTPUT_CAP_BYTES``)."""
DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024 * 1024
"""Larger outputs fail their node with ``output_too_large`` (``FLOWLEDGER_MAX_OUTPUT_BYTES``)."""

OUTPUT_TOO_LARGE = "output_too_large"

BlobLoader = Callable[[Mapping[str, int]], Awaitable[dict[str, Any]]]
"""sha256 -> size in, sha256 -> value out, each checked against its hash (``BlobStore.load``)."""


@dataclass(frozen=True, slots=True)
class RecordedOutput:
    """A node output as it is recorded: its event, its blob when over the cap, and its value."""

    data: NodeExecuteAfterData
    value: Any
    """The JSON-normalised output (what downstream nodes see)."""
    blob: Blob | None = None


def record_output(
    node_id: str,
    attempt: int,
    output: Any,
    cap_bytes: int = DEFAULT_OUTPUT_CAP_BYTES,
    max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    encoded: bytes | None = None,
) -> RecordedOutput:
    """The recorded form of ``output``. Raises ``NodeFailure`` (not retryable) for a value that
    is not JSON (``bad_output``) or whose encoding is over ``max_bytes`` (``output_too_large``).

    ``encoded``, when given, is the JSON encoding of ``output``, which is then already made of
    JSON types (``NodeRegistry.execute_json``): it is neither encoded nor decoded again."""
    if encoded is None:
        try:
            encoded = msgspec.json.encode(output)
        except (TypeError, msgspec.EncodeError) as exc:
            raise NodeFailure(
                "bad_output", f"node {node_id} returned a value that is not JSON: {exc}", retryable=False
            ) from exc
        output = msgspec.json.decode(encoded)
    size = len(encoded)
    if size > max_bytes:
        raise NodeFailure(
            OUTPUT_TOO_LARGE,
            f"node {node_id} returned {size} bytes of JSON, over the output limit of {max_bytes} bytes "
            "(FLOWLEDGER_MAX_OUTPUT_BYTES)",
            retryable=False,
        )
    digest = hashlib.sha256(encoded).hexdigest()
    value = output
    if size <= cap_bytes:
        data = NodeExecuteAfterData(
            node_id=node_id, attempt=attempt, output=value, output_bytes=size, output_sha256=digest
        )
        return RecordedOutput(data, value)
    ref = BlobRef(digest, size)
    data = NodeExecuteAfterData(
        node_id=node_id, attempt=attempt, output=blob_output(ref), output_bytes=size, output_sha256=digest
    )
    return RecordedOutput(data, value, Blob(digest, encoded))


class RunOutputs:
    """The blob outputs of one run's executor, by SHA-256.

    Values stay in memory for the run's lifetime (downstream nodes need them); the bytes of
    an output this executor recorded are held only until the event that references it is
    appended (they are written in its transaction).
    """

    def __init__(self, load: BlobLoader) -> None:
        self._load = load
        self._values: dict[str, Any] = {}
        self._unwritten: dict[str, Blob] = {}

    def keep(self, recorded: RecordedOutput) -> NodeExecuteAfterData:
        """Remember a freshly recorded output; returns its event."""
        if recorded.blob is not None:
            self._values[recorded.blob.sha256] = recorded.value
            self._unwritten[recorded.blob.sha256] = recorded.blob
        return recorded.data

    def blobs_for(self, events: Iterable[Event]) -> list[Blob]:
        """The blobs to write with ``events``: those their outputs reference and that are not
        yet written by this executor (a reused parent's blob is in the store already)."""
        out: list[Blob] = []
        for event in events:
            if isinstance(event, NodeExecuteAfterData):
                ref = blob_ref(event.output, event.output_sha256)
                if ref is not None and ref.sha256 in self._unwritten:
                    out.append(self._unwritten[ref.sha256])
        return out

    def written(self, blobs: Iterable[Blob]) -> None:
        """``blobs`` are durable with their events: their bytes need not be held any more."""
        for blob in blobs:
            self._unwritten.pop(blob.sha256, None)

    def value_of(self, data: NodeExecuteAfterData) -> Any:
        """The real value of a recorded output of this executor's (its reference resolved)."""
        ref = blob_ref(data.output, data.output_sha256)
        if ref is None:
            return data.output
        return self._values[ref.sha256]

    async def document_values(self, graph: WorkflowGraph, state: RunState, node_id: str) -> dict[str, Any]:
        """sha256 -> value of every blob output ``node_id``'s document needs (loaded when missing).

        Raises ``BlobUnavailable`` when one is not in the store or does not match its hash."""
        return await self.values(document_blob_refs(graph, state, node_id))

    async def values(self, refs: Mapping[str, BlobRef]) -> dict[str, Any]:
        """sha256 -> value of the blobs ``refs`` names (loaded when missing; e.g. a child run's
        outputs). Raises ``BlobUnavailable`` as ``document_values`` does."""
        missing = {sha: ref.size_bytes for sha, ref in refs.items() if sha not in self._values}
        if missing:
            self._values.update(await self._load(missing))
        return {sha: self._values[sha] for sha in refs}
