"""Replicas behind a router in every target: each replica as its own plan renders (k8s objects,
compose files), plus the router: a Deployment and a Service in Kubernetes (the Service is the
endpoint users get), a service in the router host's compose file, a `docker run` in plan text.

In Kubernetes the router reaches each replica through that replica's head Service (its DNS
name), not a host address, and the cluster's scheduler places the router (it needs no GPU).
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from orchestrate.core.fleet import ROUTER_ENTRY, Fleet
from orchestrate.core.plan import Plan
from orchestrate.render import compose as compose_r
from orchestrate.render import docker as docker_r
from orchestrate.render import k8s as k8s_r

__all__ = ["compose", "data", "k8s", "k8s_secrets", "text"]

Obj = dict[str, Any]


def _k8s_urls(fleet: Fleet) -> list[str]:
    return [f"http://{p.name}-head.{p.namespace}.svc.cluster.local:{p.api_port}" for p in fleet.replicas]


def _argv_with(fleet: Fleet, urls: list[str], startup_s: float) -> list[str]:
    """The router's `smg launch` argv with these worker URLs in place of the hosts' ones, and
    this long for a replica to come up: SMG never retries a worker whose registration timed out
    (docs/research/router-choice.md, V3), and the scheduler may start the router first."""
    argv = list(fleet.router.head.container.command[2:])  # after ROUTER_ENTRY, $0
    start = argv.index("--worker-urls") + 1
    n = len(fleet.replicas)
    argv = [*argv[:start], *urls, *argv[start + n :]]
    argv[argv.index("--worker-startup-timeout-secs") + 1] = f"{startup_s:g}"
    return argv


def text(fleet: Fleet, plan_text: Any) -> str:
    """Each replica's plan text, then the router's `docker run`."""
    router = fleet.router.head
    lines = [
        f"deployment {fleet.name}: {len(fleet.replicas)} replicas behind a router ({fleet.policy})",
        f"endpoint {fleet.endpoint} (the router on {router.host}); metrics {fleet.metrics_url}/metrics",
        "",
    ]
    for plan in fleet.replicas:
        lines += [f"# ==== replica {plan.name}", plan_text(plan), ""]
    lines.append(f"# ==== router on {router.host}")
    lines.append(shlex.join(docker_r.describe(router.container)))
    return "\n".join(lines)


def data(fleet: Fleet, plan_data: Any) -> dict[str, Any]:
    return {
        "deployment": fleet.name,
        "endpoint": fleet.endpoint,
        "policy": fleet.policy,
        "replicas": [plan_data(p) for p in fleet.replicas],
        "router": plan_data(fleet.router),
    }


def compose(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """{host: compose document}: the replicas' services (merged where replicas share a host)
    and the router in its host's file."""
    docs: dict[str, dict[str, Any]] = {}
    for plan in fleet.replicas:
        tag = plan.name.rsplit("-", 1)[-1]
        for host, doc in compose_r.render(plan).items():
            merged = docs.setdefault(host, {"services": {}})
            for name, svc in doc["services"].items():
                merged["services"][f"{tag}-{name}"] = svc
            if "networks" in doc:
                merged.setdefault("networks", {}).update(doc["networks"])
    router = fleet.router.head
    svc = compose_r.service(router)
    docs.setdefault(router.host, {"services": {}})["services"]["router"] = svc
    return docs


def k8s(fleet: Fleet, flavor: k8s_r.Flavor) -> list[Obj]:
    """Every replica's objects (one Namespace), then the router's Deployment and Service."""
    out: list[Obj] = []
    seen: set[tuple[str, str]] = set()
    for plan in fleet.replicas:
        for obj in k8s_r.render(plan, flavor):
            key = (obj["kind"], obj["metadata"]["name"])
            if key not in seen:
                seen.add(key)
                out.append(obj)
    return [*out, _router_deployment(fleet), _router_service(fleet)]


def k8s_secrets(fleet: Fleet) -> list[Obj]:
    return [s for p in fleet.replicas if (s := k8s_r.render_secret(p)) is not None]


def _labels(fleet: Fleet) -> dict[str, str]:
    return {"app.kubernetes.io/name": fleet.name, "app.kubernetes.io/component": "router"}


def _meta(fleet: Fleet, name: str) -> Obj:
    return {
        "name": name,
        "namespace": fleet.namespace,
        "labels": {**_labels(fleet), "app.kubernetes.io/managed-by": "orchestrate"},
    }


def _router_container(fleet: Fleet, first: Plan) -> Obj:
    spec = fleet.router.head.container
    env = [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": k8s_r.secret_name(first), "key": src}}}
        for k, src in spec.secret_env
    ]
    probe = {"path": "/readiness", "port": fleet.router_port}
    return {
        "name": "router",
        "image": spec.image,
        "command": ["sh", "-c", ROUTER_ENTRY, "orchestrate-router"],
        "args": _argv_with(
            fleet, _k8s_urls(fleet), math.ceil(k8s_r.startup_budget(first) + k8s_r.IMAGE_PULL_BUDGET)
        ),
        "env": env,
        "ports": [
            {"name": "http", "containerPort": fleet.router_port, "protocol": "TCP"},
            {"name": "metrics", "containerPort": fleet.metrics_port, "protocol": "TCP"},
        ],
        # ready only while SMG has a ready replica (503 with none): the Service then sends nothing
        "readinessProbe": {"httpGet": probe, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 2},
        "livenessProbe": {
            "httpGet": {"path": "/liveness", "port": fleet.router_port},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}},
    }


def _router_deployment(fleet: Fleet) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(fleet, f"{fleet.name}-router"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _labels(fleet)},
            "template": {
                "metadata": {"labels": {**_labels(fleet), "app.kubernetes.io/managed-by": "orchestrate"}},
                "spec": {
                    "containers": [_router_container(fleet, fleet.replicas[0])],
                    "terminationGracePeriodSeconds": fleet.router.head.container.stop_timeout,
                },
            },
        },
    }


def _router_service(fleet: Fleet) -> Obj:
    """The endpoint users get: NAME.NAMESPACE.svc, port replicas.router.port."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(fleet, fleet.name),
        "spec": {
            "type": "ClusterIP",
            "selector": _labels(fleet),
            "ports": [
                {
                    "name": "http",
                    "port": fleet.router_port,
                    "targetPort": fleet.router_port,
                    "protocol": "TCP",
                },
                {
                    "name": "metrics",
                    "port": fleet.metrics_port,
                    "targetPort": fleet.metrics_port,
                    "protocol": "TCP",
                },
            ],
        },
    }
