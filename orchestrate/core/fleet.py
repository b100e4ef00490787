"""Replicas behind a router: N serve groups (each a Plan of its own) and the router in front.

`build_fleet(inv)` is pure, like build_plan: `replicas.count` copies of the TP x PP group, each the
plan `orchestrate up` would make for that replica alone (orchestrate.core.inventory's
replica_inventories: its hosts, pinned GPUs and ports), plus one router container (SMG,
`smg launch`) on `replicas.router.host` with the replicas' endpoints as a static worker list.

The router is planned as a Plan of one node too (deployment NAME-router), so the same session,
image distribution, reconcile, logs and down work for it. Its flags were checked against SMG 1.13.0
itself (docs/research/router-choice.md): health probes of /health every `health_interval` s, a
replica out of routing after `health_failures` misses and back after `health_successes` answers
(never --remove-unhealthy-workers: a static fleet would shrink for good), the replicas' API key
given to the router (without it SMG registers the replicas as model `unknown` and answers 404).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from orchestrate.core.inventory import Inventory, replica_inventories, router_host
from orchestrate.core.plan import (
    LABEL_DEPLOYMENT,
    LABEL_HASH,
    LABEL_HOST,
    LABEL_RANK,
    LABEL_ROLE,
    ContainerSpec,
    NodePlan,
    Plan,
    build_plan,
    k8s_node,
)
from orchestrate.core.secrets import ref_name

__all__ = ["ROUTER_ENTRY", "Fleet", "build_fleet", "router_argv"]

# sh, so that the API key comes from the environment (a secret) and never sits in the plan
ROUTER_ENTRY = 'exec python3 -m smg "$@" ${VLLM_API_KEY:+--api-key "$VLLM_API_KEY"}'


@dataclass(frozen=True)
class Fleet:
    name: str
    namespace: str
    replicas: tuple[Plan, ...]
    router: Plan  # one node: the router container (serve_start False, no model)
    router_port: int
    metrics_port: int
    policy: str

    @property
    def endpoint(self) -> str:
        """What users get: the router."""
        return self.router.endpoint

    @property
    def metrics_url(self) -> str:
        host = self.router.head.address
        return f"http://[{host}]:{self.metrics_port}" if ":" in host else f"http://{host}:{self.metrics_port}"

    def hosts_plan(self) -> Plan:
        """One node per host of the fleet (the first replica's head first), for what concerns
        hosts rather than groups: `model verify` and `model sync` (the model is on every host)."""
        seen: dict[str, NodePlan] = {}
        for plan in self.replicas:
            for node in plan.nodes:
                seen.setdefault(node.host, node)
        return replace(self.replicas[0], name=self.name, nodes=tuple(seen.values()))

    def replica(self, selector: str) -> Plan:
        """`rK`, `K` or the replica's full name (NAME-rK)."""
        for k, plan in enumerate(self.replicas):
            if selector in (str(k), f"r{k}", plan.name):
                return plan
        raise KeyError(selector)


def router_argv(inv: Inventory, urls: list[str]) -> tuple[str, ...]:
    """`smg launch ...` for these replica URLs (the flags of SMG 1.13.0)."""
    r = inv.replicas.router
    argv = ["launch", "--host", "0.0.0.0", "--port", str(r.port), "--worker-urls", *urls]
    argv += ["--policy", r.policy, "--health-check-endpoint", "/health"]
    argv += ["--health-check-interval-secs", f"{r.health_interval:g}", "--health-check-timeout-secs", "5"]
    argv += ["--health-failure-threshold", str(r.health_failures)]
    argv += ["--health-success-threshold", str(r.health_successes)]
    argv += ["--worker-startup-timeout-secs", f"{inv.serve.startup_timeout:g}"]
    argv += ["--worker-startup-check-interval", "5"]
    argv += ["--retry-max-retries", str(r.retries)] if r.retries else ["--disable-retries"]
    argv += ["--request-timeout-secs", f"{r.request_timeout:g}"]
    argv += ["--prometheus-host", "0.0.0.0", "--prometheus-port", str(r.metrics_port), "--log-json"]
    return (*argv, *r.extra_args)


def build_fleet(
    inv: Inventory, *, vllm_version: str | None = None, image_has_ray: bool | None = None
) -> Fleet:
    """The replicas' plans and the router's (vllm_version / image_has_ray as for build_plan)."""
    subs = replica_inventories(inv)
    replicas = tuple(build_plan(s, vllm_version=vllm_version, image_has_ray=image_has_ray) for s in subs)
    return Fleet(
        name=inv.name,
        namespace=inv.namespace or inv.name,
        replicas=replicas,
        router=_router_plan(inv, replicas),
        router_port=inv.replicas.router.port,
        metrics_port=inv.replicas.router.metrics_port,
        policy=inv.replicas.router.policy,
    )


def _router_plan(inv: Inventory, replicas: tuple[Plan, ...]) -> Plan:
    r, host = inv.replicas.router, router_host(inv)
    name = f"{inv.name}-router"
    first = replicas[0]
    like = next(n for p in replicas for n in p.nodes if n.host == host.name)  # its ssh target
    labels = {LABEL_DEPLOYMENT: name, LABEL_ROLE: "head", LABEL_HOST: host.name, LABEL_RANK: "0"}
    spec = ContainerSpec(
        name=name,
        image=r.image,
        entrypoint=("sh", "-c"),
        command=(ROUTER_ENTRY, "orchestrate-router", *router_argv(inv, [p.endpoint for p in replicas])),
        env=(),
        secret_env=(("VLLM_API_KEY", ref),)
        if inv.serve.api_key and (ref := ref_name(inv.serve.api_key))
        else (),
        mounts=(),
        shm_size=64 * 2**20,
        gpus=0,
        privileged=False,
        ipc="private",
        stop_timeout=10,
        labels=tuple(sorted(labels.items())),
        restart_always=True,
    )
    labels[LABEL_HASH] = spec.spec_hash()
    spec = replace(spec, labels=tuple(sorted(labels.items())))
    node = NodePlan(
        host=host.name,
        address=host.address,
        nic=like.nic,
        role="head",
        rank=0,
        gpus=0,
        k8s_node=k8s_node(host),
        ssh=like.ssh,
        container=spec,
    )
    return replace(
        first,
        name=name,
        backend="mp",  # no Ray gate, no Ray table in status
        nodes=(node,),
        image=r.image,
        image_source=r.image_source or first.image_source,
        serve_argv=(),
        serve_start=False,
        model_manifest=None,
        api_port=r.port,
        docker_network=None,
        tensor_parallel=1,
        pipeline_parallel=1,
        backend_reason="the router: SMG, no vLLM",
        extra_args=(),
    )
