"""orchestrate.waits.poll: the deadline wait every gate uses (tenacity underneath)."""

from __future__ import annotations

import time

import pytest

from orchestrate.waits import poll


def test_the_first_value_that_is_not_none_ends_the_wait() -> None:
    calls = []

    def third() -> str | None:
        calls.append(1)
        return "joined" if len(calls) == 3 else None

    assert poll(third, timeout=60, every=0.01) == "joined"
    assert len(calls) == 3


def test_false_and_empty_are_answers_not_retries() -> None:
    assert poll(lambda: False, timeout=60, every=0.01) is False
    assert poll(lambda: [], timeout=60, every=0.01) == []


def test_the_deadline_gives_none_after_trying_until_then() -> None:
    calls = []
    t0 = time.monotonic()
    assert poll(lambda: calls.append(1), timeout=0.3, every=0.05) is None
    assert time.monotonic() - t0 >= 0.3 and len(calls) >= 2


def test_an_error_ends_the_wait_at_once() -> None:
    calls = []

    def dead() -> None:
        calls.append(1)
        raise RuntimeError("the container exited")

    with pytest.raises(RuntimeError, match="exited"):
        poll(dead, timeout=60, every=0.01)
    assert calls == [1]
