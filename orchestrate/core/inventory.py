"""The inventory: a strict, validated description of one deployment (hosts, image, model, serve args).

`load(path)` is the only place that reads an inventory file. It returns an `Inventory` or raises
`InventoryError` with one line per problem, each naming the file and the field path
(`inventory/l20.yaml: hosts[1].address: ...`).
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from orchestrate.core.secrets import ref_name
from orchestrate.errors import InventoryError

# ---------------------------------------------------------------- field types


def _no_control(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters (newlines, tabs, NUL)")
    if "${" in value:
        raise ValueError("${VAR} references are only allowed in env, secrets and serve.api_key")
    return value


def _name(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,40}[a-z0-9])?", value):
        raise ValueError(
            "must be a lowercase DNS label: a-z, 0-9 and '-', at most 42 characters, "
            "starting and ending with a letter or digit"
        )
    return value


def _abs_path(value: str) -> str:
    _no_control(value)
    if not value.startswith("/") or "/../" in value + "/" or value.endswith("/.."):
        raise ValueError("must be an absolute path without '..'")
    if not re.fullmatch(r"[A-Za-z0-9._/@+=:,~ -]+", value):
        raise ValueError("may only contain letters, digits, spaces and ._/@+=:,~-")
    return value.rstrip("/") or "/"


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address (VLLM_HOST_IP and Ray need one)") from None


def _nic(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,15}", value):
        raise ValueError("must be a network interface name such as eth0 (at most 15 characters)")
    return value


def _env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value):
        raise ValueError("must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
    return value


def _secret_ref(value: str) -> str:
    if ref_name(value) is None:
        raise ValueError("secrets must be given as ${ENV_VAR} references, never as literal values")
    return value


def _env_value(value: str) -> str:
    if any(ord(c) < 32 and c not in "\t" for c in value):
        raise ValueError("must not contain control characters (newlines, NUL)")
    if "${" in value and ref_name(value) is None:
        raise ValueError("a reference must be the whole value: ${ENV_VAR}")
    return value


def _image(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]{0,254}", value, flags=re.IGNORECASE):
        raise ValueError("must be an image reference such as vllm/vllm-openai:v0.6.4.post1")
    return value


def _arg(value: str) -> str:
    return _no_control(value)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def parse_size(value: Any) -> int:
    """'10Gi' -> bytes; Docker-style '10g' means GiB like docker run --shm-size."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 10Gi or 1g")
    if isinstance(value, int):
        return value
    if not isinstance(value, str) or not (match := _SIZE.match(value)):
        raise ValueError("must be a size such as 10Gi, 512Mi or 1g")
    number, unit = float(match.group(1)), (match.group(2) or "").lower().rstrip("b")
    if unit.endswith("i") or (unit and len(unit) == 1 and value.strip()[-1].islower()):
        factor = 1024 ** ("kmgt".index(unit[0]) + 1)
    else:
        factor = _UNITS[unit[:1]]
    size = int(number * factor)
    if size <= 0 or size > 2**50:
        raise ValueError("must be between 1 byte and 1 PiB")
    return size


Text = Annotated[str, AfterValidator(_no_control), Field(max_length=4096)]
Name = Annotated[str, AfterValidator(_name)]
AbsPath = Annotated[str, AfterValidator(_abs_path), Field(max_length=1024)]
IP = Annotated[str, AfterValidator(_ip)]
Nic = Annotated[str, AfterValidator(_nic)]
EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, AfterValidator(_env_value), Field(max_length=8192)]
SecretRef = Annotated[str, AfterValidator(_secret_ref)]
Image = Annotated[str, AfterValidator(_image)]
Arg = Annotated[str, AfterValidator(_arg), Field(max_length=4096)]
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
Size = Annotated[int, BeforeValidator(parse_size)]
VllmVersion = Annotated[str, Field(pattern=r"^v?\d+\.\d+(\.\d+)?([.+-][A-Za-z0-9.+-]{1,40})?$")]
Seconds = Annotated[float, Field(gt=0, le=86400)]


class Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=False, str_strip_whitespace=False, defer_build=True
    )


