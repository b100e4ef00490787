"""The tail `up` shows when a container died and its restart policy started it again
(ops.apply.died_life). The log is real: the head of the vllm 0.10.2 test image on the test bed
(tests/bed/test_up_preflight.py), whose vLLM cannot import torch. Its first 20 lines are the tail
`up` showed in one run (the dying life's end, the new life's first line); the rest are the 19
lines of the new life that `up` showed in CI's run, where they had pushed the death out of the
20 lines people see."""

from __future__ import annotations

from orchestrate.errors import GateError
from orchestrate.ops.apply import died_life
from tests import FIXTURES

LOG = (FIXTURES / "logs" / "ray-vllm-0.10.2-head-restarted.log").read_text(encoding="utf-8")


def _shown(tail: str) -> list[str]:
    return GateError("hb1: oldvllm-head exited", tail=tail).lines()[1:]


def test_the_uncut_log_shows_only_the_new_life() -> None:  # the control: CI's failure
    shown = "\n".join(_shown(LOG))
    assert "ray ready" not in shown and "No module named 'torch'" not in shown


def test_the_tail_ends_with_the_life_that_died() -> None:
    cut = died_life(LOG)
    assert cut.endswith("orchestrate-supervisor [head 00d79bf6fee6]: exiting: bash exited with code 1")
    shown = _shown(cut)
    assert len(shown) == len(cut.splitlines()) == 18  # the whole dying life this tail holds
    assert "  | orchestrate: ray ready: 2 nodes, 2 GPUs" in shown
    assert "  | ModuleNotFoundError: No module named 'torch'" in shown
    assert not any("0b45716bd4d3" in line or "16dbf9bfb2e1" in line for line in shown)  # new lives


def test_a_log_without_a_finished_life_is_kept_whole() -> None:
    running = LOG[: LOG.index("orchestrate-supervisor [head 00d79bf6fee6]: exit 1")]
    assert died_life(running) == running
    assert died_life("") == ""
