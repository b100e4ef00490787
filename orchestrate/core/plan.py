"""The plan: a pure function from an Inventory to frozen data that every renderer and the applier use.

One plan, three outputs: Docker SDK kwargs, compose services and Kubernetes objects are all derived
from the same `ContainerSpec`s, so they cannot drift apart.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from orchestrate.agents import scripts
from orchestrate.core import vllm_caps
from orchestrate.core.inventory import VLLM_PORT_SPAN, Host, Inventory
from orchestrate.core.secrets import ref_name
from orchestrate.errors import UsageError

Role = Literal["head", "worker"]
LABEL_PREFIX = "orchestrate"
LABEL_DEPLOYMENT = f"{LABEL_PREFIX}.deployment"
LABEL_ROLE = f"{LABEL_PREFIX}.role"
LABEL_HOST = f"{LABEL_PREFIX}.host"
LABEL_RANK = f"{LABEL_PREFIX}.rank"
LABEL_HASH = f"{LABEL_PREFIX}.spec-hash"


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class SupervisorSpec:
    """How the container's PID 1 supervisor (orchestrate/agents/supervisor.py) watches its group."""

    role: Role
    rank: int
    nodes: int
    port: int  # the head's watchdog port
    head: str  # the head's address (workers heartbeat to it)
    api: int  # the head's vLLM API port to watch; 0: none (workers, a Ray cluster only)
    loose: bool  # a Ray cluster without vLLM: members may come and go
    peer_timeout: float
    stall_after: float
    max_failures: int
    backoff: float
    canary_every: float
    source: str  # the bundle's hash: a new supervisor re-creates the container

    def env(self) -> dict[str, str]:
        return {
            "ORCH_SUP_ROLE": self.role,
            "ORCH_SUP_RANK": str(self.rank),
            "ORCH_SUP_NODES": str(self.nodes),
            "ORCH_SUP_PORT": str(self.port),
            "ORCH_SUP_HEAD": self.head,
            "ORCH_SUP_API": str(self.api),
            "ORCH_SUP_LOOSE": "1" if self.loose else "0",
            "ORCH_SUP_PEER_TIMEOUT": f"{self.peer_timeout:g}",
            "ORCH_SUP_STALL_AFTER": f"{self.stall_after:g}",
            "ORCH_SUP_MAX_FAILURES": str(self.max_failures),
            "ORCH_SUP_BACKOFF": f"{self.backoff:g}",
            "ORCH_SUP_CANARY_EVERY": f"{self.canary_every:g}",
        }


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    image: str
    entrypoint: tuple[str, ...]
    command: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    # container variable -> name of the environment variable that supplies the secret value
    secret_env: tuple[tuple[str, str], ...]
    mounts: tuple[Mount, ...]
    shm_size: int
    gpus: int  # GPUs requested from the NVIDIA runtime; 0 on CPU hosts
    privileged: bool
    ipc: Literal["private", "host"]
    stop_timeout: int
    labels: tuple[tuple[str, str], ...]
    network_mode: str = "host"  # or the name of a Docker bridge network ...
    ipv4_address: str | None = None  # ... with this container's address on it
    # PID 1 around entrypoint + command, with restart policy always (watchdog.enabled)
    supervisor: SupervisorSpec | None = None
    gpu_ids: tuple[str, ...] = ()  # these GPUs (device ids) instead of `gpus` of any
    restart_always: bool = False  # restart policy always without a supervisor (the router)

    def spec_hash(self) -> str:
        data = asdict(self)
        data["labels"] = [kv for kv in self.labels if kv[0] != LABEL_HASH]
        for key in ("gpu_ids", "restart_always"):  # added later: a spec without them hashes as
            if not data[key]:  # before, so an upgrade re-creates nothing
                del data[key]
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def labels_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class SSHTarget:
    local: bool  # true: this machine's own Docker Engine and shell, no SSH
    host: str  # where to connect
    port: int
    user: str
    key: str | None
    known_hosts: str
    host_key_policy: Literal["strict", "accept-new"]
    connect_timeout: float
    command_timeout: float


