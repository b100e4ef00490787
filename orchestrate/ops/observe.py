"""Read-only views of a deployment: containers per host, Ray's node table, vLLM health and metrics,
and container logs. Status never raises for one bad host: it reports what it saw, truthfully.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Generator
from typing import IO, TYPE_CHECKING, Any

import httpx

from orchestrate.agents import STATE_PATH, scripts
from orchestrate.core.plan import LABEL_HASH, NodePlan, Plan
from orchestrate.core.reconcile import Observed
from orchestrate.core.secrets import masker
from orchestrate.errors import HostError, LogStreamBroken, OrchestrateError, UsageError
from orchestrate.events import Events, quiet
from orchestrate.host.engine import ContainerInfo, Engine
from orchestrate.host.session import Session
from orchestrate.ops import checks
from orchestrate.waits import sleep

if TYPE_CHECKING:
    from orchestrate.ops.preflight import Replan

# a supervisor writes its state every second; one silent this long is frozen (SIGSTOP, a hung host)
STATE_STALE_S = 15.0


def observed(s: Session, node: NodePlan) -> list[Observed]:
    out = []
    for c in s.engine(node).containers(s.plan.name, node.host):
        sup = supervisor_state(s, node, c) if c.name == node.container.name else None
        parked = str(sup.get("detail", "")) if sup and sup.get("phase") == "parked" else ""
        out.append(Observed(node.host, c.name, c.labels.get(LABEL_HASH, ""), c.status, parked))
    return out


def supervisor_state(s: Session, node: NodePlan, c: ContainerInfo) -> dict[str, Any] | None:
    """What the container's supervisor wrote about its lives (agents/supervisor.py), or None: no
    supervisor, not running, or nothing written yet."""
    if node.container.supervisor is None or c.status != "running":
        return None
    # the container's own clock: how old the state is, whatever this machine's clock says
    code, out = s.engine(node).exec(c, ["sh", "-c", f"date +%s && cat {STATE_PATH}"], timeout=15)
    if code != 0:
        return None
    now, _, text = out.partition("\n")
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("saved_at"), (int, float)) and now.strip().isdigit():
        data["state_age_s"] = round(max(0.0, int(now) - data["saved_at"]), 1)
    return data


def ray_nodes(s: Session, wait_s: float = 0) -> list[dict[str, Any]]:
    """Ray's node table as seen from inside the head container ([] while Ray is not up).
    With `wait_s`, the probe first waits up to that long, in the head, for the plan's nodes."""
    plan = s.plan
    engine = s.engine(plan.head)
    c = engine.container(plan.head.container.name)
    if c is None or c.status != "running":
        return []
    argv = ["python3", "-c", scripts.RAY_NODES_PY]
    if wait_s:
        ips = ",".join(n.address for n in plan.nodes)
        argv += [str(len(plan.nodes)), str(plan.total_gpus), ips, f"{wait_s:g}"]
    code, out = engine.exec(c, argv)
    if code != 0:
        return []
    for line in reversed(out.strip().splitlines()):
        if line.startswith("["):
            nodes: list[dict[str, Any]] = json.loads(line)
            return nodes
    return []


def one_per_ip(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A worker that healed itself rejoins Ray before Ray's ~60 s death timeout marks its old
    raylet dead: both are "alive" with one IP. Count that machine once (the newest entry)."""
    alive = {n["ip"]: n for n in nodes if n["alive"]}
    return [n for n in nodes if not n["alive"]] + list(alive.values())


# ---------------------------------------------------------------- status

_METRICS = {
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",
    "vllm:prompt_tokens_total": "prompt_tokens_total",
    "vllm:generation_tokens_total": "generation_tokens_total",
}


def parse_metrics(text: str) -> dict[str, float]:
    """Sum the series of the few vLLM metrics status shows, from Prometheus text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eEinfNa]+)", line)
        if match and match.group(1) in _METRICS:
            key = _METRICS[match.group(1)]
            out[key] = out.get(key, 0.0) + float(match.group(3))
    return out


def _host_status(s: Session, node: NodePlan) -> dict[str, Any]:
    row: dict[str, Any] = {"host": node.host, "address": node.address, "role": node.alias}
    try:
        c = s.engine(node).container(node.container.name)
    except HostError as exc:
        s.drop(node)
        return row | {"state": "unreachable", "error": exc.message}
    if c is None:
        return row | {"state": "absent"}
    want = node.container.labels_dict()[LABEL_HASH]
    row |= {
        "state": c.status,
        "exit_code": c.exit_code if c.status != "running" else None,
        "started_at": c.started_at,
        "spec": "current" if c.labels.get(LABEL_HASH) == want else "outdated",
        "restarts": c.restart_count,
    }
    sup = supervisor_state(s, node, c)
    if sup is not None:
        row["supervisor"] = _supervisor_row(sup)
    return row


