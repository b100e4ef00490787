"""Kubernetes manifests from a Plan: plain Deployments (the post's layout, fixed) or a LeaderWorkerSet.

What the post left manual and this adds: GPU requests/limits, the serve step inside the head pod
gated on every Ray node and GPU being alive, a Service port for the API, startup/readiness/liveness
probes on the head, a worker init container that waits for the head's GCS, VLLM_HOST_IP from the
downward API, the dashboard port (8265), and secrets by Secret reference only.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from orchestrate import scripts
from orchestrate.plan import ContainerSpec, NodePlan, Plan
from orchestrate.ports import container_ports

Flavor = Literal["deployment", "lws"]
Obj = dict[str, Any]
# Per-node variables; everything else shared goes into the ConfigMap.
_NODE_ENV = {"VLLM_HOST_IP", "ORCH_GPUS", "ORCH_HEAD_ADDR"}


def render(plan: Plan, flavor: Flavor = "deployment") -> list[Obj]:
    objs = [_namespace(plan), _configmap(plan), _head_service(plan)]
    if flavor == "lws":
        return [*objs, _lws(plan)]
    return [*objs, _head_deployment(plan), *(_worker_deployment(plan, n) for n in plan.workers)]


def secret_name(plan: Plan) -> str:
    return f"{plan.name}-secrets"


def _meta(plan: Plan, name: str, component: str | None = None) -> Obj:
    labels = {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/managed-by": "orchestrate"}
    if component:
        labels["app.kubernetes.io/component"] = component
    return {"name": name, "namespace": plan.namespace, "labels": labels}


def _selector(plan: Plan, component: str) -> Obj:
    return {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/component": component}


def _namespace(plan: Plan) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": plan.namespace}}


def _shared_env(plan: Plan) -> dict[str, str]:
    """Variables with the same value on every node (the rest go into each pod's own env)."""
    common = set(plan.head.container.env)
    for node in plan.workers:
        common &= set(node.container.env)
    return {k: v for k, v in sorted(common) if k not in _NODE_ENV and not _head_only(k)}


def _head_only(key: str) -> bool:
    return key.startswith("ORCH_EXPECTED_") or key == "ORCH_DASHBOARD_PORT"


def _configmap(plan: Plan) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(plan, f"{plan.name}-env"),
        "data": _shared_env(plan),
    }


def _head_host(plan: Plan) -> str:
    return f"{plan.name}-head.{plan.namespace}.svc.cluster.local"


def _head_service(plan: Plan) -> Obj:
    ports = [{"name": "http", "port": plan.api_port, "targetPort": plan.api_port}]
    if plan.backend == "ray":
        ports += [
            {"name": "gcs", "port": plan.ray_port, "targetPort": plan.ray_port},
            {"name": "object-manager", "port": plan.object_manager_port},
            {"name": "dashboard", "port": plan.dashboard_port, "targetPort": plan.dashboard_port},
        ]
    else:
        ports.append({"name": "master", "port": plan.master_port, "targetPort": plan.master_port})
    for port in ports:
        port.setdefault("targetPort", port["port"])
        port["protocol"] = "TCP"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan, f"{plan.name}-head", "head"),
        "spec": {"type": "ClusterIP", "selector": _selector(plan, "head"), "ports": ports},
    }


