"""Replicas behind a router on real hosts: up, down, status, check (orchestrate.core.fleet).

`up` brings the replicas up in parallel, each with the whole of apply.up (its own lock, preflight,
image, gates and wait for vLLM), then the router: its image, its container (reconciled like any
other: unchanged means untouched), and a gate until the router says every replica is ready.
The checks then go through the router, the endpoint users get. A replica that fails names
itself; the others stay up, and the router is not started until all are (it would route to a
hole). `down` removes the router first, so nothing is routed to a replica that is going away.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import httpx

from orchestrate.core.fleet import Fleet
from orchestrate.core.plan import Plan
from orchestrate.errors import GateError, HostError, OrchestrateError, PhaseError
from orchestrate.events import Events, quiet
from orchestrate.host.session import Session, fan_out
from orchestrate.ops import apply, checks, images_dist, observe, preflight
from orchestrate.waits import poll

__all__ = ["FleetReport", "check", "down", "router_state", "status", "up"]

T = TypeVar("T")
READY_POLL_S = 1.0


@dataclass
class FleetReport:
    endpoint: str
    phases: dict[str, float]
    replicas: list[apply.UpReport] = field(default_factory=list)
    checks: list[checks.CheckResult] = field(default_factory=list)
    router: dict[str, Any] = field(default_factory=dict)

    @property
    def nodes(self) -> int:
        return sum(r.nodes for r in self.replicas)

    @property
    def gpus(self) -> int:
        return sum(r.gpus for r in self.replicas)

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "phases": {k: round(v, 3) for k, v in self.phases.items()},
            "replicas": [r.as_dict() for r in self.replicas],
            "router": self.router,
            "checks": [c.as_dict() for c in self.checks],
        }


def _per_replica(phase: str, plans: Sequence[Plan], fn: Callable[[Plan], T], events: Events) -> list[T]:
    """fn for every replica in parallel (fan_out: daemon threads, Ctrl-C at once, every failure
    kept), each failure named for its replica."""
    by_name = {p.name: p for p in plans}
    keys = [replace(p.head, host=p.name) for p in plans]
    return fan_out(phase, keys, lambda key: fn(by_name[key.host]), events)


def _tagged(events: Events, plan: Plan) -> Events:
    """A replica's progress lines, marked with the replica (two may share a host)."""
    tag = plan.name.rsplit("-", 1)[-1]

    def emit(phase: str, host: str | None, message: str) -> None:
        events(phase, f"{tag}/{host}" if host else tag, message)

    return emit


def up(
    fleet: Fleet,
    events: Events = quiet,
    *,
    run_checks: bool = True,
    skip_checks: Iterable[str] = (),
    replans: Sequence[preflight.Replan | None] | None = None,
) -> FleetReport:
    report = FleetReport(fleet.endpoint, {})
    t0 = time.monotonic()
    skip = tuple(skip_checks)
    plans = list(fleet.replicas)
    replan_of = dict(zip((p.name for p in plans), replans or [None] * len(plans), strict=True))

    def one(plan: Plan) -> apply.UpReport:
        return apply.up(
            plan, _tagged(events, plan), run_checks=False, skip_checks=skip, replan=replan_of[plan.name]
        )

    events("replicas", None, f"bringing up {len(plans)} replicas: {', '.join(p.name for p in plans)}")
    report.replicas = _per_replica("replicas", plans, one, events)
    report.phases["replicas"] = time.monotonic() - t0
    t1 = time.monotonic()
    report.router = _router_up(fleet, events)
    report.phases["router"] = time.monotonic() - t1
    if run_checks:
        t2 = time.monotonic()
        report.checks = _checks(fleet, events)
        report.phases["checks"] = time.monotonic() - t2
    return report


def _router_up(fleet: Fleet, events: Events) -> dict[str, Any]:
    plan = fleet.router
    secret_values = apply.resolve_secrets(plan)
    node = plan.head
    with apply.deployment_lock(plan.name, "up"), Session(plan, events) as s:
        s.connect()
        images_dist.ensure(s)
        if apply.diff(s).noop:
            events("router", node.host, f"{node.container.name} is running with its planned spec")
        else:
            engine = s.engine(node)
            for c in engine.containers(plan.name, node.host):
                events("router", node.host, f"removing {c.name}")
                engine.remove(c, node.container.stop_timeout)
            apply.start_container(s, node, secret_values)
        return _wait_router(s, fleet)


