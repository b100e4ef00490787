"""What people see: progress events, tables and errors, every line run through the secret masker.

Core code never prints; it calls an `Events` callback (orchestrate.events). The CLI passes a
`Console`:

- on a terminal, a live view (rich Live): one row per host with its phase, latest state and
  time in that phase, the latest progress figure of hostless steps below it, and the phase
  summaries printed above;
- otherwise (CI logs, pipes), plain grep-able lines: one per event, and at most one
  `Progress` line per phase and host every PLAIN_PROGRESS_S;
- always, when given a log path, every line including `Detail` ones (pip's, docker build's)
  with its time, so the screen stays calm and nothing is lost. `-v` puts details on screen.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from orchestrate.core.secrets import masker
from orchestrate.events import Detail, Events, Progress, quiet

if TYPE_CHECKING:
    from rich.console import Console as RichConsole
    from rich.live import Live

__all__ = ["Console", "Events", "close_all", "emit_json", "emit_table", "emit_text", "errors_to", "quiet"]

PLAIN_PROGRESS_S = 15.0  # a pipe gets one progress line per phase and host this often
_ACTIVE: list[Console] = []  # consoles with a live view or log file open, closed by close_all()


class _Row:
    __slots__ = ("phase", "since", "state")

    def __init__(self, phase: str, state: str, since: float) -> None:
        self.phase, self.state, self.since = phase, state, since


class _View:
    """The live view's renderable: built afresh at each refresh, so elapsed times tick."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("host", "phase", "state", "in phase"):
            table.add_column(col, no_wrap=col != "state", overflow="ellipsis")
        with self.console._lock:
            rows = list(self.console._rows.items())
            footer = self.console._footer
        for host, row in rows:
            table.add_row(host, row.phase, row.state, f"{now - row.since:5.0f}s")
        parts: list[Any] = [table]
        if footer:
            parts.append(Text(footer, style="cyan"))
        return Group(*parts)


class Console:
    def __init__(
        self,
        verbose: int = 0,
        stream: TextIO | None = None,
        log_path: Path | None = None,
        live: bool | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.tty = self.stream.isatty()
        self._rich = _rich_console(self.stream) if self.tty else None
        self._t0 = time.monotonic()
        self._lock = threading.RLock()  # events come from fan-out threads
        self._rows: dict[str, _Row] = {}
        self._footer = ""
        self._last_plain: dict[tuple[str, str | None], float] = {}
        self._live_wanted = self.tty if live is None else live
        self._live: Live | None = None
        self.log_path = log_path
        self._log: TextIO | None = None
        self._log_announced = False
        if log_path is not None:
            try:
                log_path.parent.mkdir(parents=True, exist_ok=True)
                self._log = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
            except OSError:
                self.log_path = None
        _ACTIVE.append(self)

    # ------------------------------------------------------------------ events

    def __call__(self, phase: str, host: str | None, message: str) -> None:
        now = time.monotonic()
        elapsed = now - self._t0
        where = f"{host}: " if host else ""
        line = masker(f"[{elapsed:6.1f}s] {phase:<9} {where}{message}")
        detail = isinstance(message, Detail) or phase == "debug"
        with self._lock:
            self._to_log(line)
            if detail and not self.verbose:
                return
            self._announce_log()
            if self._live_wanted and not detail:
                self._show_live(phase, host, masker(str(message)), isinstance(message, Progress), now)
            elif self._rich is not None:
                self._rich.print(line, markup=False, style="dim" if detail else None)
            else:
                if isinstance(message, Progress):
                    key = (phase, host)
                    if now - self._last_plain.get(key, -1e9) < PLAIN_PROGRESS_S:
                        return
                    self._last_plain[key] = now
                self._write(line)

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def _to_log(self, line: str) -> None:
        if self._log is not None:
            stamp = time.strftime("%H:%M:%S")
            try:
                self._log.write(f"{stamp} {line}\n")
                self._log.flush()
            except OSError:
                self._log = None

    def _announce_log(self) -> None:
        if self.log_path is not None and not self._log_announced:
            self._log_announced = True
            text = masker(f"[{time.monotonic() - self._t0:6.1f}s] {'log':<9} full output in {self.log_path}")
            if self._rich is not None:
                self._rich.print(text, markup=False, style="dim")
            else:
                self._write(text)

    def _show_live(self, phase: str, host: str | None, message: str, progress: bool, now: float) -> None:
        if self._live is None:
            from rich.live import Live

            assert self._rich is not None
            self._live = Live(
                _View(self),
                console=self._rich,
                refresh_per_second=4,
                transient=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        if host is None:
            if progress:
                self._footer = f"{phase}: {message}"
            else:
                self._footer = ""
                self._live.console.print(
                    f"[{now - self._t0:6.1f}s] {phase:<9} {message}", markup=False, highlight=False
                )
            return
        row = self._rows.get(host)
        if row is None or row.phase != phase:
            self._rows[host] = _Row(phase, message, now)
        else:
            row.state = message

    # ------------------------------------------------------------------ end

    def stop_live(self) -> None:
        with self._lock:
            if self._live is not None:
                self._footer = ""
                with contextlib.suppress(Exception):
                    self._live.stop()
                self._live = None
            self._live_wanted = False

    def close(self) -> None:
        self.stop_live()
        with self._lock:
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.close()
                self._log = None
        with contextlib.suppress(ValueError):
            _ACTIVE.remove(self)

    def error(self, lines: Sequence[str]) -> None:
        for other in list(_ACTIVE):
            other.stop_live()
        shown = list(lines)
        if self.log_path is not None and self._log_announced:
            shown.append(f"full output: {self.log_path}")
        for i, raw in enumerate(shown):
            text = masker(("error: " if i == 0 else "") + raw)
            with self._lock:
                self._to_log(text)
            if self._rich:
                self._rich.print(text, style="bold red" if i == 0 else "red", markup=False)
            else:
                print(text, file=self.stream, flush=True)


def errors_to(default: Console) -> Console:
    """The console an error should go to: the command's own (it names its log file), else default."""
    for console in reversed(_ACTIVE):
        if console.log_path is not None:
            return console
    return default


def close_all() -> None:
    """Stop every live view and close every log file (the CLI's last step, however it ends)."""
    for console in list(_ACTIVE):
        console.close()


def _rich_console(stream: TextIO | None = None) -> RichConsole:
    from rich.console import Console as RichConsole  # a terminal only: rich costs ~100 ms to import

    return RichConsole(file=stream, highlight=False)


def emit_json(data: Any) -> None:
    print(masker(json.dumps(data, indent=2, sort_keys=False, default=str)))


def emit_text(text: str) -> None:
    sys.stdout.write(masker(text if text.endswith("\n") else text + "\n"))
    sys.stdout.flush()


def emit_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    if sys.stdout.isatty():
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*(masker(str(c)) for c in row))
        _rich_console().print(table)
        return
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows, strict=False)]
    lines = [title] if title else []
    for row in (columns, *rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip())
    emit_text("\n".join(lines))
