"""Printing benchmark results: ours, the baseline, the ratio and the target, side by side."""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.table import Table


@dataclass(frozen=True)
class Comparison:
    name: str
    ours: float
    baseline: float
    baseline_name: str
    unit: str
    target_ratio: float | None = None

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.baseline else float("inf")

    @property
    def meets_target(self) -> bool | None:
        return None if self.target_ratio is None else self.ratio >= self.target_ratio


def print_comparisons(title: str, rows: list[Comparison], notes: list[str] | None = None) -> None:
    table = Table(title=title)
    for column in ("measurement", "flowledger", "baseline", "ratio", "target"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    for row in rows:
        met = row.meets_target
        target = (
            "" if row.target_ratio is None else f">= {row.target_ratio:.2f}x " + ("met" if met else "MISSED")
        )
        table.add_row(
            row.name,
            f"{row.ours:,.0f} {row.unit}",
            f"{row.baseline:,.0f} {row.unit} ({row.baseline_name})",
            f"{row.ratio:.2f}x",
            target,
        )
    console = Console()
    console.print(table)
    for note in notes or []:
        console.print(f"[dim]{note}[/dim]")
