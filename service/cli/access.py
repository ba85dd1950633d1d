"""``flowledger keys`` and ``flowledger secrets``: operators' commands on the database directly
(like ``audit``), so they work before any key exists and while the API is down.

Database: --database-url (FLOWLEDGER_DATABASE_URL), else the embedded one under --home; these
commands never create a database.
"""

from __future__ import annotations

import getpass
import re
import sys
from datetime import UTC, datetime, timedelta

import click

from service.cli._common import console, run_async, settings_of
from service.cli._output import Column, format_option, print_items
from service.config import ALL_SCOPES
from service.infra.keyfile import load_secret_key
from service.runtime import log_database
from service.store.keys import KeyStore, tenant_problem
from service.store.secrets import SecretStore, UnknownSecret

SCOPE_CHOICES = ALL_SCOPES
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """``30s``, ``15m``, ``12h``, ``30d``."""
    match = _DURATION.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter(f"{text!r} is not a duration like 30d, 12h, 15m or 30s")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def _operator() -> str:
    return f"cli:{getpass.getuser()}"


@click.group("keys")
def keys() -> None:
    """API keys: create (the token is printed once), list, revoke.

    Database: --database-url (FLOWLEDGER_DATABASE_URL), else the embedded one under --home
    (FLOWLEDGER_HOME, default ./.flowledger); never creates one.
    """


@keys.command("create")
@click.option("--tenant", required=True, help="The tenant the key acts for.")
@click.option(
    "--scope", "scopes", multiple=True, required=True, type=click.Choice(SCOPE_CHOICES), help="Repeatable."
)
@click.option("--expires", default=None, help="Lifetime, e.g. 30d, 12h (default: never).")
@click.pass_context
def keys_create(ctx: click.Context, tenant: str, scopes: tuple[str, ...], expires: str | None) -> None:
    """Create a key for TENANT with the given scopes; prints its token once (store it now)."""
    if (problem := tenant_problem(tenant)) is not None:  # before connecting: a typo is reported at once
        raise click.BadParameter(problem, param_hint="--tenant")
    expires_at = datetime.now(UTC) + parse_duration(expires) if expires else None
    settings = settings_of(ctx)

    async def main() -> tuple[str, str]:
        async with log_database(settings, create=False) as db:
            key, token = await KeyStore(db.pool).create(
                tenant=tenant, scopes=list(scopes), created_by=_operator(), expires_at=expires_at
            )
            return key.key_id, token

    key_id, token = run_async(main())
    click.echo(f"created key {key_id} for tenant {tenant} ({', '.join(sorted(set(scopes)))})", err=True)
    click.echo("the token is shown only now:", err=True)
    click.echo(token)


KEY_COLUMNS = (
    Column("key", lambda k: k["key_id"]),
    Column("tenant", lambda k: k["tenant"]),
    Column("scopes", lambda k: " ".join(k["scopes"])),
    Column("created by", lambda k: k["created_by"]),
    Column("last used", lambda k: (k["last_used_at"] or "")[:19].replace("T", " ")),
    Column("expires", lambda k: (k["expires_at"] or "never")[:19].replace("T", " ")),
    Column("state", lambda k: k["state"]),
)


@keys.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@format_option()
@click.pass_context
def keys_list(ctx: click.Context, tenant: str | None, fmt: str) -> None:
    """Keys with their tenant, scopes, creator, last use and expiry (never a secret)."""
    settings = settings_of(ctx)

    async def main() -> list[dict[str, object]]:
        async with log_database(settings, create=False) as db:
            found = await KeyStore(db.pool).all_keys(tenant)
        now = datetime.now(UTC)
        return [
            {
                "key_id": k.key_id,
                "tenant": k.tenant,
                "scopes": list(k.scopes),
                "created_by": k.created_by,
                "created_at": k.created_at.isoformat(),
                "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                "state": "revoked"
                if k.revoked_at
                else "expired"
                if k.expires_at and k.expires_at <= now
                else "active",
            }
            for k in found
        ]

    print_items(fmt, run_async(main()), KEY_COLUMNS)  # type: ignore[arg-type]


@keys.command("revoke")
@click.argument("key_id")
@click.pass_context
def keys_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke KEY_ID: every request with its token is refused from the next one on."""
    settings = settings_of(ctx)

    async def main() -> bool:
        async with log_database(settings, create=False) as db:
            return await KeyStore(db.pool).revoke(key_id) is not None

    if not run_async(main()):
        click.echo(f"flowledger: no key {key_id!r} (see `flowledger keys list`)", err=True)
        sys.exit(1)
    console.print(f"revoked key {key_id}")


@click.group("secrets")
def secrets() -> None:
    """Secrets per tenant, encrypted at rest; node configs name them as {"$secret": "NAME"}.

    The encryption key is FLOWLEDGER_SECRET_KEY, else <home>/secret.key (created once, 0600):
    the service must use the same key. Database as for `keys`.
    """


@secrets.command("set")
@click.argument("name")
@click.option("--tenant", default="default", show_default=True)
@click.pass_context
def secrets_set(ctx: click.Context, name: str, tenant: str) -> None:
    """Store NAME with the value read from standard input (one trailing newline is dropped)."""
    if sys.stdin.isatty():
        click.echo("type the value, then Ctrl-D (or pipe it: flowledger secrets set NAME < file)", err=True)
    value = sys.stdin.read()
    value = value[:-1] if value.endswith("\n") else value
    if not value:
        raise click.UsageError("the value read from standard input is empty")
    settings = settings_of(ctx)

    async def main() -> None:
        async with log_database(settings, create=False) as db:
            store = SecretStore(db.pool, load_secret_key(settings.secret_key, settings.home))
            await store.put(tenant, name, value, updated_by=_operator())

    try:
        run_async(main())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    console.print(f"secret {name} stored for tenant {tenant}")


@secrets.command("list")
@click.option("--tenant", default="default", show_default=True)
@format_option()
@click.pass_context
def secrets_list(ctx: click.Context, tenant: str, fmt: str) -> None:
    """The tenant's secret names, who set them and when (never a value)."""
    settings = settings_of(ctx)

    async def main() -> list[dict[str, str]]:
        async with log_database(settings, create=False) as db:
            store = SecretStore(db.pool, load_secret_key(settings.secret_key, settings.home))
            return [
                {"name": i.name, "updated_by": i.updated_by, "updated_at": i.updated_at.isoformat()}
                for i in await store.infos(tenant)
            ]

    columns = (
        Column("name", lambda s: s["name"]),
        Column("set by", lambda s: s["updated_by"]),
        Column("at", lambda s: s["updated_at"][:19].replace("T", " ")),
    )
    print_items(fmt, run_async(main()), columns)  # type: ignore[arg-type]


@secrets.command("rm")
@click.argument("name")
@click.option("--tenant", default="default", show_default=True)
@click.pass_context
def secrets_rm(ctx: click.Context, name: str, tenant: str) -> None:
    """Delete NAME; runs whose nodes name it fail from then on."""
    settings = settings_of(ctx)

    async def main() -> bool:
        async with log_database(settings, create=False) as db:
            store = SecretStore(db.pool, load_secret_key(settings.secret_key, settings.home))
            return await store.delete(tenant, name)

    if not run_async(main()):
        raise click.ClickException(str(UnknownSecret(f"no secret named {name!r} in tenant {tenant!r}")))
    console.print(f"secret {name} deleted from tenant {tenant}")