# ---------------------------------------------------------------- sections


class SSHDefaults(Strict):
    user: Annotated[str, AfterValidator(_no_control), Field(min_length=1, max_length=64)] = "root"
    port: Port = 22
    key: Text | None = None
    known_hosts: Text = "~/.ssh/known_hosts"
    host_key_policy: Literal["strict", "accept-new"] = "strict"
    connect_timeout: Seconds = 10
    command_timeout: Seconds = 120


class HostSSH(Strict):
    user: Annotated[str, AfterValidator(_no_control), Field(min_length=1, max_length=64)] | None = None
    port: Port | None = None
    key: Text | None = None
    host: Text | None = None  # connect here instead of `address` (a bastion-less DNS name, say)


class Host(Strict):
    name: Name
    address: IP
    role: Literal["head", "worker"] = "worker"
    # local: this machine's own Docker Engine, no SSH (the no-GPU demo: several nodes on one box)
    connection: Literal["ssh", "local"] = "ssh"
    gpus: Annotated[int, Field(ge=1, le=64, strict=True)]
    nic: Nic | None = None
    ssh: HostSSH = HostSSH()
    # kubernetes.io/hostname label of this machine (kubelet: its hostname, never its IP); default:
    # ssh.host when that is a name, else the address (render warns)
    k8s_node: Text | None = None
    env: dict[EnvName, EnvValue] = {}  # added to (and overriding) the deployment's env on this host
    # pin these GPU indices (NVIDIA's device ids) instead of asking the runtime for `gpus` of any;
    # replicas that share a host get theirs from orchestrate
    gpu_ids: Annotated[list[Annotated[int, Field(ge=0, le=63, strict=True)]], Field(max_length=64)] | None = (
        None
    )


def _subnet(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a network such as 172.30.99.0/24 ({exc})") from None


class DockerNetwork(Strict):
    """A user-defined bridge network: each node container gets the host's `address` on it."""

    name: Name
    subnet: Annotated[str, AfterValidator(_subnet)]


class Network(Strict):
    nic: Nic = "eth0"
    # default: host networking, as run_cluster.sh; set this to give every node container its own
    # address on one Docker bridge (all nodes then need connection: local)
    docker_network: DockerNetwork | None = None
    nccl_ib_disable: bool = True
    nccl_debug: Literal["VERSION", "WARN", "INFO", "TRACE"] | None = None
    # VLLM_PORT: the first of VLLM_PORT_SPAN ports vLLM's get_open_port() takes (the torch.distributed
    # init TCPStore, data-parallel ports); without it they are random (vllm/utils/network_utils.py)
    vllm_port: Port = 29510


WorkerPort = Annotated[int, Field(ge=1024, le=65535, strict=True)]  # ray.RayParams: 1024-65535


class Ray(Strict):
    """Every port `ray start` can pin (ray/scripts/scripts.py of Ray 2.60); unpinned, Ray picks
    random ones for the node manager and the agents, which a host firewall then drops."""

    port: Port = 6379
    object_manager_port: Port = 8625
    dashboard_port: Port = 8265
    node_manager_port: Port = 6380
    runtime_env_agent_port: Port = 6381
    dashboard_agent_grpc_port: Port = 6382
    dashboard_agent_listen_port: Port = 6383  # Ray's default 52365 is inside Linux's ephemeral range
    metrics_export_port: Port = 6384
    min_worker_port: WorkerPort = 10002  # Ray's defaults: one port per worker process
    max_worker_port: WorkerPort = 19999
    object_store_memory: Size | None = None
    join_timeout: Seconds = 300


class MP(Strict):
    master_port: Port = 29501


class Watchdog(Strict):
    """The supervisor that is PID 1 of every node container (orchestrate/agents/supervisor.py):
    restart policy always, workers heartbeat to the head on `port`, the group restarts
    when a member dies, hangs or its head restarts; a crash loop backs off, then parks."""

    enabled: bool = True
    port: Port = 8626  # on the head: the workers' heartbeats (and GET /state)
    peer_timeout: Annotated[float, Field(ge=2, le=3600)] = 10  # a silent peer this long is lost
    stall_after: Annotated[float, Field(ge=5, le=86400)] = 45  # busy and no progress: a hang
    max_failures: Annotated[int, Field(ge=1, le=100, strict=True)] = 5  # lives in a row, then park
    backoff: Annotated[float, Field(ge=0, le=300)] = 10  # seconds before the 2nd restart, doubling
    # while vLLM's gauges say idle, a 1-token request this often (a hung engine's gauges freeze,
    # often at idle); 0: none, and a hang that starts idle goes unseen
    canary_every: Annotated[float, Field(ge=0, le=3600)] = 10


class Container(Strict):
    shm_size: Size = parse_size("10Gi")
    privileged: bool = False
    ipc: Literal["private", "host"] = "private"
    stop_timeout: Annotated[int, Field(ge=0, le=600)] = 30


class Model(Strict):
    host_dir: AbsPath
    container_dir: AbsPath = "/models"
    name: Annotated[str, AfterValidator(_no_control), Field(pattern=r"^[A-Za-z0-9._-]+$")]
    served_name: Annotated[str, AfterValidator(_no_control), Field(min_length=1, max_length=256)] | None = (
        None
    )
    manifest: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] | None = None


