"""Checks run on every host before anything starts, each failure naming the host and the fix.

`basic` is the preflight phase of `up`: model present, ports free, NVIDIA runtime present.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from orchestrate.errors import HostError, OrchestrateError
from orchestrate.plan import NodePlan, Plan
from orchestrate.session import Session, fan_out


def node_ports(plan: Plan, node: NodePlan) -> dict[int, str]:
    """Host ports this node's container will listen on (host networking)."""
    if plan.backend == "ray":
        ports = {plan.object_manager_port: "ray.object_manager_port"}
        if node.role == "head":
            ports |= {plan.ray_port: "ray.port", plan.dashboard_port: "ray.dashboard_port"}
    else:
        ports = {plan.master_port: "mp.master_port"} if node.role == "head" else {}
    if node.role == "head":
        ports[plan.api_port] = "serve.port"
    return ports


def listening_ports(ss_output: str) -> set[int]:
    ports = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) >= 4 and (match := re.search(r":(\d+)$", fields[3])):
            ports.add(int(match.group(1)))
    return ports


def check_model(s: Session, node: NodePlan) -> None:
    path = s.plan.model_host_path
    res = s.runner(node).run(["test", "-f", f"{path}/config.json"], check=False, timeout=30)
    if not res.ok:
        raise HostError(
            node.host,
            f"model not found: {path}/config.json does not exist on this host",
            hint="copy the model to the same path on every host (orchestrate model sync)",
        )


def check_ports(s: Session, node: NodePlan) -> None:
    res = s.runner(node).run(["ss", "-Htln"], check=False, timeout=30)
    if not res.ok:
        return  # no `ss` on this host: nothing to compare; the container start will tell
    busy = listening_ports(res.stdout)
    taken = [f"{port} ({field})" for port, field in node_ports(s.plan, node).items() if port in busy]
    if taken:
        raise HostError(
            node.host,
            f"port(s) already in use on {node.address}: {', '.join(taken)}",
            hint="stop what listens there (ss -ltnp) or choose other ports in the inventory",
        )


def check_nvidia(s: Session, node: NodePlan) -> None:
    runtimes = s.engine(node).info().get("Runtimes", {})
    if "nvidia" not in runtimes:
        raise HostError(
            node.host,
            "the Docker Engine has no nvidia runtime, so containers cannot get GPUs",
            hint="install the NVIDIA Container Toolkit and run nvidia-ctk runtime configure",
        )


def basic(s: Session, creating: Sequence[NodePlan], fresh: set[str] | None = None) -> None:
    """Checks for the nodes about to be (re)created; ports only where none of ours runs yet
    (`fresh` host names), since our own old container holds them until the stop phase."""
    plan = s.plan

    def one(node: NodePlan) -> None:
        problems: list[OrchestrateError] = []
        checks = [check_model]
        if (fresh is None or node.host in fresh) and not node.container.ipv4_address:
            checks.append(check_ports)
        if plan.accelerator == "nvidia":
            checks.append(check_nvidia)
        for check in checks:
            try:
                check(s, node)
            except HostError as exc:
                problems.append(exc)
        if problems:
            if len(problems) == 1:
                raise problems[0]
            raise HostError(node.host, "; ".join(p.message.split(": ", 1)[1] for p in problems),
                            hint=problems[0].hint)  # fmt: skip
        s.events("preflight", node.host, "ok")

    fan_out("preflight", creating, one, s.events)
