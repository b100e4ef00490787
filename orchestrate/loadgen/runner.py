"""The driver: each load level's requests (closed or open loop), progress, and the report."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

from orchestrate.errors import EXIT_INTERRUPTED, OrchestrateError
from orchestrate.loadgen.client import make_client, send_one
from orchestrate.loadgen.config import PATHS, BenchConfig, Level, request_body
from orchestrate.loadgen.metrics import BenchResult, RequestResult, summarize


class BenchInterrupted(OrchestrateError):
    """Ctrl-C ended the run; the levels that had finished were still reported."""

    exit_code = EXIT_INTERRUPTED


class Progress(Protocol):
    def start(self, label: str, total: int) -> None: ...

    def advance(self, ok: bool) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, ok: bool) -> None:
        pass

    def finish(self) -> None:
        pass


Send = Callable[[int], Awaitable[RequestResult]]


async def _closed_loop(send: Send, n: int, concurrency: int) -> list[RequestResult]:
    results: list[RequestResult] = [RequestResult()] * n
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            results[i] = await send(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return results


async def _open_loop(
    send: Send, n: int, rate: float, cap: int | None, rng: random.Random
) -> list[RequestResult]:
    slots = asyncio.Semaphore(cap or n)

    async def one(i: int) -> RequestResult:
        async with slots:
            return await send(i)

    start = time.perf_counter()
    at = 0.0
    tasks: list[asyncio.Task[RequestResult]] = []
    try:
        for i in range(n):
            if i and not math.isinf(rate):
                at += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def run_level(
    client: httpx.AsyncClient, cfg: BenchConfig, bodies: Sequence[bytes], level: Level, progress: Progress
) -> BenchResult:
    path, chat = PATHS[cfg.endpoint], cfg.endpoint == "chat"

    async def send(i: int) -> RequestResult:
        rec = await send_one(client, path, bodies[i % len(bodies)], chat, cfg.timeout)
        progress.advance(rec.ok)
        return rec

    progress.start(level.label, cfg.num_prompts)
    t0 = time.perf_counter()
    try:
        if level.request_rate is None:
            results = await _closed_loop(send, cfg.num_prompts, level.concurrency or 1)
        else:
            rng = random.Random(cfg.seed)
            results = await _open_loop(send, cfg.num_prompts, level.request_rate, level.concurrency, rng)
    finally:
        progress.finish()
    return summarize(level, results, time.perf_counter() - t0, cfg.prompts, cfg.goodput)


@dataclass
class BenchReport:
    config: BenchConfig
    prompts_source: str
    levels: list[BenchResult] = field(default_factory=list)
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "url": cfg.base_url,
            "model": cfg.model,
            "endpoint": PATHS[cfg.endpoint],
            "prompts": self.prompts_source,
            "output_len": cfg.output_len,
            "num_prompts": cfg.num_prompts,
            "seed": cfg.seed,
            "timeout_s": cfg.timeout,
            "goodput_slo_ms": dict(cfg.goodput),
            "interrupted": self.interrupted,
            "levels": [level.as_dict() for level in self.levels],
        }


async def run_levels(cfg: BenchConfig, report: BenchReport, progress: Progress) -> None:
    """Run every level in turn, appending each finished one to `report.levels`."""
    bodies = [request_body(cfg, p) for p in cfg.prompts[: cfg.num_prompts]]
    connections = max((lv.concurrency or cfg.num_prompts) for lv in cfg.levels)
    async with make_client(cfg, min(connections, cfg.num_prompts)) as client:
        for level in cfg.levels:
            report.levels.append(await run_level(client, cfg, bodies, level, progress))


def run(cfg: BenchConfig, prompts_source: str, progress: Progress | None = None) -> BenchReport:
    """Run the benchmark; Ctrl-C ends it with the finished levels kept (`interrupted` set)."""
    report = BenchReport(cfg, prompts_source)
    try:
        asyncio.run(run_levels(cfg, report, progress or NoProgress()))
    except KeyboardInterrupt:
        report.interrupted = True
    return report