MANAGED_FLAGS = {
    "--tensor-parallel-size",
    "-tp",
    "--pipeline-parallel-size",
    "-pp",
    "--port",
    "--host",
    "--served-model-name",
    "--nnodes",
    "--node-rank",
    "--master-addr",
    "--master-port",
    "--headless",
    "--distributed-executor-backend",
    "--api-key",
    "--max-model-len",
    "--quantization",
    "--gpu-memory-utilization",
    "--trust-remote-code",
    "--dtype",
}


def _extra_args(args: list[str]) -> list[str]:
    for i, arg in enumerate(args):
        flag = arg.split("=", 1)[0]
        if flag in MANAGED_FLAGS:
            raise ValueError(
                f"item {i}: {flag} is managed by orchestrate; set the matching serve field instead"
            )
    return args


class Serve(Strict):
    tensor_parallel_size: Annotated[int, Field(ge=1, le=512, strict=True)]
    pipeline_parallel_size: Annotated[int, Field(ge=1, le=512, strict=True)] = 1
    # vLLM's own data parallel (MoE models: one API, DP engines of TP GPUs each, experts across
    # them with --enable-expert-parallel in extra_args); vLLM >= 0.11 across hosts
    data_parallel_size: Annotated[int, Field(ge=1, le=512, strict=True)] = 1
    data_parallel_rpc_port: Port = 13345  # on the head: the DP coordinator's RPC
    max_model_len: Annotated[int, Field(ge=16, le=10_000_000, strict=True)] | None = None
    quantization: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] | None = None
    dtype: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,32}$")] | None = None
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] | None = None
    port: Port = 8000
    trust_remote_code: bool = False
    api_key: SecretRef | None = None
    extra_args: Annotated[list[Arg], AfterValidator(_extra_args), Field(max_length=256)] = []
    startup_timeout: Seconds = 1800
    # false: bring up the Ray cluster only and run `vllm serve` yourself (`orchestrate plan` prints it)
    start: bool = True


class Checks(Strict):
    prompt: Text = "Recommend three places in China worth visiting."
    max_tokens: Annotated[int, Field(ge=1, le=4096, strict=True)] = 32
    timeout: Seconds = 120


class HeadRegistry(Strict):
    # images.source head-registry: the registry container orchestrate runs on the head
    # (registry:2, or any image of Distribution, e.g. one built from Debian's docker-registry)
    image: Image = "registry:2"
    port: Port = 5000  # on the head's 127.0.0.1 (and its address, when workers pull directly)
    # workers pull through an SSH tunnel to their own 127.0.0.1 (no daemon config), straight
    # from the head (their engines must list it in insecure-registries), or auto: direct where
    # every worker trusts it, else the tunnel
    pull: Literal["auto", "tunnel", "direct"] = "auto"


