"""Vector indexes (FAISS) and the ``vector_search`` node type.

An index is built by ``flowledger vectors build NAME FILE.ndjson`` from rows
``{"id": ..., "vector": [...], "payload": {...}}`` and stored per tenant under the service's home:
``<home>/vectors/<tenant>/<name>.faiss`` (an exact ``IndexFlatIP`` over the L2-normalized vectors)
and ``<name>.meta.json`` (dimension, ids and payloads in index order). Similarity is cosine:
vectors and queries are normalized, so the inner product is the cosine (1.0: same direction).

Both files are written to temporary names and renamed into place, the metadata last. The
metadata holds the SHA-256 of the index file it belongs to, so a reader that meets the index of
one build and the metadata of another (a rebuild in between) notices it and reads again. Loaded
indexes are cached per process and reloaded when either file changes (inode, size or mtime).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

from service.engine.nodes.registry import NodeContext, NodeFailure

INDEX_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
"""An index name: 1 to 128 letters, digits, ``_`` or ``-`` (it is a file name), starting alnum."""
TENANT_DIR = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_K = 1000

_json_encode = msgspec.json.Encoder().encode


def index_name_problem(name: str) -> str | None:
    if INDEX_NAME.match(name):
        return None
    return (
        f"an index name is 1 to 128 letters, digits, _ or - (starting with a letter or digit); got {name!r}"
    )


class BadRows(ValueError):
    """Rows of an index file that cannot be indexed: ``problems`` is [(line number, why)]."""

    def __init__(self, problems: list[tuple[int, str]]) -> None:
        self.problems = problems
        shown = "; ".join(f"line {n}: {why}" for n, why in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"{len(problems)} bad row(s): {shown}{more}")


class IndexMeta(msgspec.Struct, frozen=True):
    build_id: str
    index_sha256: str
    dimension: int
    metric: str
    ids: list[Any]
    payloads: list[Any]
    built_at: str


@dataclass(frozen=True)
class Row:
    id: Any
    vector: list[float]
    payload: Any


def parse_rows(lines: list[str] | Any) -> tuple[list[Row], list[tuple[int, str]]]:
    """The good rows of an NDJSON index file and the problems of the bad ones (line numbers from 1).

    A row needs an ``id`` (string or integer, unique), a ``vector`` of finite numbers of the same
    dimension as the first good row, not all zero, and an optional ``payload`` object. Blank lines
    are skipped."""
    rows: list[Row] = []
    problems: list[tuple[int, str]] = []
    seen: set[Any] = set()
    dimension: int | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = msgspec.json.decode(line)
        except msgspec.DecodeError as exc:
            problems.append((number, f"not JSON: {exc}"))
            continue
        if not isinstance(row, dict):
            problems.append((number, f"a row is a JSON object, got {type(row).__name__}"))
            continue
        unknown = sorted(set(row) - {"id", "vector", "payload"})
        if unknown:
            problems.append((number, f"unknown field(s) {', '.join(unknown)}; fields: id, vector, payload"))
            continue
        if "id" not in row:
            problems.append((number, "missing id (a non-empty string or an integer)"))
            continue
        ident = row.get("id")
        if isinstance(ident, bool) or not isinstance(ident, str | int) or ident == "":
            problems.append((number, f"id must be a non-empty string or an integer, got {ident!r}"))
            continue
        if ident in seen:
            problems.append((number, f"duplicate id {ident!r}"))
            continue
        vector = row.get("vector")
        if (
            not isinstance(vector, list)
            or not vector
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector)
        ):
            problems.append((number, "vector must be a non-empty list of numbers"))
            continue
        if not all(math.isfinite(x) for x in vector):
            problems.append((number, "vector has a value that is not finite"))
            continue
        if dimension is not None and len(vector) != dimension:
            problems.append(
                (
                    number,
                    f"vector has dimension {len(vector)}, the index has {dimension} (from its first row)",
                )
            )
            continue
        if not any(vector):
            problems.append((number, "vector is all zeros (it has no direction to compare)"))
            continue
        payload = row.get("payload", {})
        if not isinstance(payload, dict):
            problems.append((number, f"payload must be a JSON object, got {type(payload).__name__}"))
            continue
        dimension = len(vector)
        seen.add(ident)
        rows.append(Row(ident, [float(x) for x in vector], payload))
    return rows, problems


@dataclass(frozen=True)
class IndexInfo:
    tenant: str
    name: str
    count: int
    dimension: int
    built_at: str
    bytes: int


@dataclass
class _Loaded:
    stamp: tuple[tuple[int, int, int], tuple[int, int, int]]
    index: Any  # faiss.Index
    meta: IndexMeta


class UnknownIndex(LookupError):
    pass


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _faiss() -> Any:
    """faiss, imported on first use (it takes a moment), without its loader's info lines."""
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    import faiss

    return faiss


def _normalized(vectors: Any) -> Any:
    import numpy as np

    array = np.asarray(vectors, dtype="float32")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return np.ascontiguousarray(array / norms, dtype="float32")


