"""``serve``'s access options: authentication (API keys always; JWT when configured), rate limits
and request limits. Each option is also an environment variable of the same meaning."""

from __future__ import annotations

import ipaddress
from typing import Any

import click

from service.cli._common import OptionTable, options_from
from service.config import AuthSettings, RequestLimits

_OPTIONS: OptionTable = [
    (
        ("--auth/--no-auth",),
        dict(
            envvar="FLOWLEDGER_AUTH",
            default=True,
            help="Require a credential on every route but /health, /ready and /schema. "
            "--no-auth is refused unless --host is a loopback address.",
        ),
    ),
    (
        ("--jwt-secret",),
        dict(envvar="FLOWLEDGER_JWT_SECRET", default=None, help="Accept HS256 JWTs signed with this secret."),
    ),
    (
        ("--jwt-public-key",),
        dict(
            envvar="FLOWLEDGER_JWT_PUBLIC_KEY",
            default=None,
            help="Accept RS256/ES256 JWTs: a PEM public key, inline or a file path.",
        ),
    ),
    (
        ("--jwt-jwks-url",),
        dict(
            envvar="FLOWLEDGER_JWT_JWKS_URL",
            default=None,
            help="Accept RS256/ES256 JWTs signed by a key of this JWKS (cached; refetched on an unknown kid).",
        ),
    ),
    (("--jwt-issuer",), dict(envvar="FLOWLEDGER_JWT_ISSUER", default=None, help="Required iss claim.")),
    (("--jwt-audience",), dict(envvar="FLOWLEDGER_JWT_AUDIENCE", default=None, help="Required aud claim.")),
    (
        ("--jwt-tenant-claim",),
        dict(envvar="FLOWLEDGER_JWT_TENANT_CLAIM", default="tenant", help="Claim naming the tenant."),
    ),
    (
        ("--jwt-scope-claim",),
        dict(
            envvar="FLOWLEDGER_JWT_SCOPE_CLAIM",
            default="scope",
            help="Claim with the scopes (space-separated or a list).",
        ),
    ),
    (
        ("--rate-limit",),
        dict(
            envvar="FLOWLEDGER_RATE_LIMIT",
            default=6000,
            type=click.IntRange(0),
            help="Requests per minute per credential (per client address without one); over it: 429 "
            "with Retry-After. 0: no limit.",
        ),
    ),
    (
        ("--session-ttl",),
        dict(
            envvar="FLOWLEDGER_SESSION_TTL",
            default=8 * 3600,
            type=click.IntRange(60),
            help="Seconds a web console session lasts before the user signs in again.",
        ),
    ),
    (
        ("--max-body-bytes",),
        dict(
            envvar="FLOWLEDGER_MAX_BODY_BYTES",
            default=10 * 1024 * 1024,
            type=click.IntRange(1024),
            help="Larger request bodies: 413.",
        ),
    ),
    (
        ("--request-timeout",),
        dict(
            envvar="FLOWLEDGER_REQUEST_TIMEOUT",
            default=30.0,
            type=click.FloatRange(0.1),
            help="Seconds a request may take (streams excepted); slower: 503.",
        ),
    ),
]


access_options = options_from(_OPTIONS)
"""Decorates ``serve`` with the access options (they arrive as keyword arguments)."""


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def access_settings(host: str, options: dict[str, Any]) -> tuple[AuthSettings, RequestLimits]:
    """The settings the access options give; refuses ``--no-auth`` off loopback."""
    if not options["auth"] and not is_loopback(host):
        raise click.UsageError(
            f"--no-auth on {host}: anyone who reaches the port could run code in the service. "
            "Serve on 127.0.0.1 without auth, or keep auth on (the default) for other addresses."
        )
    auth = AuthSettings(
        enabled=options["auth"],
        jwt_secret=options["jwt_secret"] or None,
        jwt_public_key=options["jwt_public_key"] or None,
        jwt_jwks_url=options["jwt_jwks_url"] or None,
        jwt_issuer=options["jwt_issuer"] or None,
        jwt_audience=options["jwt_audience"] or None,
        jwt_tenant_claim=options["jwt_tenant_claim"],
        jwt_scope_claim=options["jwt_scope_claim"],
        rate_limit_per_minute=options["rate_limit"],
        session_ttl_s=options["session_ttl"],
    )
    limits = RequestLimits(max_body_bytes=options["max_body_bytes"], timeout_s=options["request_timeout"])
    return auth, limits