def _wait_router(s: Session, fleet: Fleet) -> dict[str, Any]:
    """Until the router's /readiness says every replica is ready (SMG: 200 with
    total_workers == healthy_workers == N), or the container exits, or the deadline."""
    node = s.plan.head
    want = len(fleet.replicas)
    last: dict[str, Any] = {}
    s.events("router", node.host, f"waiting for {want} replicas to be ready at {fleet.endpoint}/readiness")

    def ready() -> dict[str, Any] | None:
        c = s.engine(node).container(node.container.name)
        if c is None or c.status in ("exited", "dead", "restarting"):
            raise GateError(
                f"{node.host}: the router {node.container.name} is {'gone' if c is None else c.status}",
                hint=f"orchestrate logs router; its last lines: {apply.quiet_tail(s, node, 20)}",
            )
        nonlocal last
        last = router_state(fleet)
        return last if last.get("ready") and last.get("healthy_workers") == want else None

    got = poll(ready, timeout=max(60.0, fleet.replicas[0].startup_timeout), every=READY_POLL_S)
    if got is None:
        raise GateError(
            f"{node.host}: the router did not report {want} ready replicas "
            f"(last: {last.get('reason') or last})",
            hint="orchestrate logs router; orchestrate status",
        )
    s.events("router", node.host, f"ready: {want}/{want} replicas behind {fleet.endpoint} ({fleet.policy})")
    return got


def router_state(fleet: Fleet, timeout: float = 5) -> dict[str, Any]:
    """What the router says: /readiness, and per replica URL its health and request count from
    the router's Prometheus port (smg_worker_health, smg_worker_requests_total)."""
    out: dict[str, Any] = {"endpoint": fleet.endpoint, "policy": fleet.policy, "ready": False}
    try:
        r = httpx.get(f"{fleet.endpoint}/readiness", timeout=timeout)
        body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
        out["ready"] = r.status_code == 200
        out["healthy_workers"] = int(body.get("healthy_workers", 0))
        out["total_workers"] = int(body.get("total_workers", 0))
    except (httpx.HTTPError, ValueError, TypeError) as exc:
        return out | {"reason": checks.why(exc) if isinstance(exc, httpx.HTTPError) else "bad /readiness"}
    out["workers"] = _worker_metrics(fleet, timeout)
    return out


_SAMPLE = re.compile(r"^(smg_worker_health|smg_worker_requests_total)\{([^}]*)\}\s+([0-9.eE+-]+)$")


def _worker_metrics(fleet: Fleet, timeout: float) -> dict[str, dict[str, float]]:
    """{replica url: {"health": 0|1, "requests": n}} from SMG's metrics (empty if unreachable)."""
    try:
        text = httpx.get(f"{fleet.metrics_url}/metrics", timeout=timeout).text
    except httpx.HTTPError:
        return {}
    out: dict[str, dict[str, float]] = {p.endpoint: {} for p in fleet.replicas}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        url = labels.get("worker", "").rstrip("/")
        key = "health" if m.group(1) == "smg_worker_health" else "requests"
        row = out.setdefault(url, {})
        row[key] = row.get(key, 0.0) + float(m.group(3))
    return out


def _api_key(fleet: Fleet) -> str | None:
    plan = fleet.replicas[0]
    return apply.resolve_secrets(plan).get("VLLM_API_KEY") if plan.api_key_env else None


def _checks(fleet: Fleet, events: Events) -> list[checks.CheckResult]:
    """The serving checks through the router (the model, prompt and limits of the replicas)."""
    return apply.run_checks_at(fleet.replicas[0], fleet.endpoint, events, _api_key(fleet))


def check(fleet: Fleet, events: Events = quiet) -> list[checks.CheckResult]:
    return _checks(fleet, events)


def down(fleet: Fleet, events: Events = quiet) -> dict[str, int]:
    """The router first (nothing is routed to a replica going away), then every replica."""
    removed: dict[str, int] = {}
    failures: list[OrchestrateError] = []
    for plan in (fleet.router, *fleet.replicas):
        try:
            for host, n in apply.down(plan, _tagged(events, plan)).items():
                removed[host] = removed.get(host, 0) + n
        except PhaseError as exc:  # every replica is tried; the failures are kept
            failures += exc.failures
        except OrchestrateError as exc:
            failures.append(
                exc if isinstance(exc, HostError) else HostError(plan.name, exc.message, hint=exc.hint)
            )
    if failures:
        raise PhaseError("down", failures)
    return removed


def status(
    fleet: Fleet,
    events: Events = quiet,
    replans: Sequence[preflight.Replan | None] | None = None,
) -> dict[str, Any]:
    """Each replica's status (as `status` of that replica alone), the router's container and
    what the router says of each replica."""
    api_key = _api_key(fleet)
    plans = list(fleet.replicas)
    replan_of = dict(zip((p.name for p in plans), replans or [None] * len(plans), strict=True))
    replicas = _per_replica(
        "status", plans, lambda p: observe.status(p, quiet, api_key, replan=replan_of[p.name]), events
    )
    container = observe.status(fleet.router, quiet)
    router = router_state(fleet) | {"hosts": container["hosts"]}
    want = len(plans)
    router["healthy"] = bool(
        router["ready"] and router.get("healthy_workers") == want and observe.member_ok(container["hosts"][0])
    )
    return {
        "deployment": fleet.name,
        "healthy": router["healthy"] and all(r["healthy"] for r in replicas),
        "endpoint": fleet.endpoint,
        "router": router,
        "replicas": replicas,
    }
