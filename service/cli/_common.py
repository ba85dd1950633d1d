"""What every ``flowledger`` command shares: settings, the event loop, the API client, run ids,
one describer of events, and quiet exits. Commands import this module, never ``main``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import click
import httpx
from click.core import ParameterSource
from rich.console import Console

from service.config import Settings, default_api_url
from service.infra.event_loop import event_loop_factory
from service.infra.keyfile import ADMIN_TOKEN_FILE
from service.logs import quiet_http_client_logs

T = TypeVar("T")

TERMINAL_TYPES = frozenset({"run_finished", "run_cancelled"})

console = Console(stderr=False, highlight=False, soft_wrap=True)  # a line never breaks into fragments


def settings_of(ctx: click.Context) -> Settings:
    """The root group's settings (every command runs below it)."""
    settings = ctx.find_object(Settings)
    if settings is None:  # only when a command is invoked without the root group
        raise click.UsageError("run this command as `flowledger ...`")
    return settings


def run_async(main: Awaitable[T]) -> T:
    """Run a coroutine; known start-up failures end the command with one line, exit code 2."""
    from service.runtime import STARTUP_ERRORS  # the runtime pulls in the whole service: only when used

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(main)  # type: ignore[arg-type]
    except STARTUP_ERRORS as exc:
        click.echo(f"flowledger: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("flowledger: interrupted", err=True)
        sys.exit(130)


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """``flowledger ... | head``: when the reader leaves, stop quietly like other Unix tools
    (and keep Python from reporting the closed pipe again at exit)."""
    try:
        yield
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


class ApiError(click.ClickException):
    """A problem-details answer (or no answer), shown as one line."""


class RunIdType(click.ParamType):
    """A run id argument: any UUID spelling, converted to a ``UUID``; anything else is a usage error.

    Checked before the command connects anywhere, so a typo never reaches the API
    (where it would only be an unknown route).
    """

    name = "run id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> UUID:
        if isinstance(value, UUID):
            return value
        try:
            return UUID(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not a valid run id (run ids are UUIDs)", param, ctx)


RUN_ID = RunIdType()


def api_url(ctx: click.Context) -> str:
    """The root ``--api-url``; left at its default, the address ``serve`` binds in this environment."""
    root = ctx.find_root()
    given: str | None = root.params.get("api_url")
    if given and root.get_parameter_source("api_url") is not ParameterSource.DEFAULT:
        return given
    return default_api_url(os.environ)


def client_token(ctx: click.Context) -> str | None:
    """``--token`` / ``FLOWLEDGER_TOKEN``, else the admin token ``serve`` wrote under the home."""
    given: str | None = ctx.find_root().params.get("token")
    if given:
        return given.strip()
    settings = ctx.find_object(Settings)
    if settings is None:
        return None
    try:
        return (Path(settings.home) / ADMIN_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def api_client(ctx: click.Context) -> httpx.Client:
    """An HTTP client of the service's API (``--api-url``), carrying the credential."""
    settings = ctx.find_object(Settings)
    quiet_http_client_logs(settings.log_level if settings is not None else "info")
    token = client_token(ctx)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=api_url(ctx).rstrip("/"), timeout=30, headers=headers)


def call_api(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """One request; the decoded JSON answer, or ``ApiError`` with the problem's detail."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise ApiError(
            f"cannot reach the Flowledger API at {client.base_url} ({exc}); is `flowledger serve` running?"
        ) from exc
    if response.status_code >= 400:
        try:
            body = response.json()
            message = body.get("detail") or body.get("title") or response.text
        except ValueError:
            message = response.text
        if response.status_code == 401:
            message += (
                "; give a key with --token or FLOWLEDGER_TOKEN (the admin key `serve` wrote is "
                f"{ADMIN_TOKEN_FILE} under its home: run this from the directory `make run` was "
                "started in, or set FLOWLEDGER_HOME to that home)"
            )
        raise ApiError(f"{response.status_code}: {message}")
    return response.json()


def status_markup(status: str) -> str:
    """A run or node status, coloured for rich."""
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}.get(status)
    return f"[{colour}]{status}[/{colour}]" if colour else status


OptionTable = list[tuple[tuple[str, ...], dict[str, Any]]]
"""Options of a command as data: (names, click.option keyword arguments)."""


def options_from(table: OptionTable) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding every option of ``table`` (each with its environment variable and default
    shown in ``--help``); the command receives them as keyword arguments."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for names, kwargs in reversed(table):
            command = click.option(*names, **{"show_envvar": True, "show_default": True, **kwargs})(command)
        return command

    return decorate


# -- the one describer of events -------------------------------------------------------------------


def byte_size(n: object) -> str:
    """``12 bytes``, ``3.0 KiB``, ``1.5 MiB``."""
    if not isinstance(n, int):
        return "? bytes"
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


def _error_text(error: object) -> str:
    if isinstance(error, dict):
        return f"{error.get('kind', 'error')}: {error.get('message', '')}"
    return str(error)


def _node_after(data: Mapping[str, Any]) -> list[str]:
    node = data.get("node_id")
    if reuse := data.get("reused_from"):
        if reuse.get("overridden"):
            return [f"{node} output overridden (--override)"]
        return [f"{node} reused from run {reuse.get('run_id')} seq {reuse.get('seq')}"]
    parts = [f"{node} {data.get('status', '?')} in {float(data.get('duration_ms', 0)):.0f} ms"]
    if data.get("status") == "succeeded":
        parts.append(f"{data.get('item_count', 0)} item(s)")
    if data.get("error"):
        parts.append(f"error {_error_text(data['error'])}")
    return parts


def _run_details(kind: str, data: Mapping[str, Any]) -> list[str]:
    parts: list[str] = []
    match kind:
        case "run_queued":
            parts.append(f"version {data.get('workflow_version', '?')}")
            if data.get("parent_node_id"):
                parts.append(f"child of run {data['parent_run_id']} (node {data['parent_node_id']})")
            elif data.get("parent_run_id"):
                parts.append(f"forked from {data['parent_run_id']}")
            if data.get("actor"):
                parts.append(f"by {data['actor']}")
        case "run_started" | "run_recovered":
            if data.get("worker_id"):
                parts.append(f"worker {data['worker_id']}")
            if kind == "run_recovered":
                parts.append(f"{len(data.get('completed_nodes') or [])} node(s) already done")
        case "run_finished":
            parts.append(f"{data.get('status', '?')} in {float(data.get('duration_ms', 0)):.0f} ms")
            if data.get("error"):
                parts.append(f"error {data['error']}")
        case "run_waiting" | "run_resumed" | "run_cancel_requested" | "run_cancelled":
            if data.get("node_id"):
                parts.append(f"{data['node_id']}")
            if data.get("signal") and kind == "run_waiting":
                parts.append(f"waits for signal {data['signal']}")
            if data.get("child_run_id"):
                parts.append(f"child run {data['child_run_id']}")
            if data.get("wake_at"):
                parts.append(f"until {data['wake_at']}")
            if data.get("reason"):
                parts.append(f"reason {data['reason']}")
            if data.get("requested_by"):
                parts.append(f"by {data['requested_by']}")
    return parts


def describe_event(kind: str, data: Mapping[str, Any]) -> str:
    """The type-specific part of an event, on one line: node, status, error where the type has them.

    Pure; tolerates unknown types and missing fields (a newer publisher): those give "".
    """
    node = data.get("node_id")
    parts: list[str]
    match kind:
        case "node_execute_before":
            parts = [f"{node} ({data.get('node_type', '?')}) attempt {data.get('attempt', 1)}"]
        case "node_execute_after":
            parts = _node_after(data)
        case "node_execute_after_data":
            parts = [f"{node} output {byte_size(data.get('output_bytes', 0))}"]
            if data.get("marker"):
                parts.append("(over the cap: marker only)")
        case "node_retry_scheduled":
            parts = [
                f"{node} retry attempt {data.get('next_attempt', '?')} in {data.get('delay_ms', '?')} ms"
            ]
            if data.get("error"):
                parts.append(f"after {_error_text(data['error'])}")
        case "node_skipped":
            parts = [f"{node}"] + ([f"reason {data['reason']}"] if data.get("reason") else [])
        case "node_log":
            count = len(data.get("lines") or [])
            parts = [f"{node} attempt {data.get('attempt', 1)}: {count} log line{'' if count == 1 else 's'}"]
            if data.get("dropped"):
                parts.append(f"({data['dropped']} dropped so far)")
        case _:
            parts = _run_details(kind, data)
    return " ".join(parts).replace("\r", "\\r").replace("\n", "\\n")
