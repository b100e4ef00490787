"""The in-container supervisor as real processes on this machine: a head and a worker supervisor
around real child processes, talking over real TCP. The bundle is what containers run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrate.agents import bundle
from orchestrate.agents.supervisor import EXIT_CHILD_ZERO, EXIT_PEER
from tests import ROOT
from tests.conftest import until
from tests.support.net import free_port

SLEEPER = [sys.executable, "-c", "import time\nprint('child up', flush=True)\ntime.sleep(600)"]


class Group:
    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port = tmp, free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, role: str, rank: int, child: list[str], **env: str) -> subprocess.Popen[bytes]:
        full = (
            os.environ
            | {
                "ORCH_SUP_ROLE": role,
                "ORCH_SUP_RANK": str(rank),
                "ORCH_SUP_NODES": "2",
                "ORCH_SUP_PORT": str(self.port),
                "ORCH_SUP_HEAD": "127.0.0.1",
                "ORCH_SUP_PEER_TIMEOUT": "3",
                "ORCH_SUP_BACKOFF": "0.5",
                "ORCH_SUP_SERVED_AFTER": "0.5",
                "ORCH_SUP_STATE": str(self.tmp / f"{role}-{rank}.json"),
                "VLLM_HOST_IP": "127.0.0.1",
            }
            | env
        )
        p = subprocess.Popen(
            [sys.executable, "-c", bundle("supervisor"), "orchestrate-supervisor", *child],
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.append(p)
        return p

    def state(self, role: str, rank: int) -> dict[str, object]:
        try:
            return dict(json.loads((self.tmp / f"{role}-{rank}.json").read_text()))
        except (OSError, ValueError):
            return {}

    def close(self) -> None:
        # SIGTERM first: a supervisor stops its child's own process group (start_new_session) on
        # the way out; then SIGKILL, and a sweep for children whose supervisor was killed (their
        # environment carries this test's state path)
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
            if p.stdout:
                p.stdout.close()
        marker = f"ORCH_SUP_STATE={self.tmp}/".encode()
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker in (proc / "environ").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


@pytest.fixture
def group(tmp_path: Path) -> Iterator[Group]:
    g = Group(tmp_path)
    try:
        yield g
    finally:
        g.close()


def _exit(p: subprocess.Popen[bytes], timeout: float = 30) -> int:
    return p.wait(timeout)


def test_worker_starts_only_once_admitted_and_the_head_restarts_the_group(group: Group) -> None:
    worker = group.start("worker", 1, SLEEPER)
    until(lambda: group.state("worker", 1).get("phase") == "waiting", every=0.1, what="worker waiting")
    time.sleep(1.5)  # no head: it must not start its child
    assert group.state("worker", 1)["phase"] == "waiting"
    head = group.start("head", 0, SLEEPER)
    until(lambda: group.state("worker", 1).get("phase") == "running", every=0.1, what="worker admitted")
    until(lambda: "1" in group.state("head", 0).get("members", {}), every=0.1, what="member listed")  # type: ignore[operator]
    head_epoch = group.state("head", 0)["epoch"]
    assert group.state("worker", 1)["head_epoch"] == head_epoch
    # the worker dies (SIGKILL of its supervisor, as the OOM killer or a host crash would)
    os.killpg(worker.pid, signal.SIGKILL)
    t0 = time.monotonic()
    assert _exit(head) == EXIT_PEER
    assert time.monotonic() - t0 < 10
    last = group.state("head", 0)["last_failure"]
    assert isinstance(last, dict) and "worker-1 lost" in last["reason"]


def test_a_restarted_worker_breaks_the_group_at_once(group: Group) -> None:
    head = group.start("head", 0, SLEEPER, ORCH_SUP_PEER_TIMEOUT="60")
    w1 = group.start("worker", 1, SLEEPER)
    until(lambda: group.state("worker", 1).get("phase") == "running", every=0.1, what="admitted")
    os.killpg(w1.pid, signal.SIGKILL)
    w1.wait(10)
    (group.tmp / "worker-1.json").unlink()  # as a new container would
    group.start("worker", 1, SLEEPER)  # a new life of rank 1, long before the peer timeout
    assert _exit(head, 15) == EXIT_PEER
    assert "worker-1 restarted" in group.state("head", 0)["last_failure"]["reason"]  # type: ignore[index]


def test_workers_follow_a_new_head(group: Group) -> None:
    head = group.start("head", 0, SLEEPER, ORCH_SUP_PEER_TIMEOUT="60")
    worker = group.start("worker", 1, SLEEPER, ORCH_SUP_PEER_TIMEOUT="60")
    until(lambda: group.state("worker", 1).get("phase") == "running", every=0.1, what="admitted")
    os.killpg(head.pid, signal.SIGKILL)
    head.wait(10)
    group.start("head", 0, SLEEPER, ORCH_SUP_PEER_TIMEOUT="60")
    assert _exit(worker, 15) == EXIT_PEER
    assert "the head restarted" in group.state("worker", 1)["last_failure"]["reason"]  # type: ignore[index]


def test_child_exit_records_the_root_cause_and_a_crash_loop_parks(group: Group) -> None:
    crash = [
        sys.executable,
        "-c",
        "import sys\nprint('Traceback (most recent call last):')\n"
        "print('  File \"x.py\", line 1')\nprint('ValueError: bad flag value', flush=True)\n"
        "sys.exit(3)",
    ]
    env = {"ORCH_SUP_NODES": "1", "ORCH_SUP_MAX_FAILURES": "3"}
    codes = []
    for _ in range(3):  # what Docker's restart policy does: run it again, state file kept
        codes.append(_exit(group.start("head", 0, crash, **env)))
    assert codes == [3, 3, 3]
    state = group.state("head", 0)
    assert state["last_failure"]["cause"] == "ValueError: bad flag value"  # type: ignore[index]
    assert [life["exit"] for life in state["lives"]] == [3, 3, 3]  # type: ignore[union-attr]
    parked = group.start("head", 0, crash, **env)
    until(lambda: group.state("head", 0).get("phase") == "parked", every=0.1, what="parked")
    assert "ValueError: bad flag value" in str(group.state("head", 0)["detail"])
    time.sleep(1)
    assert parked.poll() is None  # parked: it stays up, so Docker does not restart it
    os.killpg(parked.pid, signal.SIGTERM)
    assert _exit(parked) == 143


def test_backoff_grows_with_failures_in_a_row(group: Group) -> None:
    quick = [sys.executable, "-c", "pass"]
    env = {"ORCH_SUP_NODES": "1", "ORCH_SUP_BACKOFF": "1"}
    took, said = [], []
    for _ in range(3):
        t0 = time.monotonic()
        p = group.start("head", 0, quick, **env)
        assert _exit(p) == EXIT_CHILD_ZERO
        took.append(time.monotonic() - t0)
        said.append(p.stdout.read().decode() if p.stdout else "")
    # the first restart is immediate, the second waits 1 s (what it says, and at least that long:
    # an upper bound on time would fail on a loaded machine)
    assert "backoff" not in said[0]
    assert "waiting 0 s" in said[1] and "waiting 1 s" in said[2]
    assert took[2] >= 1.0


def test_sigterm_stops_the_child_and_is_not_a_failure(group: Group) -> None:
    p = group.start("head", 0, SLEEPER, ORCH_SUP_NODES="1")
    until(lambda: group.state("head", 0).get("phase") == "serving", every=0.1, what="running")
    os.kill(p.pid, signal.SIGTERM)
    assert _exit(p) == 143
    assert group.state("head", 0)["failures_in_a_row"] == 0


STUCK_ENGINE = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
METRICS = b'vllm:num_requests_running{engine="0"} 2.0\nvllm:generation_tokens_total{engine="0"} 40.0\n'
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = b"" if self.path == "/health" else METRICS
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_a_busy_engine_whose_counters_stop_is_a_hang(group: Group) -> None:
    """/health says 200 and two requests run, but no token is generated: exit 71."""
    api = free_port()
    p = group.start(
        "head",
        0,
        [sys.executable, "-c", STUCK_ENGINE, str(api)],
        ORCH_SUP_NODES="1",
        ORCH_SUP_API=str(api),
        ORCH_SUP_STALL_AFTER="3",
    )
    until(lambda: group.state("head", 0).get("phase") == "serving", every=0.1, what="serving")
    assert _exit(p) == 71
    last = group.state("head", 0)["last_failure"]
    assert last["reason"] == "engine hang" and "2 request(s)" in last["cause"]  # type: ignore[index]


SILENT_ENGINE = r"""
import sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
        threading.Thread(target=server.shutdown).start()  # /health once, then nothing listens
server = HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
server.serve_forever(); server.server_close(); time.sleep(600)
"""


def test_an_api_that_stops_answering_is_a_hang(group: Group) -> None:
    """The process lives on, but its API went silent after serving: exit 71, not a wait forever."""
    api = free_port()
    p = group.start(
        "head",
        0,
        [sys.executable, "-c", SILENT_ENGINE, str(api)],
        ORCH_SUP_NODES="1",
        ORCH_SUP_API=str(api),
        ORCH_SUP_STALL_AFTER="3",
    )
    assert _exit(p) == 71
    last = group.state("head", 0)["last_failure"]
    assert last["served"] and "did not answer /metrics" in last["cause"]  # type: ignore[index]


UNHEALTHY_ENGINE = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
seen = []
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == "/health":
            seen.append(1)
        code = 500 if self.path == "/health" and len(seen) > 1 else 200  # healthy once, then 500
        body = b"" if self.path == "/health" else b'vllm:num_requests_running{engine="0"} 0.0\n'
        self.send_response(code); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_a_health_that_keeps_failing_is_a_hang_even_while_metrics_answer(group: Group) -> None:
    """What a /health liveness probe would restart (vLLM 0.6 answers /health from the engine)."""
    api = free_port()
    p = group.start(
        "head",
        0,
        [sys.executable, "-c", UNHEALTHY_ENGINE, str(api)],
        ORCH_SUP_NODES="1",
        ORCH_SUP_API=str(api),
        ORCH_SUP_HEALTH_GRACE="4",
        ORCH_SUP_HEALTH_EVERY="0.5",
    )
    assert _exit(p) == 71
    last = group.state("head", 0)["last_failure"]
    assert last["served"] and "/health has not answered 200" in last["cause"]  # type: ignore[index]


def test_livez_answers_for_kubernetes_and_names_why() -> None:
    from orchestrate.agents.supervisor import Supervisor

    sup = Supervisor(["true"])
    assert sup.unlive() == ""
    sup.phase, sup.detail = "exiting", "worker-1 lost"
    assert sup.unlive() == "exiting: worker-1 lost"
    sup.phase, sup.tick_at = "serving", time.monotonic() - 31
    assert "has not turned for 31 s" in sup.unlive()


IDLE_ENGINE = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
STUCK, LOG = sys.argv[2] == "stuck", sys.argv[3]
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def _send(self, body):
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def do_GET(self):  # the gauges a hung engine left behind: idle
        self._send(json.dumps({"data": [{"id": "tiny"}]}).encode() if self.path == "/v1/models"
                   else b'vllm:num_requests_running{engine="0"} 0.0\n' if self.path == "/metrics" else b"")
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        open(LOG, "a").write(self.path + "\n")
        if STUCK:
            time.sleep(600)
        self._send(b'{"choices": [{"text": "k"}]}')
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def test_an_engine_that_looks_idle_but_cannot_answer_a_canary_is_a_hang(group: Group) -> None:
    """P7 found it under a real `orchestrate bench`: the hung engine's gauges said idle."""
    api, log = free_port(), group.tmp / "canaries"
    p = group.start(
        "head",
        0,
        [sys.executable, "-c", IDLE_ENGINE, str(api), "stuck", str(log)],
        ORCH_SUP_NODES="1",
        ORCH_SUP_API=str(api),
        ORCH_SUP_STALL_AFTER="3",
        ORCH_SUP_CANARY_EVERY="1",
    )
    assert _exit(p) == 71
    last = group.state("head", 0)["last_failure"]
    assert "canary request has not finished" in last["cause"]  # type: ignore[index]
    assert log.read_text().splitlines() == ["/v1/completions"]