@dataclass(frozen=True)
class RegistryPlan:
    """images.source head-registry: the registry orchestrate runs on the head."""

    image: str
    port: int
    pull: Literal["auto", "tunnel", "direct"]


@dataclass(frozen=True)
class NodePlan:
    host: str  # inventory host name
    address: str
    nic: str
    role: Role
    rank: int  # 0 = head; workers 1..n in inventory order
    gpus: int
    k8s_node: str
    ssh: SSHTarget
    container: ContainerSpec

    @property
    def alias(self) -> str:
        return "head" if self.role == "head" else f"worker-{self.rank}"


@dataclass(frozen=True)
class Plan:
    name: str
    namespace: str
    backend: Literal["ray", "mp"]
    accelerator: Literal["nvidia", "cpu"]
    image: str
    image_source: Literal["registry", "local", "head", "head-registry"]
    nodes: tuple[NodePlan, ...]
    serve_argv: tuple[str, ...]  # the `vllm serve ...` that the head runs
    serve_start: bool  # false: Ray cluster only
    served_name: str
    model_host_path: str
    model_container_path: str
    model_manifest: str | None
    api_port: int
    api_key_env: str | None  # environment variable (on this machine) holding the API key
    tensor_parallel: int
    pipeline_parallel: int
    ray_port: int
    object_manager_port: int
    dashboard_port: int
    master_port: int
    join_timeout: float
    startup_timeout: float
    check_prompt: str
    check_max_tokens: int
    check_timeout: float
    shm_size: int
    nic: str
    docker_network: tuple[str, str] | None = None  # (name, subnet) of a bridge network to create
    gpu_memory_gib: float | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    image_registry: RegistryPlan | None = None  # images.source: head-registry only
    env: tuple[tuple[str, str], ...] = field(default=())
    # the other ports `ray start` pins (backend: ray), and the (first, last) ranges of Ray's worker
    # processes and of vLLM's VLLM_PORT block; orchestrate/core/ports.py turns them into firewall rules
    node_manager_port: int = 0
    runtime_env_agent_port: int = 0
    dashboard_agent_grpc_port: int = 0
    dashboard_agent_listen_port: int = 0
    metrics_export_port: int = 0
    worker_ports: tuple[int, int] = (0, 0)
    vllm_ports: tuple[int, int] = (0, 0)
    backend_reason: str = ""  # why this backend (backend: auto decides; orchestrate.core.vllm_caps)
    vllm_version: str | None = None  # the image's vLLM, when known (inventory vllm_version)
    extra_args: tuple[str, ...] = ()  # serve.extra_args: the part of the argv orchestrate did not write
    data_parallel: int = 1  # vLLM's own DP ranks (serve.data_parallel_size), each TP x PP GPUs
    data_parallel_rpc_port: int = 0  # the head's DP coordinator RPC (data_parallel > 1)

    @property
    def head(self) -> NodePlan:
        return self.nodes[0]

    @property
    def workers(self) -> tuple[NodePlan, ...]:
        return self.nodes[1:]

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.data_parallel

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @property
    def endpoint(self) -> str:
        host = self.head.address
        return f"http://[{host}]:{self.api_port}" if ":" in host else f"http://{host}:{self.api_port}"

    def node(self, selector: str) -> NodePlan:
        """`head`, `worker-N` or an inventory host name."""
        for node in self.nodes:
            if selector in (node.alias, node.host, node.container.name):
                return node
        raise KeyError(selector)

    def secret_sources(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for node in self.nodes:
            out.update(dict(node.container.secret_env))
        return out


# ---------------------------------------------------------------- building


def choose_backend(
    inv: Inventory, version: str | None, image_has_ray: bool | None = None
) -> tuple[Literal["ray", "mp"], str]:
    """(backend, why) for the inventory on an image with this vLLM version (None: unknown) and
    Ray (None: unknown). UsageError for a combination no vLLM of that version can run."""
    c = vllm_caps.caps(version) if version else None
    multinode = len(inv.hosts) > 1
    if inv.backend != "auto":
        why = f"backend: {inv.backend} in the inventory"
        if inv.backend == "mp" and multinode and c and not c.has_mp_multinode:
            raise UsageError(
                f"backend: mp: vLLM {version} has no --nnodes/--headless (multi-node mp "
                "needs vLLM >= 0.11.1)",
                hint="set backend: ray (or auto), or use an image with vLLM >= 0.11.1",
            )
        if inv.backend == "ray" and image_has_ray is False:
            raise UsageError(
                f"backend: ray: the image {inv.image} has no ray",
                hint="set backend: mp (or auto), or use an image that contains ray",
            )
        return inv.backend, why
    if not inv.serve.start:
        if image_has_ray is False:
            raise UsageError(
                f"serve.start: false needs Ray, and the image {inv.image} has no ray",
                hint="use an image that contains ray, or set serve.start: true",
            )
        return "ray", "backend: auto, serve.start: false needs the Ray cluster"
    if not multinode:
        return "mp", "backend: auto, one node: vLLM's own mp executor needs no Ray"
    if inv.serve.data_parallel_size > 1:
        return "mp", "backend: auto, data parallel: vLLM's own DP engines (--headless on the other hosts)"
    if c is None:
        return vllm_caps.DEFAULT_BACKEND, (
            "backend: auto, vLLM version unknown: mp, the default for vLLM >= 0.11.1 "
            "(set vllm_version to decide by the image's vLLM)"
        )
    if c.has_mp_multinode:
        return "mp", f"backend: auto, vLLM {version} has multi-node mp (--nnodes/--headless)"
    if image_has_ray is False:
        raise UsageError(
            f"backend: auto: vLLM {version} has no multi-node mp (needs >= 0.11.1) "
            f"and the image {inv.image} has no ray",
            hint="use an image with vLLM >= 0.11.1, or one that contains ray",
        )
    return "ray", (
        f"backend: auto, vLLM {version} has no multi-node mp (needs >= 0.11.1): ray"
        + ("" if image_has_ray else " (preflight checks the image has ray)")
    )


def check_flags(plan: Plan) -> None:
    """Every `vllm serve` argv of the plan against the table of its vLLM version (one error)."""
    if not plan.vllm_version:
        return
    c = vllm_caps.caps(plan.vllm_version)
    argvs = [(plan.head.alias, plan.serve_argv)]
    if plan.backend == "mp":
        argvs = [(n.alias, ("vllm", *n.container.command)) for n in plan.nodes]
    extra = {a.split("=", 1)[0] for a in plan.extra_args if a.startswith("-")}
    for alias, argv in argvs:
        for flag, problem in vllm_caps.check_argv(c, argv[3:]):
            where = "serve.extra_args" if flag in extra else f"backend {plan.backend} ({alias})"
            raise UsageError(
                f"{where}: {problem}",
                hint=f"the image runs vLLM {plan.vllm_version} "
                "(vllm_version); fix the flag or use an image whose vLLM has it",
            )
        if "--headless" in argv and "--api-server-count" in argv and c.headless_refuses_api_server_count:
            raise UsageError(
                f"serve.extra_args: --api-server-count is refused by vLLM "
                f"{plan.vllm_version} together with --headless ({alias})",
                hint="remove --api-server-count from serve.extra_args",
            )


def build_plan(inv: Inventory, *, vllm_version: str | None = None, image_has_ray: bool | None = None) -> Plan:
    """vllm_version / image_has_ray: what preflight read from the image (overrides the inventory)."""
    if inv.replicas.count > 1:
        raise UsageError(
            f"{inv.name}: replicas.count {inv.replicas.count}: this is a fleet of replicas, not one group",
            hint="orchestrate.core.fleet.build_fleet plans it (the CLI does so by itself)",
        )
    version = vllm_version or inv.vllm_version
    backend, reason = choose_backend(inv, version, image_has_ray)
    if backend != inv.backend:
        inv = inv.model_copy(update={"backend": backend})
    plan = _build(inv, reason, version)
    check_flags(plan)
    return plan


def _build(inv: Inventory, reason: str, version: str | None) -> Plan:
    hosts = [inv.head, *inv.workers]
    serve_argv = _serve_argv(inv, rank=0)
    nodes = tuple(_node(inv, host, rank) for rank, host in enumerate(hosts))
    api_key_env = ref_name(inv.serve.api_key) if inv.serve.api_key else None
    return Plan(
        name=inv.name,
        namespace=inv.namespace or inv.name,
        backend="mp" if inv.backend == "mp" else "ray",
        accelerator=inv.accelerator,
        image=inv.image,
        image_source=inv.images.source,
        image_registry=_registry(inv),
        nodes=nodes,
        serve_argv=serve_argv,
        serve_start=inv.serve.start,
        served_name=_served_name(inv),
        model_host_path=f"{inv.model.host_dir}/{inv.model.name}",
        model_container_path=f"{inv.model.container_dir}/{inv.model.name}",
        model_manifest=inv.model.manifest,
        api_port=inv.serve.port,
        api_key_env=api_key_env,
        tensor_parallel=inv.serve.tensor_parallel_size,
        pipeline_parallel=inv.serve.pipeline_parallel_size,
        ray_port=inv.ray.port,
        object_manager_port=inv.ray.object_manager_port,
        dashboard_port=inv.ray.dashboard_port,
        master_port=inv.mp.master_port,
        join_timeout=inv.ray.join_timeout,
        startup_timeout=inv.serve.startup_timeout,
        check_prompt=inv.checks.prompt,
        check_max_tokens=inv.checks.max_tokens,
        check_timeout=inv.checks.timeout,
        shm_size=inv.container.shm_size,
        nic=inv.network.nic,
        docker_network=(net.name, net.subnet) if (net := inv.network.docker_network) else None,
        gpu_memory_gib=inv.gpu_memory_gib,
        gpu_memory_utilization=inv.serve.gpu_memory_utilization,
        max_model_len=inv.serve.max_model_len,
        env=_common_env(inv),
        node_manager_port=inv.ray.node_manager_port,
        runtime_env_agent_port=inv.ray.runtime_env_agent_port,
        dashboard_agent_grpc_port=inv.ray.dashboard_agent_grpc_port,
        dashboard_agent_listen_port=inv.ray.dashboard_agent_listen_port,
        metrics_export_port=inv.ray.metrics_export_port,
        worker_ports=(inv.ray.min_worker_port, inv.ray.max_worker_port),
        vllm_ports=(inv.network.vllm_port, inv.network.vllm_port + VLLM_PORT_SPAN - 1),
        backend_reason=reason,
        vllm_version=version,
        extra_args=tuple(inv.serve.extra_args),
        data_parallel=inv.serve.data_parallel_size,
        data_parallel_rpc_port=inv.serve.data_parallel_rpc_port if inv.serve.data_parallel_size > 1 else 0,
    )


def _registry(inv: Inventory) -> RegistryPlan | None:
    if inv.images.source != "head-registry":
        return None
    reg = inv.images.head_registry
    return RegistryPlan(image=reg.image, port=reg.port, pull=reg.pull)


def _served_name(inv: Inventory) -> str:
    return inv.model.served_name or inv.model.name


def _serve_argv(inv: Inventory, rank: int) -> tuple[str, ...]:
    s = inv.serve
    argv = ["vllm", "serve", f"{inv.model.container_dir}/{inv.model.name}"]
    argv += ["--served-model-name", _served_name(inv)]
    argv += ["--tensor-parallel-size", str(s.tensor_parallel_size)]
    argv += ["--pipeline-parallel-size", str(s.pipeline_parallel_size)]
    if s.data_parallel_size > 1:
        argv += ["--data-parallel-size", str(s.data_parallel_size)]
    if s.max_model_len:
        argv += ["--max-model-len", str(s.max_model_len)]
    if s.quantization:
        argv += ["--quantization", s.quantization]
    if s.dtype:
        argv += ["--dtype", s.dtype]
    if s.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{s.gpu_memory_utilization:g}"]
    if s.trust_remote_code:
        argv.append("--trust-remote-code")
    if inv.backend == "ray":
        argv += ["--distributed-executor-backend", "ray"]
    else:
        argv += _mp_args(inv, rank)
    if rank == 0:
        argv += ["--host", "0.0.0.0", "--port", str(s.port)]
    return (*argv, *s.extra_args)


def _mp_args(inv: Inventory, rank: int) -> list[str]:
    nnodes = len(inv.hosts)
    if nnodes == 1:
        return ["--distributed-executor-backend", "mp"]
    if inv.serve.data_parallel_size > 1:
        return _dp_args(inv, rank)
    args = ["--nnodes", str(nnodes), "--node-rank", str(rank)]
    args += ["--master-addr", inv.head.address, "--master-port", str(inv.mp.master_port)]
    return [*args, "--headless"] if rank else args


def _dp_args(inv: Inventory, rank: int) -> list[str]:
    """vLLM's multi-node data parallel (docs/serving/data_parallel_deployment.md): each host runs
    its `local` DP ranks; the head also serves the API, the others are --headless from their
    start rank; all of them meet at the head's DP RPC port."""
    local = inv.hosts[0].gpus // inv.serve.tensor_parallel_size
    args = ["--data-parallel-size-local", str(local)]
    args += ["--data-parallel-address", inv.head.address]
    args += ["--data-parallel-rpc-port", str(inv.serve.data_parallel_rpc_port)]
    if rank:
        args += ["--headless", "--data-parallel-start-rank", str(rank * local)]
    return args


def _common_env(inv: Inventory) -> tuple[tuple[str, str], ...]:
    env = {"HF_HUB_OFFLINE": "1"}  # a model missing on a host fails fast instead of downloading
    env["VLLM_PORT"] = str(inv.network.vllm_port)  # else get_open_port() is random (firewalls)
    if inv.network.nccl_ib_disable:
        env["NCCL_IB_DISABLE"] = "1"
    if inv.network.nccl_debug:
        env["NCCL_DEBUG"] = inv.network.nccl_debug
    env.update({k: v for k, v in inv.env.items() if ref_name(v) is None})
    return tuple(sorted(env.items()))


def _secret_env(inv: Inventory) -> tuple[tuple[str, str], ...]:
    refs = {k: ref_name(v) for k, v in inv.env.items()} | {k: ref_name(v) for k, v in inv.secrets.items()}
    if inv.serve.api_key:
        refs["VLLM_API_KEY"] = ref_name(inv.serve.api_key)
    return tuple(sorted((k, v) for k, v in refs.items() if v))


def _node(inv: Inventory, host: Host, rank: int) -> NodePlan:
    role: Role = "head" if rank == 0 else "worker"
    nic = host.nic or inv.network.nic
    return NodePlan(
        host=host.name,
        address=host.address,
        nic=nic,
        role=role,
        rank=rank,
        gpus=host.gpus,
        k8s_node=k8s_node(host),
        ssh=_ssh(inv, host),
        container=_container(inv, host, rank, role, nic),
    )


def k8s_node(host: Host) -> str:
    """The node's `kubernetes.io/hostname` label: kubelet sets it to the machine's hostname (or
    --hostname-override), never to its IP. hosts[].k8s_node, else the hostname the inventory states
    for the host (ssh.host, when it is a name), else the address (the renderer warns)."""
    if host.k8s_node:
        return host.k8s_node
    if host.ssh.host and not _is_ip(host.ssh.host):
        return host.ssh.host.lower()
    return host.address


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _ssh(inv: Inventory, host: Host) -> SSHTarget:
    d = inv.ssh
    return SSHTarget(
        local=host.connection == "local",
        host=host.ssh.host or host.address,
        port=host.ssh.port or d.port,
        user=host.ssh.user or d.user,
        key=os.path.expanduser(k) if (k := host.ssh.key or d.key) else None,
        known_hosts=os.path.expanduser(d.known_hosts),
        host_key_policy=d.host_key_policy,
        connect_timeout=d.connect_timeout,
        command_timeout=d.command_timeout,
    )


def container_name(inv_name: str, role: Role, rank: int) -> str:
    return f"{inv_name}-head" if role == "head" else f"{inv_name}-worker-{rank}"


def _container(inv: Inventory, host: Host, rank: int, role: Role, nic: str) -> ContainerSpec:
    env = dict(_common_env(inv))
    env |= {"VLLM_HOST_IP": host.address, "NCCL_SOCKET_IFNAME": nic, "GLOO_SOCKET_IFNAME": nic}
    env |= host.env
    entrypoint, command = _entry(inv, host, rank, env)
    name = container_name(inv.name, role, rank)
    labels = {
        LABEL_DEPLOYMENT: inv.name,
        LABEL_ROLE: role,
        LABEL_HOST: host.name,
        LABEL_RANK: str(rank),
    }
    spec = ContainerSpec(
        name=name,
        image=inv.image,
        entrypoint=entrypoint,
        command=command,
        env=tuple(sorted(env.items())),
        secret_env=_secret_env(inv),
        mounts=(Mount(inv.model.host_dir, inv.model.container_dir, read_only=True),),
        shm_size=inv.container.shm_size,
        gpus=host.gpus if inv.accelerator == "nvidia" else 0,
        gpu_ids=tuple(str(g) for g in host.gpu_ids or ()) if inv.accelerator == "nvidia" else (),
        privileged=inv.container.privileged,
        ipc=inv.container.ipc,
        stop_timeout=inv.container.stop_timeout,
        labels=tuple(sorted(labels.items())),
        network_mode=net.name if (net := inv.network.docker_network) else "host",
        ipv4_address=host.address if inv.network.docker_network else None,
        supervisor=_supervisor(inv, rank, role),
    )
    labels[LABEL_HASH] = spec.spec_hash()
    return replace(spec, labels=tuple(sorted(labels.items())))


def _supervisor(inv: Inventory, rank: int, role: Role) -> SupervisorSpec | None:
    from orchestrate.agents import bundle_hash

    w = inv.watchdog
    if not w.enabled:
        return None
    return SupervisorSpec(
        role=role,
        rank=rank,
        nodes=len(inv.hosts),
        port=w.port,
        head=inv.head.address,
        api=inv.serve.port if rank == 0 and inv.serve.start else 0,
        loose=inv.backend == "ray" and not inv.serve.start,
        peer_timeout=w.peer_timeout,
        stall_after=w.stall_after,
        max_failures=w.max_failures,
        backoff=w.backoff,
        canary_every=w.canary_every,
        source=bundle_hash("supervisor"),
    )


def _entry(
    inv: Inventory, host: Host, rank: int, env: dict[str, str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if inv.backend == "mp":
        return ("vllm",), _serve_argv(inv, rank)[1:]
    env |= {
        "ORCH_RAY_PORT": str(inv.ray.port),
        "ORCH_OBJECT_MANAGER_PORT": str(inv.ray.object_manager_port),
        "ORCH_NODE_MANAGER_PORT": str(inv.ray.node_manager_port),
        "ORCH_RUNTIME_ENV_AGENT_PORT": str(inv.ray.runtime_env_agent_port),
        "ORCH_DASHBOARD_AGENT_GRPC_PORT": str(inv.ray.dashboard_agent_grpc_port),
        "ORCH_DASHBOARD_AGENT_LISTEN_PORT": str(inv.ray.dashboard_agent_listen_port),
        "ORCH_METRICS_EXPORT_PORT": str(inv.ray.metrics_export_port),
        "ORCH_MIN_WORKER_PORT": str(inv.ray.min_worker_port),
        "ORCH_MAX_WORKER_PORT": str(inv.ray.max_worker_port),
        "ORCH_GPUS": str(host.gpus),
        "ORCH_JOIN_TIMEOUT": f"{inv.ray.join_timeout:g}",
    }
    if inv.ray.object_store_memory:
        env["ORCH_OBJECT_STORE_MEMORY"] = str(inv.ray.object_store_memory)
    if rank == 0:
        env |= {
            "ORCH_DASHBOARD_PORT": str(inv.ray.dashboard_port),
            "ORCH_EXPECTED_NODES": str(len(inv.hosts)),
            "ORCH_EXPECTED_GPUS": str(sum(h.gpus for h in inv.hosts)),
            "ORCH_EXPECTED_IPS": ",".join(h.address for h in inv.hosts),
        }
        serve = _serve_argv(inv, 0) if inv.serve.start else ()
        return ("bash", "-c"), (scripts.RAY_HEAD, "orchestrate-head", *serve)
    env["ORCH_HEAD_ADDR"] = inv.head.address
    return ("bash", "-c"), (scripts.RAY_WORKER, "orchestrate-worker")