class Images(Strict):
    # how the image reaches hosts: each pulls from its registry (registry); streamed from this
    # machine (local) or from the head (head) into each host's docker load; or pushed from the
    # head to a registry orchestrate runs there, which the workers pull from (head-registry)
    source: Literal["registry", "local", "head", "head-registry"] = "registry"
    head_registry: HeadRegistry = HeadRegistry()


ROUTER_IMAGE = "orchestrate/smg:1.13.0"  # `orchestrate image build smg`: SMG from PyPI, offline
# SMG's --policy choices that route over a static list (not `manual` or `passthrough`: those need
# routing headers from the client)
RouterPolicy = Literal[
    "cache_aware",
    "round_robin",
    "power_of_two",
    "least_load",
    "prefix_hash",
    "consistent_hashing",
    "random",
]


class Router(Strict):
    """The router in front of the replicas: SMG (`smg launch`), one container, host networking."""

    image: Image = ROUTER_IMAGE
    # how its image reaches the router host (as images.source; default: the same). `local`
    # streams this machine's `orchestrate image build smg` over SSH, no registry needed
    image_source: Literal["registry", "local", "head", "head-registry"] | None = None
    host: Name | None = None  # the inventory host that runs it; default: the first host
    port: Port = 30000  # the endpoint users get
    metrics_port: Port = 29000  # Prometheus: smg_worker_requests_total{worker}, smg_worker_health
    policy: RouterPolicy = "cache_aware"
    health_interval: Annotated[float, Field(ge=1, le=3600)] = 5  # a probe of each replica's /health
    health_failures: Annotated[int, Field(ge=1, le=100, strict=True)] = 3  # in a row: out of routing
    health_successes: Annotated[int, Field(ge=1, le=100, strict=True)] = 2  # in a row: back in
    retries: Annotated[int, Field(ge=0, le=20, strict=True)] = 3  # another replica, on 5xx or refused
    request_timeout: Seconds = 600
    extra_args: Annotated[list[Arg], Field(max_length=256)] = []


class Replicas(Strict):
    """N copies of the serve group (each TP x PP on its own hosts or GPUs) behind one router."""

    count: Annotated[int, Field(ge=1, le=256, strict=True)] = 1
    router: Router = Router()


class Inventory(Strict):
    version: Literal[1] = 1
    name: Name
    namespace: Name | None = None
    image: Image
    images: Images = Images()
    # auto: mp where the image's vLLM has multi-node mp (>= 0.11.1), else ray (orchestrate.core.vllm_caps)
    backend: Literal["auto", "ray", "mp"] = "auto"
    # the image's vLLM version: lets plan/render pick the backend and check flags offline
    vllm_version: VllmVersion | None = None
    accelerator: Literal["nvidia", "cpu"] = "nvidia"
    # memory of one GPU, for fit planning (preflight reads nvidia-smi when this is not set)
    gpu_memory_gib: Annotated[float, Field(gt=0, le=4096)] | None = None
    ssh: SSHDefaults = SSHDefaults()
    network: Network = Network()
    ray: Ray = Ray()
    mp: MP = MP()
    container: Container = Container()
    watchdog: Watchdog = Watchdog()
    model: Model
    serve: Serve
    checks: Checks = Checks()
    env: dict[EnvName, EnvValue] = {}
    secrets: dict[EnvName, SecretRef] = {}
    replicas: Replicas = Replicas()
    hosts: Annotated[list[Host], Field(min_length=1, max_length=256)]

    @property
    def head(self) -> Host:
        """The head (with replicas: the first replica's head, which is the first host)."""
        return next((h for h in self.hosts if h.role == "head"), self.hosts[0])

    @property
    def workers(self) -> list[Host]:
        return [h for h in self.hosts if h.role != "head"]


# ---------------------------------------------------------------- cross-field rules


