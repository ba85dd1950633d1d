"""API keys in ``flowledger.api_keys``: created, listed, revoked, and looked up by key id.

A token is ``flk_<key_id>_<secret>``. Only the SHA-256 of the secret is stored: the secret
is 32 random bytes, so a fast hash is as strong as a slow one and costs nothing per request.
The token is shown once, when the key is created.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from schemas.names import DB_SCHEMA

TOKEN_PREFIX = "flk_"
TENANT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key (never its secret)."""

    key_id: str
    tenant: str
    scopes: tuple[str, ...]
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


@dataclass(frozen=True, slots=True)
class ParsedToken:
    key_id: str
    secret: str


def tenant_problem(tenant: str) -> str | None:
    """Why ``tenant`` cannot name a tenant (it is a NATS subject token of every event), or None."""
    if TENANT_NAME.match(tenant):
        return None
    return f"a tenant is 1 to 64 letters, digits, _ or -; got {tenant!r}"


def parse_token(token: str) -> ParsedToken | None:
    """The parts of an API key token, or None when ``token`` is not shaped like one."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    key_id, sep, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if not sep or not key_id or not secret or not key_id.isalnum():
        return None
    return ParsedToken(key_id, secret)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        row["key_id"],
        row["tenant"],
        tuple(row["scopes"]),
        row["created_by"],
        row["created_at"],
        row["expires_at"],
        row["revoked_at"],
        row["last_used_at"],
    )


class KeyStore:
    """Every statement on ``api_keys``."""

    def __init__(self, pool: asyncpg.Pool, *, schema: str = DB_SCHEMA) -> None:
        self.pool = pool
        s = f'"{schema}"'
        columns = "key_id, tenant, scopes, created_by, created_at, expires_at, revoked_at, last_used_at"
        self._sql_insert = (
            f"INSERT INTO {s}.api_keys (key_id, tenant, scopes, secret_sha256, created_by, expires_at) "
            f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {columns}"
        )
        self._sql_lookup = f"SELECT {columns}, secret_sha256 FROM {s}.api_keys WHERE key_id = $1"
        self._sql_list = (
            f"SELECT {columns} FROM {s}.api_keys WHERE ($1::text IS NULL OR tenant = $1) ORDER BY created_at"
        )
        self.notify_channel = f"{schema}_keys"
        """Revocations are announced here (payload: the key id), so verifiers drop cached keys."""
        self._sql_revoke = (
            f"WITH revoked AS (UPDATE {s}.api_keys SET revoked_at = coalesce(revoked_at, clock_timestamp()) "
            f"WHERE key_id = $1 RETURNING {columns}) "
            f"SELECT revoked.*, pg_notify('{self.notify_channel}', revoked.key_id) FROM revoked"
        )
        self._sql_used = f"UPDATE {s}.api_keys SET last_used_at = clock_timestamp() WHERE key_id = $1"
        self._sql_any = f"SELECT EXISTS (SELECT 1 FROM {s}.api_keys)"

    async def create(
        self, *, tenant: str, scopes: list[str], created_by: str, expires_at: datetime | None = None
    ) -> tuple[ApiKey, str]:
        """A new key and its token (the only time the token exists). The tenant must be a NATS
        subject token (``[A-Za-z0-9_-]{1,64}``): it is part of every subject of its events."""
        if (problem := tenant_problem(tenant)) is not None:
            raise ValueError(problem)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                self._sql_insert, key_id, tenant, sorted(set(scopes)), _digest(secret), created_by, expires_at
            )
        assert row is not None
        return _key(row), f"{TOKEN_PREFIX}{key_id}_{secret}"

    async def verify(self, token: ParsedToken) -> ApiKey | None:
        """The key ``token`` names if its secret matches (constant-time); None otherwise.
        Whether it is expired or revoked is the caller's to judge (it says which)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(self._sql_lookup, token.key_id)
        if row is None or not hmac.compare_digest(bytes(row["secret_sha256"]), _digest(token.secret)):
            return None
        return _key(row)

    async def all_keys(self, tenant: str | None = None) -> list[ApiKey]:
        async with self.pool.acquire() as conn:
            return [_key(r) for r in await conn.fetch(self._sql_list, tenant)]

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Revoke ``key_id`` (idempotent); None when there is no such key."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(self._sql_revoke, key_id)
        return None if row is None else _key(row)

    async def mark_used(self, key_id: str) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(self._sql_used, key_id)

    async def any(self) -> bool:
        async with self.pool.acquire() as conn:
            return bool(await conn.fetchval(self._sql_any))
