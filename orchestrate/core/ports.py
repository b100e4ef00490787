"""What a host firewall must let through between the deployment's hosts, from a Plan (pure).

Ray opens connections in both directions once a node has joined: the GCS on the head calls each
node's raylet (node manager), raylets and object managers talk to each other, the workers' gRPC
servers (one port per worker process) are called from every node, and the dashboard on the head
calls the agents. Every one of those is pinned by `ray start` flags (plan.py, scripts.py), as is
vLLM's own port block (VLLM_PORT: the torch.distributed TCPStore and the data-parallel ports).

What cannot be pinned, and so needs the ephemeral range open between the hosts (never to the
world): NCCL's bootstrap and socket transport and Gloo's pair connections bind port 0 (neither has
a port-range setting; NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME only pick the NIC), and vLLM's
shm_broadcast MessageQueue binds tcp://<ip>:0 for remote readers. Linux hands those out from
net.ipv4.ip_local_port_range (32768-60999 by default).
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from orchestrate.core.plan import NodePlan, Plan

if TYPE_CHECKING:
    from orchestrate.core.fleet import Fleet

EPHEMERAL = (32768, 60999)  # Linux's default net.ipv4.ip_local_port_range
Format = Literal["firewalld", "iptables", "nftables", "ufw"]
FORMATS: tuple[Format, ...] = ("firewalld", "iptables", "nftables", "ufw")


@dataclass(frozen=True)
class Need:
    """`dst` must accept `proto` on ports first..last from `src` (inventory host names)."""

    proto: Literal["tcp"]
    first: int
    last: int
    src: str
    src_address: str
    dst: str
    dst_address: str
    field: str  # the inventory field that sets the port(s), or "(ephemeral)"
    why: str

    @property
    def ports(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


Listens = Literal["head", "all"]
Callers = Literal["workers", "head", "all"]


@dataclass(frozen=True)
class _Flow:
    first: int
    last: int
    field: str
    why: str
    listens: Listens  # where it listens
    callers: Callers  # who connects to it


# why each port is open, as `orchestrate firewall` prints it
VLLM_PORTS_WHY = "vLLM's VLLM_PORT block (torch.distributed init store, data-parallel ports)"
EPHEMERAL_WHY = "NCCL, Gloo and vLLM's message queue bind random ports (cannot be pinned)"
RAYLET_WHY = "Ray raylet (called by the GCS and by the other nodes)"
OBJECTS_WHY = "Ray object manager (object transfers between nodes)"
RAY_WORKERS_WHY = "Ray worker processes' gRPC servers (vLLM's RayWorkerWrapper actors and the driver)"
AGENT_GRPC_WHY = "Ray dashboard agent gRPC (called by the head)"
AGENT_HTTP_WHY = "Ray dashboard agent HTTP (called by the head)"


def _one(port: int, field: str, why: str, listens: Listens, callers: Callers) -> _Flow:
    return _Flow(port, port, field, why, listens, callers)


def _flows(plan: Plan) -> list[_Flow]:
    """What the plan's nodes call each other on: port(s), the field that sets them, why."""
    p = plan
    common = [
        _Flow(*p.vllm_ports, "network.vllm_port", VLLM_PORTS_WHY, "all", "all"),
        _Flow(*EPHEMERAL, "(ephemeral)", EPHEMERAL_WHY, "all", "all"),
    ]
    sup = p.head.container.supervisor
    if sup:
        why = "the supervisors' heartbeats to the head (orchestrate's self-healing)"
        common.insert(0, _one(sup.port, "watchdog.port", why, "head", "workers"))
    if p.backend == "mp" and p.data_parallel > 1:
        why = "vLLM's data-parallel coordinator (the headless ranks' handshake)"
        return [
            _one(p.data_parallel_rpc_port, "serve.data_parallel_rpc_port", why, "head", "workers"),
            *common,
        ]
    if p.backend == "mp":
        why = "vLLM's master (torch.distributed rendezvous)"
        return [_one(p.master_port, "mp.master_port", why, "head", "workers"), *common]
    return [
        _one(p.ray_port, "ray.port", "Ray GCS", "head", "workers"),
        _one(p.node_manager_port, "ray.node_manager_port", RAYLET_WHY, "all", "all"),
        _one(p.object_manager_port, "ray.object_manager_port", OBJECTS_WHY, "all", "all"),
        _Flow(*p.worker_ports, "ray.min_worker_port", RAY_WORKERS_WHY, "all", "all"),
        _one(p.dashboard_agent_grpc_port, "ray.dashboard_agent_grpc_port", AGENT_GRPC_WHY, "all", "head"),
        _one(p.dashboard_agent_listen_port, "ray.dashboard_agent_listen_port", AGENT_HTTP_WHY, "all", "head"),
        *common,
    ]