class VectorIndexes:
    """The indexes under ``<home>/vectors``: building, listing, and searching with a process cache."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "vectors"
        self._cache: dict[tuple[str, str], _Loaded] = {}
        self._lock = threading.Lock()

    def paths(self, tenant: str, name: str) -> tuple[Path, Path]:
        """The index file and the metadata file of ``tenant``'s index ``name`` (``ValueError`` for
        a name or tenant that cannot be a file name)."""
        if (problem := index_name_problem(name)) is not None:
            raise ValueError(problem)
        if not TENANT_DIR.match(tenant):
            raise ValueError(f"invalid tenant {tenant!r}")
        folder = self.root / tenant
        return folder / f"{name}.faiss", folder / f"{name}.meta.json"

    # -- building ------------------------------------------------------------------------------

    def build(self, tenant: str, name: str, rows: list[Row]) -> IndexInfo:
        """Write (or replace) the index ``name`` of ``tenant`` from ``rows`` (at least one)."""
        faiss = _faiss()
        if not rows:
            raise ValueError("no rows to index")
        index_path, meta_path = self.paths(tenant, name)
        index_path.parent.mkdir(parents=True, exist_ok=True)
        dimension = len(rows[0].vector)
        index = faiss.IndexFlatIP(dimension)
        index.add(_normalized([r.vector for r in rows]))
        data = faiss.serialize_index(index).tobytes()
        build_id = uuid.uuid4().hex
        meta = IndexMeta(
            build_id=build_id,
            index_sha256=hashlib.sha256(data).hexdigest(),
            dimension=dimension,
            metric="cosine",
            ids=[r.id for r in rows],
            payloads=[r.payload for r in rows],
            built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        tmp_index = index_path.with_name(f".{name}.{build_id}.faiss.tmp")
        tmp_meta = meta_path.with_name(f".{name}.{build_id}.meta.tmp")
        try:
            tmp_index.write_bytes(data)
            tmp_meta.write_bytes(_json_encode(meta))
            os.replace(tmp_index, index_path)
            os.replace(tmp_meta, meta_path)
        finally:
            for tmp in (tmp_index, tmp_meta):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        return self.info(tenant, name)

    # -- reading -------------------------------------------------------------------------------

    def info(self, tenant: str, name: str) -> IndexInfo:
        loaded = self.load(tenant, name)
        index_path, meta_path = self.paths(tenant, name)
        size = index_path.stat().st_size + meta_path.stat().st_size
        return IndexInfo(
            tenant, name, len(loaded.meta.ids), loaded.meta.dimension, loaded.meta.built_at, size
        )

    def names(self, tenant: str) -> list[str]:
        folder = self.root / tenant
        if not TENANT_DIR.match(tenant) or not folder.is_dir():
            return []
        return sorted(
            p.name.removesuffix(".faiss")
            for p in folder.glob("*.faiss")
            if INDEX_NAME.match(p.name.removesuffix(".faiss"))
            and (folder / f"{p.name.removesuffix('.faiss')}.meta.json").exists()
        )

    def tenants(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and TENANT_DIR.match(p.name))

    def load(self, tenant: str, name: str) -> _Loaded:
        """The index, from the cache while neither file changed; ``UnknownIndex`` when there is none."""
        faiss = _faiss()
        index_path, meta_path = self.paths(tenant, name)
        for _ in range(5):
            try:
                stamp = (_stamp(index_path), _stamp(meta_path))
            except FileNotFoundError:
                raise UnknownIndex(
                    f"no vector index {name!r} for tenant {tenant!r} "
                    f"(build it with: flowledger vectors build {name} FILE.ndjson --tenant {tenant})"
                ) from None
            key = (tenant, name)
            with self._lock:
                cached = self._cache.get(key)
            if cached is not None and cached.stamp == stamp:
                return cached
            data = index_path.read_bytes()
            meta = msgspec.json.decode(meta_path.read_bytes(), type=IndexMeta)
            if hashlib.sha256(data).hexdigest() == meta.index_sha256:
                import numpy as np

                index = faiss.deserialize_index(np.frombuffer(data, dtype="uint8"))
                loaded = _Loaded(stamp, index, meta)
                if (_stamp(index_path), _stamp(meta_path)) == stamp:
                    with self._lock:
                        self._cache[key] = loaded
                    return loaded
            time.sleep(0.05)  # a rebuild is replacing the files: read them again
        raise RuntimeError(f"vector index {name!r} of tenant {tenant!r} kept changing while it was read")

    def search(self, tenant: str, name: str, query: list[float], k: int) -> list[dict[str, Any]]:
        """The ``k`` stored vectors most similar to ``query`` (cosine), best first."""
        loaded = self.load(tenant, name)
        meta = loaded.meta
        if len(query) != meta.dimension:
            raise ValueError(
                f"the query has dimension {len(query)}, index {name!r} has dimension {meta.dimension}"
            )
        if not all(math.isfinite(x) for x in query) or not any(query):
            raise ValueError("the query vector must be finite and not all zeros")
        k = min(k, len(meta.ids))
        scores, positions = loaded.index.search(_normalized(query), k)
        return [
            {"id": meta.ids[int(p)], "score": float(s), "payload": meta.payloads[int(p)]}
            for s, p in zip(scores[0], positions[0], strict=True)
            if int(p) >= 0
        ]


# -- the node type --------------------------------------------------------------------------------


class VectorSearchConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    index: str
    query: list[float]
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)] = 5

    def __post_init__(self) -> None:
        if (problem := index_name_problem(self.index)) is not None:
            raise ValueError(problem)


def make_vector_search_handler(indexes: VectorIndexes) -> Any:
    """The ``vector_search`` handler over ``indexes``."""

    async def vector_search(config: VectorSearchConfig, ctx: NodeContext) -> dict[str, Any]:
        """The ``k`` nearest vectors of a FAISS index (cosine); output ``{matches: [{id, score, payload}]}``."""
        try:
            matches = await asyncio.to_thread(
                indexes.search, ctx.tenant, config.index, config.query, config.k
            )
        except UnknownIndex as exc:
            raise NodeFailure("unknown_index", str(exc), retryable=False) from None
        except ValueError as exc:
            raise NodeFailure("invalid_query", str(exc), retryable=False) from None
        return {"matches": matches}

    return vector_search
