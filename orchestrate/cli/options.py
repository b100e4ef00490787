"""What every command shares: the global options, the inventory it works on, its log files.

Light by design (issue 15, start-up time): click and the standard library at import; pydantic and
the plan are imported when a command loads an inventory.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from orchestrate.cli.console import Console
    from orchestrate.core.fleet import Fleet
    from orchestrate.core.inventory import Inventory
    from orchestrate.core.plan import Plan
    from orchestrate.ops.preflight import Replan

__all__ = [
    "DEFAULT_INVENTORY",
    "Options",
    "cache_dir",
    "debug_log",
    "fleet_of",
    "inventory_arg",
    "load_fleet",
    "load_for_hosts",
    "load_plan",
    "plan_of",
    "remember",
    "resolve_inventory",
    "run_log",
]

DEFAULT_INVENTORY = "inventory/l20.yaml"
LAST_USED = Path(".orchestrate") / "last-inventory"
RUN_LOGS_KEPT = 30

TARGETS = ("docker", "compose", "k8s")
OUTPUTS = ("text", "json")
TARGET_HELP = "What render/plan produce: docker runs, compose or k8s."
INVENTORY_HELP = (
    f"Inventory file (default: $ORCHESTRATE_INVENTORY, the last one used here, else {DEFAULT_INVENTORY})."
)
VERBOSE_HELP = "More detail (-v: debug events and the full pip/docker output)."

inventory_arg = click.argument("inventory_file", metavar="[INVENTORY]", required=False)


class Options:
    """The global options, wherever they were typed: before the subcommand or after it."""

    def __init__(
        self, target: str = "docker", inventory: str | None = None, verbose: int = 0, output: str = "text"
    ) -> None:
        self.target, self.inventory, self.verbose, self.output = target, inventory, verbose, output
        self._console: Console | None = None

    def console(self) -> Console:
        """The command's console (one per command): live view on a terminal, calm lines in a
        pipe, and the full output, details included, in a log file under the cache."""
        if self._console is None:
            from orchestrate.cli.console import Console

            ctx = click.get_current_context(silent=True)
            self._console = Console(self.verbose, log_path=run_log(ctx.info_name if ctx else None))
        return self._console


def resolve_inventory(explicit: str | None, option: str | None) -> str:
    """Positional argument, then -i, then $ORCHESTRATE_INVENTORY, then the last one used here."""
    for candidate in (explicit, option, os.environ.get("ORCHESTRATE_INVENTORY")):
        if candidate:
            return candidate
    try:
        remembered = LAST_USED.read_text(encoding="utf-8").strip()
    except OSError:
        remembered = ""
    return remembered if remembered and Path(remembered).exists() else DEFAULT_INVENTORY


def remember(path: str) -> None:
    """The inventory a command ran on becomes the default of the next one here."""
    try:
        LAST_USED.parent.mkdir(exist_ok=True)
        LAST_USED.write_text(path + "\n", encoding="utf-8")
    except OSError:
        pass  # a read-only checkout is fine; this is only a convenience


def _inventory(path: str) -> Inventory:
    """The inventory file, read and validated once per command: a command that first asks
    whether it holds replicas and then plans it reads the file once (keyed by its size and
    mtime, so a file that changed is read again)."""
    from orchestrate.core.inventory import load

    try:
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
    except OSError:
        return load(path)  # load says what is wrong with the path
    if key not in _LOADED:
        _LOADED[key] = load(path)
    return _LOADED[key]


_LOADED: dict[tuple[str, int, int], Inventory] = {}


def _replan_for(inv: Inventory) -> Replan:
    """How to plan `inv` again for the vLLM version and Ray the image holds (a vllm_version in
    the inventory stays as written)."""
    from orchestrate.core.plan import build_plan

    def replan(version: str | None, has_ray: bool) -> Plan:
        return build_plan(inv, vllm_version=inv.vllm_version or version, image_has_ray=has_ray)

    return replan


def load_plan(path: str) -> Plan:
    """Inventory file -> Plan (pydantic is imported here, not when the CLI starts)."""
    from orchestrate.core.plan import build_plan

    return build_plan(_inventory(path))


def load_fleet(path: str) -> tuple[Fleet, list[Replan]] | None:
    """Replicas behind a router (replicas.count > 1): the fleet and, per replica, how to plan it
    again for its image (as load_for_hosts); None for an inventory of one group."""
    from orchestrate.core.fleet import build_fleet
    from orchestrate.core.inventory import replica_inventories

    inv = _inventory(path)
    if inv.replicas.count == 1:
        return None
    return build_fleet(inv), [_replan_for(sub) for sub in replica_inventories(inv)]


def fleet_of(opts: Options, explicit: str | None) -> Fleet | None:
    loaded = load_fleet(resolve_inventory(explicit, opts.inventory))
    return loaded[0] if loaded else None


def plan_of(opts: Options, explicit: str | None) -> Plan:
    return load_plan(resolve_inventory(explicit, opts.inventory))


def load_for_hosts(path: str) -> tuple[Plan, Replan]:
    """The plan, and how to plan again for the vLLM version and Ray that the image turns out
    to hold (`up` and `status` read them; a vllm_version in the inventory stays as written)."""
    from orchestrate.core.plan import build_plan

    inv = _inventory(path)
    return build_plan(inv), _replan_for(inv)


def cache_dir() -> Path:
    """The image cache (wheelhouses, rootfs tarballs): $ORCH_CACHE, else ~/.cache/orchestrate."""
    return Path(os.environ.get("ORCH_CACHE") or Path.home() / ".cache" / "orchestrate")


def debug_log() -> Path:
    """Where an internal error's traceback goes."""
    from orchestrate.paths import cache_dir

    return cache_dir() / "debug.log"


def run_log(command: str | None) -> Path:
    """A new log file for this command's whole output; the oldest beyond RUN_LOGS_KEPT go."""
    logs = debug_log().with_name("logs")
    with contextlib.suppress(OSError):
        old = sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime)
        for path in old[: max(0, len(old) - RUN_LOGS_KEPT + 1)]:
            path.unlink(missing_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return logs / f"{command or 'orchestrate'}-{stamp}-{os.getpid()}.log"