def _supervisor_row(sup: dict[str, Any]) -> dict[str, Any]:
    last = sup.get("last_failure") or None
    out: dict[str, Any] = {
        "phase": sup.get("phase"),
        "detail": sup.get("detail", ""),
        "life": sup.get("epoch"),
        "failures_in_a_row": sup.get("failures_in_a_row", 0),
        "state_age_s": sup.get("state_age_s"),
    }
    if isinstance(last, dict):
        out["last_failure"] = {k: last.get(k) for k in ("exit", "reason", "cause", "ended")}
    if sup.get("role") == "head" and isinstance(sup.get("members"), dict):
        out["members"] = sup["members"]
    return out


def member_ok(row: dict[str, Any]) -> bool:
    """A host row is whole: running, and its supervisor (if any) is not parked, hung or exiting."""
    sup = row.get("supervisor")
    return (
        row.get("state") == "running"
        and not row.get("lost")
        and (
            sup is None
            or (
                sup.get("phase") in ("serving", "running", "starting")
                and (sup.get("state_age_s") or 0) <= STATE_STALE_S
            )
        )
    )


def _vllm_status(plan: Plan, api_key: str | None) -> dict[str, Any]:
    code, reason = checks.health(plan.endpoint, timeout=5)
    out: dict[str, Any] = {"endpoint": plan.endpoint, "healthy": code == 200}
    if code != 200:
        return out | {"reason": reason if code is None else f"HTTP {code}"}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        models = httpx.get(f"{plan.endpoint}/v1/models", headers=headers, timeout=10)
        out["models"] = [m["id"] for m in models.json().get("data", [])]
        metrics = httpx.get(f"{plan.endpoint}/metrics", timeout=10)
        out["metrics"] = parse_metrics(metrics.text)
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        out["reason"] = f"metrics unavailable: {type(exc).__name__}"
    return out


def status(
    plan: Plan, events: Events = quiet, api_key: str | None = None, replan: Replan | None = None
) -> dict[str, Any]:
    """`replan`: as for apply.up, the plan for the image's vLLM and Ray (read on the head, or
    from the local cache of what was read), so that status judges what `up` deployed."""
    from orchestrate.ops.preflight import plan_for_image

    with Session(plan, events) as s:
        hosts = [_safe(s, n) for n in plan.nodes]
        if replan is not None and hosts[0]["state"] != "unreachable":
            new = plan_for_image(s, replan)
            if new != plan:  # judge the containers against the re-planned spec
                plan = s.plan = new
                hosts = [
                    h if h["state"] == "unreachable" else _safe(s, n)
                    for h, n in zip(hosts, plan.nodes, strict=True)
                ]
        return _snapshot(s, hosts, api_key)


def _snapshot(s: Session, hosts: list[dict[str, Any]], api_key: str | None) -> dict[str, Any]:
    plan = s.plan
    ray: dict[str, Any] | None = None
    if plan.backend == "ray" and hosts[0].get("state") == "running":
        try:
            nodes = one_per_ip(ray_nodes(s))
            alive = [n for n in nodes if n["alive"]]
            ray = {
                "nodes_alive": len(alive),
                "nodes_expected": len(plan.nodes),
                "gpus": sum(n["gpus"] for n in alive),
                "gpus_expected": plan.total_gpus,
                "nodes": nodes,
            }
        except OrchestrateError as exc:
            ray = {"error": exc.message}
    if ray is not None and "error" not in ray:
        # a raylet whose node died stays "alive" in the GCS for Ray's death timeout; a machine
        # whose container restarted is there twice: count each IP once, and say what is missing
        ips = {n["ip"] for n in ray["nodes"] if n["alive"]}
        ray["missing"] = [n.address for n in plan.nodes if n.address not in ips]
    vllm = _vllm_status(plan, api_key) if plan.serve_start else {"healthy": True, "serving": False}
    mark_lost_members(plan, hosts)
    healthy = (
        vllm["healthy"]
        and all(member_ok(h) for h in hosts)
        and (ray is None or (not ray.get("error") and not ray.get("missing")))
    )
    return {"deployment": plan.name, "healthy": healthy, "hosts": hosts, "ray": ray, "vllm": vllm}


def mark_lost_members(plan: Plan, hosts: list[dict[str, Any]]) -> None:
    """The head's supervisor hears every worker each second: a worker it has not heard for the
    watchdog's peer_timeout is lost, seconds before Ray (or a container state) would say so."""
    sup = plan.head.container.supervisor
    head = hosts[0].get("supervisor") if hosts else None
    if sup is None or not isinstance(head, dict) or not isinstance(head.get("members"), dict):
        return
    members = head["members"]
    for node, row in zip(plan.nodes, hosts, strict=True):
        if node.role == "head" or row.get("state") != "running":
            continue
        m = members.get(str(node.rank))
        age = None if m is None else m.get("seen_s_ago")
        if m is not None and (age or 0) > sup.peer_timeout:
            row["lost"] = f"the head's supervisor has not heard it for {age:g} s"
        elif m is None and head.get("phase") == "serving":  # a group that formed without it
            row["lost"] = "never heard by the head's supervisor"


