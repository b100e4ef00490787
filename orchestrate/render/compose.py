"""docker-compose files from a Plan: one file per host, reproducing run_cluster.sh's `docker run`.

Host network, shm size, GPUs through device reservations, the model mount, the NCCL/Gloo/VLLM env.
Secrets are `${VAR:?message}` references that compose interpolates from the shell at `up` time (an
unset one fails `up`); every other
`$` is escaped as `$$` so compose passes it through literally.
"""

from __future__ import annotations

from typing import Any

from orchestrate.core.plan import ContainerSpec, NodePlan, Plan
from orchestrate.render.docker import RESTART_POLICY, SUPERVISOR_NAME

# written next to the compose files (cli render) and bind-mounted: the same supervisor as `up`'s
SUPERVISOR_FILE = f"{SUPERVISOR_NAME}.py"
SUPERVISOR_PATH = "/opt/orchestrate/supervisor.py"


def _lit(value: str) -> str:
    return value.replace("$", "$$")


def render(plan: Plan) -> dict[str, dict[str, Any]]:
    """{host name: compose document}"""
    return {node.host: _document(plan, node) for node in plan.nodes}


def _document(plan: Plan, node: NodePlan) -> dict[str, Any]:
    doc: dict[str, Any] = {"services": {node.alias: _service(node)}}
    if plan.docker_network:
        name, subnet = plan.docker_network
        doc["networks"] = {name: {"name": name, "ipam": {"config": [{"subnet": subnet}]}}}
    return doc


def _network(spec: ContainerSpec) -> dict[str, Any]:
    if spec.ipv4_address:
        return {"networks": {spec.network_mode: {"ipv4_address": spec.ipv4_address}}}
    return {"network_mode": spec.network_mode}


def service(node: NodePlan) -> dict[str, Any]:
    """The compose service of one node's container (the router's too)."""
    return _service(node)


def _service(node: NodePlan) -> dict[str, Any]:
    spec = node.container
    env = {k: _lit(v) for k, v in spec.env}
    # an unset variable fails `docker compose up` instead of serving without the key
    env |= {k: f"${{{src}:?set {src} (the secret for {k})}}" for k, src in spec.secret_env}
    entrypoint, volumes = (
        list(spec.entrypoint),
        [
            {"type": "bind", "source": m.source, "target": m.target, "read_only": m.read_only}
            for m in spec.mounts
        ],
    )
    if spec.supervisor is not None:
        env |= spec.supervisor.env()
        entrypoint = ["python3", SUPERVISOR_PATH, *entrypoint]
        volumes.append(
            {"type": "bind", "source": f"./{SUPERVISOR_FILE}", "target": SUPERVISOR_PATH, "read_only": True}
        )
    svc: dict[str, Any] = {
        "image": spec.image,
        "container_name": spec.name,
        **_network(spec),
        "shm_size": str(spec.shm_size),
        "entrypoint": [_lit(a) for a in entrypoint],
        "command": [_lit(a) for a in spec.command],
        "environment": env,
        "volumes": volumes,
        "labels": dict(spec.labels),
        "stop_grace_period": f"{spec.stop_timeout}s",
        "restart": RESTART_POLICY if spec.supervisor is not None or spec.restart_always else "no",
    }
    if spec.ipc == "host":
        svc["ipc"] = "host"
    if spec.privileged:
        svc["privileged"] = True
    if spec.gpu_ids or spec.gpus:  # compose: count and device_ids are mutually exclusive
        which = {"device_ids": list(spec.gpu_ids)} if spec.gpu_ids else {"count": spec.gpus}
        device: dict[str, Any] = {"driver": "nvidia", **which, "capabilities": ["gpu"]}
        svc["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
    return svc
