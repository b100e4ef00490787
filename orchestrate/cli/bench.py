"""`orchestrate bench`: the command, its progress on stderr and its exit status; the work is
orchestrate.loadgen's."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from typing import Any

import click

from orchestrate.cli.console import emit_json, emit_table, emit_text
from orchestrate.cli.options import load_fleet, load_plan, resolve_inventory
from orchestrate.core.secrets import masker
from orchestrate.errors import OrchestrateError, UsageError
from orchestrate.loadgen import (
    PATHS,
    BenchConfig,
    BenchInterrupted,
    BenchReport,
    Endpoint,
    load_prompts,
    make_levels,
    matplotlib_available,
    notes,
    parse_concurrency,
    parse_goodput,
    parse_rate,
    random_prompts,
    request_body,
    run,
    served_models,
    table_rows,
    write_plot,
)

# ---------------------------------------------------------------- progress on stderr


class RichProgress:
    """A rich progress bar per level (terminals)."""

    def __init__(self) -> None:
        from rich.console import Console as RichConsole
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=RichConsole(file=sys.stderr),
            transient=False,
            refresh_per_second=4,
        )
        self._task: Any = None
        self._failed = 0

    def start(self, label: str, total: int) -> None:
        self._failed = 0
        if self._task is None:
            self._bar.start()
        self._task = self._bar.add_task(f"bench {label}", total=total, failed=0)

    def advance(self, ok: bool) -> None:
        self._failed += not ok
        self._bar.update(self._task, advance=1, failed=self._failed)

    def finish(self) -> None:
        self._bar.refresh()

    def close(self) -> None:
        if self._task is not None:
            self._bar.stop()


class PlainProgress:
    """A line every `every` seconds and one per finished level (logs, pipes)."""

    def __init__(self, every: float = 5.0, stream: Any = None) -> None:
        self.every = every
        self.stream = stream or sys.stderr
        self._label, self._total, self._done, self._failed = "", 0, 0, 0
        self._t0 = self._last = 0.0

    def start(self, label: str, total: int) -> None:
        self._label, self._total, self._done, self._failed = label, total, 0, 0
        self._t0 = self._last = time.monotonic()

    def advance(self, ok: bool) -> None:
        self._done += 1
        self._failed += not ok
        now = time.monotonic()
        if now - self._last >= self.every and self._done < self._total:
            self._last = now
            self._line(now)

    def finish(self) -> None:
        self._line(time.monotonic())

    def close(self) -> None:
        pass

    def _line(self, now: float) -> None:
        self.stream.write(
            f"bench {self._label}: {self._done}/{self._total} requests, "
            f"{self._failed} failed, {now - self._t0:.1f}s\n"
        )
        self.stream.flush()


# ---------------------------------------------------------------- the command


def resolve_target(
    ctx: click.Context, inventory_file: str | None, url: str | None
) -> tuple[str, str | None, str | None]:
    """(url, served name, API key variable) from the inventory when one is needed."""
    if url and not inventory_file:
        return url, None, None
    path = resolve_inventory(inventory_file, getattr(ctx.obj, "inventory", None))
    if (loaded := load_fleet(path)) is not None:  # replicas: through the router
        one = loaded[0].replicas[0]
        return url or loaded[0].endpoint, one.served_name, one.api_key_env
    p = load_plan(path)
    return url or p.endpoint, p.served_name, p.api_key_env


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r}: expected http://HOST:PORT")
    return url.removesuffix("/v1")


def _api_key(var: str | None) -> str | None:
    if not var:
        return None
    value = os.environ.get(var)
    if value is None:
        raise UsageError(f"the API key variable {var} is not set", hint=f"export {var}=...")
    masker.add(value)
    return value


def _pick_model(url: str, model: str | None, served: list[str] | None) -> str:
    if served is not None and model and model not in served:
        raise UsageError(
            f"{url} does not serve {model!r}; it serves: {', '.join(served) or 'nothing'}",
            hint="--model NAME",
        )
    if model:
        return model
    if not served:
        raise UsageError(f"{url} lists no models; name one", hint="--model NAME")
    return served[0]


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inventory_file", metavar="[INVENTORY]", required=False)
@click.option("--url", help="Base URL of an OpenAI-compatible server (default: the inventory's endpoint).")
@click.option(
    "--model",
    help="Model to ask for (default: the inventory's served name, else the first one the server lists).",
)
@click.option(
    "--api-key-env",
    metavar="VAR",
    help="Environment variable holding the API key (default: the inventory's).",
)
@click.option(
    "--endpoint",
    type=click.Choice(["chat", "completions"]),
    default="chat",
    show_default=True,
    help="/v1/chat/completions or /v1/completions.",
)
@click.option(
    "--input-len",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Random prompts: length in words (about one token each).",
)
@click.option(
    "--output-len",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Tokens per response (max_tokens, with ignore_eos).",
)
@click.option(
    "--num-prompts",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Requests per load level.",
)
@click.option(
    "--concurrency",
    metavar="LIST",
    help="Requests in flight, one level each, e.g. 1,4,16 (default 1,4,16). "
    "With --request-rate: caps on requests in flight (default: none).",
)
@click.option(
    "--request-rate", metavar="R", help="Requests per second, Poisson arrivals; inf sends them all at once."
)
@click.option(
    "--prompts",
    "prompts_file",
    metavar="FILE.jsonl",
    help='Prompts, one JSON object a line: {"prompt": ...} or {"messages": [...]} (default: random prompts).',
)
@click.option(
    "--goodput",
    multiple=True,
    metavar="KEY:MS",
    help="SLOs for goodput, e.g. 'ttft:500 tpot:50' (keys ttft, tpot, e2el; milliseconds; repeatable).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds prompts and arrivals.")
@click.option(
    "--plot",
    "plot_file",
    metavar="FILE.png",
    help="Write a PNG of throughput and p50/p99 TTFT/TPOT per level "
    "(needs matplotlib: pip install 'orchestrate[bench]').",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds one request may take.",
)
@click.pass_context
def bench_command(
    ctx: click.Context,
    inventory_file: str | None,
    url: str | None,
    model: str | None,
    api_key_env: str | None,
    endpoint: Endpoint,
    input_len: int,
    output_len: int,
    num_prompts: int,
    concurrency: str | None,
    request_rate: str | None,
    prompts_file: str | None,
    goodput: tuple[str, ...],
    seed: int,
    plot_file: str | None,
    timeout: float,
) -> None:
    """Load the serving endpoint and report TTFT, TPOT, ITL, E2E latency and throughput.

    The same metrics as `vllm bench serve`, per load level: a concurrency sweep (each level
    sends --num-prompts requests) or Poisson arrivals at --request-rate.
    """
    output = getattr(ctx.obj, "output", "text")
    target_url, served_name, key_env = resolve_target(ctx, inventory_file, url)
    base = _base_url(target_url)
    api_key = _api_key(api_key_env or key_env)
    levels = make_levels(
        parse_concurrency(concurrency) if concurrency else None,
        parse_rate(request_rate) if request_rate else None,
    )
    slo = parse_goodput(goodput)
    prompts = load_prompts(prompts_file) if prompts_file else random_prompts(num_prompts, input_len, seed)
    if plot_file and not matplotlib_available():
        click.echo(
            "note: --plot skipped: matplotlib is not installed (pip install 'orchestrate[bench]')", err=True
        )
        plot_file = None
    served = asyncio.run(served_models(base, api_key))
    cfg = BenchConfig(
        base_url=base,
        model=_pick_model(base, model or served_name, served),
        levels=levels,
        prompts=prompts,
        endpoint=endpoint,
        output_len=output_len,
        num_prompts=num_prompts,
        api_key=api_key,
        goodput=slo,
        seed=seed,
        timeout=timeout,
    )
    request_body(cfg, prompts[0])  # a completions endpoint with chat prompts fails here, not later
    progress = RichProgress() if sys.stderr.isatty() else PlainProgress()
    try:
        report = run(cfg, prompts_file or f"random, {input_len} words", progress)
    finally:
        progress.close()
    _emit(report, output, getattr(ctx.obj, "verbose", 0))
    if plot_file and report.levels:
        write_plot(report.levels, plot_file, f"{cfg.model} at {base}, {PATHS[endpoint]}")
        click.echo(f"wrote {plot_file}", err=True)
    exit_status(report)


def _emit(report: BenchReport, output: str, verbose: int) -> None:
    if output == "json":
        emit_json(report.as_dict())
        return
    cfg = report.config
    columns, rows = table_rows(report.levels, detail=verbose > 0)
    emit_table(
        f"bench {cfg.model} at {cfg.base_url}{PATHS[cfg.endpoint]}: prompts {report.prompts_source}, "
        f"{cfg.output_len} output tokens, {cfg.num_prompts} requests a level",
        columns,
        rows,
    )
    extra = notes(report)
    if extra:
        emit_text("\n".join(extra))


def exit_status(report: BenchReport) -> None:
    total = len(report.config.levels)
    if report.interrupted:
        raise BenchInterrupted(
            f"interrupted: {len(report.levels)} of {total} load level(s) finished (shown above)"
        )
    if report.levels and not any(r.completed for r in report.levels):
        reasons = Counter[str]()
        for r in report.levels:
            reasons.update(r.failures)
        top = ", ".join(f"{reason} ({n})" for reason, n in reasons.most_common(3))
        raise OrchestrateError(
            f"every request failed: {top}", hint="orchestrate check, or try the URL with curl"
        )
