"""The code style gates: ruff (lint, and the formatter as a check) and mypy --strict on the package."""

from __future__ import annotations

import subprocess
import sys

from tests import ROOT


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff() -> None:
    res = _run("ruff", "check", "orchestrate", "tests", "bench", "tools")
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format() -> None:
    res = _run("ruff", "format", "--check", "orchestrate", "tests", "bench", "tools")
    assert res.returncode == 0, res.stdout + res.stderr


def test_mypy_strict() -> None:
    res = _run("mypy")
    assert res.returncode == 0, res.stdout + res.stderr
