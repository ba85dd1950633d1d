"""``flowledger vectors``: build and list the FAISS indexes that ``vector_search`` nodes read.

Like ``keys`` and ``secrets``, these work on the service's files directly (under --home:
``<home>/vectors/<tenant>/``), without the API; a running service picks up a rebuilt index at its
next search.
"""

from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

import click

from service.cli._common import settings_of
from service.cli._output import Column, format_option, print_items
from service.config import DEFAULT_TENANT
from service.engine.nodes.vectors import VectorIndexes, index_name_problem, parse_rows
from service.store.keys import tenant_problem

MAX_PROBLEMS_SHOWN = 50


def _tenant(tenant: str) -> str:
    if (problem := tenant_problem(tenant)) is not None:
        raise click.BadParameter(problem, param_hint="--tenant")
    return tenant


@click.group("vectors")
def vectors() -> None:
    """Vector indexes (FAISS, cosine similarity) for vector_search nodes: build, list.

    Stored under --home (FLOWLEDGER_HOME, default ./.flowledger): vectors/<tenant>/<name>.faiss
    and <name>.meta.json. The service must use the same home.
    """


@vectors.command("build")
@click.argument("name")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option(
    "--tenant", default=DEFAULT_TENANT, show_default=True, help="The tenant whose runs may search it."
)
@click.option(
    "--skip-bad-rows",
    is_flag=True,
    help="Index the good rows even when some are bad (they are still listed).",
)
@click.pass_context
def vectors_build(ctx: click.Context, name: str, file: click.File, tenant: str, skip_bad_rows: bool) -> None:
    """Build (or replace) index NAME from FILE (NDJSON; `-` reads stdin).

    One row per line: {"id": "a", "vector": [0.1, 0.2, ...], "payload": {...}}. Every vector must
    have the dimension of the first one. Bad rows are reported with their line number, and then
    nothing is written (unless --skip-bad-rows).
    """
    if (problem := index_name_problem(name)) is not None:
        raise click.BadParameter(problem, param_hint="NAME")
    _tenant(tenant)
    rows, problems = parse_rows(file)  # type: ignore[arg-type]  # a text file iterates its lines
    for number, why in problems[:MAX_PROBLEMS_SHOWN]:
        click.echo(f"line {number}: {why}", err=True)
    if len(problems) > MAX_PROBLEMS_SHOWN:
        click.echo(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more bad rows", err=True)
    if problems and not skip_bad_rows:
        click.echo(f"flowledger: {len(problems)} bad row(s); index {name!r} not written", err=True)
        sys.exit(1)
    if not rows:
        click.echo("flowledger: no rows to index", err=True)
        sys.exit(1)
    indexes = VectorIndexes(Path(settings_of(ctx).home))
    info = indexes.build(tenant, name, rows)
    skipped = f", {len(problems)} bad row(s) skipped" if problems else ""
    click.echo(
        f"built index {name} for tenant {tenant}: {info.count} vectors of dimension {info.dimension}"
        f"{skipped} ({indexes.paths(tenant, name)[0]})"
    )


INDEX_COLUMNS = (
    Column("tenant", lambda i: i["tenant"]),
    Column("name", lambda i: i["name"]),
    Column("vectors", lambda i: str(i["count"]), right=True),
    Column("dimension", lambda i: str(i["dimension"]), right=True),
    Column("built", lambda i: i["built_at"]),
    Column("bytes", lambda i: str(i["bytes"]), right=True),
)


@vectors.command("list")
@click.option("--tenant", default=DEFAULT_TENANT, show_default=True, help="Whose indexes.")
@click.option("--all-tenants", is_flag=True, help="Every tenant's indexes.")
@format_option()
@click.pass_context
def vectors_list(ctx: click.Context, tenant: str, all_tenants: bool, fmt: str) -> None:
    """The indexes with their size, dimension and build time."""
    indexes = VectorIndexes(Path(settings_of(ctx).home))
    tenants = indexes.tenants() if all_tenants else [_tenant(tenant)]
    items = [asdict(indexes.info(t, name)) for t in tenants for name in indexes.names(t)]
    print_items(fmt, items, INDEX_COLUMNS)
