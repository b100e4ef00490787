"""Programs that run on hosts or inside containers, shipped as source text.

`bundle(name)` is the agent's module with the orchestrate modules it imports inlined before it
(each of them standard-library only), as one program for `python3 -c`: nothing to install in the
image, and the text is part of the container's spec hash, so a new orchestrate re-creates it.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

__all__ = ["STATE_PATH", "bundle", "bundle_hash"]

# where the supervisor keeps its lives (in the container's own layer: kept across Docker's
# restarts of the container, gone when `up` re-creates it); `status` reads it with docker exec
STATE_PATH = "/tmp/orchestrate/supervisor.json"

_DEPS = {"supervisor": ("health", "rootcause")}


def _text(package: str, module: str) -> str:
    return resources.files(package).joinpath(f"{module}.py").read_text(encoding="utf-8")


def _strip(text: str) -> str:
    keep = [
        line
        for line in text.splitlines()
        if line != "from __future__ import annotations" and not line.startswith("from orchestrate.")
    ]
    return "\n".join(keep) + "\n"


@functools.cache
def bundle(name: str) -> str:
    parts = [_strip(_text("orchestrate.agents", dep)) for dep in _DEPS.get(name, ())]
    parts.append(_strip(_text("orchestrate.agents", name)))
    return "from __future__ import annotations\n" + "\n".join(parts)


def bundle_hash(name: str) -> str:
    return hashlib.sha256(bundle(name).encode()).hexdigest()[:12]
