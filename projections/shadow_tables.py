"""Shadow tables for a rebuild: filled without indexes, indexed once, then swapped in by name.

Loading rows into a table with its indexes in place updates every index row by
row (four B-trees for ``run_summaries``); building each index once over the
loaded table is a single sort, and was most of a rebuild's time saved. After the
swap the indexes get the live table's names back, so the schema looks exactly
as the migrations left it however often it is rebuilt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Index:
    name: str
    definition: str
    """The ``CREATE [UNIQUE] INDEX`` statement, as ``pg_get_indexdef`` gives it."""
    primary: bool

    @property
    def shape(self) -> tuple[bool, str]:
        """What the index is, without its name or table: uniqueness and ``USING ...`` clause."""
        return self.definition.startswith("CREATE UNIQUE"), self.definition.partition(" USING ")[2]


def _quoted(schema: str, name: str) -> str:
    return f'"{schema}"."{name}"'


async def indexes_of(conn: Any, schema: str, table: str) -> list[Index]:
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisprimary "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = $1::regclass ORDER BY c.relname",
        _quoted(schema, table),
    )
    return [Index(name, definition, primary) for name, definition, primary in rows]


async def create_unindexed(conn: Any, schema: str, live: str, shadow: str) -> list[Index]:
    """(Re)create ``shadow`` like ``live`` (columns, defaults, constraints) but with no index yet;
    returns the indexes to build on it once it is filled (``add_indexes``)."""
    await conn.execute(f"DROP TABLE IF EXISTS {_quoted(schema, shadow)}")
    await conn.execute(f"CREATE TABLE {_quoted(schema, shadow)} (LIKE {_quoted(schema, live)} INCLUDING ALL)")
    indexes = await indexes_of(conn, schema, shadow)
    for index in indexes:
        if index.primary:
            await conn.execute(f'ALTER TABLE {_quoted(schema, shadow)} DROP CONSTRAINT "{index.name}"')
        else:
            await conn.execute(f"DROP INDEX {_quoted(schema, index.name)}")
    return indexes


async def add_indexes(conn: Any, schema: str, shadow: str, indexes: list[Index]) -> None:
    for index in indexes:
        await conn.execute(index.definition)
        if index.primary:
            await conn.execute(
                f'ALTER TABLE {_quoted(schema, shadow)} ADD CONSTRAINT "{index.name}" '
                f'PRIMARY KEY USING INDEX "{index.name}"'
            )


async def swap_in(conn: Any, schema: str, live: str, shadow: str) -> None:
    """Replace ``live`` by ``shadow`` (in the caller's transaction), keeping the live index names."""
    names = {index.shape: index.name for index in await indexes_of(conn, schema, live)}
    await conn.execute(f"DROP TABLE {_quoted(schema, live)}")
    await conn.execute(f'ALTER TABLE {_quoted(schema, shadow)} RENAME TO "{live}"')
    for index in await indexes_of(conn, schema, live):
        name = names.get(index.shape)
        if name is not None and name != index.name:
            await conn.execute(f'ALTER INDEX {_quoted(schema, index.name)} RENAME TO "{name}"')