def _loc(parts: tuple[int | str, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not re.fullmatch(r"[\w-]{1,64}", str(part)):
            out += f"[{str(part)[:40]!r}]"  # odd keys stay on one line, quoted
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def cross_check(inv: Inventory) -> list[str]:
    """Rules that span fields; each problem names a field path."""
    problems: list[str] = []
    heads = [i for i, h in enumerate(inv.hosts) if h.role == "head"]
    if inv.replicas.count > 1:
        problems += [
            f"hosts[{i}].role: with replicas, the first host of each replica is its head; "
            "remove role (or keep role: head on hosts[0] only)"
            for i in heads
            if i
        ]
    elif len(heads) != 1:
        where = ", ".join(f"hosts[{i}]" for i in heads) or "no host"
        problems.append(f"hosts: exactly one host needs role: head (found {len(heads)}: {where})")
    for key in ("name", "address"):
        seen: dict[str, int] = {}
        for i, host in enumerate(inv.hosts):
            value = getattr(host, key)
            if value in seen:
                problems.append(f"hosts[{i}].{key}: {value!r} is already used by hosts[{seen[value]}]")
            seen.setdefault(value, i)
    problems += [p for i, h in enumerate(inv.hosts) for p in _check_gpu_ids(i, h)]
    problems += _check_data_parallel(inv)
    if inv.replicas.count > 1:
        problems += _check_replicas(inv)
    else:
        problems += _check_gpus(inv)
        problems += _check_ports(inv)
    problems += _check_network(inv)
    if not inv.serve.start and inv.backend == "mp":
        problems.append("serve.start: false needs backend: ray (with mp, the containers are vLLM)")
    for i, host in enumerate(inv.hosts):
        refs = sorted(k for k, v in host.env.items() if ref_name(v))
        if refs:
            problems.append(f"hosts[{i}].env.{refs[0]}: put secret references in secrets:")
    overlap = sorted(set(inv.env) & set(inv.secrets))
    if overlap:
        problems.append(f"secrets.{overlap[0]}: also set in env; keep it in one place")
    return problems


def _check_data_parallel(inv: Inventory) -> list[str]:
    s = inv.serve
    if s.data_parallel_size == 1:
        return []
    problems = []
    if s.pipeline_parallel_size > 1:
        problems.append("serve.data_parallel_size: needs pipeline_parallel_size 1 (DP ranks of TP GPUs each)")
    if inv.backend == "ray":
        problems.append(
            "serve.data_parallel_size: vLLM's data parallel runs its own engines; use backend: mp or auto"
        )
    if inv.replicas.count > 1:
        problems.append("serve.data_parallel_size: replicas.count is also set; use one of them")
    if not s.start:
        problems.append("serve.data_parallel_size: needs serve.start: true")
    counts = {h.gpus for h in inv.hosts}
    if len(counts) == 1 and (g := counts.pop()) % s.tensor_parallel_size == 0 and len(inv.hosts) > 1:
        local = g // s.tensor_parallel_size
        if s.data_parallel_size != local * len(inv.hosts):
            problems.append(
                f"serve.data_parallel_size: {s.data_parallel_size} ranks over {len(inv.hosts)} hosts of "
                f"{local} ranks each (TP {s.tensor_parallel_size} on {g} GPUs); they must be equal"
            )
    return problems


def _check_gpus(inv: Inventory) -> list[str]:
    tp, pp = inv.serve.tensor_parallel_size, inv.serve.pipeline_parallel_size
    total = sum(h.gpus for h in inv.hosts)
    counts = sorted({h.gpus for h in inv.hosts})
    if inv.serve.data_parallel_size > 1:
        dp = inv.serve.data_parallel_size
        if tp * dp != total:
            return [
                f"serve: tensor_parallel_size x data_parallel_size = {tp} x {dp} = {tp * dp} "
                f"but the hosts have {total} GPUs in total; they must be equal"
            ]
        if len(counts) > 1:
            return [f"hosts: every host must have the same number of gpus (found {counts})"]
        if counts[0] % tp:
            return [
                f"serve.tensor_parallel_size: {tp} does not divide a host's {counts[0]} GPUs "
                "(each DP rank stays in one host)"
            ]
        return []
    if tp * pp != total:
        return [
            f"serve: tensor_parallel_size x pipeline_parallel_size = {tp} x {pp} = {tp * pp} "
            f"but the hosts have {total} GPUs in total; they must be equal"
        ]
    if len(counts) > 1:
        return [f"hosts: every host must have the same number of gpus (found {counts})"]
    per_host = counts[0]
    if per_host % tp and tp % per_host:
        return [
            f"serve.tensor_parallel_size: {tp} cannot be laid out on hosts with {per_host} GPUs "
            "each; a tensor-parallel group must fill whole hosts or divide one host"
        ]
    return []


def _check_gpu_ids(i: int, host: Host) -> list[str]:
    if host.gpu_ids is None:
        return []
    if len(host.gpu_ids) != host.gpus or len(set(host.gpu_ids)) != host.gpus:
        return [f"hosts[{i}].gpu_ids: give {host.gpus} different GPU indices (gpus: {host.gpus})"]
    return []


def replica_layout(inv: Inventory) -> tuple[int, int, str | None]:
    """(replicas per host, hosts per replica, problem) for replicas.count groups of TP x PP GPUs
    laid out in host order: several replicas on a host (each pinned to its own GPUs) when one
    replica fits in a host, else each replica on its own consecutive hosts."""
    n = inv.replicas.count
    tp, pp = inv.serve.tensor_parallel_size, inv.serve.pipeline_parallel_size
    world, total = tp * pp, sum(h.gpus for h in inv.hosts)
    counts = sorted({h.gpus for h in inv.hosts})
    if n * world != total:
        return (
            0,
            0,
            (
                f"replicas.count x tensor_parallel_size x pipeline_parallel_size = {n} x {tp} x {pp} "
                f"= {n * world} but the hosts have {total} GPUs in total; they must be equal"
            ),
        )
    if len(counts) > 1:
        return 0, 0, f"hosts: every host must have the same number of gpus (found {counts})"
    g = counts[0]
    if world <= g:
        if g % world:
            return (
                0,
                0,
                (
                    f"serve: a replica needs {world} GPUs, which do not divide a host's {g}; "
                    "replicas that share a host split its GPUs evenly"
                ),
            )
        return g // world, 1, None
    if world % g or (tp % g and g % tp):
        return (
            0,
            0,
            (
                f"serve.tensor_parallel_size: {tp} x pipeline {pp} cannot be laid out on hosts with "
                f"{g} GPUs each; a replica must fill whole hosts or divide one host"
            ),
        )
    return 1, world // g, None


def replica_inventories(inv: Inventory) -> list[Inventory]:
    """One inventory per replica, named NAME-rK: its hosts (the first is its head), its GPUs
    (pinned when replicas share a host) and its ports (shifted by the replica's place on a
    shared host: serve.port + j, watchdog.port + j, mp.master_port + j, network.vllm_port + 16 j).
    Pure; each one is what `orchestrate up` would be given for that replica alone."""
    per_host, hosts_per, problem = replica_layout(inv)
    if problem:
        raise InventoryError([problem])
    world = inv.serve.tensor_parallel_size * inv.serve.pipeline_parallel_size
    out = []
    for k in range(inv.replicas.count):
        j = k % per_host  # this replica's place on a shared host
        first = (k // per_host) * hosts_per
        hosts = []
        for n, host in enumerate(inv.hosts[first : first + hosts_per]):
            update: dict[str, Any] = {"role": "head" if n == 0 else "worker"}
            if per_host > 1:
                base = host.gpu_ids or list(range(host.gpus))
                update |= {"gpus": world, "gpu_ids": base[j * world : (j + 1) * world]}
            hosts.append(host.model_copy(update=update))
        out.append(
            inv.model_copy(
                update={
                    "name": f"{inv.name}-r{k}",
                    "namespace": inv.namespace or inv.name,
                    "replicas": Replicas(),
                    "hosts": hosts,
                    # one node each: auto means mp (and its ports, not Ray's, are reserved)
                    "backend": "mp" if per_host > 1 else inv.backend,
                    "serve": inv.serve.model_copy(update={"port": inv.serve.port + j}),
                    "watchdog": inv.watchdog.model_copy(update={"port": inv.watchdog.port + j}),
                    "mp": inv.mp.model_copy(update={"master_port": inv.mp.master_port + j}),
                    "network": inv.network.model_copy(
                        update={"vllm_port": inv.network.vllm_port + VLLM_PORT_SPAN * j}
                    ),
                }
            )
        )
    return out


def router_host(inv: Inventory) -> Host:
    want = inv.replicas.router.host
    return next((h for h in inv.hosts if h.name == want), inv.hosts[0])


def _check_replicas(inv: Inventory) -> list[str]:
    per_host, _, problem = replica_layout(inv)
    if problem:
        return [problem]
    r = inv.replicas.router
    problems = []
    if r.host is not None and r.host not in {h.name for h in inv.hosts}:
        problems.append(f"replicas.router.host: {r.host!r} is not one of the hosts' names")
    if not inv.serve.start:
        problems.append("serve.start: false (a Ray cluster only) cannot be replicated behind a router")
    elif per_host > 1 and inv.backend == "ray":
        problems.append(
            "backend: ray: replicas that share a host run one node each; use backend: auto or mp "
            "(two Ray clusters on one host would need disjoint port ranges)"
        )
    if len(f"{inv.name}-r{inv.replicas.count - 1}") > 42:
        problems.append(f"name: {inv.name!r} is too long for replica names like {inv.name}-r0")
    if problems:
        return problems
    subs = replica_inventories(inv)
    for k, sub in enumerate(subs):
        problems += [f"replicas[{k}]: {p}" for p in _check_gpus(sub) + _check_ports(sub)]
    return problems + _check_shared_ports(inv, subs)


def _check_shared_ports(inv: Inventory, subs: list[Inventory]) -> list[str]:
    """Replicas on one host, and the router on its host, must not share a port."""
    r = inv.replicas.router
    taken: dict[tuple[str, int], str] = {}
    where = router_host(inv).name
    problems = []
    if r.port == r.metrics_port:
        problems.append(f"replicas.router.metrics_port: {r.port} is also replicas.router.port")
    taken[(where, r.port)] = "replicas.router.port"
    taken[(where, r.metrics_port)] = "replicas.router.metrics_port"
    for k, sub in enumerate(subs):
        singles, ranges = port_fields(sub)
        ports = [(f, p) for f, p in singles.items()]
        ports += [(f, p) for f, (a, b) in ranges.items() for p in (a, b) if b - a < 1000]
        for host in sub.hosts:
            for field, port in ports:
                other = taken.setdefault((host.name, port), f"replicas[{k}].{field}")
                if other != f"replicas[{k}].{field}" and not other.startswith(f"replicas[{k}]."):
                    problems.append(
                        f"replicas[{k}].{field}: port {port} on {host.name} is already used by {other}"
                    )
    return problems


def _check_network(inv: Inventory) -> list[str]:
    net = inv.network.docker_network
    local = [i for i, h in enumerate(inv.hosts) if h.connection == "local"]
    if net is None:
        if len(local) > 1:
            return [
                f"hosts[{local[1]}].connection: several local nodes on one machine need "
                "network.docker_network (host networking would give them one address)"
            ]
        return []
    problems = [
        f"hosts[{i}].connection: network.docker_network needs connection: local"
        for i, h in enumerate(inv.hosts)
        if h.connection != "local"
    ]
    subnet = ipaddress.ip_network(net.subnet)
    problems += [
        f"hosts[{i}].address: {h.address} is not in network.docker_network.subnet {net.subnet}"
        for i, h in enumerate(inv.hosts)
        if ipaddress.ip_address(h.address) not in subnet
    ]
    return problems


VLLM_PORT_SPAN = 16  # ports from network.vllm_port that the firewall opens and validation reserves
RAY_SINGLE_PORTS = (
    "port",
    "object_manager_port",
    "dashboard_port",
    "node_manager_port",
    "runtime_env_agent_port",
    "dashboard_agent_grpc_port",
    "dashboard_agent_listen_port",
    "metrics_export_port",
)


def port_fields(inv: Inventory) -> tuple[dict[str, int], dict[str, tuple[int, int]]]:
    """The single ports and the (first, last) ranges this deployment pins, by field path."""
    singles = {"serve.port": inv.serve.port}
    ranges = {"network.vllm_port": (inv.network.vllm_port, inv.network.vllm_port + VLLM_PORT_SPAN - 1)}
    if inv.backend == "ray" or (inv.backend == "auto" and inv.serve.data_parallel_size == 1):
        # ray, or auto (which may pick either; with data parallel it picks mp)
        singles |= {f"ray.{f}": getattr(inv.ray, f) for f in RAY_SINGLE_PORTS}
        ranges["ray.min_worker_port"] = (inv.ray.min_worker_port, inv.ray.max_worker_port)
    if inv.backend != "ray" and inv.serve.data_parallel_size == 1:
        singles["mp.master_port"] = inv.mp.master_port
    if inv.serve.data_parallel_size > 1:
        singles["serve.data_parallel_rpc_port"] = inv.serve.data_parallel_rpc_port
    if inv.watchdog.enabled:
        singles["watchdog.port"] = inv.watchdog.port
    if inv.images.source == "head-registry":
        singles["images.head_registry.port"] = inv.images.head_registry.port
    return singles, ranges


def _check_ports(inv: Inventory) -> list[str]:
    singles, ranges = port_fields(inv)
    problems = []
    if inv.backend != "mp" and inv.ray.max_worker_port <= inv.ray.min_worker_port:
        problems.append(
            f"ray.max_worker_port: {inv.ray.max_worker_port} must be higher than "
            f"ray.min_worker_port ({inv.ray.min_worker_port})"
        )
        ranges.pop("ray.min_worker_port")
    if inv.network.vllm_port + VLLM_PORT_SPAN - 1 > 65535:
        problems.append(
            f"network.vllm_port: {inv.network.vllm_port} leaves no room for its "
            f"{VLLM_PORT_SPAN} ports; use at most {65536 - VLLM_PORT_SPAN}"
        )
    seen: dict[int, str] = {}
    for field, port in singles.items():
        if port in seen:
            problems.append(f"{field}: port {port} is already used by {seen[port]}")
        seen.setdefault(port, field)
        for other, (first, last) in ranges.items():
            if first <= port <= last:
                problems.append(
                    f"{field}: port {port} is inside {other}'s range {first}-{last}; move one of them"
                )
    spans = sorted((first, last, field) for field, (first, last) in ranges.items())
    for (_, last, field), (first2, _, field2) in itertools.pairwise(spans):
        if first2 <= last:
            problems.append(f"{field2}: its range overlaps {field}'s; move one of them")
    if "VLLM_PORT" in inv.env or any("VLLM_PORT" in h.env for h in inv.hosts):
        problems.append(
            "env.VLLM_PORT: managed by orchestrate; set network.vllm_port instead, so "
            "the firewall rules match"
        )
    return problems


# ---------------------------------------------------------------- loading


def parse(data: Any, source: str = "<inventory>") -> Inventory:
    """Validate already-parsed YAML data; raises InventoryError naming `source` and field paths."""
    if not isinstance(data, dict):
        raise InventoryError([f"{source}: the inventory must be a YAML mapping"])
    try:
        inv = Inventory.model_validate(data)
    except ValidationError as exc:
        raise InventoryError([f"{source}: {_loc(e['loc'])}: {_message(e)}" for e in exc.errors()]) from None
    problems = cross_check(inv)
    if problems:
        raise InventoryError([f"{source}: {p}" for p in problems])
    return inv


def _message(error: Any) -> str:
    msg = str(error["msg"])
    if error["type"] == "extra_forbidden":
        return "unknown field (check the spelling; see `orchestrate schema`)"
    return msg.removeprefix("Value error, ")


def load(path: str | Path) -> Inventory:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError([f"{source}: no such inventory file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError([f"{source}: cannot read: {exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InventoryError([f"{source}: {where}not valid YAML: {problem}"]) from None
    return parse(data, source)


def json_schema() -> dict[str, Any]:
    return Inventory.model_json_schema()
