"""Node outputs stored as blobs: how an event refers to one, and putting real values in its place.

An output whose JSON encoding is over the event payload cap is stored whole in the blob store
(``service.store.blobs``), keyed by the SHA-256 of that encoding, and its
``node_execute_after_data`` event carries ``{"$blob": {"sha256": ..., "size_bytes": ...}}`` as
the output. The fold keeps that reference (it stays pure); the edges that need the real value
(the executor building a node's document, time travel, bundles) resolve it here from values
they loaded.

A reference is recognised by its digest, never by its shape alone: the output is a reference
only when it is exactly ``{"$blob": {"sha256": D, "size_bytes": N}}`` and ``D`` is the event's
own ``output_sha256``. An inline output's ``output_sha256`` is the hash of the output itself, and
no JSON value can contain its own SHA-256, so a node that returns a ``$blob``-shaped object of
its own is never mistaken for a reference. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from projections.run_state import NodeState, RunState
from service.domain.workflow_spec import WorkflowGraph

BLOB_KEY = "$blob"


class BlobRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an event records of an output stored as a blob."""

    sha256: str
    size_bytes: int


class MissingBlob(LookupError):
    """An output stored as a blob is referenced but its value was not provided (or not found)."""

    def __init__(self, sha256: str) -> None:
        super().__init__(f"blob {sha256} is referenced by the run but is not in the blob store")
        self.sha256 = sha256


def blob_output(ref: BlobRef) -> dict[str, Any]:
    """The ``output`` value an event records for an output stored as ``ref``."""
    return {BLOB_KEY: {"sha256": ref.sha256, "size_bytes": ref.size_bytes}}


def blob_ref(output: Any, output_sha256: str) -> BlobRef | None:
    """The reference ``output`` is, when it is one (see the module docstring); else None."""
    if not (isinstance(output, dict) and len(output) == 1 and BLOB_KEY in output):
        return None
    body = output[BLOB_KEY]
    if not isinstance(body, dict) or set(body) != {"sha256", "size_bytes"}:
        return None
    sha256, size = body["sha256"], body["size_bytes"]
    if sha256 != output_sha256 or not output_sha256 or not isinstance(size, int) or isinstance(size, bool):
        return None
    return BlobRef(sha256, size)


def node_blob_ref(node: NodeState) -> BlobRef | None:
    """The blob reference of a node's recorded output, if it was stored as a blob."""
    return blob_ref(node.output, node.output_sha256)


def state_blob_refs(state: RunState, node_ids: Iterable[str] | None = None) -> dict[str, BlobRef]:
    """sha256 -> reference of every blob output of ``node_ids`` (default: all nodes) in ``state``."""
    ids = state.nodes if node_ids is None else node_ids
    refs: dict[str, BlobRef] = {}
    for node_id in ids:
        node = state.nodes.get(node_id)
        if node is not None and (ref := node_blob_ref(node)) is not None:
            refs[ref.sha256] = ref
    return refs


def document_blob_refs(graph: WorkflowGraph, state: RunState, node_id: str) -> dict[str, BlobRef]:
    """The blob outputs ``node_id``'s document needs (its succeeded upstream nodes')."""
    ups = [u for u in graph.ancestors[node_id] if state.node(u).status == "succeeded"]
    return state_blob_refs(state, ups)


def real_output(node: NodeState, blobs: Mapping[str, Any] | None) -> Any:
    """A node's output with a blob reference replaced by its value from ``blobs`` (sha256 -> value).

    Raises ``MissingBlob`` when the output is a reference whose value ``blobs`` lacks. A
    ``blobs`` of None leaves references as they are (what the event recorded)."""
    ref = node_blob_ref(node)
    if ref is None or blobs is None:
        return node.output
    try:
        return blobs[ref.sha256]
    except KeyError:
        raise MissingBlob(ref.sha256) from None