def _env(plan: Plan, node: NodePlan, head_addr: str) -> list[Obj]:
    shared = _shared_env(plan)
    out: list[Obj] = [{"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    for key, value in node.container.env:
        if key == "VLLM_HOST_IP" or (key in shared and shared[key] == value):
            continue
        out.append({"name": key, "value": head_addr if key == "ORCH_HEAD_ADDR" else value})
    for key, source in node.container.secret_env:
        ref = {"name": secret_name(plan), "key": source}
        out.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return out


def _args(node: NodePlan, head_addr: str) -> list[str]:
    args = list(node.container.command)
    if node.role != "head" and "--master-addr" in args:
        args[args.index("--master-addr") + 1] = head_addr
    return args


def _container(plan: Plan, node: NodePlan, head_addr: str) -> Obj:
    spec: ContainerSpec = node.container
    out: Obj = {
        "name": "vllm-head" if node.role == "head" else "vllm-worker",
        "image": spec.image,
        "command": list(spec.entrypoint),
        "args": _args(node, head_addr),
        "envFrom": [{"configMapRef": {"name": f"{plan.name}-env"}}],
        "env": _env(plan, node, head_addr),
        "volumeMounts": [
            {"name": "dshm", "mountPath": "/dev/shm"},
            *(
                {"name": f"model-{i}", "mountPath": m.target, "readOnly": m.read_only}
                for i, m in enumerate(spec.mounts)
            ),
        ],
    }
    if spec.gpus:
        gpus = {"nvidia.com/gpu": str(spec.gpus)}
        out["resources"] = {"limits": dict(gpus), "requests": dict(gpus)}
    if spec.privileged:
        out["securityContext"] = {"privileged": True}
    # hostNetwork: these are host ports, so the scheduler keeps two pods that need one apart
    if pinned := container_ports(plan, node):
        out["ports"] = [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in pinned]
    if node.role == "head":
        out |= _probes(plan)
    return out


def _probes(plan: Plan) -> Obj:
    get = {"path": "/health", "port": plan.api_port}
    threshold = max(3, math.ceil(plan.startup_timeout / 10))
    return {
        # loading 32B of weights over the network can take many minutes (vLLM k8s docs)
        "startupProbe": {"httpGet": get, "periodSeconds": 10, "failureThreshold": threshold},
        "readinessProbe": {"httpGet": get, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {"httpGet": get, "periodSeconds": 20, "failureThreshold": 6},
    }


def _volumes(plan: Plan, spec: ContainerSpec) -> list[Obj]:
    shm = {"medium": "Memory", "sizeLimit": _quantity(spec.shm_size)}
    vols: list[Obj] = [{"name": "dshm", "emptyDir": shm}]
    vols += [
        {"name": f"model-{i}", "hostPath": {"path": m.source, "type": "Directory"}}
        for i, m in enumerate(spec.mounts)
    ]
    return vols


def _quantity(size: int) -> str:
    for unit, factor in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _pod_spec(plan: Plan, node: NodePlan, head_addr: str, pin: bool = True) -> Obj:
    spec: Obj = {
        "hostNetwork": True,  # as `docker run --network host`: NCCL/Gloo see the host NIC
        "dnsPolicy": "ClusterFirstWithHostNet",
        "terminationGracePeriodSeconds": node.container.stop_timeout,
    }
    if pin:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node.k8s_node}
    if node.role != "head" and plan.backend == "ray":
        spec["initContainers"] = [_wait_for_head(plan, node, head_addr)]
    spec["containers"] = [_container(plan, node, head_addr)]
    spec["volumes"] = _volumes(plan, node.container)
    return spec


def _wait_for_head(plan: Plan, node: NodePlan, head_addr: str) -> Obj:
    return {
        "name": "wait-for-head",
        "image": node.container.image,
        "command": ["bash", "-c", scripts.WAIT_FOR_HEAD],
        "env": [{"name": "ORCH_HEAD_ADDR", "value": head_addr}],
        "envFrom": [{"configMapRef": {"name": f"{plan.name}-env"}}],
    }


def _deployment(plan: Plan, node: NodePlan, component: str) -> Obj:
    labels = _selector(plan, component)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(plan, node.container.name, component),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # never two Ray heads / two rank-0s at once
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": {**labels, "app.kubernetes.io/managed-by": "orchestrate"}},
                "spec": _pod_spec(plan, node, _head_host(plan)),
            },
        },
    }


def _head_deployment(plan: Plan) -> Obj:
    return _deployment(plan, plan.head, "head")


def _worker_deployment(plan: Plan, node: NodePlan) -> Obj:
    return _deployment(plan, node, f"worker-{node.rank}")


# ---------------------------------------------------------------- LeaderWorkerSet


def _lws(plan: Plan) -> Obj:
    leader_addr = "$(LWS_LEADER_ADDRESS)"
    nodes = sorted({n.k8s_node for n in plan.nodes})
    group = {"leaderworkerset.sigs.k8s.io/name": plan.name}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}
                    ]}
                ]
            }
        },
        "podAntiAffinity": {  # one pod of the group per machine
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": group}, "topologyKey": "kubernetes.io/hostname"}
            ]
        },
    }
    leader = _pod_spec(plan, plan.head, leader_addr, pin=False) | {"affinity": affinity}
    worker_node = plan.workers[0] if plan.workers else plan.head
    worker = _pod_spec(plan, worker_node, leader_addr, pin=False) | {"affinity": affinity}
    worker["containers"][0]["env"] = [
        e for e in worker["containers"][0]["env"] if e["name"] != "ORCH_GPUS"
    ] + [{"name": "ORCH_GPUS", "value": str(worker_node.gpus)}]
    args = worker["containers"][0]["args"]
    if "--node-rank" in args:  # mp backend: LWS gives each worker its index
        args[args.index("--node-rank") + 1] = "$(LWS_WORKER_INDEX)"
    return {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": _meta(plan, plan.name),
        "spec": {
            "replicas": 1,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": len(plan.nodes),
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": {
                    "metadata": {"labels": _selector(plan, "head")},
                    "spec": leader,
                },
                "workerTemplate": {
                    "metadata": {"labels": _selector(plan, "worker")},
                    "spec": worker,
                },
            },
        },
    }
