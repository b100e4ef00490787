"""A report for people: the table (one column per load level), notes, and the plot."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrate.loadgen.metrics import BenchResult

if TYPE_CHECKING:
    from orchestrate.loadgen.runner import BenchReport


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


LATENCIES = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2el_ms"))


def table_rows(results: Sequence[BenchResult], detail: bool = False) -> tuple[list[str], list[list[str]]]:
    """One column per load level (narrow for any terminal), one row per metric; latencies in ms.

    p50 and p99 of each latency, plus mean and p90 with `detail`; goodput when SLOs were given.
    """
    rows = [
        ["completed / failed", *(f"{r.completed} / {r.failed}" for r in results)],
        ["requests/s", *(f"{r.request_throughput:.2f}" for r in results)],
        ["output tokens/s", *(f"{r.output_throughput:.1f}" for r in results)],
        ["total tokens/s", *(f"{r.total_token_throughput:.1f}" for r in results)],
    ]
    if any(r.goodput is not None for r in results):
        rows.append(
            ["goodput requests/s", *("-" if r.goodput is None else f"{r.goodput:.2f}" for r in results)]
        )
    for name, attr in LATENCIES:
        for p in ("mean", "p50", "p90", "p99") if detail else ("p50", "p99"):
            rows.append([f"{name} {p} (ms)", *(_ms(getattr(getattr(r, attr), p)) for r in results)])
    return ["metric", *(r.label for r in results)], rows


def notes(report: BenchReport) -> list[str]:
    lines = []
    for r in report.levels:
        for reason, count in r.failures.items():
            lines.append(f"{r.label}: {count} failed: {reason}")
        if r.completed and r.usage_reported < r.completed:
            lines.append(
                f"{r.label}: {r.completed - r.usage_reported} response(s) had no usage; "
                "their tokens are counted by the client"
            )
    if report.config.goodput:
        slo = ", ".join(f"{k} <= {v:g} ms" for k, v in report.config.goodput.items())
        lines.append(f"goodput: completed requests with {slo}")
    return lines


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_plot(results: Sequence[BenchResult], path: str | Path, title: str) -> None:
    """PNG: throughput, p50/p99 TTFT and p50/p99 TPOT per level. Needs matplotlib (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = list(range(len(results)))
    labels = [r.label.removeprefix("c=") for r in results]
    closed = all(r.request_rate is None for r in results)
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    ax_tput, ax_ttft, ax_tpot = fig.subplots(1, 3)
    ax_tput.plot(x, [r.output_throughput for r in results], "o-", label="output tok/s")
    ax_tput.plot(x, [r.total_token_throughput for r in results], "s--", label="total tok/s")
    ax_tput.set_title("throughput (tokens/s)")
    for ax, attr, name in ((ax_ttft, "ttft_ms", "TTFT"), (ax_tpot, "tpot_ms", "TPOT")):
        ax.plot(x, [_nan(getattr(r, attr).p50) for r in results], "o-", label="p50")
        ax.plot(x, [_nan(getattr(r, attr).p99) for r in results], "s--", label="p99")
        ax.set_title(f"{name} (ms)")
    for ax in (ax_tput, ax_ttft, ax_tpot):
        ax.set_xticks(x, labels)
        ax.set_xlabel("concurrency" if closed else "load")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value
