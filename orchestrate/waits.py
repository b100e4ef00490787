"""Waiting for a condition, with a deadline: the one kind of wait orchestrate does, on tenacity.

`poll(attempt, timeout=, every=)` calls `attempt` at once, then every `every` seconds, until it
returns something other than None or `timeout` seconds have passed (then None: the caller says
what did not happen, with what it saw last). An exception from `attempt` ends the wait at once:
a container that died is an answer, not something to retry. Sleeps are short, so Ctrl-C gets
through within one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_result, stop_after_delay, wait_fixed

__all__ = ["poll"]

T = TypeVar("T")


def _gave_up(state: RetryCallState) -> None:
    return None


def poll(attempt: Callable[[], T | None], *, timeout: float, every: float) -> T | None:
    """The first non-None value of `attempt()` within `timeout` seconds, else None."""
    retrying = Retrying(
        stop=stop_after_delay(timeout),
        wait=wait_fixed(every),
        retry=retry_if_result(lambda value: value is None),
        retry_error_callback=_gave_up,
        reraise=True,
    )
    return retrying(attempt)
