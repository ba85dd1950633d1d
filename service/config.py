"""Settings: environment variables, with CLI flags of the same meaning (``flowledger --help``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from service.worker import WorkerSettings

ENV_DATABASE_URL = "FLOWLEDGER_DATABASE_URL"
ENV_NATS_URL = "FLOWLEDGER_NATS_URL"
ENV_NATS_STREAM = "FLOWLEDGER_NATS_STREAM"
ENV_NATS_SUBJECT_PREFIX = "FLOWLEDGER_NATS_SUBJECT_PREFIX"
ENV_HOME = "FLOWLEDGER_HOME"
ENV_HTTP_HOST = "FLOWLEDGER_HTTP_HOST"
ENV_HTTP_PORT = "FLOWLEDGER_HTTP_PORT"
ENV_LOG_FORMAT = "FLOWLEDGER_LOG_FORMAT"
ENV_LOG_LEVEL = "FLOWLEDGER_LOG_LEVEL"
ENV_API_URL = "FLOWLEDGER_API_URL"

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


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to start. ``None`` URLs mean: start the embedded server."""

    database_url: str | None = None
    nats_url: str | None = None
    nats_stream: str = "FLOWLEDGER"
    """JetStream stream of this log's events (one stream per log)."""
    nats_subject_prefix: str = "flowledger.events"
    home: Path = field(default_factory=lambda: Path(".flowledger"))
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_format: str = "auto"
    log_level: str = "info"
    relay_enabled: bool = True
    worker_enabled: bool = True
    projections_enabled: bool = True
    push_queue_size: int = 1000
    push_send_timeout_s: float = 5.0
    """How long a WebSocket client may leave its full queue unread before it is disconnected."""
    """Messages a live client may fall behind before it is disconnected (a slow client never blocks others)."""
    worker: WorkerSettings = field(default_factory=WorkerSettings)

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get(ENV_DATABASE_URL) or None,
            nats_url=env.get(ENV_NATS_URL) or None,
            nats_stream=env.get(ENV_NATS_STREAM, "FLOWLEDGER"),
            nats_subject_prefix=env.get(ENV_NATS_SUBJECT_PREFIX, "flowledger.events"),
            home=Path(env.get(ENV_HOME, ".flowledger")),
            http_host=env.get(ENV_HTTP_HOST, "127.0.0.1"),
            http_port=int(env.get(ENV_HTTP_PORT, "8000")),
            log_format=env.get(ENV_LOG_FORMAT, "auto"),
            log_level=env.get(ENV_LOG_LEVEL, "info"),
        )
