"""Secrets: `${ENV_VAR}` references in the inventory, resolved only at apply time, masked everywhere.

The plan never holds a secret value, only the name of the environment variable that supplies it.
Values are resolved by `resolve()` right before a container is created, and every resolved value
is registered with the process-wide `Masker`, which every output path (console, logs, errors,
JSON) runs text through.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping

from orchestrate.errors import MissingSecretError

REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
MASK = "******"


def ref_name(value: str) -> str | None:
    """The variable name of a `${NAME}` reference, or None when `value` is not one."""
    match = REF.match(value)
    return match.group(1) if match else None


class Masker:
    """Replaces every known secret value in text with a fixed mask."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def add(self, value: str) -> None:
        # Very short values would mask ordinary words; secrets are never that short in practice.
        if len(value) >= 4:
            with self._lock:
                self._values.add(value)

    def __call__(self, text: str) -> str:
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            text = text.replace(value, MASK)
        return text


masker = Masker()


def resolve(refs: Mapping[str, str], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Resolve {container env name: source variable name} from the environment and register masks."""
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    missing = [src for src in refs.values() if src not in env]
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise MissingSecretError(
            f"secret environment variable(s) not set: {names}",
            hint="export them before running orchestrate (the inventory holds only ${VAR} references)",
        )
    for name, src in refs.items():
        out[name] = env[src]
        masker.add(env[src])
    return out
