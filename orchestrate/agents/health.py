"""Is the engine making progress? Samples of vLLM's Prometheus /metrics in, a verdict out.

`/health` answers 200 through a tensor-parallel deadlock (gonka PR #1421: 5-22 minutes) and with
half of a pipeline gone, so liveness is judged by the engine's own counters: while requests are
running or waiting, at least one of the progress counters must advance. A stall of
`stall_after_s` is a hang. Counters that go backwards mean the engine restarted (progress).

Which counters: generated and prompt tokens, finished requests, and engine iterations that had an
output (`vllm:iteration_tokens_total_count`; a step that only advances a chunked prefill has no
output and does not move it, so a single prefill longer than the threshold would look like a
hang: the default of 60 s is far above a prefill on any GPU this tool targets).

Pure and standard-library only: status, watch and the in-container watchdog share it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

STALL_AFTER_S = 45.0
BUSY = ("vllm:num_requests_running", "vllm:num_requests_waiting")
PROGRESS = (
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:request_success_total",
    "vllm:iteration_tokens_total_count",
)
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)(?:\s+\S+)?$")


def metric_sums(text: str, names: Iterable[str] = (*BUSY, *PROGRESS)) -> dict[str, float]:
    """Each wanted metric summed over its series (engines, models, finish reasons), from the
    Prometheus text format; NaN and unparsable values are skipped."""
    wanted, out = set(names), dict[str, float]()
    for line in text.splitlines():
        if not line or line[0] == "#" or not (m := _LINE.match(line.strip())):
            continue
        name = m.group(1)
        if name not in wanted:
            continue
        try:
            value = float(m.group(2))
        except ValueError:
            continue
        if not math.isnan(value):
            out[name] = out.get(name, 0.0) + value
    return out


@dataclass(frozen=True)
class Sample:
    t: float  # monotonic seconds
    busy: float  # requests running + waiting
    counters: Mapping[str, float]

    @classmethod
    def of(cls, t: float, text: str) -> Sample:
        sums = metric_sums(text)
        return cls(t, sum(sums.get(n, 0.0) for n in BUSY), {n: sums[n] for n in PROGRESS if n in sums})


State = Literal["unknown", "idle", "progressing", "stalled"]


@dataclass(frozen=True)
class Verdict:
    state: State
    stalled_s: float = 0.0  # how long nothing advanced while busy
    detail: str = ""

    @property
    def hung(self) -> bool:
        return self.state == "stalled"


@dataclass
class ProgressWatch:
    """Feed samples in time order; each answer says whether the engine is hung."""

    stall_after_s: float = STALL_AFTER_S
    _last: Sample | None = field(default=None, repr=False)
    _moved_at: float | None = field(default=None, repr=False)

    def feed(self, s: Sample) -> Verdict:
        prev, self._last = self._last, s
        if prev is None or s.busy <= 0 or self._moved(prev, s):
            self._moved_at = s.t
            if prev is None:
                return Verdict("unknown", detail="first sample")
            if s.busy <= 0:
                return Verdict("idle", detail="no request running or waiting")
            return Verdict("progressing", detail=self._delta(prev, s))
        assert self._moved_at is not None
        stalled = s.t - self._moved_at
        busy = f"{s.busy:g} request(s) running or waiting"
        if stalled >= self.stall_after_s:
            return Verdict(
                "stalled",
                stalled,
                f"{busy} and no token, request or engine step "
                f"for {stalled:.0f} s (threshold {self.stall_after_s:g} s)",
            )
        return Verdict("progressing", stalled, f"{busy}, nothing advanced for {stalled:.0f} s")

    @staticmethod
    def _moved(prev: Sample, s: Sample) -> bool:
        common = set(prev.counters) & set(s.counters)
        if not common:
            return bool(s.counters) != bool(prev.counters)
        # a counter going backwards: the engine restarted, which is not a hang
        return any(s.counters[n] != prev.counters[n] for n in common)

    @staticmethod
    def _delta(prev: Sample, s: Sample) -> str:
        dt = max(s.t - prev.t, 1e-9)
        gen = s.counters.get(PROGRESS[0], 0.0) - prev.counters.get(PROGRESS[0], 0.0)
        return f"{gen / dt:.1f} generated tokens/s" if gen > 0 else "counters advanced"
