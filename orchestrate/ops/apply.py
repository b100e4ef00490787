"""Apply a plan to real hosts: up (connect, preflight, image, containers, gates, checks) and down.

Phases are barriers (head -> workers -> ray gate -> serve -> checks); inside a phase every host
runs in parallel and every failure is reported (session.fan_out).
"""

from __future__ import annotations

import fcntl
import getpass
import os
import re
import secrets as _secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrate.agents import scripts
from orchestrate.agents.rootcause import root_cause
from orchestrate.agents.supervisor import EXIT_PEER
from orchestrate.core import secrets, serve_progress
from orchestrate.core.plan import NodePlan, Plan
from orchestrate.core.reconcile import Changes, reconcile
from orchestrate.errors import (
    ChecksError,
    GateError,
    HostError,
    LockError,
    OrchestrateError,
    PhaseError,
    UsageError,
)
from orchestrate.events import Events, Progress, quiet
from orchestrate.host.engine import ContainerInfo
from orchestrate.host.remote import runner_for
from orchestrate.host.session import Session, fan_out
from orchestrate.ops import checks, images_dist, observe, preflight
from orchestrate.paths import cache_dir
from orchestrate.render.docker import SUPERVISOR_NAME, run_kwargs
from orchestrate.waits import poll

POLL_S = 0.25
GCS_TIMEOUT_S = 120.0  # the Ray head's GCS port opens within seconds; 2 min is a broken head
RAY_PROBE_WINDOW_S = 8  # each probe waits in the head this long; dead containers checked between
SERVE_PROGRESS_EVERY_S = 5.0  # how often the serve wait reads each rank's log for its progress
SERVE_LOG_TAIL = 120


@dataclass
class UpReport:
    endpoint: str
    changes: dict[str, str]
    phases: dict[str, float] = field(default_factory=dict)
    nodes: int = 0
    gpus: int = 0
    ray_nodes: list[dict[str, Any]] = field(default_factory=list)
    checks: list[checks.CheckResult] = field(default_factory=list)
    backend: str = ""
    backend_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "changes": self.changes,
            "phases_s": {k: round(v, 2) for k, v in self.phases.items()},
            "nodes": self.nodes,
            "gpus": self.gpus,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "ray_nodes": self.ray_nodes,
            "checks": [c.as_dict() for c in self.checks],
        }


# ---------------------------------------------------------------- locking


def _lock_dir() -> Path:
    return cache_dir() / "locks"


