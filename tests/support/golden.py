"""Golden-file helpers: compare text with a file; UPDATE_GOLDEN=1 rewrites the file instead."""

from __future__ import annotations

import difflib
import os
from pathlib import Path


def check(path: Path, actual: str) -> None:
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing; run the tests once with UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    if expected != actual:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(True), actual.splitlines(True), str(path), "rendered", n=2
            )
        )
        raise AssertionError(f"{path} differs from what the code renders:\n{diff[:4000]}")
