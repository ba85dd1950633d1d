"""The blob store in PostgreSQL (``flowledger.blobs``): every SQL statement on blobs lives here.

A blob is the JSON encoding of a node output too large for its event, keyed by its SHA-256
(hex). Guarantees:
- a blob is written in the same transaction as the first event that references it
  (``EventStore.append(..., blobs=...)`` calls ``insert_blobs_txn``), so a committed reference
  always has its blob;
- inserting a blob that exists already changes nothing (content-addressed: same key, same
  bytes); the database refuses UPDATE, DELETE and TRUNCATE (``0009_blobs.sql``);
- ``Blob.of`` is the only way to make one here, so the key is the digest of the bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from schemas.names import DB_SCHEMA
from service.infra.db import Conn


@dataclass(frozen=True, slots=True)
class Blob:
    sha256: str
    data: bytes

    @property
    def size_bytes(self) -> int:
        return len(self.data)

    @classmethod
    def of(cls, data: bytes) -> Blob:
        return cls(hashlib.sha256(data).hexdigest(), data)


class BlobUnavailable(LookupError):
    """A referenced blob is not in the store, or its bytes are not the ones its key names."""

    def __init__(self, sha256: str, why: str) -> None:
        super().__init__(f"blob {sha256}: {why}")
        self.sha256 = sha256


@dataclass(frozen=True, slots=True)
class BlobCheck:
    """What the store holds under a key: its size and the SHA-256 of its bytes (computed by the server)."""

    sha256: str
    size_bytes: int
    actual_sha256: str

    @property
    def intact(self) -> bool:
        return self.actual_sha256 == self.sha256 and self.size_bytes >= 0


async def insert_blobs_txn(conn: Conn, blobs: Iterable[Blob], *, schema: str = DB_SCHEMA) -> None:
    """Insert ``blobs`` (those already stored are left as they are) in the caller's transaction."""
    unique = {b.sha256: b for b in blobs}
    if not unique:
        return
    await conn.execute(
        f'INSERT INTO "{schema}".blobs (sha256, size_bytes, data) '
        "SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[]) "
        "ON CONFLICT (sha256) DO NOTHING",
        list(unique),
        [b.size_bytes for b in unique.values()],
        [b.data for b in unique.values()],
    )


async def fetch_blobs_conn(
    conn: Conn, sha256s: Iterable[str], *, schema: str = DB_SCHEMA
) -> dict[str, bytes]:
    """The stored bytes of each of ``sha256s`` that exists (missing keys are left out)."""
    keys = sorted(set(sha256s))
    if not keys:
        return {}
    rows = await conn.fetch(f'SELECT sha256, data FROM "{schema}".blobs WHERE sha256 = ANY($1::text[])', keys)
    return {row[0]: bytes(row[1]) for row in rows}


async def check_blobs_conn(
    conn: Conn, sha256s: Iterable[str], *, schema: str = DB_SCHEMA
) -> dict[str, BlobCheck]:
    """Size and server-computed SHA-256 of each stored blob of ``sha256s`` (without moving the bytes)."""
    keys = sorted(set(sha256s))
    if not keys:
        return {}
    rows = await conn.fetch(
        f"SELECT sha256, octet_length(data), encode(sha256(data), 'hex') "
        f'FROM "{schema}".blobs WHERE sha256 = ANY($1::text[])',
        keys,
    )
    return {row[0]: BlobCheck(row[0], row[1], row[2]) for row in rows}


class BlobStore:
    """Reads blobs on a pool (writes go with their events, through ``EventStore.append``)."""

    def __init__(self, pool: asyncpg.Pool, *, schema: str = DB_SCHEMA) -> None:
        self.pool = pool
        self.schema = schema

    async def fetch(self, sha256s: Sequence[str]) -> dict[str, bytes]:
        async with self.pool.acquire() as conn:
            return await fetch_blobs_conn(conn, sha256s, schema=self.schema)

    async def load(self, sizes: Mapping[str, int]) -> dict[str, Any]:
        """sha256 -> decoded JSON value of each blob of ``sizes`` (sha256 -> recorded size).

        Each blob's bytes are checked against its key and recorded size before they are
        decoded; raises ``BlobUnavailable`` for one that is missing or does not match."""
        stored = await self.fetch(list(sizes))
        return {sha: decode_blob(sha, size, stored.get(sha)) for sha, size in sizes.items()}

    async def check(self, sha256s: Sequence[str]) -> dict[str, BlobCheck]:
        async with self.pool.acquire() as conn:
            return await check_blobs_conn(conn, sha256s, schema=self.schema)


def decode_blob(sha256: str, size_bytes: int, data: bytes | None) -> Any:
    """The JSON value of a blob's bytes, once they are checked against its key and recorded size."""
    if data is None:
        raise BlobUnavailable(sha256, "it is referenced but not in the blob store")
    if len(data) != size_bytes or hashlib.sha256(data).hexdigest() != sha256:
        raise BlobUnavailable(
            sha256, f"the stored bytes ({len(data)}) do not hash to it: the blob store was changed"
        )
    return msgspec.json.decode(data)