def needs(plan: Plan) -> list[Need]:
    """Every (src -> dst, ports) the cluster itself needs; nothing for a single host."""
    out = []
    for flow in _flows(plan):
        for dst in plan.nodes:
            if flow.listens == "head" and dst.role != "head":
                continue
            for src in plan.nodes:
                if src is dst or not _calls(flow, src):
                    continue
                out.append(
                    Need(
                        "tcp",
                        flow.first,
                        flow.last,
                        src.host,
                        src.address,
                        dst.host,
                        dst.address,
                        flow.field,
                        flow.why,
                    )
                )
    return out


def _calls(flow: _Flow, node: NodePlan) -> bool:
    return flow.callers == "all" or (flow.callers == "head") == (node.role == "head")


def external(plan: Plan) -> list[tuple[str, int, str, str]]:
    """(host, port, field, who connects) for the ports users and monitoring reach, not peers."""
    head = plan.head.host
    out = [(head, plan.api_port, "serve.port", "API clients (OpenAI-compatible HTTP)")]
    if plan.backend == "ray":
        out.append((head, plan.dashboard_port, "ray.dashboard_port", "people: the Ray dashboard"))
        out += [
            (n.host, plan.metrics_export_port, "ray.metrics_export_port", "Prometheus: Ray metrics")
            for n in plan.nodes
        ]
    return out


def local_only(plan: Plan) -> list[tuple[int, str]]:
    """Pinned so they do not collide, but only ever used on the node itself."""
    if plan.backend != "ray":
        return []
    return [(plan.runtime_env_agent_port, "ray.runtime_env_agent_port")]


# ---------------------------------------------------------------- rules


def rule(need: Need, fmt: Format, deployment: str) -> str:
    """One command that lets `need` through on its destination host."""
    v6 = ipaddress.ip_address(need.src_address).version == 6
    comment = f"orchestrate {deployment}: {need.field} from {need.src}"
    if fmt == "firewalld":
        family = "ipv6" if v6 else "ipv4"
        rich = (
            f'rule family="{family}" source address="{need.src_address}" '
            f'port port="{need.ports}" protocol="{need.proto}" accept'
        )
        return f"firewall-cmd --permanent --add-rich-rule={shlex.quote(rich)}"
    dport = need.ports.replace("-", ":")
    if fmt == "iptables":
        tool = "ip6tables" if v6 else "iptables"
        return (
            f"{tool} -I INPUT -p {need.proto} -s {need.src_address} --dport {dport} "
            f"-m comment --comment {shlex.quote(comment)} -j ACCEPT"
        )
    if fmt == "nftables":
        family = "ip6" if v6 else "ip"
        body = f'{family} saddr {need.src_address} {need.proto} dport {need.ports} accept comment "{comment}"'
        return f"nft add rule inet filter input {shlex.quote(body)}"
    return (
        f"ufw allow proto {need.proto} from {need.src_address} to any port {dport} "
        f"comment {shlex.quote(comment)}"
    )


def _merged(plan: Plan, host: str) -> list[Need]:
    """The needs into `host`, one per (source, ports), in a stable order."""
    seen: dict[tuple[str, int, int], Need] = {}
    for need in needs(plan):
        if need.dst == host:
            seen.setdefault((need.src, need.first, need.last), need)
    return list(seen.values())


_PREAMBLE = {
    "firewalld": [],
    "iptables": ["# inserted at the top of INPUT; save them (iptables-save / netfilter-persistent)"],
    "nftables": [
        "# into the input chain that holds your policy (here: inet filter input; an accept",
        "# in a separate table does not override a drop elsewhere)",
    ],
    "ufw": [],
}
_APPLY = {"firewalld": ["firewall-cmd --reload"], "iptables": [], "nftables": [], "ufw": []}


def rules_text(plan: Plan, formats: tuple[Format, ...] = FORMATS, host: str | None = None) -> str:
    """Per host, the commands that open what the cluster needs; for people and for scripts."""
    lines = [f"# deployment {plan.name}: {plan.backend} backend, {len(plan.nodes)} hosts"]
    if len(plan.nodes) == 1:
        lines.append("# one host: the cluster needs no port between hosts")
    lines += [f"# local only (no rule needed): {port} ({field})" for port, field in local_only(plan)]
    for node in plan.nodes:
        if host is not None and host not in (node.host, node.alias):
            continue
        mine = _merged(plan, node.host)
        lines += ["", f"## {node.host} ({node.address}, {node.alias})"]
        for port_, field, who in ((p, f, w) for h, p, f, w in external(plan) if h == node.host):
            lines.append(f"# also from {who}: tcp {port_} ({field}); open it to where they are")
        if not mine:
            lines.append("# nothing from the other hosts")
            continue
        for n in mine:
            lines.append(f"#   tcp {n.ports:<12} from {n.src:<16} {n.field}: {n.why}")
        for fmt in formats:
            lines += ["", f"# {fmt}", *_PREAMBLE[fmt], *(rule(n, fmt, plan.name) for n in mine), *_APPLY[fmt]]
    return "\n".join(lines) + "\n"


