"""Where orchestrate keeps its own files on the machine it runs on (never on the hosts)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/orchestrate, else ~/.cache/orchestrate (locks, logs, hash and image caches)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "orchestrate"
