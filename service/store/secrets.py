"""Secrets per tenant in ``flowledger.secrets``, encrypted at rest with Fernet (AES-128-CBC +
HMAC-SHA256, from ``cryptography``): the database holds only ciphertext; the key stays with
the service (``FLOWLEDGER_SECRET_KEY`` or ``$FLOWLEDGER_HOME/secret.key``).

A value is decrypted only to be used: by the executor when a node config names it
(``{"$secret": "NAME"}``). Nothing here logs or returns a value except ``reveal``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from cryptography.fernet import Fernet, InvalidToken

from schemas.names import DB_SCHEMA

SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class UnknownSecret(LookupError):
    """No secret of that name in the tenant (the message names it, never a value)."""


class SecretKeyMismatch(RuntimeError):
    """A stored secret does not decrypt with this service's key."""


@dataclass(frozen=True, slots=True)
class SecretInfo:
    name: str
    updated_by: str
    updated_at: datetime


class SecretStore:
    """Every statement on ``secrets``; encrypts on the way in, decrypts on the way out."""

    def __init__(self, pool: asyncpg.Pool, key: bytes, *, schema: str = DB_SCHEMA) -> None:
        self.pool = pool
        self._fernet = Fernet(key)
        s = f'"{schema}"'
        self._sql_set = (
            f"INSERT INTO {s}.secrets (tenant, name, ciphertext, updated_by) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (tenant, name) DO UPDATE SET ciphertext = EXCLUDED.ciphertext, "
            "updated_by = EXCLUDED.updated_by, updated_at = clock_timestamp()"
        )
        self._sql_get = (
            f"SELECT name, ciphertext FROM {s}.secrets WHERE tenant = $1 AND name = ANY($2::text[])"
        )
        self._sql_list = (
            f"SELECT name, updated_by, updated_at FROM {s}.secrets WHERE tenant = $1 ORDER BY name"
        )
        self._sql_delete = f"DELETE FROM {s}.secrets WHERE tenant = $1 AND name = $2"

    async def put(self, tenant: str, name: str, value: str, *, updated_by: str) -> None:
        if not SECRET_NAME.match(name):
            raise ValueError(
                f"secret names are letters, digits and _ (not starting with a digit), got {name!r}"
            )
        async with self.pool.acquire() as conn:
            await conn.execute(self._sql_set, tenant, name, self._fernet.encrypt(value.encode()), updated_by)

    async def reveal(self, tenant: str, names: set[str]) -> dict[str, str]:
        """The values of ``names`` in ``tenant``; ``UnknownSecret`` naming the first one missing."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(self._sql_get, tenant, sorted(names))
        values: dict[str, str] = {}
        for row in rows:
            try:
                values[row["name"]] = self._fernet.decrypt(bytes(row["ciphertext"])).decode()
            except InvalidToken:
                raise SecretKeyMismatch(
                    f"secret {row['name']!r} does not decrypt with this service's key "
                    "(FLOWLEDGER_SECRET_KEY or secret.key changed since it was set)"
                ) from None
        missing = sorted(names - values.keys())
        if missing:
            raise UnknownSecret(f"no secret named {missing[0]!r} in tenant {tenant!r}")
        return values

    async def infos(self, tenant: str) -> list[SecretInfo]:
        async with self.pool.acquire() as conn:
            return [
                SecretInfo(r["name"], r["updated_by"], r["updated_at"])
                for r in await conn.fetch(self._sql_list, tenant)
            ]

    async def delete(self, tenant: str, name: str) -> bool:
        async with self.pool.acquire() as conn:
            return await conn.execute(self._sql_delete, tenant, name) == "DELETE 1"