def rules_data(plan: Plan) -> dict[str, object]:
    return {
        "deployment": plan.name,
        "needs": [vars(n) | {"ports": n.ports} for n in needs(plan)],
        "external": [{"host": h, "port": p, "field": f, "from": w} for h, p, f, w in external(plan)],
        "local_only": [{"port": p, "field": f} for p, f in local_only(plan)],
        "rules": {
            n.host: {fmt: [rule(x, fmt, plan.name) for x in _merged(plan, n.host)] for fmt in FORMATS}
            for n in plan.nodes
        },
    }


def fix_for(need: Need, deployment: str) -> str:
    """The rule to add on the destination, for a preflight failure (firewalld; iptables)."""
    return (
        f"on {need.dst}: {rule(need, 'firewalld', deployment)} && firewall-cmd --reload "
        f"(or: {rule(need, 'iptables', deployment)}); orchestrate firewall prints them all"
    )


def container_ports(plan: Plan, node: NodePlan) -> list[tuple[str, int]]:
    """(name, port) of the single ports this node's container listens on (Kubernetes ports)."""
    out = [("http", plan.api_port)] if node.role == "head" else []
    sup = node.container.supervisor
    if sup is not None and node.role == "head":  # two heads on one node: the scheduler says no
        out.append(("watchdog", sup.port))
    if plan.backend == "mp":
        rendezvous = (
            ("dp-rpc", plan.data_parallel_rpc_port)
            if plan.data_parallel > 1
            else ("master", plan.master_port)
        )
        return out + ([rendezvous] if node.role == "head" else [])
    if node.role == "head":
        out += [("gcs", plan.ray_port), ("dashboard", plan.dashboard_port)]
    return [
        *out,
        ("node-manager", plan.node_manager_port),
        ("object-manager", plan.object_manager_port),
        ("runtime-env", plan.runtime_env_agent_port),
        ("dash-agent-grpc", plan.dashboard_agent_grpc_port),
        ("dash-agent-http", plan.dashboard_agent_listen_port),
        ("metrics", plan.metrics_export_port),
    ]


# ---------------------------------------------------------------- replicas behind a router


def fleet_needs(fleet: Fleet) -> list[Need]:
    """Between the groups: the router's host to each replica's API port (requests and /health)."""
    router = fleet.router.head
    return [
        Need(
            "tcp",
            p.api_port,
            p.api_port,
            router.host,
            router.address,
            p.head.host,
            p.head.address,
            f"serve.port ({p.name})",
            "the router forwards requests and probes /health",
        )
        for p in fleet.replicas
        if p.head.host != router.host
    ]


def fleet_rules_text(fleet: Fleet, formats: tuple[Format, ...] = FORMATS, host: str | None = None) -> str:
    """Each replica's rules, then what the router needs: its host to every replica's API port,
    and its own ports open to clients and monitoring."""
    router = fleet.router.head
    parts = [rules_text(p, formats, host) for p in fleet.replicas]
    lines = [f"# router {fleet.router.name} on {router.host} ({router.address})"]
    lines.append(
        f"# also from API clients: tcp {fleet.router_port} (replicas.router.port); open it to where they are"
    )
    lines.append(f"# also from Prometheus: tcp {fleet.metrics_port} (replicas.router.metrics_port)")
    by_dst: dict[str, list[Need]] = {}
    for need in fleet_needs(fleet):
        if host is None or host == need.dst:
            by_dst.setdefault(need.dst, []).append(need)
    for dst, mine in by_dst.items():
        lines += ["", f"## {dst}: from the router"]
        lines += [f"#   tcp {n.ports:<12} from {n.src:<16} {n.field}: {n.why}" for n in mine]
        for fmt in formats:
            lines += [
                "",
                f"# {fmt}",
                *_PREAMBLE[fmt],
                *(rule(n, fmt, fleet.name) for n in mine),
                *_APPLY[fmt],
            ]
    return "".join(parts) + "\n" + "\n".join(lines) + "\n"
