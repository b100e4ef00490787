"""orchestrate: multi-node vLLM on bare-metal GPU hosts, and the same plan for k8s and compose.

The public API, for scripts (the CLI is a thin layer over the same calls)::

    import orchestrate

    plan = orchestrate.build_plan(orchestrate.load("inventory/l20.yaml"))   # pure: no host touched
    files = orchestrate.rendered("k8s", plan, "lws")                         # {file name: YAML}
    report = orchestrate.up(plan)                   # preflight, containers, gates, chat checks
    print(orchestrate.status(plan)["healthy"])
    orchestrate.down(plan)

Every failure is an :class:`OrchestrateError` (the tree is in :mod:`orchestrate.errors`); progress
goes to an optional ``events(phase, host, message)`` callable (:mod:`orchestrate.events`).
Names load on first use, so ``import orchestrate`` stays as light as the CLI's start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_PUBLIC = {
    "load": "orchestrate.core.inventory",
    "parse": "orchestrate.core.inventory",
    "Inventory": "orchestrate.core.inventory",
    "build_plan": "orchestrate.core.plan",
    "Plan": "orchestrate.core.plan",
    "rendered": "orchestrate.render",
    "plan_text": "orchestrate.render",
    "plan_data": "orchestrate.render",
    "up": "orchestrate.ops.apply",
    "down": "orchestrate.ops.apply",
    "check": "orchestrate.ops.apply",
    "UpReport": "orchestrate.ops.apply",
    "status": "orchestrate.ops.observe",
    "logs": "orchestrate.ops.observe",
    "Events": "orchestrate.events",
    "quiet": "orchestrate.events",
    "OrchestrateError": "orchestrate.errors",
    "InventoryError": "orchestrate.errors",
    "HostError": "orchestrate.errors",
    "GateError": "orchestrate.errors",
    "ChecksError": "orchestrate.errors",
}

__all__ = [
    "ChecksError",
    "Events",
    "GateError",
    "HostError",
    "Inventory",
    "InventoryError",
    "OrchestrateError",
    "Plan",
    "UpReport",
    "build_plan",
    "check",
    "down",
    "load",
    "logs",
    "parse",
    "plan_data",
    "plan_text",
    "quiet",
    "rendered",
    "status",
    "up",
]

if TYPE_CHECKING:
    from orchestrate.core.inventory import Inventory, load, parse
    from orchestrate.core.plan import Plan, build_plan
    from orchestrate.errors import ChecksError, GateError, HostError, InventoryError, OrchestrateError
    from orchestrate.events import Events, quiet
    from orchestrate.ops.apply import UpReport, check, down, up
    from orchestrate.ops.observe import logs, status
    from orchestrate.render import plan_data, plan_text, rendered


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
