"""Settings: environment variables, with CLI flags of the same meaning (``flowledger --help``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from schemas.names import STREAM_NAME, SUBJECT_PREFIX

ENV_DATABASE_URL = "FLOWLEDGER_DATABASE_URL"
ENV_NATS_URL = "FLOWLEDGER_NATS_URL"
ENV_NATS_STREAM = "FLOWLEDGER_NATS_STREAM"
ENV_NATS_REPLICAS = "FLOWLEDGER_NATS_REPLICAS"
ENV_NATS_SUBJECT_PREFIX = "FLOWLEDGER_NATS_SUBJECT_PREFIX"
ENV_HOME = "FLOWLEDGER_HOME"
ENV_HTTP_HOST = "FLOWLEDGER_HTTP_HOST"
ENV_HTTP_PORT = "FLOWLEDGER_HTTP_PORT"
ENV_LOG_FORMAT = "FLOWLEDGER_LOG_FORMAT"
ENV_LOG_LEVEL = "FLOWLEDGER_LOG_LEVEL"
ENV_API_URL = "FLOWLEDGER_API_URL"
ENV_MAX_JSON_DEPTH = "FLOWLEDGER_MAX_JSON_DEPTH"
ENV_CORS_ORIGINS = "FLOWLEDGER_CORS_ORIGINS"

DEFAULT_MAX_JSON_DEPTH = 64
"""Levels of arrays/objects a request body, workflow spec or push message may nest."""

DEFAULT_HOME = ".flowledger"

_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


def default_api_url(env: Mapping[str, str]) -> str:
    """The API URL of a service started with the same environment (``FLOWLEDGER_API_URL`` unset).

    ``serve`` binds ``FLOWLEDGER_HTTP_HOST:FLOWLEDGER_HTTP_PORT`` (default
    127.0.0.1:8000); a wildcard bind address is reached over the loopback.
    """
    host = env.get(ENV_HTTP_HOST, "").strip()
    host = "127.0.0.1" if host in _WILDCARD_HOSTS else host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    port = env.get(ENV_HTTP_PORT, "").strip() or "8000"
    return f"http://{host}:{port}"


DEFAULT_TENANT = "default"
"""The tenant of the bootstrap admin key, and of every request when authentication is off."""

ALL_SCOPES = ("workflows:read", "workflows:write", "runs:read", "runs:write", "audit", "admin")
"""Every scope a credential can carry."""


@dataclass(frozen=True)
class WorkerSettings:
    """Limits of one process's worker (``flowledger serve --help`` names the flags)."""

    max_runs: int = 200
    """Runs executed at once by this worker (global run limit per process)."""
    max_node_tasks: int = 512
    """Node handlers running at once across all runs of this worker."""
    max_parallel_nodes: int = 16
    """Node handlers running at once within one run."""
    lease_s: float = 15.0
    """A claimed run's lease; renewed while it runs, recovered by another worker once it expires."""
    poll_s: float = 1.0
    """How often an idle worker looks for runs when no notification woke it."""
    output_cap_bytes: int = 1024 * 1024
    """The event payload cap: a node output whose JSON is larger is stored whole in the blob store,
    its event carrying a ``{"$blob": {"sha256", "size_bytes"}}`` reference."""
    max_output_bytes: int = 64 * 1024 * 1024
    """A node output whose JSON is larger fails the node with ``output_too_large``."""
    park_after_s: float = 2.0
    """A run whose every unfinished node waits (a signal, a timer, a child run) longer than
    this gives its slot and lease back until then; shorter waits are kept in memory."""


@dataclass(frozen=True)
class AuthSettings:
    """Who may call the API (``flowledger serve --help`` names the flags)."""

    enabled: bool = True
    """Off only for a service bound to loopback (``serve --no-auth``): then everyone is the
    default tenant's admin."""
    jwt_secret: str | None = None
    """HS256 shared secret: accept JWTs signed with it."""
    jwt_public_key: str | None = None
    """A PEM public key (inline or a file path): accept RS256/ES256 JWTs signed by its private key."""
    jwt_jwks_url: str | None = None
    """A JWKS URL: accept RS256/ES256 JWTs signed by any key it lists (cached; refetched on an unknown kid)."""
    jwt_issuer: str | None = None
    """The required ``iss`` claim (unchecked when unset)."""
    jwt_audience: str | None = None
    """The required ``aud`` claim (unchecked when unset)."""
    jwt_tenant_claim: str = "tenant"
    jwt_scope_claim: str = "scope"
    """Space-separated string or a list of scopes."""
    jwt_leeway_s: float = 30.0
    """Clock skew tolerated on ``exp`` and ``nbf``."""
    rate_limit_per_minute: int = 6000
    """Requests per minute per credential (429 with Retry-After beyond); 0: no limit."""
    session_ttl_s: int = 8 * 3600
    """How long a console session cookie lasts."""


ENV_PYTHON_WORKERS = "FLOWLEDGER_PYTHON_WORKERS"
ENV_PYTHON_MAX_CALLS = "FLOWLEDGER_PYTHON_MAX_CALLS"
ENV_PYTHON_MEMORY_MB = "FLOWLEDGER_PYTHON_MEMORY_MB"
ENV_PYTHON_CPU_SECONDS = "FLOWLEDGER_PYTHON_CPU_SECONDS"
ENV_HTTP_ALLOW = "FLOWLEDGER_HTTP_ALLOW"
ENV_HTTP_DENY = "FLOWLEDGER_HTTP_DENY"


