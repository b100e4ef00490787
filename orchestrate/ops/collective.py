"""`preflight --collective`: an all-reduce across every host inside throwaway containers, the way
vLLM's troubleshooting guide tests NCCL/Gloo, with a bus-bandwidth figure. It runs with the
deployment's own env (NCCL/GLOO_SOCKET_IFNAME, VLLM_HOST_IP), network, shm and GPUs, so a wrong NIC
or a blocked port fails here, in seconds, instead of hanging vLLM later.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from orchestrate.core.plan import LABEL_DEPLOYMENT, ContainerSpec, NodePlan
from orchestrate.errors import HostError
from orchestrate.host.engine import ContainerInfo
from orchestrate.host.session import Session, fan_out
from orchestrate.ops.preflight import Row
from orchestrate.render.docker import run_kwargs
from orchestrate.waits import poll

WORKER = Path(__file__).resolve().parent.parent / "agents" / "collective_worker.py"


def worker_spec(s: Session, node: NodePlan, port: int, timeout: float) -> ContainerSpec:
    """The one-shot container that runs agents/collective_worker.py on this node: the node's own
    image, GPUs and network, no supervisor, a name and label of its own."""
    plan = s.plan
    env = dict(node.container.env) | {
        "ORCH_COLL_BACKEND": "nccl" if plan.accelerator == "nvidia" else "gloo",
        "ORCH_COLL_MASTER": plan.head.address,
        "ORCH_COLL_PORT": str(port),
        "ORCH_COLL_NODES": str(len(plan.nodes)),
        "ORCH_COLL_NODE": str(node.rank),
        "ORCH_COLL_LOCAL": str(node.gpus if plan.accelerator == "nvidia" else 1),
        "ORCH_COLL_TIMEOUT": f"{timeout:g}",
    }
    return replace(
        node.container,
        name=f"{node.container.name}-collective",
        entrypoint=("python3",),
        command=("-c", WORKER.read_text(encoding="utf-8")),
        env=tuple(sorted(env.items())),
        secret_env=(),
        labels=((f"{LABEL_DEPLOYMENT}-collective", plan.name),),
        supervisor=None,  # a one-shot check: no watchdog, no restart policy, it must exit
    )


def run(s: Session, timeout: float = 60) -> list[Row]:
    """One row per host: ok with the measured bus bandwidth, or what failed."""
    plan = s.plan
    port = plan.master_port + 100  # not the serving ports: a deployment may be up
    specs = {n.host: worker_spec(s, n, port, timeout) for n in plan.nodes}

    def start(node: NodePlan) -> None:
        engine = s.engine(node)
        old = engine.container(specs[node.host].name)
        if old is not None:
            engine.remove(old, 0)
        engine.create_and_start(run_kwargs(specs[node.host], {}))

    fan_out("collective", plan.nodes, start, s.events)
    deadline = time.monotonic() + timeout * 3 + 30
    try:
        return fan_out("collective", plan.nodes, lambda n: _collect(s, n, specs, deadline), s.events)
    finally:
        fan_out("collective", plan.nodes, lambda n: _cleanup(s, n, specs), s.events)


def _collect(s: Session, node: NodePlan, specs: dict, deadline: float) -> Row:  # type: ignore[type-arg]
    engine = s.engine(node)
    name = specs[node.host].name

    def exited() -> ContainerInfo | None:
        c = engine.container(name)
        if c is None:
            raise HostError(node.host, f"{name} vanished")
        return c if c.status in ("exited", "dead") else None

    c = poll(exited, timeout=max(0.0, deadline - time.monotonic()), every=0.5)
    if c is None:
        return Row(
            node.host,
            "collective",
            "fail",
            "all-reduce did not finish (a rank is blocked: wrong NIC, or a port dropped between hosts)",
            "check network.nic / GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME and firewalls",
        )
    out = bytes(engine.logs(c, stdout=True, stderr=True)).decode("utf-8", "replace")
    results = [json.loads(line) for line in out.splitlines() if line.startswith('{"rank"')]
    if results and all(r["ok"] for r in results):
        bw = min(r["busbw_gbps"] or 0 for r in results)
        return Row(
            node.host,
            "collective",
            "ok",
            f"all-reduce ok on {len(results)} rank(s), bus bandwidth {bw:g} GB/s",
        )
    error = next((r.get("error") for r in results if r.get("error")), None)
    error = error or (out.strip().splitlines() or ["no output"])[-1]
    return Row(
        node.host,
        "collective",
        "fail",
        f"all-reduce failed: {error[:300]}",
        "check network.nic / *_SOCKET_IFNAME, firewalls, and that every host is alike",
    )


def _cleanup(s: Session, node: NodePlan, specs: dict) -> None:  # type: ignore[type-arg]
    engine = s.engine(node)
    c = engine.container(specs[node.host].name)
    if c is not None:
        engine.remove(c, 0)
