"""The Events protocol: how core code reports progress without printing (no rich here).

Core code calls ``events(phase, host, message)``. Two kinds of message say how a sink should
treat them, and stay plain ``str`` for every other sink:

- :class:`Detail`: a tool's own output (pip's lines, docker build steps): the log file and
  ``-v`` get it, the screen does not.
- :class:`Progress`: a figure that replaces the previous one of the same phase and host
  (MiB/s, shards k/n, nodes joined x/N): a terminal shows the latest in the live view, a pipe
  gets one such line per phase and host at a steady pace.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Detail", "Events", "Progress", "quiet"]


class Events(Protocol):
    def __call__(self, phase: str, host: str | None, message: str) -> None: ...


class Detail(str):
    """A line for the log file (and -v), not the screen."""

    __slots__ = ()


class Progress(str):
    """The latest figure of a long step; it replaces the previous one."""

    __slots__ = ()


def quiet(phase: str, host: str | None, message: str) -> None:
    """An Events sink that drops everything (library use, tests)."""
