"""Kubernetes manifests from a Plan: plain Deployments (the post's layout, fixed) or a LeaderWorkerSet.

What the post left manual and this adds: GPU requests/limits, the serve step inside the head pod
gated on every Ray node and GPU being alive, a Service port for the API, startup/readiness/liveness
probes on the head, a worker init container that waits for the head's GCS, VLLM_HOST_IP from the
downward API, the dashboard port (8265), and secrets by Secret reference only. With the watchdog
on, every container runs orchestrate's supervisor (from a ConfigMap) as under docker: it exits
on an engine hang that /health answers 200 to, and the head's liveness probe is its /livez.

Start order: the head is Ready only once every worker has joined, so workers must reach it before
it is Ready. They do through a headless Service with publishNotReadyAddresses (`<name>-head-peers`,
as KubeRay's head service and LWS's own headless Service); the API Service `<name>-head` keeps
routing to a Ready head only. Under LWS, workers use LWS_LEADER_ADDRESS and the leader its own pod
IP. tests/support/k8s_sim.py plays these rules against the rendered YAML.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Any, Literal

from orchestrate.agents import bundle, scripts
from orchestrate.core.plan import ContainerSpec, NodePlan, Plan
from orchestrate.core.ports import container_ports

Flavor = Literal["deployment", "lws"]
Obj = dict[str, Any]
# Per-node variables; everything else shared goes into the ConfigMap.
_NODE_ENV = {"VLLM_HOST_IP", "ORCH_GPUS", "ORCH_HEAD_ADDR"}
# Seconds allowed for the slowest node to pull the image before the group can form: 20 GB at
# ~12 MB/s. Pods wait for each other (the head's gate, the workers' init container) this much
# longer than ray.join_timeout, so a cold node's pull does not time the group out.
IMAGE_PULL_BUDGET = 1800
SECRET_PLACEHOLDER = "REPLACE-ME"
# the supervisor (orchestrate/agents/supervisor.py), from a ConfigMap: the same program as docker's
SUPERVISOR_PATH = "/opt/orchestrate/supervisor.py"


def render(plan: Plan, flavor: Flavor = "deployment") -> list[Obj]:
    objs = [_namespace(plan), _configmap(plan), _head_service(plan)]
    if plan.head.container.supervisor is not None:
        objs.insert(2, _supervisor_configmap(plan))
    if flavor == "lws":
        return [*objs, _lws(plan)]
    if plan.workers:
        objs.append(_peer_service(plan))
    return [*objs, _head_deployment(plan), *(_worker_deployment(plan, n) for n in plan.workers)]


def render_secret(plan: Plan) -> Obj | None:
    """The Secret the pods reference, as a template: every value is a placeholder to replace (or
    create it yourself with kubectl); never a value from this machine."""
    keys = sorted(set(plan.secret_sources().values()))
    if not keys:
        return None
    meta = _meta(plan, secret_name(plan))
    meta["annotations"] = {
        "orchestrate/template": (
            f"replace every {SECRET_PLACEHOLDER} before applying, or instead: kubectl -n "
            f"{plan.namespace} create secret generic {secret_name(plan)} "
            + " ".join(f"--from-literal={k}=..." for k in keys)
        )
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "type": "Opaque",
        "stringData": {k: SECRET_PLACEHOLDER for k in keys},
    }


def node_warnings(plan: Plan) -> list[str]:
    """One line per node selected by its IP: kubelet labels nodes by hostname, so it stays Pending."""
    out = []
    for node in plan.nodes:
        try:
            ipaddress.ip_address(node.k8s_node)
        except ValueError:
            continue
        out.append(
            f"host {node.host}: no k8s_node; selecting kubernetes.io/hostname={node.k8s_node} "
            "(its IP), which kubelet does not set; set hosts[].k8s_node to the name "
            "`kubectl get nodes` shows"
        )
    return out


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
    out = {k: v for k, v in sorted(common) if k not in _NODE_ENV and not _head_only(k)}
    if "ORCH_JOIN_TIMEOUT" in out:
        out["ORCH_JOIN_TIMEOUT"] = f"{join_budget(plan):g}"
    return out


def join_budget(plan: Plan) -> float:
    """How long head and workers wait for each other: ray.join_timeout plus an image pull."""
    return plan.join_timeout + IMAGE_PULL_BUDGET


def _head_only(key: str) -> bool:
    return key.startswith("ORCH_EXPECTED_") or key == "ORCH_DASHBOARD_PORT"


def _configmap(plan: Plan) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(plan, f"{plan.name}-env"),
        "data": _shared_env(plan),
    }


def _supervisor_configmap(plan: Plan) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(plan, f"{plan.name}-supervisor"),
        "data": {"supervisor.py": bundle("supervisor")},
    }


def _template_annotations(plan: Plan) -> Obj:
    """A new supervisor must reach the pods: a ConfigMap change alone restarts nothing (and a
    subPath mount never sees it), a changed pod template rolls them, as Helm's checksum/config."""
    sup = plan.head.container.supervisor
    return {} if sup is None else {"annotations": {"orchestrate/supervisor": sup.source}}


