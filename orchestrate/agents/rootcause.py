"""The line of a vLLM log that says why it died: pure text in, one line out.

When a rank fails, the last lines of its log are vLLM's wrappers, not the cause: "RuntimeError:
Engine core initialization failed. See root cause above.", "WorkerProc initialization failed due
to an exception in a background process. See stack trace for root cause." The cause is the final
line of the first traceback that is not such a wrapper, often printed by another process (the
EngineCore or a worker), each line behind a `(EngineCore pid=26) ERROR 12-02 08:12:44 [core.py:1510]`
prefix. `up`, `status` and the watchdog all show that line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Cause", "root_cause"]

# `(EngineCore pid=26) ERROR 12-02 08:12:44 [core.py:1510] text` -> ("EngineCore", "ERROR", text);
# older vLLM prints `(RayWorkerWrapper pid=1234, ip=10.0.0.2) ...` and `ERROR 12-02 08:12:44 x.py:12] `
_PREFIX = re.compile(
    r"^(?:\((?P<proc>[\w.-]+)(?: pid=\d+)?(?:, ip=[\d.:a-fA-F]+)?\)\s*)?"
    r"(?:(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+"
    r"\[?[\w./-]+:\d+\]\s?)?"
)
_EXCEPTION = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure)\w*)"
    r"(?::\s*(?P<msg>.*))?$"
)
# wrappers that point elsewhere for the cause; never the cause themselves
_WRAPPERS = (
    "see root cause above",
    "see stack trace for root cause",
    "initialization failed due to an exception in a background process",
    "engine core initialization failed",
    "engine process failed to start",
    "worker failed with error",
    "the above exception was the direct cause",
    "during handling of the above exception",
)
_NOT_CAUSES = ("KeyboardInterrupt", "SystemExit", "asyncio.exceptions.CancelledError", "CancelledError")


@dataclass(frozen=True)
class Cause:
    line: str  # "ValueError: No available memory for the cache blocks. ..."
    process: str | None  # the vLLM process that raised it ("EngineCore", "Worker_PP1"), if named

    def __str__(self) -> str:
        return f"{self.line} (in {self.process})" if self.process else self.line


def _strip(raw: str) -> tuple[str | None, str | None, str]:
    m = _PREFIX.match(raw)
    if not m:
        return None, None, raw.rstrip()
    return m.group("proc"), m.group("level"), raw[m.end() :].rstrip()


def _is_wrapper(text: str) -> bool:
    low = text.lower()
    return any(w in low for w in _WRAPPERS)


def _final_lines(lines: list[tuple[str | None, str | None, str]]) -> list[Cause]:
    """The exception line that ends each traceback, in the order they were printed."""
    found: list[Cause] = []
    open_tb: dict[str | None, bool] = {}  # tracebacks interleave across processes: one per prefix
    for i, (proc, _level, text) in enumerate(lines):
        if text.startswith("Traceback (most recent call last)"):
            open_tb[proc] = True
            continue
        if not open_tb.get(proc) or text.startswith((" ", "\t")) or not text:
            continue
        m = _EXCEPTION.match(text)
        if m:
            if _VALIDATION.search(text):
                text = f"{text}: {_validation_detail(lines[i + 1 :], proc)}".rstrip(": ")
            found.append(Cause(text[:400], proc))
            open_tb[proc] = False
    return found


# pydantic's "1 validation error for ModelConfig" says nothing; what failed is on the next lines:
# an optional field name, then the indented message ending in "[type=..., input_value=...]"
_VALIDATION = re.compile(r"ValidationError: \d+ validation errors? for ")


def _validation_detail(rest: list[tuple[str | None, str | None, str]], proc: str | None) -> str:
    field = ""
    for p, _level, text in rest[:6]:
        if p != proc or not text.strip():
            continue
        if not text.startswith((" ", "\t")):
            if field:
                break
            field = text.strip()
            continue
        message = re.sub(r"\s*\[type=.*$", "", text.strip())
        return f"{field}: {message}" if field else message
    return field


def root_cause(text: str) -> Cause | None:
    """The first exception (or, with no traceback, the first ERROR line) that is not a wrapper."""
    lines = [_strip(raw) for raw in text.splitlines()]
    finals = _final_lines(lines)
    real = [c for c in finals if not _is_wrapper(c.line) and not c.line.startswith(_NOT_CAUSES)]
    if real:
        return real[0]
    errors = [
        Cause(t[:400], p)
        for p, level, t in lines
        if level in ("ERROR", "CRITICAL")
        and t
        and not t.startswith(" ")
        and not _is_wrapper(t)
        and not t.startswith("Traceback")
    ]
    if errors:
        return errors[0]
    return finals[0] if finals else None