def _default_python_workers() -> int:
    return max(2, os.cpu_count() or 2)


@dataclass(frozen=True)
class NodeSettings:
    """How node code runs: the python worker pool and the http node's egress rules
    (``flowledger serve --help`` names the flags)."""

    python_workers: int = field(default_factory=_default_python_workers)
    """Worker processes running ``python`` nodes (and isolated plugin nodes) at once."""
    python_max_calls: int = 1000
    """Calls a worker process serves before it is replaced by a fresh one."""
    python_memory_mb: int = 1024
    """Address-space limit of a worker process (a node's ``memory_mb`` overrides it); 0: none."""
    python_cpu_seconds: int = 300
    """CPU seconds one call may use (a node's ``cpu_seconds`` overrides it); 0: no limit."""
    http_allow: tuple[str, ...] = ()
    """Hosts (``api.example.com``, ``*.example.com``), addresses and CIDR blocks the ``http``
    node may reach; empty: any not denied."""
    http_deny: tuple[str, ...] = ()
    """Hosts, addresses and CIDR blocks it may never reach (link-local and cloud metadata
    addresses are denied by default, loopback too unless the service is bound to loopback)."""


@dataclass(frozen=True)
class RequestLimits:
    """What one request may cost the service."""

    max_body_bytes: int = 10 * 1024 * 1024
    """Larger request bodies are refused with 413 before they are read whole."""
    timeout_s: float = 30.0
    """A request (not a stream) still unanswered after this long is answered 503."""


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to start. ``None`` URLs mean: start the embedded server."""

    database_url: str | None = None
    nats_url: str | None = None
    """One NATS URL or a comma-separated seed list of a cluster's servers."""
    nats_replicas: int | None = None
    """Replicas of the event stream (1..5; more than 1 needs a NATS cluster, R3 survives the loss
    of one node): the stream is created so, or an existing one scaled to it. ``None`` (unset): a
    new stream gets 1 and an existing one keeps its count, so a command or an instance started
    without the setting never scales a cluster's R3 stream down."""
    nats_stream: str = STREAM_NAME
    """JetStream stream of this log's events (one stream per log)."""
    nats_subject_prefix: str = SUBJECT_PREFIX
    """Events are published on ``<prefix>.<tenant>.<workflow_id>.<run_id>.<type>``."""
    home: Path = field(default_factory=lambda: Path(DEFAULT_HOME))
    """Data directory of the embedded servers."""
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_format: str = "auto"
    """``auto`` (JSON when stderr is not a terminal), ``json`` or ``console``."""
    log_level: str = "info"
    relay_enabled: bool = True
    """Run the relay (log -> NATS) in this process; only one relay is active per database."""
    worker_enabled: bool = True
    """Execute runs in this process."""
    projections_enabled: bool = True
    """Keep the read models current in this process; one runner per projection is active."""
    push_queue_size: int = 1000
    """Messages a live client may fall behind before it is disconnected (a slow client never blocks others)."""
    push_send_timeout_s: float = 5.0
    """How long a WebSocket client may leave its full queue unread before it is disconnected."""
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    nodes: NodeSettings = field(default_factory=NodeSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: RequestLimits = field(default_factory=RequestLimits)
    secret_key: str | None = None
    """Encrypts stored secrets (``FLOWLEDGER_SECRET_KEY``); unset: ``<home>/secret.key``, created once."""
    max_json_depth: int = DEFAULT_MAX_JSON_DEPTH
    """Deeper request bodies, workflow specs and push messages are refused with a 400 (an ``error``
    frame on the WebSocket) before they are decoded."""
    cors_origins: tuple[str, ...] = ()
    """Origins whose browser pages may call the API and follow its streams (CORS); ``*`` for any.
    Empty: none (no ``Access-Control-*`` headers at all)."""

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get(ENV_DATABASE_URL) or None,
            nats_url=env.get(ENV_NATS_URL) or None,
            nats_replicas=int(env[ENV_NATS_REPLICAS]) if env.get(ENV_NATS_REPLICAS) else None,
            nats_stream=env.get(ENV_NATS_STREAM, STREAM_NAME),
            nats_subject_prefix=env.get(ENV_NATS_SUBJECT_PREFIX, SUBJECT_PREFIX),
            home=Path(env.get(ENV_HOME, DEFAULT_HOME)),
            http_host=env.get(ENV_HTTP_HOST, "127.0.0.1"),
            http_port=int(env.get(ENV_HTTP_PORT, "8000")),
            log_format=env.get(ENV_LOG_FORMAT, "auto"),
            log_level=env.get(ENV_LOG_LEVEL, "info"),
            max_json_depth=int(env.get(ENV_MAX_JSON_DEPTH, "") or DEFAULT_MAX_JSON_DEPTH),
            cors_origins=parse_origins(env.get(ENV_CORS_ORIGINS, "")),
        )


def parse_origins(value: str) -> tuple[str, ...]:
    """``FLOWLEDGER_CORS_ORIGINS``: origins separated by commas or spaces (``scheme://host[:port]``)."""
    return tuple(dict.fromkeys(o.rstrip("/") for o in value.replace(",", " ").split()))