def _peer_host(plan: Plan) -> str:
    return f"{plan.name}-head-peers.{plan.namespace}.svc.cluster.local"


def _ports(plan: Plan, peer: bool) -> list[Obj]:
    ports: list[Obj] = [{"name": "http", "port": plan.api_port}]
    if plan.backend == "ray":
        if peer:
            ports += [
                {"name": "gcs", "port": plan.ray_port},
                {"name": "object-manager", "port": plan.object_manager_port},
            ]
        ports.append({"name": "dashboard", "port": plan.dashboard_port})
    elif peer and plan.data_parallel > 1:
        ports.append({"name": "dp-rpc", "port": plan.data_parallel_rpc_port})
    elif peer:
        ports.append({"name": "master", "port": plan.master_port})
    if peer and (sup := plan.head.container.supervisor) is not None:
        ports.append({"name": "watchdog", "port": sup.port})
    for port in ports:
        port["targetPort"] = port["port"]
        port["protocol"] = "TCP"
    return ports


def _head_service(plan: Plan) -> Obj:
    """The API (and dashboard): endpoints only while the head is Ready, for clients."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan, f"{plan.name}-head", "head"),
        "spec": {"type": "ClusterIP", "selector": _selector(plan, "head"), "ports": _ports(plan, peer=False)},
    }


def _peer_service(plan: Plan) -> Obj:
    """Headless, with not-ready addresses: the workers' way to the head before it is Ready (it
    becomes Ready only after they join); its DNS name resolves to the head pod's IP."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(plan, f"{plan.name}-head-peers", "head"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": _selector(plan, "head"),
            "ports": _ports(plan, peer=True),
        },
    }


