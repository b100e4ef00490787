"""Waiting for a condition, with a deadline: the one kind of wait orchestrate does, on tenacity.

`poll(attempt, timeout=, every=)` calls `attempt` at once, then every `every` seconds, until it
returns something other than None or `timeout` seconds have passed (then None: the caller says
what did not happen, with what it saw last). An exception from `attempt` ends the wait at once:
a container that died is an answer, not something to retry. Sleeps are short, so Ctrl-C gets
through within one of them.

Ctrl-C that cannot be lost: Python raises KeyboardInterrupt in whatever frame runs when SIGINT
arrives, and when that frame is a finalizer (paramiko's `Channel.__del__`, run by the garbage
collector in the middle of a wait) the interpreter prints "Exception ignored" and carries on,
so `up` kept waiting for vLLM after Ctrl-C. `catch_sigint()` (the CLI installs it) remembers
the signal as well as raising it, and every wait here checks that memory before each attempt
and during each sleep, so a swallowed Ctrl-C is raised again within one sleep slice. The same
call keeps Python from printing the swallowed one ("Exception ignored in ...", a traceback):
it is not lost, so there is nothing to tell (CI, stop 22: a weakref callback of the garbage
collector took the Ctrl-C and the user saw its traceback above the one-line message).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

__all__ = ["catch_sigint", "check_interrupt", "poll", "sleep"]

T = TypeVar("T")
SLICE_S = 0.1  # the longest a sleep goes without looking for a swallowed Ctrl-C

_interrupted = threading.Event()


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _interrupted.set()
    raise KeyboardInterrupt


def _unraisable(args: sys.UnraisableHookArgs) -> None:
    """Python's hook for an exception it cannot raise (in a finalizer, a weakref callback):
    our remembered Ctrl-C is raised again by the next wait, so it is not printed; anything
    else goes to the hook that was there before."""
    if args.exc_type is not None and issubclass(args.exc_type, KeyboardInterrupt) and _interrupted.is_set():
        return
    _previous_hook(args)


_previous_hook = sys.unraisablehook


def catch_sigint() -> None:
    """Make SIGINT both raise KeyboardInterrupt and be remembered (main thread only), and a
    Ctrl-C swallowed by a finalizer silent (it is raised again, not lost)."""
    global _previous_hook
    _interrupted.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _on_sigint)
        if sys.unraisablehook is not _unraisable:
            _previous_hook = sys.unraisablehook
            sys.unraisablehook = _unraisable


def check_interrupt() -> None:
    """Raise KeyboardInterrupt again if a Ctrl-C came and was swallowed (main thread only: the
    fan-out's worker threads finish their step and the main thread raises)."""
    if _interrupted.is_set() and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


def sleep(seconds: float) -> None:
    """time.sleep in short slices that each look for a swallowed Ctrl-C."""
    end = time.monotonic() + seconds
    while True:
        check_interrupt()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(SLICE_S, left))


def _gave_up(state: RetryCallState) -> None:
    return None


def _before(state: RetryCallState) -> None:
    check_interrupt()


def poll(attempt: Callable[[], T | None], *, timeout: float, every: float) -> T | None:
    """The first non-None value of `attempt()` within `timeout` seconds, else None."""
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(every),
        retry=retry_if_result(lambda value: value is None),
        retry_error_callback=_gave_up,
        before=_before,
        sleep=sleep,
        reraise=True,
    )
    return retrying(attempt)
