"""``flowledger --help`` lists exactly the commands a user has."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from service.cli.main import cli

BEFORE_THE_RESTRUCTURE = (
    "audit bench cancel diff events export import projections replay run runs schemas serve tail "
    "verify-bundle workflows"
).split()
COMMANDS = sorted(
    [
        *BEFORE_THE_RESTRUCTURE,
        "archive",
        "history",
        "keys",
        "lineage",
        "logs",
        "metrics",
        "schedules",
        "secrets",
        "signal",
        "vectors",
    ]
)
"""The commands of ``flowledger --help`` before the restructure of service/, the three that
a27ad5c ("CLI: lineage, metrics and history commands") added after it, and the later ones."""


def listed_commands(help_text: str) -> list[str]:
    """The names in the ``Commands:`` section of a click help page (one per line, indented 2)."""
    section = help_text.split("\nCommands:\n", 1)[1]
    names = []
    for line in section.splitlines():
        if not line.strip():
            break
        if line.startswith("  ") and not line.startswith("   "):
            names.append(line.split()[0])
    return names


def test_help_lists_exactly_the_commands() -> None:
    result = CliRunner().invoke(cli, ["--help"], prog_name="flowledger", terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: flowledger [OPTIONS] COMMAND [ARGS]...")
    assert listed_commands(result.output) == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_listed_command_has_a_help_page(command: str) -> None:
    result = CliRunner().invoke(cli, [command, "--help"], prog_name="flowledger", terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: flowledger {command} ")


BENCH_COMMANDS = ["append", "load", "projections", "push", "relay", "runs"]
"""``flowledger bench --help``: the benchmarks, and ``load``, the open-loop load generator."""


def test_bench_help_lists_exactly_the_benchmarks() -> None:
    result = CliRunner().invoke(cli, ["bench", "--help"], prog_name="flowledger", terminal_width=200)
    assert result.exit_code == 0, result.output
    assert listed_commands(result.output) == BENCH_COMMANDS


@pytest.mark.parametrize("command", BENCH_COMMANDS)
def test_every_bench_has_a_help_page(command: str) -> None:
    result = CliRunner().invoke(cli, ["bench", command, "--help"], prog_name="flowledger", terminal_width=200)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: flowledger bench {command} ")
