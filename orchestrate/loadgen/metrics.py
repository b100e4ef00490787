"""One request's measurements and a load level's summary of them, computed as `vllm bench serve` does."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrate.loadgen.config import Level, Prompt


@dataclass(slots=True)
class RequestResult:
    start: float = 0.0  # perf_counter when sent
    ok: bool = False
    error: str | None = None
    ttft: float | None = None  # seconds
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    chunks: int = 0  # chunks from the first content on: the token count when there is no usage
    output_tokens: int | None = None  # server usage
    prompt_tokens: int | None = None  # server usage


def percentile(values: Sequence[float], p: float) -> float:
    """numpy's default (linear) percentile of sorted values."""
    rank = (len(values) - 1) * p / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (rank - lo)


@dataclass(frozen=True)
class Stats:
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        if not seconds:
            return cls()
        ms = sorted(v * 1000 for v in seconds)
        return cls(math.fsum(ms) / len(ms), percentile(ms, 50), percentile(ms, 90), percentile(ms, 99))


@dataclass(frozen=True)
class BenchResult:
    """One load level, in vLLM's terms (latencies in milliseconds)."""

    label: str
    concurrency: int | None
    request_rate: float | None
    requests: int
    completed: int
    failed: int
    failures: dict[str, int]
    duration_s: float
    input_tokens: int
    output_tokens: int
    usage_reported: int  # completed requests whose token counts are the server's
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float | None  # good requests per second, when SLOs were given
    good_requests: int | None
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2el_ms: Stats

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.request_rate is not None and math.isinf(self.request_rate):
            data["request_rate"] = "inf"
        return data


def summarize(
    level: Level,
    results: Sequence[RequestResult],
    duration: float,
    prompts: Sequence[Prompt],
    slo_ms: dict[str, float],
) -> BenchResult:
    ttfts: list[float] = []
    tpots: list[float] = []
    all_tpots: list[float] = []
    itls: list[float] = []
    e2els: list[float] = []
    input_tokens = output_tokens = usage = 0
    for i, r in enumerate(results):
        if not r.ok or r.ttft is None:
            continue
        out = r.output_tokens if r.output_tokens is not None else r.chunks
        usage += r.output_tokens is not None
        input_tokens += (
            r.prompt_tokens if r.prompt_tokens is not None else prompts[i % len(prompts)].approx_tokens
        )
        output_tokens += out
        tpot = (r.e2el - r.ttft) / (out - 1) if out > 1 else 0.0
        if out > 1:
            tpots.append(tpot)
        all_tpots.append(tpot)
        ttfts.append(r.ttft)
        e2els.append(r.e2el)
        itls.extend(r.itl)
    completed = len(ttfts)
    good: int | None = None
    if slo_ms:
        per_request = {"ttft": ttfts, "tpot": all_tpots, "e2el": e2els}
        good = sum(all(per_request[k][j] * 1000 <= ms for k, ms in slo_ms.items()) for j in range(completed))
    dur = max(duration, 1e-9)
    failures = Counter(r.error or "failed" for r in results if not r.ok)
    return BenchResult(
        label=level.label,
        concurrency=level.concurrency,
        request_rate=level.request_rate,
        requests=len(results),
        completed=completed,
        failed=len(results) - completed,
        failures=dict(failures.most_common()),
        duration_s=duration,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        usage_reported=usage,
        request_throughput=completed / dur,
        output_throughput=output_tokens / dur,
        total_token_throughput=(input_tokens + output_tokens) / dur,
        goodput=None if good is None else good / dur,
        good_requests=good,
        ttft_ms=Stats.of(ttfts),
        tpot_ms=Stats.of(tpots),
        itl_ms=Stats.of(itls),
        e2el_ms=Stats.of(e2els),
    )
