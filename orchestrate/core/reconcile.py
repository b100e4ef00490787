"""Desired vs observed containers, as a pure function: keep, create, recreate or remove.

Containers carry their spec hash as a label (Ray's hash_launch_conf idea). A vLLM group cannot lose
a member: a Ray node whose head restarted never rejoins, and a headless mp rank does not follow a
new head. So any change (or a dead member) restarts the whole group in phase order; an unchanged,
healthy group is left alone and a second `up` touches nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from orchestrate.core.plan import Plan

Action = Literal["keep", "create", "recreate"]


@dataclass(frozen=True)
class Observed:
    host: str
    name: str
    spec_hash: str
    status: str  # docker state: running, exited, created, ...
    parked: str = ""  # why its supervisor parked (a crash loop), when it did


@dataclass(frozen=True)
class Changes:
    actions: dict[str, Action]  # inventory host -> action for its planned container
    remove: tuple[Observed, ...] = ()  # ours, but not in the plan (renamed, leftovers)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def noop(self) -> bool:
        return not self.remove and all(a == "keep" for a in self.actions.values())


def reconcile(plan: Plan, observed: dict[str, list[Observed]]) -> Changes:
    actions: dict[str, Action] = {}
    reasons: dict[str, str] = {}
    remove: list[Observed] = []
    for node in plan.nodes:
        mine = {o.name: o for o in observed.get(node.host, [])}
        current = mine.pop(node.container.name, None)
        remove += mine.values()
        want = node.container.labels_dict()["orchestrate.spec-hash"]
        if current is None:
            actions[node.host], reasons[node.host] = "create", "missing"
        elif current.spec_hash != want:
            actions[node.host], reasons[node.host] = "recreate", "spec changed"
        elif current.status != "running":
            actions[node.host], reasons[node.host] = "recreate", f"container {current.status}"
        elif current.parked:
            actions[node.host], reasons[node.host] = "recreate", f"parked: {current.parked}"
        else:
            actions[node.host] = "keep"
    if any(a != "keep" for a in actions.values()):
        for host, action in actions.items():
            if action == "keep":
                actions[host], reasons[host] = "recreate", "group restart"
    return Changes(actions, tuple(remove), reasons)