def watch(
    plan: Plan, api_key: str | None, interval: float, events: Events = quiet
) -> Generator[dict[str, Any], None, None]:
    """status, again and again over one session (links re-open after a host comes back)."""
    with Session(plan, events) as s:
        while True:
            t0 = time.monotonic()
            yield _snapshot(s, [_safe(s, n) for n in plan.nodes], api_key) | {"t": time.time()}
            sleep(max(0.0, interval - (time.monotonic() - t0)))


def changes(prev: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """What happened between two snapshots, as lines for people (and watch's event stream)."""
    out: list[str] = []
    old = {h["host"]: h for h in (prev or {}).get("hosts", [])}
    for h in now["hosts"]:
        o = old.get(h["host"], {})
        sup, osup = h.get("supervisor") or {}, o.get("supervisor") or {}
        what = f"{h['role']} ({h['host']})"
        if h.get("state") != o.get("state"):
            out.append(f"{what}: container {h.get('state')}" + (f" ({h['error']})" if h.get("error") else ""))
        if prev and h.get("restarts", 0) > o.get("restarts", 0):
            last = sup.get("last_failure") or {}
            cause = f": {last['cause']}" if last.get("cause") else ""
            out.append(f"{what}: restarted ({h['restarts']} in all); {last.get('reason', '?')}{cause}")
        if h.get("lost") and not o.get("lost"):
            out.append(f"{what}: lost ({h['lost']})")
        if sup.get("phase") != osup.get("phase") and sup.get("phase"):
            detail = f": {sup['detail']}" if sup.get("detail") else ""
            out.append(f"{what}: watchdog {sup['phase']}{detail}")
    if now["vllm"]["healthy"] != (prev or {}).get("vllm", {}).get("healthy"):
        v = now["vllm"]
        out.append("vllm: healthy" if v["healthy"] else f"vllm: NOT healthy ({v.get('reason', '')})")
    if prev is not None and now["healthy"] != prev["healthy"]:
        out.append("deployment: healthy" if now["healthy"] else "deployment: NOT healthy")
    return out


def tokens_per_s(prev: dict[str, Any] | None, now: dict[str, Any]) -> float | None:
    a = ((prev or {}).get("vllm") or {}).get("metrics") or {}
    b = (now.get("vllm") or {}).get("metrics") or {}
    if "generation_tokens_total" not in a or "generation_tokens_total" not in b or not prev:
        return None
    dt = max(float(now["t"]) - float(prev["t"]), 1e-6)
    return max(0.0, float(b["generation_tokens_total"]) - float(a["generation_tokens_total"])) / dt


def _safe(s: Session, node: NodePlan) -> dict[str, Any]:
    try:
        return _host_status(s, node)
    except OrchestrateError as exc:
        return {
            "host": node.host,
            "address": node.address,
            "role": node.alias,
            "state": "unreachable",
            "error": exc.message,
        }


# ---------------------------------------------------------------- logs


def logs(
    plan: Plan,
    selector: str,
    *,
    follow: bool = False,
    tail: int | None = None,
    since: str | None = None,
    out: IO[str] | None = None,
) -> None:
    try:
        node = plan.node(selector)
    except KeyError:
        names = ", ".join(x for n in plan.nodes for x in (n.alias, n.host))
        raise UsageError(f"no node {selector!r} in this deployment", hint=f"one of: {names}") from None
    sink = out or sys.stdout
    with Session(plan) as s:
        engine = s.engine(node)
        c = engine.container(node.container.name)
        if c is None:
            raise HostError(
                node.host, f"container {node.container.name} does not exist", hint="orchestrate up"
            )
        _stream(engine, c, follow, tail or "all", _since(since) if since else None, sink)


def _stream(
    engine: Engine, c: ContainerInfo, follow: bool, tail: int | str, since: int | None, sink: IO[str]
) -> None:
    """Copy the log stream. Following, a quiet spell longer than the engine's read timeout is
    not an error: check that the container still exists (a bounded call), then re-attach."""
    while True:
        try:
            for chunk in engine.follow_logs(c, follow, tail, since):
                sink.write(masker(chunk.decode("utf-8", "replace")))
                sink.flush()
            return
        except LogStreamBroken:
            if not follow:
                raise
        if engine.container(c.name) is None:  # raises for people when the host is gone
            return
        since, tail = int(time.time()), "all"


def _since(text: str) -> int:
    match = re.fullmatch(r"(\d+)([smhd]?)", text.strip())
    if not match:
        raise UsageError(f"--since {text!r}: use a duration such as 90s, 10m, 2h or 1d")
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return int(time.time()) - seconds