@contextmanager
def deployment_lock(name: str, action: str) -> Iterator[None]:
    """One `up`/`down` per deployment at a time on this machine; a second one refuses at once."""
    path = _lock_dir() / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise LockError(
                f"deployment {name} is busy: {holder}",
                hint="wait for it to finish, or stop that process",
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"`orchestrate {action}` pid {os.getpid()}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


HEAD_LOCK_DIR = "/var/tmp/orchestrate-locks"  # on the head host; shared by every SSH user
HEAD_LOCK_STALE_S = 90  # a lock its holder has not touched for this long is broken
HEAD_LOCK_REFRESH_S = 20


def _lock_argv(op: str, name: str, token: str, holder: str = "") -> list[str]:
    return [
        "bash",
        "-c",
        scripts.HEAD_LOCK,
        "orchestrate-lock",
        op,
        HEAD_LOCK_DIR,
        name,
        token,
        str(HEAD_LOCK_STALE_S),
        holder,
    ]


@contextmanager
def head_lock(s: Session, action: str) -> Iterator[None]:
    """The deployment lock on the head host, besides this machine's flock: an operator on
    another machine gets "busy" with the holder and since when. The holder refreshes it from a
    thread on its own connection; a holder that died leaves a lock broken after 90 s."""
    node, name = s.plan.head, s.plan.name
    token = _secrets.token_hex(8)
    holder = (
        f"`orchestrate {action}` by {getpass.getuser()}@{socket.gethostname()} pid "
        f"{os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"
    )
    res = s.runner(node).run(_lock_argv("acquire", name, token, holder), timeout=30, check=False)
    words = res.stdout.strip().splitlines()[-1].split(" ", 2) if res.stdout.strip() else [""]
    if res.exited == 3 and _holder_is_dead_here(words[2] if len(words) > 2 else ""):
        # ours, from this machine, and its process is gone (this machine's flock is ours now)
        s.events("lock", node.host, f"broke the lock of a dead process here ({words[2][:200]})")
        s.runner(node).run(_lock_argv("break", name, words[2]), timeout=30, check=False)
        res = s.runner(node).run(_lock_argv("acquire", name, token, holder), timeout=30, check=False)
        words = res.stdout.strip().splitlines()[-1].split(" ", 2) if res.stdout.strip() else [""]
    if res.exited == 3:
        age, who = ([*words[1:], "?", "?"])[:2]
        raise LockError(
            f"deployment {name} is busy: {who} (the lock on the head {node.host}, touched {age} s ago)",
            hint=f"wait for it to finish; a lock whose holder died is broken after {HEAD_LOCK_STALE_S} s",
        )
    if words[0] != "ACQUIRED":
        raise HostError(
            node.host,
            "could not take the deployment lock in "
            f"{HEAD_LOCK_DIR}: {(res.stderr or res.stdout).strip()[:300]}",
        )
    for line in res.stdout.splitlines():
        if line.startswith("STALE "):
            s.events("lock", node.host, f"broke a stale lock ({line[6:][:200]})")
    stop = threading.Event()

    def refresh() -> None:
        runner = runner_for(node.host, node.ssh)
        try:
            while not stop.wait(HEAD_LOCK_REFRESH_S):
                # the head away for now: the next refresh tries again
                with suppress(OrchestrateError):
                    runner.run(_lock_argv("refresh", name, token), timeout=30, check=False)
        finally:
            runner.close()

    thread = threading.Thread(target=refresh, name="orchestrate-head-lock", daemon=True)
    thread.start()
    failed = True
    try:
        yield
        failed = False
    finally:
        stop.set()
        # after an error or Ctrl-C the head may be the thing that is gone: do not wait on it
        # (a lock left behind is this machine's: its dead pid is broken by the next `up` here)
        thread.join(1 if failed else 35)
        release = threading.Thread(
            target=_release, args=(s, node, name, token), name="orchestrate-head-unlock", daemon=True
        )
        release.start()
        release.join(2 if failed else 35)


def _release(s: Session, node: NodePlan, name: str, token: str) -> None:
    try:
        s.runner(node).run(_lock_argv("release", name, token), timeout=30, check=False)
    except Exception as exc:  # a thread's edge: the session may be closing under it
        message = exc.message if isinstance(exc, OrchestrateError) else type(exc).__name__
        s.events("lock", node.host, f"could not release the lock: {message}")


def _holder_is_dead_here(holder: str) -> bool:
    """`orchestrate up` by user@HOST pid N ...: HOST is this machine and N is not running."""
    m = re.search(r" by \S+@(\S+) pid (\d+) ", holder)
    if not m or m.group(1) != socket.gethostname():
        return False
    try:
        os.kill(int(m.group(2)), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# ---------------------------------------------------------------- helpers


def resolve_secrets(plan: Plan) -> dict[str, str]:
    """The plan's secret values from this machine's environment (MissingSecretError: exit 2)."""
    return secrets.resolve(plan.secret_sources())


class _Timer:
    def __init__(self, report: UpReport, events: Events) -> None:
        self.report, self.events = report, events

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.monotonic()
        yield
        self.report.phases[phase] = self.report.phases.get(phase, 0.0) + time.monotonic() - t0
        self.events(phase, None, f"done in {self.report.phases[phase]:.1f}s")


def quiet_tail(s: Session, node: NodePlan, lines: int) -> str:
    """_tail for a message already being raised: a lost host only leaves the tail empty."""
    try:
        return _tail(s, node, lines)
    except OrchestrateError:
        return ""


def _tail(s: Session, node: NodePlan, lines: int, limit: int = 8000) -> str:
    """The last `lines` of the node's container log, masked ("" when it is gone or its log cannot
    be read). Looking the container up raises for people when the host itself is lost."""
    c = _container(s, node)
    if c is None:
        return ""
    try:
        raw = s.engine(node).logs(c, tail=lines)
    except OrchestrateError:
        return ""
    return secrets.masker(raw.decode("utf-8", "replace"))[-limit:]


# ---------------------------------------------------------------- up


def up(
    plan: Plan,
    events: Events = quiet,
    *,
    run_checks: bool = True,
    api_key: str | None = None,
    skip_checks: Iterable[str] = (),
    replan: preflight.Replan | None = None,
) -> UpReport:
    """`replan` (the CLI passes one): the plan for the vLLM version and Ray the image holds, so
    that `backend: auto` and the flag tables follow what preflight reads in the image."""
    secret_values = resolve_secrets(plan)
    api_key = api_key or (secret_values.get("VLLM_API_KEY") if plan.api_key_env else None)
    report = UpReport(plan.endpoint, {}, nodes=len(plan.nodes), gpus=plan.total_gpus)
    timer = _Timer(report, events)
    with deployment_lock(plan.name, "up"), Session(plan, events) as s, ExitStack() as held:
        with timer("connect"):
            s.connect()
            held.enter_context(head_lock(s, "up"))
        facts = None
        if replan is not None and (facts := preflight.image_facts_if_present(s, s.plan.head)):
            _fit_image(s, replan, facts)
        with timer("diff"):
            changes = diff(s)
        with timer("preflight"):
            _preflight(s, changes, skip_checks)
        with timer("image"):
            images_dist.ensure(s)
        if facts is None and not changes.noop:
            facts = preflight.image_facts(s, s.plan.head)
            if replan is not None and _fit_image(s, replan, facts):
                with timer("diff"):  # the image was not here before: plan, diff and check again
                    changes = diff(s)
                with timer("preflight"):
                    _preflight(s, changes, skip_checks)
        report.changes = dict(changes.actions)
        report.backend, report.backend_reason = s.plan.backend, s.plan.backend_reason
        plan = s.plan
        if not changes.noop and facts is not None:
            _check_image_vllm(s, facts)
        if changes.noop:
            events("diff", None, "no changes: every container is running with its planned spec")
        else:
            _replace(s, changes, secret_values, timer)
        if plan.backend == "ray":
            with timer("ray"):
                report.ray_nodes = _ray_gate(s)
        if not plan.serve_start:
            events(
                "serve",
                None,
                "serve.start is false: the Ray cluster is up; run vllm serve "
                "in the head yourself (see `orchestrate plan`)",
            )
            return report
        with timer("serve"):
            _wait_serving(s)
        if run_checks:
            with timer("checks"):
                report.checks = _checks(plan, events, api_key)
    return report


def diff(s: Session) -> Changes:
    """What reconcile says to do with the session's plan (create, replace, keep) per node."""
    observed = dict(
        zip(
            (n.host for n in s.plan.nodes),
            fan_out("diff", s.plan.nodes, lambda n: observe.observed(s, n), s.events),
            strict=True,
        )
    )
    changes = reconcile(s.plan, observed)
    for host, action in changes.actions.items():
        why = changes.reasons.get(host)
        s.events("diff", host, action + (f" ({why})" if why else ""))
    return changes


def _fit_image(s: Session, replan: preflight.Replan, facts: dict[str, str]) -> bool:
    """Re-plan for the image's vLLM and Ray (preflight.image_facts); True when the plan changed."""
    version = facts.get("VLLM", "none")
    try:
        new = preflight.replan_for(facts, replan)
    except UsageError as exc:
        raise PhaseError(
            "image", [HostError(s.plan.head.host, f"image: {exc.message}", hint=exc.hint)]
        ) from None
    old, s.plan = s.plan, new
    ray = "with ray" if facts.get("RAY") == "yes" else "without ray"
    what = f"vLLM {version}" if version != "none" else "no vLLM"
    if new.backend != old.backend:
        s.events(
            "plan",
            None,
            f"{s.plan.image} has {what} {ray}: backend {old.backend} -> {new.backend} ({new.backend_reason})",
        )
    else:
        s.events("plan", None, f"{s.plan.image} has {what} {ray}: backend {new.backend}")
    return new != old


def _check_image_vllm(s: Session, facts: dict[str, str]) -> None:
    """Before any container starts: the head's image has the vLLM (and Ray) the argv needs."""
    node = s.plan.head
    problem = preflight.version_problem(s.plan, facts)
    if problem is None and s.plan.backend == "ray" and facts.get("RAY") == "no":
        problem = (
            f"ray is not installed in {s.plan.image}",
            "set backend: mp (or auto), or use an image that contains ray",
        )
    if problem is not None:
        raise PhaseError("image", [HostError(node.host, f"image: {problem[0]}", hint=problem[1])])


def _preflight(s: Session, changes: Changes, skip: Iterable[str]) -> None:
    targets = [n for n in s.plan.nodes if changes.actions[n.host] != "keep"]
    preflight.for_up(s, targets, skip)


def _replace(s: Session, changes: Changes, secret_values: dict[str, str], timer: _Timer) -> None:
    plan = s.plan

    def stop(node: NodePlan) -> None:
        engine = s.engine(node)
        for c in engine.containers(plan.name, node.host):
            s.events("stop", node.host, f"removing {c.name}")
            engine.remove(c, node.container.stop_timeout)

    with timer("stop"):
        fan_out("stop", plan.workers, stop, s.events)
        fan_out("stop", [plan.head], stop, s.events)
    if plan.docker_network:
        name, subnet = plan.docker_network
        for node in plan.nodes:  # one after another: local nodes share one engine
            s.engine(node).ensure_network(name, subnet, plan.name)
    with timer("head"):
        start_container(s, plan.head, secret_values)
        if plan.backend == "ray":
            _wait_gcs(s)
    with timer("workers"):
        fan_out("workers", plan.workers, lambda n: start_container(s, n, secret_values), s.events)
    preflight.shm_in_containers(s)


def start_container(s: Session, node: NodePlan, secret_values: dict[str, str]) -> None:
    kwargs = run_kwargs(node.container, secret_values)
    s.events("start", node.host, f"creating {node.container.name} ({node.role})")
    s.engine(node).create_and_start(kwargs)
    s.restart_baseline[node.host] = 0  # a restart of this new container is a failure of this up


def _container(s: Session, node: NodePlan) -> ContainerInfo | None:
    return s.engine(node).container(node.container.name)


def _dead(s: Session, node: NodePlan, what: str, code: int | None = None) -> GateError:
    """A container died: say where, the known cause with the log line that shows it, the tail."""
    engine = s.engine(node)
    c = engine.container(node.container.name)
    exit_code = code if code is not None else (c.exit_code if c else None)
    whole = _tail(s, node, 2000, limit=400_000)
    if c is not None and c.status in ("running", "restarting"):  # its restart policy started it again
        whole = died_life(whole)
    text = whole[-8000:]
    cause, hint = known_failure(text, s.plan)
    if cause is None:  # vLLM's last lines are wrappers ("see root cause above"): find the cause
        found = root_cause(whole)
        if found is not None:
            cause = found.line + (f" (in {found.process})" if found.process else "")
    shown = "?" if exit_code is None else exit_code
    message = f"{node.host}: {node.container.name} {what} (exit code {shown})"
    if cause:
        message += f": {cause}"
    return GateError(
        message + "; last log lines:",
        tail=text,
        hint=hint or f"orchestrate logs {node.alias} --tail 200",
    )


# the supervisor's report of a life's end: Supervisor.end says it, Supervisor.say prefixes it
_LIFE_END = re.compile(rf"^{SUPERVISOR_NAME} (\[[^\]]*\]): exit -?\d+: .*$", re.M)


def died_life(log: str) -> str:
    """The log up to the end of the last life that ended (its supervisor's final lines
    included). When the restart policy has started the container again, the new life's first
    lines would push the death out of the tail that people see (CI, stop 22: Ray's start
    banner hid vLLM's traceback and the gate's line)."""
    ends = list(_LIFE_END.finditer(log))
    if not ends:
        return log
    prefix = f"{SUPERVISOR_NAME} {ends[-1].group(1)}: "
    cut = ends[-1].end()
    for line in log[cut:].split("\n")[1:]:
        if not line.startswith(prefix):
            break
        cut += 1 + len(line)
    return log[:cut]


def _wait_gcs(s: Session) -> None:
    node = s.plan.head
    probe = ["bash", "-c", 'exec 3<>"/dev/tcp/$VLLM_HOST_IP/$ORCH_RAY_PORT"']

    def listening() -> bool | None:
        c = _container(s, node)
        if c is None or c.status not in ("running", "created"):
            raise _dead(s, node, "stopped while starting the Ray head")
        code, _ = s.engine(node).exec(c, probe)
        return True if code == 0 else None

    if poll(listening, timeout=GCS_TIMEOUT_S, every=0.5) is None:
        raise _dead(s, node, f"did not open the Ray GCS port within {GCS_TIMEOUT_S:g}s")
    s.events("head", node.host, f"Ray GCS listening on {node.address}:{s.plan.ray_port}")


def _ray_gate(s: Session) -> list[dict[str, Any]]:
    plan = s.plan
    want_ips = {n.address for n in plan.nodes}
    s.events("ray", None, f"waiting for {len(plan.nodes)} nodes / {plan.total_gpus} GPUs to join")
    last: list[dict[str, Any]] = []
    joined = ""

    def formed() -> list[dict[str, Any]] | None:
        nonlocal last, joined
        _raise_if_dead(s, "while Ray was forming")
        last = observe.one_per_ip(
            s.while_alive(lambda: observe.ray_nodes(s, wait_s=RAY_PROBE_WINDOW_S)) or last
        )
        alive = [n for n in last if n["alive"]]
        gpus = sum(n["gpus"] for n in alive)
        ips = {n["ip"] for n in alive}
        figure = f"{len(alive)}/{len(plan.nodes)} nodes, {gpus:g}/{plan.total_gpus} GPUs joined"
        if figure != joined:
            joined = figure
            s.events("ray", None, Progress(figure))
        if len(alive) >= len(plan.nodes) and gpus >= plan.total_gpus and want_ips <= ips:
            s.events("ray", None, f"{len(alive)} nodes alive, {gpus:g} GPUs, IPs match the inventory")
            return last
        return None

    nodes = poll(formed, timeout=plan.join_timeout + 30, every=0.2)
    if nodes is not None:
        return nodes
    alive_ips = {n["ip"] for n in last if n["alive"]}
    missing = [f"{n.host} ({n.address})" for n in plan.nodes if n.address not in alive_ips]
    raise GateError(
        f"Ray did not reach {len(plan.nodes)} nodes / {plan.total_gpus} GPUs; missing: "
        + (", ".join(missing) or "GPUs only"),
        hint="orchestrate logs worker-1; check network.nic and that the head's ports are reachable",
    )


def _raise_if_dead(s: Session, when: str) -> None:
    """A member that died: exited, or, for a container this `up` created, restarted by its
    restart policy (its supervisor exits when its child or its group breaks). A kept container
    that restarts is a group healing itself: the gates wait for it. Of several, the one that
    failed by itself is named, not the ones that followed it (exit 70: the group broke)."""
    s.raise_if_lost()
    dead: list[tuple[NodePlan, int | None]] = []
    for node in s.plan.nodes:
        c = _container(s, node)
        if c is None:
            dead.append((node, None))
            continue
        ours = node.host in s.restart_baseline
        restarted = ours and (c.status == "restarting" or c.restart_count > 0)
        if c.status in ("exited", "dead") or restarted:
            dead.append((node, _last_exit(s, node, c)))
    if dead:
        first = next((d for d in dead if d[1] != EXIT_PEER), dead[0])
        raise _dead(s, first[0], f"exited {when}", first[1])


def _last_exit(s: Session, node: NodePlan, c: ContainerInfo) -> int | None:
    if c.status != "running":
        return c.exit_code or 0
    sup = observe.supervisor_state(s, node, c) or {}
    last = sup.get("last_failure")
    return int(last["exit"]) if isinstance(last, dict) and "exit" in last else None


# Log lines that name a known multi-node failure, and what to do about each.
_KNOWN = {
    "does not support ray": "vLLM on this platform cannot use Ray; set backend: mp in the inventory",
    "ray is not installed": "the image has no Ray; set backend: mp, or use an image with ray",
    "Insufficient space in /dev/shm": "raise container.shm_size (1Gi at least)",
    "No available node types can fulfill": "Ray and vLLM disagree on node IPs; check network.nic",
    "CUDA out of memory": "lower serve.gpu_memory_utilization or max_model_len, or add GPUs",
    "ray gate timed out": "a node never joined Ray: check network.nic, firewalls and the worker logs",
    "unrecognized arguments": "remove or fix the flag in serve.extra_args",
}


def known_failure(text: str, plan: Plan | None = None) -> tuple[str | None, str | None]:
    """(the log line that shows a known failure, what to do), or (None, None)."""
    for line in reversed(text.splitlines()):
        for needle, hint in _KNOWN.items():
            if needle in line:
                if needle == "unrecognized arguments" and plan is not None:
                    hint = _unrecognized_hint(line, plan) or hint
                return line.strip()[:300], hint
    return None, None


def _unrecognized_hint(line: str, plan: Plan) -> str | None:
    """An unrecognized flag that orchestrate wrote (not serve.extra_args): the image's vLLM is
    older or newer than the flags need; say which vLLM versions have it."""
    from orchestrate.core import vllm_caps

    extra = {a.split("=", 1)[0] for a in plan.extra_args}
    words = line.split("unrecognized arguments:", 1)[-1].split()
    ours = [w.split("=", 1)[0] for w in words if w.startswith("-") and w.split("=", 1)[0] not in extra]
    if not ours:
        return None
    have = vllm_caps.versions_with(ours[0])
    where = f"vLLM {have[0]} .. {have[-1]} have it" if have else "no known vLLM has it"
    return (
        f"{ours[0]} is written by orchestrate for backend: {plan.backend} and the image's vLLM "
        f"does not know it ({where}); set vllm_version to the image's vLLM version (with "
        "backend: auto) so plan picks flags it has, or use a newer image"
    )


def _wait_serving(s: Session) -> None:
    plan = s.plan
    next_watch = 0.0
    next_progress = time.monotonic() + SERVE_PROGRESS_EVERY_S
    shown: dict[str, str] = {}
    reason = ""
    s.events("serve", plan.head.host, f"waiting for vLLM at {plan.endpoint}/health")

    def healthy() -> bool | None:
        nonlocal next_watch, next_progress, shown, reason
        s.raise_if_lost()
        code, reason = checks.health(plan.endpoint, timeout=5)
        if code == 200:
            return True
        if time.monotonic() >= next_watch:
            _raise_if_dead(s, "before vLLM became healthy")
            next_watch = time.monotonic() + 3
        if time.monotonic() >= next_progress:
            shown = _serve_progress(s, shown)
            next_progress = time.monotonic() + SERVE_PROGRESS_EVERY_S
        return None

    if poll(healthy, timeout=plan.startup_timeout, every=POLL_S):
        s.events("serve", plan.head.host, f"vLLM healthy at {plan.endpoint}")
        return
    raise GateError(
        f"vLLM at {plan.endpoint} was not healthy within {plan.startup_timeout:g}s (last: {reason})",
        tail=quiet_tail(s, plan.head, 40),
        hint="orchestrate logs head -f; raise serve.startup_timeout for big models",
    )


def _serve_progress(s: Session, shown: dict[str, str]) -> dict[str, str]:
    """Each rank's latest meaningful log line (shards k/n, weights, KV cache, CUDA graphs),
    as a Progress event when it changed: a five-minute load is never a silent screen."""
    for node in s.plan.nodes:
        log = _tail(s, node, SERVE_LOG_TAIL)
        if not log:
            continue
        now = serve_progress.latest(log)
        if now is not None and shown.get(node.host) != now:
            shown[node.host] = now
            s.events("serve", node.host, Progress(f"vllm {node.alias}: {now}"))
    return shown


def _checks(plan: Plan, events: Events, api_key: str | None) -> list[checks.CheckResult]:
    return run_checks_at(plan, plan.endpoint, events, api_key)


def run_checks_at(plan: Plan, endpoint: str, events: Events, api_key: str | None) -> list[checks.CheckResult]:
    """The serving checks of this plan's model at `endpoint` (its own, or the router in front);
    ChecksError when one fails."""
    results = checks.run_checks(plan, endpoint, api_key)
    for r in results:
        extra = f", first token {r.ttft_ms:.0f} ms" if r.ttft_ms is not None else ""
        events(
            "checks",
            None,
            f"{'ok  ' if r.ok else 'FAIL'} {r.name:<12} {r.latency_ms:7.0f} ms{extra}  {r.detail}",
        )
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise ChecksError(
            f"checks failed: {', '.join(failed)}",
            hint="orchestrate logs head --tail 200; orchestrate check to retry",
        )
    return results


# ---------------------------------------------------------------- down


def down(plan: Plan, events: Events = quiet) -> dict[str, int]:
    """Remove this deployment's containers: workers first, then the head. Idempotent."""
    removed: dict[str, int] = {}
    with deployment_lock(plan.name, "down"), Session(plan, events) as s, ExitStack() as held:
        try:
            held.enter_context(head_lock(s, "down"))
        except HostError as exc:  # the head is away: remove what can be removed, as before
            events("down", plan.head.host, f"no lock on the head: {exc.message}")

        def one(node: NodePlan) -> int:
            engine = s.engine(node)
            found = engine.containers(plan.name, node.host)
            for c in found:
                events("down", node.host, f"removing {c.name}")
                engine.remove(c, node.container.stop_timeout)
            if node.container.ipc == "host":
                _sweep_shm(s, node)
            removed[node.host] = len(found)
            return len(found)

        failures: list[OrchestrateError] = []
        for phase in (plan.workers, (plan.head,)):  # workers first, then the head, even if a
            try:  # worker host is unreachable right now
                fan_out("down", phase, one, events)
            except PhaseError as exc:
                failures += exc.failures
        if failures:
            raise PhaseError("down", failures)
        if plan.docker_network:
            for node in plan.nodes:
                if s.engine(node).remove_network(plan.docker_network[0], plan.name):
                    events("down", node.host, f"removed network {plan.docker_network[0]}")
    return removed


def _sweep_shm(s: Session, node: NodePlan) -> None:
    """--ipc host leaks vLLM's psm_* / sem.mp-* segments into the host's /dev/shm."""
    try:
        s.runner(node).run(
            [
                "find",
                "/dev/shm",
                "-maxdepth",
                "1",
                "(",
                "-name",
                "psm_*",
                "-o",
                "-name",
                "sem.mp-*",
                ")",
                "-delete",
            ],
            timeout=30,
        )
    except HostError as exc:
        s.events("down", node.host, f"could not sweep /dev/shm: {exc.message}")


def check(plan: Plan, events: Events = quiet, api_key: str | None = None) -> list[checks.CheckResult]:
    if api_key is None and plan.api_key_env:
        api_key = resolve_secrets(plan).get("VLLM_API_KEY")
    return _checks(plan, events, api_key)
