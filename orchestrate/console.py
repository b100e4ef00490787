"""What people see: progress events, tables and errors, every line run through the secret masker.

Core code never prints; it calls an `Events` callback. The CLI passes a `Console`, which renders
with rich on a terminal and as plain, grep-able lines otherwise (CI logs, pipes).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from orchestrate.secrets import masker

if TYPE_CHECKING:
    from rich.console import Console as RichConsole


class Events(Protocol):
    def __call__(self, phase: str, host: str | None, message: str) -> None: ...


def quiet(phase: str, host: str | None, message: str) -> None:
    """An Events sink that drops everything (library use, tests)."""


class Console:
    def __init__(self, verbose: int = 0, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose
        self.tty = self.stream.isatty()
        self._rich = _rich_console(self.stream) if self.tty else None
        self._t0 = time.monotonic()
        self._lock = threading.Lock()  # events come from fan-out threads

    def __call__(self, phase: str, host: str | None, message: str) -> None:
        elapsed = time.monotonic() - self._t0
        where = f"{host}: " if host else ""
        line = masker(f"[{elapsed:6.1f}s] {phase:<9} {where}{message}")
        with self._lock:
            if self._rich:
                self._rich.print(line, markup=False, style="dim" if phase == "debug" else None)
            elif phase != "debug" or self.verbose:
                self.stream.write(line + "\n")
                self.stream.flush()

    def error(self, lines: Sequence[str]) -> None:
        for i, line in enumerate(lines):
            text = masker(("error: " if i == 0 else "") + line)
            if self._rich:
                self._rich.print(text, style="bold red" if i == 0 else "red", markup=False)
            else:
                print(text, file=self.stream, flush=True)


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