def _env(plan: Plan, node: NodePlan, head_addr: str) -> list[Obj]:
    shared = _shared_env(plan)
    out: list[Obj] = [{"name": "VLLM_HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    for key, value in node.container.env:
        if key == "VLLM_HOST_IP" or (key in shared and (shared[key] == value or key == "ORCH_JOIN_TIMEOUT")):
            continue
        out.append({"name": key, "value": head_addr if key == "ORCH_HEAD_ADDR" else value})
    for key, source in node.container.secret_env:
        ref = {"name": secret_name(plan), "key": source}
        out.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    if node.container.supervisor is not None:
        sup = node.container.supervisor.env() | {"ORCH_SUP_HEAD": head_addr}
        out += [{"name": k, "value": v} for k, v in sup.items()]
    return out


def _args(node: NodePlan, head_addr: str) -> list[str]:
    args = list(node.container.command)
    for flag in ("--master-addr", "--data-parallel-address"):  # the head binds on it: its own pod
        if flag in args:  # IP, wherever it is scheduled; the others reach it by its peer Service
            args[args.index(flag) + 1] = "$(VLLM_HOST_IP)" if node.role == "head" else head_addr
    return args


def _container(plan: Plan, node: NodePlan, head_addr: str) -> Obj:
    spec: ContainerSpec = node.container
    out: Obj = {
        "name": "vllm-head" if node.role == "head" else "vllm-worker",
        "image": spec.image,
        # behind the supervisor (PID 1), as under docker: it exits when a peer or the head is
        # lost or the engine hangs; the kubelet restarts it, LWS then recreates the group
        "command": ([] if spec.supervisor is None else ["python3", SUPERVISOR_PATH]) + list(spec.entrypoint),
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
    if spec.supervisor is not None:
        out["volumeMounts"].append(
            {"name": "supervisor", "mountPath": SUPERVISOR_PATH, "subPath": "supervisor.py", "readOnly": True}
        )
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


def model_gib(plan: Plan) -> float:
    """Weights size guessed from the model name's parameter count ("32B") and its quantization;
    0 when the name states none. The render is pure: it cannot read config.json."""
    name = plan.model_container_path.rsplit("/", 1)[-1]
    match = re.search(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)[Bb](?![A-Za-z0-9])", name)
    if not match:
        return 0.0
    text = " ".join([name, *plan.serve_argv]).lower()
    per_param = (
        0.5 if re.search(r"int4|gptq|awq|4bit", text) else 1.0 if re.search(r"fp8|int8|8bit", text) else 2.0
    )
    return float(match.group(1)) * 1e9 * per_param / 2**30


def probe_timeout(plan: Plan) -> int:
    """/health's timeout: with PP > 1 vLLM answers it from the busy engine process (0.6.x), slower
    the bigger the model; the default 1 s restarts a healthy head."""
    if plan.pipeline_parallel == 1:
        return 5
    return min(60, 10 + math.ceil(model_gib(plan) / 4))


def startup_budget(plan: Plan) -> float:
    """Seconds the startup probe allows: the group forming (ray: the join budget; mp: a worker's
    image pull), then vLLM loading: serve.startup_timeout or, when longer, the weights read twice
    at 100 MiB/s."""
    load = max(plan.startup_timeout, 2 * model_gib(plan) * 1024 / 100)
    if not plan.workers:  # the probe starts after this pod's own pull; nobody to wait for
        return load
    return (join_budget(plan) if plan.backend == "ray" else IMAGE_PULL_BUDGET) + load


def _probes(plan: Plan) -> Obj:
    get = {"path": "/health", "port": plan.api_port}
    timeout = probe_timeout(plan)
    period = max(10, timeout)
    threshold = max(3, math.ceil(startup_budget(plan) / period))
    sup = plan.head.container.supervisor
    # liveness: the supervisor's /livez. The supervisor itself exits 71 on a hang /health does not
    # see (requests in flight and no progress for stall_after, a silent API) and on a /health
    # failing for 120 s; /livez fails while it exits and when its own loop is stuck.
    live = (
        {
            "httpGet": {"path": "/livez", "port": sup.port},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        }
        if sup is not None
        else {"httpGet": get, "periodSeconds": 2 * period, "timeoutSeconds": timeout, "failureThreshold": 6}
    )
    return {
        "startupProbe": {
            "httpGet": get,
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": threshold,
        },
        "readinessProbe": {
            "httpGet": get,
            "periodSeconds": period,
            "timeoutSeconds": timeout,
            "failureThreshold": 3,
        },
        "livenessProbe": live,
    }


def _volumes(plan: Plan, spec: ContainerSpec) -> list[Obj]:
    shm = {"medium": "Memory", "sizeLimit": _quantity(spec.shm_size)}
    vols: list[Obj] = [{"name": "dshm", "emptyDir": shm}]
    if spec.supervisor is not None:
        vols.append(
            {"name": "supervisor", "configMap": {"name": f"{plan.name}-supervisor", "defaultMode": 0o444}}
        )
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
                "metadata": {
                    "labels": {**labels, "app.kubernetes.io/managed-by": "orchestrate"},
                    **_template_annotations(plan),
                },
                "spec": _pod_spec(plan, node, _peer_host(plan)),
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
                    {
                        "matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": nodes}
                        ]
                    }
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
        {"name": "ORCH_SUP_RANK", "value": "$(LWS_WORKER_INDEX)"} if e["name"] == "ORCH_SUP_RANK" else e
        for e in worker["containers"][0]["env"]
        if e["name"] != "ORCH_GPUS"
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
            # LeaderReady would deadlock: the leader is Ready only once the workers joined
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": len(plan.nodes),
                # a restart recreates the group only once no pod is Pending: a worker still
                # pulling the image keeps its pull (LWS >= 0.9)
                "restartPolicy": "RecreateGroupAfterStart",
                "leaderTemplate": {
                    "metadata": {"labels": _selector(plan, "head"), **_template_annotations(plan)},
                    "spec": leader,
                },
                "workerTemplate": {
                    "metadata": {"labels": _selector(plan, "worker"), **_template_annotations(plan)},
                    "spec": worker,
                },
            },
        },
    }
