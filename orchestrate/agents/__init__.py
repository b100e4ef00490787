"""Programs that run on hosts or inside containers, shipped as source text.

`bundle(name)` is the agent's module with the orchestrate modules it imports inlined before it
(each of them standard-library only), as one program for `python3 -c`: nothing to install in the
image, and the text is part of the container's spec hash, so a new orchestrate re-creates it.
"""

from __future__ import annotations

import ast
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
    """The module without `from __future__` and `from orchestrate...` imports (whole statements,
    however many lines the formatter gave them): the bundle defines those names itself."""
    drop: set[int] = set()
    for node in ast.parse(text).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in (
            "__future__",
            "orchestrate",
        ):
            drop.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    keep = [line for n, line in enumerate(text.splitlines(), 1) if n not in drop]
    return "\n".join(keep) + "\n"


@functools.cache
def bundle(name: str) -> str:
    parts = [_strip(_text("orchestrate.agents", dep)) for dep in _DEPS.get(name, ())]
    parts.append(_strip(_text("orchestrate.agents", name)))
    return "from __future__ import annotations\n" + "\n".join(parts)


def bundle_hash(name: str) -> str:
    return hashlib.sha256(bundle(name).encode()).hexdigest()[:12]
