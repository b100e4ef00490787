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
import os, signal, sys, time, weakref
from orchestrate.waits import catch_sigint, poll

def interrupted_here():
    # SIGINT, and keep running: Python raises the KeyboardInterrupt inside the finalizer that
    # runs this, where it is printed (unless the hook says otherwise) and swallowed
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the handler runs here, between two bytecodes
        pass

class InterruptedFinalizer:
    def __del__(self):  # paramiko's Channel.__del__ (stop 21)
        interrupted_here()

class Referent:
    pass

if sys.argv[1] == "caught":
    catch_sigint()
calls = []
keep = []

def attempt():
    calls.append(1)
    if len(calls) == 1 and sys.argv[4] == "del":
        InterruptedFinalizer()  # dropped at once: __del__ runs now
    elif len(calls) == 1:  # a weakref callback, as WeakSet's _remove (stop 22)
        obj = Referent()
        keep.append(weakref.ref(obj, lambda ref: interrupted_here()))
        del obj

t0 = time.monotonic()
try:
    print("value", poll(attempt, timeout=float(sys.argv[2]), every=float(sys.argv[3])), len(calls))
except KeyboardInterrupt:
    print("interrupted", len(calls), round(time.monotonic() - t0))
"""


def _swallowed(mode: str, timeout: float, every: float, where: str = "del") -> tuple[str, str]:
    res = subprocess.run(
        [sys.executable, "-c", SWALLOWED_CTRL_C, mode, str(timeout), str(every), where],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout, res.stderr


@pytest.mark.parametrize("where", ["del", "weakref"])
def test_a_ctrl_c_swallowed_by_a_finalizer_is_lost_with_pythons_own_handler(where: str) -> None:
    # the control, what paramiko's Channel.__del__ did to a Ctrl-C during `up`'s wait for
    # vLLM (CI, stop 21): the wait runs on to its deadline, and a traceback is printed
    out, err = _swallowed("default", 0.5, 0.05, where)
    assert "Exception ignored" in err and "KeyboardInterrupt" in err and "Traceback" in err
    assert out.startswith("value None") and int(out.split()[2]) > 2, out


@pytest.mark.parametrize("where", ["del", "weakref"])
def test_a_ctrl_c_swallowed_by_a_finalizer_still_ends_the_wait_and_prints_nothing(where: str) -> None:
    out, err = _swallowed("caught", 60, 5, where)
    words = out.split()
    assert words[:2] == ["interrupted", "1"], out  # raised again in the first sleep
    assert int(words[2]) < 30, out
    assert err == "", err  # no "Exception ignored", no traceback: it was not lost


def test_other_unraisable_errors_are_still_reported() -> None:
    code = (
        "from orchestrate.waits import catch_sigint\n"
        "catch_sigint()\n"
        "class Broken:\n"
        "    def __del__(self):\n"
        "        raise RuntimeError('a bug in a finalizer')\n"
        "Broken()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in res.stderr and "RuntimeError: a bug in a finalizer" in res.stderr
