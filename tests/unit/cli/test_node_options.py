"""``serve``'s node options: the python pool's size and limits, and the http egress rules."""

from __future__ import annotations

from typing import Any

import click
from click.testing import CliRunner

from service.cli.node_options import node_options, node_settings
from service.config import NodeSettings


@click.command()
@node_options
def show(**options: Any) -> None:
    click.echo(repr(node_settings(options)))


def invoke(*args: str, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(show, list(args), env=env)
    return result.exit_code, result.output


def test_defaults_are_the_settings_defaults() -> None:
    assert invoke() == (0, repr(NodeSettings()) + "\n")


def test_flags_and_environment_variables_give_the_settings() -> None:
    code, out = invoke(
        "--python-workers=3",
        "--python-max-calls=10",
        "--python-memory-mb=256",
        "--python-cpu-seconds=0",
        "--http-deny=10.0.0.0/8",
        "--http-deny=evil.example.com",
        FLOWLEDGER_HTTP_ALLOW="api.example.com, *.corp.example 192.0.2.0/24",
    )
    assert code == 0, out
    assert (
        out
        == repr(
            NodeSettings(
                python_workers=3,
                python_max_calls=10,
                python_memory_mb=256,
                python_cpu_seconds=0,
                http_allow=("api.example.com", "*.corp.example", "192.0.2.0/24"),
                http_deny=("10.0.0.0/8", "evil.example.com"),
            )
        )
        + "\n"
    )


def test_bad_values_are_refused_naming_them() -> None:
    code, out = invoke("--http-allow=http://example.com")
    assert code == 2 and "'http://example.com' is not a host name" in out
    code, out = invoke(FLOWLEDGER_PYTHON_MEMORY_MB="10")
    assert code == 2 and "0 (no limit) or at least 64, got 10" in out
    code, out = invoke("--python-workers=0")
    assert code == 2