def test_an_idle_engine_that_answers_its_canaries_is_left_alone(group: Group) -> None:
    api, log = free_port(), group.tmp / "canaries"
    p = group.start(
        "head",
        0,
        [sys.executable, "-c", IDLE_ENGINE, str(api), "ok", str(log)],
        ORCH_SUP_NODES="1",
        ORCH_SUP_API=str(api),
        ORCH_SUP_STALL_AFTER="3",
        ORCH_SUP_CANARY_EVERY="1",
    )
    until(
        lambda: log.exists() and len(log.read_text().splitlines()) >= 6,
        60,
        "six canaries, twice the stall threshold",
        every=0.2,
    )
    assert p.poll() is None and group.state("head", 0)["phase"] == "serving"


# ---------------------------------------------------------------- how the plan ships it


def _l20(**watchdog: object):  # type: ignore[no-untyped-def]
    from orchestrate.core import inventory
    from orchestrate.core.plan import build_plan

    inv = inventory.load(ROOT / "inventory" / "l20.yaml")
    if watchdog:
        inv = inv.model_copy(update={"watchdog": inv.watchdog.model_copy(update=watchdog)})
    return build_plan(inv)


def test_docker_run_puts_the_supervisor_in_front_with_a_restart_policy() -> None:
    from orchestrate.render.docker import run_kwargs

    plan = _l20()
    kw = run_kwargs(plan.workers[0].container, {"VLLM_API_KEY": "k"} if plan.api_key_env else {})
    assert kw["restart_policy"] == {"Name": "always"}
    assert kw["entrypoint"][:2] == ["python3", "-c"] and kw["entrypoint"][2] == bundle("supervisor")
    assert kw["entrypoint"][3:] == ["orchestrate-supervisor", *plan.workers[0].container.entrypoint]
    env = kw["environment"]
    assert env["ORCH_SUP_ROLE"] == "worker" and env["ORCH_SUP_HEAD"] == plan.head.address
    assert run_kwargs(plan.head.container, {"VLLM_API_KEY": "k"})["environment"]["ORCH_SUP_API"] == str(
        plan.api_port
    )


