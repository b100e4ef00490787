"""Progress of one host's image transfer, as MiB and MiB/s events at a steady pace.

The Docker Engine reports pushes, pulls and loads as JSON messages, one per layer update
(`{"status": "Pushing", "id": "<layer>", "progressDetail": {"current": n, "total": m}}`);
`Layers` sums them, `Meter` turns a byte count into an event at most every PROGRESS_EVERY_S.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from orchestrate.events import Detail, Events, Progress

PROGRESS_EVERY_S = 2.0  # a pipe shows one line per PLAIN_PROGRESS_S (console)
# a layer in one of these states counts as fully moved
_DONE = ("Pushed", "Layer already exists", "Download complete", "Pull complete", "Already exists")


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}"


class Meter:
    """Bytes moved for one host and what they amount to per second."""

    def __init__(self, events: Events, host: str, verb: str, total: int = 0) -> None:
        self.events, self.host, self.verb, self.total = events, host, verb, total
        self.t0 = self._last = time.monotonic()
        self.done = 0

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        self.total = total if total is not None else self.total
        now = time.monotonic()
        if now - self._last >= PROGRESS_EVERY_S:
            self._last = now
            self.events("image", self.host, Progress(self.line()))

    def count(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.update(self.done + len(chunk))
            yield chunk

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def rate(self) -> str:
        return f"{self.done / 2**20 / max(self.elapsed, 1e-3):.0f} MiB/s"

    def line(self) -> str:
        of = f"/{mib(self.total)}" if self.total > self.done else ""
        return f"{self.verb} {mib(self.done)}{of} MiB, {self.rate()}"


class Layers:
    """Sums per-layer progress messages of one status ("Pushing", "Downloading", "Loading layer")."""

    def __init__(self, status: str) -> None:
        self.status = status
        self.current: dict[str, int] = {}
        self.totals: dict[str, int] = {}

    def feed(self, msg: dict[str, Any]) -> None:
        layer, status = str(msg.get("id") or ""), str(msg.get("status") or "")
        detail = msg.get("progressDetail") or {}
        if status == self.status and "current" in detail:
            self.current[layer] = int(detail["current"])
            self.totals[layer] = max(int(detail.get("total") or 0), self.totals.get(layer, 0))
        elif status in _DONE and layer in self.totals:
            self.current[layer] = self.totals[layer]

    @property
    def done(self) -> int:
        return sum(self.current.values())

    @property
    def total(self) -> int:
        return sum(self.totals.values())


class BuildLog:
    """An image build's `on_event` lines turned into calm events.

    pip's and docker build's own lines arrive as `Detail` (log file, -v); from them this keeps a
    `Progress` figure: wheels and MB downloaded while pip runs, then build step k/n and its
    elapsed time. orchestrate's own summary lines pass through as they are.
    """

    _STEP = re.compile(r"Step (\d+)/(\d+) : (.*)")
    _SIZE = re.compile(r"\(([\d.]+) ([kMG]B)\)")
    _UNIT = {"kB": 1e-3, "MB": 1.0, "GB": 1e3}

    def __init__(self, events: Events, phase: str = "image", host: str | None = None) -> None:
        self.events, self.phase, self.host = events, phase, host
        self.wheels = 0
        self.mb = 0.0
        self.step: tuple[int, int, str] | None = None
        self.step_t0 = time.monotonic()

    def __call__(self, line: str) -> None:
        self.events(self.phase, self.host, line)
        if not isinstance(line, Detail):
            return
        figure = self.feed(str(line))
        if figure is not None:
            self.events(self.phase, self.host, Progress(figure))

    def feed(self, line: str) -> str | None:
        """The progress figure after this line, or None when the line changes nothing."""
        if line.startswith("pip: "):
            text = line[5:].strip()
            if text.startswith(("Downloading ", "File was already downloaded", "Saved ")):
                if text.startswith("Downloading "):
                    self.wheels += 1
                    size = self._SIZE.search(text)
                    if size:
                        self.mb += float(size[1]) * self._UNIT[size[2]]
                return f"wheelhouse: {self.wheels} wheels, {self.mb:.0f} MB downloaded"
            return None
        m = self._STEP.match(line.strip())
        if m:
            self.step = (int(m[1]), int(m[2]), m[3])
            self.step_t0 = time.monotonic()
        if self.step is None:
            return None
        k, n, what = self.step
        what = what if len(what) <= 60 else what[:57] + "..."
        return f"build step {k}/{n} ({time.monotonic() - self.step_t0:.0f} s): {what}"
