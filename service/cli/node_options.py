"""``serve``'s node options: the python worker pool and its limits, and the http node's egress
rules. Each option is also an environment variable of the same meaning."""

from __future__ import annotations

from typing import Any

import click

from service.cli._common import OptionTable, options_from
from service.config import (
    ENV_HTTP_ALLOW,
    ENV_HTTP_DENY,
    ENV_PYTHON_CPU_SECONDS,
    ENV_PYTHON_MAX_CALLS,
    ENV_PYTHON_MEMORY_MB,
    ENV_PYTHON_WORKERS,
    NodeSettings,
)
from service.engine.nodes.builtins import MIN_MEMORY_MB
from service.engine.nodes.egress import parse_rules

_DEFAULTS = NodeSettings()


def _rules(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(rule.text for rule in parse_rules(" ".join(values)))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _memory(ctx: click.Context, param: click.Parameter, value: int) -> int:
    if 0 < value < MIN_MEMORY_MB:
        raise click.BadParameter(f"0 (no limit) or at least {MIN_MEMORY_MB}, got {value}")
    return value


_OPTIONS: OptionTable = [
    (
        ("--python-workers",),
        dict(
            envvar=ENV_PYTHON_WORKERS,
            default=_DEFAULTS.python_workers,
            type=click.IntRange(1),
            show_default="the CPU count, at least 2",
            help="Worker processes running python nodes at once (each call in a process of its own; "
            "a crash fails only that attempt, with worker_crashed).",
        ),
    ),
    (
        ("--python-max-calls",),
        dict(
            envvar=ENV_PYTHON_MAX_CALLS,
            default=_DEFAULTS.python_max_calls,
            type=click.IntRange(1),
            help="Calls a python worker process serves before a fresh one replaces it.",
        ),
    ),
    (
        ("--python-memory-mb",),
        dict(
            envvar=ENV_PYTHON_MEMORY_MB,
            default=_DEFAULTS.python_memory_mb,
            type=click.IntRange(0),
            callback=_memory,
            help="Address-space limit of a python worker process, in MiB (a node's memory_mb "
            "overrides it); 0: none.",
        ),
    ),
    (
        ("--python-cpu-seconds",),
        dict(
            envvar=ENV_PYTHON_CPU_SECONDS,
            default=_DEFAULTS.python_cpu_seconds,
            type=click.IntRange(0),
            help="CPU seconds one python node call may use (a node's cpu_seconds overrides it); 0: no limit.",
        ),
    ),
    (
        ("--http-allow",),
        dict(
            envvar=ENV_HTTP_ALLOW,
            multiple=True,
            callback=_rules,
            help="Hosts (api.example.com, *.example.com), IP addresses and CIDR blocks the http node "
            "may reach; comma-separated or repeated. Set: nothing else is reachable. Default: "
            "anything not denied.",
        ),
    ),
    (
        ("--http-deny",),
        dict(
            envvar=ENV_HTTP_DENY,
            multiple=True,
            callback=_rules,
            help="Hosts, IP addresses and CIDR blocks the http node may never reach. Link-local and "
            "cloud metadata addresses are always denied unless allowed by address; loopback is "
            "denied unless --host is a loopback address.",
        ),
    ),
]


node_options = options_from(_OPTIONS)
"""Decorates ``serve`` with the node options (they arrive as keyword arguments)."""


def node_settings(options: dict[str, Any]) -> NodeSettings:
    """The settings the node options give."""
    return NodeSettings(
        python_workers=options["python_workers"],
        python_max_calls=options["python_max_calls"],
        python_memory_mb=options["python_memory_mb"],
        python_cpu_seconds=options["python_cpu_seconds"],
        http_allow=options["http_allow"],
        http_deny=options["http_deny"],
    )