def test_watchdog_disabled_is_the_bare_container() -> None:
    from orchestrate.render import compose
    from orchestrate.render.docker import run_kwargs

    plan = _l20(enabled=False)
    kw = run_kwargs(plan.head.container, {"VLLM_API_KEY": "k"})
    assert "restart_policy" not in kw and kw["entrypoint"] == list(plan.head.container.entrypoint)
    assert compose.render(plan)[plan.head.host]["services"]["head"]["restart"] == "no"


def test_the_collective_check_is_a_one_shot_container_without_the_watchdog() -> None:
    # CI caught it: behind the supervisor with restart=always the all-reduce never "exited"
    from orchestrate.ops.collective import worker_spec
    from orchestrate.render.docker import run_kwargs

    plan = _l20()
    spec = worker_spec(type("S", (), {"plan": plan})(), plan.workers[0], 29601, 60)  # type: ignore[arg-type]
    kw = run_kwargs(spec, {})
    assert "restart_policy" not in kw and kw["entrypoint"] == ["python3"]
    assert not any(k.startswith("ORCH_SUP_") for k in kw["environment"])


def test_compose_mounts_the_same_supervisor_and_restarts_always() -> None:
    from orchestrate.render import compose, rendered

    plan = _l20()
    svc = compose.render(plan)[plan.head.host]["services"]["head"]
    assert svc["restart"] == "always"
    assert svc["entrypoint"][:2] == ["python3", compose.SUPERVISOR_PATH]
    assert {
        "type": "bind",
        "source": f"./{compose.SUPERVISOR_FILE}",
        "target": compose.SUPERVISOR_PATH,
        "read_only": True,
    } in svc["volumes"]
    assert rendered("compose", plan, "")[compose.SUPERVISOR_FILE] == bundle("supervisor")


def test_the_firewall_opens_the_watchdog_port_from_workers_to_the_head() -> None:
    from orchestrate.core import ports

    plan = _l20(port=8700)
    needs = [n for n in ports.needs(plan) if n.field == "watchdog.port"]
    assert [(n.src, n.dst, n.first) for n in needs] == [(plan.workers[0].host, plan.head.host, 8700)]


def test_a_parked_member_is_recreated_by_up_and_a_healthy_group_kept() -> None:
    from orchestrate.core.reconcile import Observed, reconcile

    plan = _l20()
    want = {n.host: n.container.labels_dict()["orchestrate.spec-hash"] for n in plan.nodes}
    seen = {n.host: [Observed(n.host, n.container.name, want[n.host], "running")] for n in plan.nodes}
    assert reconcile(plan, seen).noop
    w = plan.workers[0]
    seen[w.host] = [Observed(w.host, w.container.name, want[w.host], "running", "5 lives in a row failed")]
    changes = reconcile(plan, seen)
    assert changes.actions == {plan.head.host: "recreate", w.host: "recreate"}
    assert changes.reasons[w.host] == "parked: 5 lives in a row failed"


