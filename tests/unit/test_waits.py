"""orchestrate.waits.poll: the deadline wait every gate uses (tenacity underneath)."""

from __future__ import annotations

import subprocess
import sys
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


# Run in a child process: pytest's own unraisable-exception hook would see the swallowed
# KeyboardInterrupt and re-raise it, which is not what happens in `orchestrate up`.
SWALLOWED_CTRL_C = """
import os, signal, sys, time
from orchestrate.waits import catch_sigint, poll

class InterruptedFinalizer:
    # SIGINT from its own __del__, and it keeps running there: Python raises the
    # KeyboardInterrupt inside the finalizer, where it is printed and swallowed
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the handler runs here, between two bytecodes
            pass

if sys.argv[1] == "caught":
    catch_sigint()
calls = []

def attempt():
    calls.append(1)
    if len(calls) == 1:
        InterruptedFinalizer()  # dropped at once: __del__ runs now

t0 = time.monotonic()
try:
    print("value", poll(attempt, timeout=float(sys.argv[2]), every=float(sys.argv[3])), len(calls))
except KeyboardInterrupt:
    print("interrupted", len(calls), round(time.monotonic() - t0))
"""


def _swallowed(mode: str, timeout: float, every: float) -> tuple[str, str]:
    res = subprocess.run(
        [sys.executable, "-c", SWALLOWED_CTRL_C, mode, str(timeout), str(every)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout, res.stderr


def test_a_ctrl_c_swallowed_by_a_finalizer_is_lost_with_pythons_own_handler() -> None:
    # the control, what paramiko's Channel.__del__ did to a Ctrl-C during `up`'s wait for
    # vLLM (CI, stop 21): the wait runs on to its deadline
    out, err = _swallowed("default", 0.5, 0.05)
    assert "Exception ignored" in err and "KeyboardInterrupt" in err
    assert out.startswith("value None") and int(out.split()[2]) > 2, out


def test_a_ctrl_c_swallowed_by_a_finalizer_still_ends_the_wait() -> None:
    out, err = _swallowed("caught", 60, 5)
    assert "Exception ignored" in err  # it was swallowed there ...
    words = out.split()
    assert words[:2] == ["interrupted", "1"], out  # ... and raised again in the first sleep
    assert int(words[2]) < 30, out