def test_watch_events_name_restarts_with_their_cause() -> None:
    from orchestrate.ops.observe import changes, tokens_per_s

    def snap(t: float, restarts: int, phase: str, healthy: bool, tokens: float) -> dict[str, object]:
        sup = {
            "phase": phase,
            "detail": "",
            "last_failure": {"exit": 70, "reason": "worker-1 lost", "cause": ""},
        }
        return {
            "t": t,
            "healthy": healthy,
            "hosts": [
                {"host": "a", "role": "head", "state": "running", "restarts": restarts, "supervisor": sup}
            ],
            "vllm": {
                "healthy": healthy,
                "reason": "connection refused",
                "metrics": {"generation_tokens_total": tokens},
            },
        }

    a, b = snap(0, 0, "serving", True, 100), snap(2, 1, "starting", False, 100)
    lines = changes(a, b)
    assert "head (a): restarted (1 in all); worker-1 lost" in lines
    assert "head (a): watchdog starting" in lines and "deployment: NOT healthy" in lines
    assert tokens_per_s(a, snap(2, 0, "serving", True, 150)) == 25.0
    assert changes(None, a)[0] == "head (a): container running"


def test_a_worker_the_head_no_longer_hears_is_lost_in_status() -> None:
    from orchestrate.ops.observe import mark_lost_members, member_ok

    plan = _l20()  # peer_timeout 10 s

    def rows(seen: dict[str, float], phase: str = "serving") -> list[dict[str, object]]:
        head = {
            "host": plan.head.host,
            "role": "head",
            "state": "running",
            "supervisor": {"phase": phase, "members": {r: {"seen_s_ago": a} for r, a in seen.items()}},
        }
        return [
            head,
            {
                "host": plan.workers[0].host,
                "role": "worker-1",
                "state": "running",
                "supervisor": {"phase": "running"},
            },
        ]

    fresh, stale, never = rows({"1": 0.8}), rows({"1": 12.0}), rows({})
    for r in (fresh, stale, never):
        mark_lost_members(plan, r)  # type: ignore[arg-type]
    assert member_ok(fresh[1]) and "lost" not in fresh[1]
    assert not member_ok(stale[1]) and stale[1]["lost"] == "the head's supervisor has not heard it for 12 s"
    assert not member_ok(never[1]) and "never heard" in str(never[1]["lost"])
    starting = rows({}, phase="starting")  # the group is forming: nobody is lost yet
    mark_lost_members(plan, starting)  # type: ignore[arg-type]
    assert "lost" not in starting[1]
    gone = rows({"1": 12.0}, phase="starting")  # heard, then silent: lost in any phase
    mark_lost_members(plan, gone)  # type: ignore[arg-type]
    assert "has not heard it for 12 s" in str(gone[1]["lost"])
    frozen = rows({"1": 0.5})  # a frozen head: fresh ages in a file nobody has written for 20 s
    frozen[0]["supervisor"]["state_age_s"] = 20.0  # type: ignore[index]
    assert not member_ok(frozen[0]) and member_ok(frozen[1])


def test_a_new_head_admits_only_lives_that_did_not_join_an_earlier_head(group: Group) -> None:
    """The old worker life still heartbeats for a moment after a head restarts: admitting it
    would break the new group again as soon as the worker's next life shows up."""
    head = group.start("head", 0, SLEEPER, ORCH_SUP_PEER_TIMEOUT="60")
    until(lambda: group.state("head", 0).get("phase") == "serving", every=0.1, what="head up")
    body = json.dumps({"rank": 1, "epoch": "oldlife", "head_epoch": "oldhead", "phase": "running"})
    req = urllib.request.Request(
        f"http://127.0.0.1:{group.port}/heartbeat", body.encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert json.loads(resp.read())["admitted"] is False
    assert group.state("head", 0).get("members") in ({}, None)
    group.start("worker", 1, SLEEPER)  # its next life joins, and nothing breaks
    until(lambda: group.state("worker", 1).get("phase") == "running", every=0.1, what="admitted")
    time.sleep(2)
    assert head.poll() is None


def test_lives_that_served_never_add_up_to_a_crash_loop(group: Group) -> None:
    """Faults minutes apart, each after the group served again: healed at once, never parked."""
    dies = [sys.executable, "-c", "import sys, time\ntime.sleep(1.5)\nsys.exit(1)"]
    env = {"ORCH_SUP_NODES": "1", "ORCH_SUP_MAX_FAILURES": "2", "ORCH_SUP_BACKOFF": "5"}
    for _ in range(3):
        t0 = time.monotonic()
        assert _exit(group.start("head", 0, dies, **env)) == 1
        assert time.monotonic() - t0 < 5  # no backoff
    state = group.state("head", 0)
    assert state["failures_in_a_row"] == 0 and [x["served"] for x in state["lives"]] == [True] * 3  # type: ignore[union-attr, index]
