from __future__ import annotations
"""Is the engine making progress? Samples of vLLM's Prometheus /metrics in, a verdict out.

`/health` answers 200 through a tensor-parallel deadlock (gonka PR #1421: 5-22 minutes) and with
half of a pipeline gone, so liveness is judged by the engine's own counters: while requests are
running or waiting, at least one of the progress counters must advance. A stall of
`stall_after_s` is a hang. Counters that go backwards mean the engine restarted (progress).

Which counters: generated and prompt tokens, finished requests, and engine iterations that had an
output (`vllm:iteration_tokens_total_count`; a step that only advances a chunked prefill has no
output and does not move it, so a single prefill longer than the threshold would look like a
hang: the default of 60 s is far above a prefill on any GPU this tool targets).

Pure and standard-library only: status, watch and the in-container watchdog share it.
"""


import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

STALL_AFTER_S = 45.0
BUSY = ("vllm:num_requests_running", "vllm:num_requests_waiting")
PROGRESS = (
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_total",
    "vllm:request_success_total",
    "vllm:iteration_tokens_total_count",
)
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)(?:\s+\S+)?$")


def metric_sums(text: str, names: Iterable[str] = (*BUSY, *PROGRESS)) -> dict[str, float]:
    """Each wanted metric summed over its series (engines, models, finish reasons), from the
    Prometheus text format; NaN and unparsable values are skipped."""
    wanted, out = set(names), dict[str, float]()
    for line in text.splitlines():
        if not line or line[0] == "#" or not (m := _LINE.match(line.strip())):
            continue
        name = m.group(1)
        if name not in wanted:
            continue
        try:
            value = float(m.group(2))
        except ValueError:
            continue
        if not math.isnan(value):
            out[name] = out.get(name, 0.0) + value
    return out


@dataclass(frozen=True)
class Sample:
    t: float  # monotonic seconds
    busy: float  # requests running + waiting
    counters: Mapping[str, float]

    @classmethod
    def of(cls, t: float, text: str) -> Sample:
        sums = metric_sums(text)
        return cls(t, sum(sums.get(n, 0.0) for n in BUSY), {n: sums[n] for n in PROGRESS if n in sums})


State = Literal["unknown", "idle", "progressing", "stalled"]


@dataclass(frozen=True)
class Verdict:
    state: State
    stalled_s: float = 0.0  # how long nothing advanced while busy
    detail: str = ""

    @property
    def hung(self) -> bool:
        return self.state == "stalled"


@dataclass
class ProgressWatch:
    """Feed samples in time order; each answer says whether the engine is hung."""

    stall_after_s: float = STALL_AFTER_S
    _last: Sample | None = field(default=None, repr=False)
    _moved_at: float | None = field(default=None, repr=False)

    def feed(self, s: Sample) -> Verdict:
        prev, self._last = self._last, s
        if prev is None or s.busy <= 0 or self._moved(prev, s):
            self._moved_at = s.t
            if prev is None:
                return Verdict("unknown", detail="first sample")
            if s.busy <= 0:
                return Verdict("idle", detail="no request running or waiting")
            return Verdict("progressing", detail=self._delta(prev, s))
        assert self._moved_at is not None
        stalled = s.t - self._moved_at
        busy = f"{s.busy:g} request(s) running or waiting"
        if stalled >= self.stall_after_s:
            return Verdict(
                "stalled",
                stalled,
                f"{busy} and no token, request or engine step "
                f"for {stalled:.0f} s (threshold {self.stall_after_s:g} s)",
            )
        return Verdict("progressing", stalled, f"{busy}, nothing advanced for {stalled:.0f} s")

    @staticmethod
    def _moved(prev: Sample, s: Sample) -> bool:
        common = set(prev.counters) & set(s.counters)
        if not common:
            return bool(s.counters) != bool(prev.counters)
        # a counter going backwards: the engine restarted, which is not a hang
        return any(s.counters[n] != prev.counters[n] for n in common)

    @staticmethod
    def _delta(prev: Sample, s: Sample) -> str:
        dt = max(s.t - prev.t, 1e-9)
        gen = s.counters.get(PROGRESS[0], 0.0) - prev.counters.get(PROGRESS[0], 0.0)
        return f"{gen / dt:.1f} generated tokens/s" if gen > 0 else "counters advanced"

"""The line of a vLLM log that says why it died: pure text in, one line out.

When a rank fails, the last lines of its log are vLLM's wrappers, not the cause: "RuntimeError:
Engine core initialization failed. See root cause above.", "WorkerProc initialization failed due
to an exception in a background process. See stack trace for root cause." The cause is the final
line of the first traceback that is not such a wrapper, often printed by another process (the
EngineCore or a worker), each line behind a `(EngineCore pid=26) ERROR 12-02 08:12:44 [core.py:1510]`
prefix. `up`, `status` and the watchdog all show that line.
"""


import re
from dataclasses import dataclass

__all__ = ["Cause", "root_cause"]

# `(EngineCore pid=26) ERROR 12-02 08:12:44 [core.py:1510] text` -> ("EngineCore", "ERROR", text);
# older vLLM prints `(RayWorkerWrapper pid=1234, ip=10.0.0.2) ...` and `ERROR 12-02 08:12:44 x.py:12] `
_PREFIX = re.compile(
    r"^(?:\((?P<proc>[\w.-]+)(?: pid=\d+)?(?:, ip=[\d.:a-fA-F]+)?\)\s*)?"
    r"(?:(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+"
    r"\[?[\w./-]+:\d+\]\s?)?"
)
_EXCEPTION = re.compile(
    r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning|Failure)\w*)"
    r"(?::\s*(?P<msg>.*))?$"
)
# wrappers that point elsewhere for the cause; never the cause themselves
_WRAPPERS = (
    "see root cause above",
    "see stack trace for root cause",
    "initialization failed due to an exception in a background process",
    "engine core initialization failed",
    "engine process failed to start",
    "worker failed with error",
    "the above exception was the direct cause",
    "during handling of the above exception",
)
_NOT_CAUSES = ("KeyboardInterrupt", "SystemExit", "asyncio.exceptions.CancelledError", "CancelledError")


@dataclass(frozen=True)
class Cause:
    line: str  # "ValueError: No available memory for the cache blocks. ..."
    process: str | None  # the vLLM process that raised it ("EngineCore", "Worker_PP1"), if named

    def __str__(self) -> str:
        return f"{self.line} (in {self.process})" if self.process else self.line


def _strip(raw: str) -> tuple[str | None, str | None, str]:
    m = _PREFIX.match(raw)
    if not m:
        return None, None, raw.rstrip()
    return m.group("proc"), m.group("level"), raw[m.end() :].rstrip()


def _is_wrapper(text: str) -> bool:
    low = text.lower()
    return any(w in low for w in _WRAPPERS)


def _final_lines(lines: list[tuple[str | None, str | None, str]]) -> list[Cause]:
    """The exception line that ends each traceback, in the order they were printed."""
    found: list[Cause] = []
    open_tb: dict[str | None, bool] = {}  # tracebacks interleave across processes: one per prefix
    for i, (proc, _level, text) in enumerate(lines):
        if text.startswith("Traceback (most recent call last)"):
            open_tb[proc] = True
            continue
        if not open_tb.get(proc) or text.startswith((" ", "\t")) or not text:
            continue
        m = _EXCEPTION.match(text)
        if m:
            if _VALIDATION.search(text):
                text = f"{text}: {_validation_detail(lines[i + 1 :], proc)}".rstrip(": ")
            found.append(Cause(text[:400], proc))
            open_tb[proc] = False
    return found


# pydantic's "1 validation error for ModelConfig" says nothing; what failed is on the next lines:
# an optional field name, then the indented message ending in "[type=..., input_value=...]"
_VALIDATION = re.compile(r"ValidationError: \d+ validation errors? for ")


def _validation_detail(rest: list[tuple[str | None, str | None, str]], proc: str | None) -> str:
    field = ""
    for p, _level, text in rest[:6]:
        if p != proc or not text.strip():
            continue
        if not text.startswith((" ", "\t")):
            if field:
                break
            field = text.strip()
            continue
        message = re.sub(r"\s*\[type=.*$", "", text.strip())
        return f"{field}: {message}" if field else message
    return field


def root_cause(text: str) -> Cause | None:
    """The first exception (or, with no traceback, the first ERROR line) that is not a wrapper."""
    lines = [_strip(raw) for raw in text.splitlines()]
    finals = _final_lines(lines)
    real = [c for c in finals if not _is_wrapper(c.line) and not c.line.startswith(_NOT_CAUSES)]
    if real:
        return real[0]
    errors = [
        Cause(t[:400], p)
        for p, level, t in lines
        if level in ("ERROR", "CRITICAL")
        and t
        and not t.startswith(" ")
        and not _is_wrapper(t)
        and not t.startswith("Traceback")
    ]
    if errors:
        return errors[0]
    return finals[0] if finals else None

"""The supervisor: PID 1 of every node container (docker run and compose), around vLLM or Ray.

It keeps a multi-node group whole while nobody runs orchestrate. Docker restarts a container that
exits (restart policy always); this program decides when to exit:

- its own child (`vllm serve`, or the Ray entrypoint) exited: exit with its code (72 for 0), the
  root-cause line of the child's log recorded;
- head: a worker's heartbeat stopped for `peer_timeout` seconds, or a worker came back as a new
  life (a headless rank cannot rejoin a running group): exit 70, so the whole group re-forms;
- head: requests are running or waiting and vLLM's progress counters in /metrics have not moved
  for `stall_after` seconds (a hang that /health does not see), or the API has not answered
  /metrics for as long, or /health has not answered 200 for HEALTH_GRACE (120 s), or, while
  the gauges say idle (a hung engine stops publishing them), a 1-token canary request sent every
  CANARY_EVERY (10 s) has not finished within `stall_after` (at most 30 s): exit 71;
- worker: the head stopped answering for `peer_timeout` seconds, or answers as a new life: exit 70.

Workers heartbeat to the head (POST /heartbeat on the head's watchdog port, every second) and
start their child only once the head has admitted them into its current life, so a restarted
group re-forms in the same order `up` uses. A crash loop is lives that end before the group
served (head: /health 200; worker: the head said it serves): before each start the supervisor
backs off by how many such lives came in a row (0 s for the first, then 10 s doubling, at most
300 s); after `max_failures` of them it parks: it stays up, starts nothing, and says why in its
state file, which `orchestrate status` reads. A life that served ends any run of failures: faults
minutes apart are each healed at once, never counted as a loop.

Standard library only: it runs in any image with python3, shipped as `python3 -c` source together
with orchestrate.agents.health and orchestrate.agents.rootcause (orchestrate.agents.bundle).
"""


import collections
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


EXIT_PEER = 70  # the group broke: a peer was lost or restarted
EXIT_HANG = 71  # the engine stopped making progress
EXIT_CHILD_ZERO = 72  # the child exited 0, which a server never should
HEARTBEAT_S = 1.0
LOG_LINES = 4000


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"ORCH_SUP_{name}", default)


class Supervisor:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.role = _env("ROLE", "head")
        self.rank = int(_env("RANK", "0"))
        self.nodes = int(_env("NODES", "1"))
        self.port = int(_env("PORT", "8626"))
        self.head = _env("HEAD")  # worker: head address
        self.api = int(_env("API", "0"))  # head: vLLM's API port (0: no vLLM to watch)
        self.loose = _env("LOOSE") == "1"  # a Ray cluster without vLLM: members come and go
        self.stall_after = float(_env("STALL_AFTER", "45"))
        self.peer_timeout = float(_env("PEER_TIMEOUT", "10"))
        self.max_failures = int(_env("MAX_FAILURES", "5"))
        self.backoff_base = float(_env("BACKOFF", "10"))
        self.served_after = float(_env("SERVED_AFTER", "30"))  # no API to ask: alive this long
        self.path = _env("STATE", "/tmp/orchestrate/supervisor.json")
        self.epoch = secrets.token_hex(6)
        self.lock = threading.Lock()
        self.phase = "starting"
        self.detail = ""
        self.members: dict[int, dict[str, Any]] = {}  # head: rank -> its life, address, last beat
        self.broken = ""  # head: why the group broke (set by the heartbeat handler)
        self.head_seen: dict[str, Any] = {}  # worker: the head's last answer
        self.head_ok_at = 0.0
        self.head_epoch = ""
        self.child: subprocess.Popen[bytes] | None = None
        self.child_code: int | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.started = time.time()
        self.served_at: float | None = None
        self.api_ok_at = 0.0  # monotonic: the API's last answer to /metrics
        self.health_ok_at = 0.0  # monotonic: the last /health 200 (a thread asks every 10 s)
        self.health_timeout = float(_env("HEALTH_TIMEOUT", "30"))  # vLLM 0.6 PP: /health is slow
        self.health_grace = float(_env("HEALTH_GRACE", "120"))
        self.health_every = float(_env("HEALTH_EVERY", "10"))
        self.tick_at = time.monotonic()  # the watch loop's last turn: /livez fails if it stops
        self.canary_every = float(_env("CANARY_EVERY", "10"))  # 0: no canary requests
        # one prefill of a token and one decode step on an idle engine: 30 s is ages
        self.canary_timeout = min(self.stall_after, 30.0)
        self.canary_started, self.canary_done = 0.0, True
        self.history = self._load()
        self.stopping = False

    # ------------------------------------------------------------ state

    def _load(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                lives = json.load(f).get("lives", [])
            return lives if isinstance(lives, list) else []
        except (OSError, ValueError):
            return []

    def failures(self) -> int:
        n = 0
        for life in reversed(self.history):
            if life.get("stopped") or life.get("served"):
                break
            n += 1
        return n

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        with self.lock:
            members = {
                str(r): {
                    "epoch": m["epoch"],
                    "address": m["address"],
                    "phase": m.get("phase", ""),
                    "seen_s_ago": round(now - m["seen"], 1),
                }
                for r, m in sorted(self.members.items())
            }
        return {
            "epoch": self.epoch,
            "role": self.role,
            "rank": self.rank,
            "phase": self.phase,
            "detail": self.detail,
            "pid": os.getpid(),
            "started": self.started,
            "served_at": self.served_at,
            "restarts": len(self.history),
            "failures_in_a_row": self.failures(),
            "head_epoch": self.head_epoch,
            "members": members,
            "lives": self.history[-20:],
            "saved_at": now,
            "last_failure": next((x for x in reversed(self.history) if not x.get("stopped")), None),
        }

    def save(self) -> None:
        data = json.dumps(self.snapshot(), indent=1)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
        os.replace(tmp, self.path)

    def set_phase(self, phase: str, detail: str = "") -> None:
        if (phase, detail) != (self.phase, self.detail):
            self.phase, self.detail = phase, detail
            self.say(f"{phase}" + (f": {detail}" if detail else ""))
        self.save()

    def say(self, text: str) -> None:
        who = "head" if self.role == "head" else f"worker-{self.rank}"
        print(f"orchestrate-supervisor [{who} {self.epoch}]: {text}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------ head: heartbeats in

    def beat(self, msg: dict[str, Any]) -> dict[str, Any]:
        rank, epoch = int(msg["rank"]), str(msg["epoch"])
        with self.lock:
            m = self.members.get(rank)
            if str(msg.get("head_epoch") or self.epoch) != self.epoch and (m is None or m["epoch"] != epoch):
                # a life of that rank that joined an earlier head: it is about to exit
                return {"epoch": self.epoch, "phase": self.phase, "admitted": False}
            if m is None or (self.loose and m["epoch"] != epoch):
                m = self.members[rank] = {"epoch": epoch, "address": str(msg.get("address", ""))}
            elif m["epoch"] != epoch and not self.broken:
                self.broken = f"worker-{rank} restarted (life {m['epoch']} -> {epoch})"
            m["seen"], m["phase"] = time.time(), str(msg.get("phase", ""))
            admitted = m["epoch"] == epoch and self.phase in ("starting", "serving")
        return {"epoch": self.epoch, "phase": self.phase, "admitted": admitted}

    def serve_http(self) -> None:
        sup = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/state":
                    self._send(200, sup.snapshot())
                elif self.path == "/livez":  # Kubernetes' liveness probe
                    why = sup.unlive()
                    self._send(503 if why else 200, {"phase": sup.phase, "why": why})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self) -> None:
                try:
                    length = int(self.headers.get("Content-Length", "0"))
                    msg = json.loads(self.rfile.read(min(length, 65536)))
                    self._send(200, sup.beat(msg))
                except (ValueError, KeyError, TypeError) as exc:
                    self._send(400, {"error": str(exc)})

        server = ThreadingHTTPServer(("0.0.0.0", self.port), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def unlive(self) -> str:
        """Why this supervisor should be restarted from outside, or '': it is deciding to exit
        (a hang, a lost peer), or its own loop stopped turning."""
        if self.phase in ("hung", "exiting"):
            return f"{self.phase}: {self.detail}"
        stuck = time.monotonic() - self.tick_at
        return f"the supervisor's loop has not turned for {stuck:.0f} s" if stuck > 30 else ""

    # ------------------------------------------------------------ worker: heartbeats out

    def heartbeats(self) -> None:
        url = f"http://{self._hostport(self.head)}/heartbeat"
        while True:
            body = json.dumps(
                {
                    "rank": self.rank,
                    "epoch": self.epoch,
                    "phase": self.phase,
                    "head_epoch": self.head_epoch,
                    "address": os.environ.get("VLLM_HOST_IP", ""),
                }
            ).encode()
            try:
                req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=3) as resp:
                    answer = json.loads(resp.read())
                with self.lock:
                    self.head_seen, self.head_ok_at = answer, time.monotonic()
            except (OSError, ValueError):
                pass
            time.sleep(HEARTBEAT_S)

    def _hostport(self, host: str) -> str:
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    # ------------------------------------------------------------ the child

    def start_child(self) -> None:
        self.child = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        threading.Thread(target=self._copy, args=(self.child.stdout,), daemon=True).start()

    def _copy(self, stream: Any) -> None:
        out = sys.stdout.buffer
        for raw in iter(stream.readline, b""):
            out.write(raw)
            out.flush()
            self.log.append(raw.decode("utf-8", "replace"))

    def reap(self) -> None:
        """PID 1's duty: reap every orphan; note the child's own exit."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.child is not None and pid == self.child.pid:
                self.child_code = os.waitstatus_to_exitcode(status)

    def kill_child(self, grace: float = 5.0) -> None:
        if self.child is None or self.child_code is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(OSError):
                os.killpg(self.child.pid, sig)
            deadline = time.monotonic() + wait
            while self.child_code is None and time.monotonic() < deadline:
                self.reap()
                time.sleep(0.05)
            if self.child_code is not None:
                return

    # ------------------------------------------------------------ ending a life

    def end(self, code: int, reason: str, cause: str = "") -> int:
        self.history.append(
            {
                "epoch": self.epoch,
                "started": self.started,
                "ended": time.time(),
                "exit": code,
                "reason": reason,
                "cause": cause,
                "served": self.served_at is not None,
                "stopped": self.stopping,
            }
        )
        self.say(f"exit {code}: {reason}" + (f" -- cause: {cause}" if cause else ""))
        self.set_phase("exiting", reason)
        self.kill_child()
        return code

    def on_term(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        if self.child is not None and self.child_code is None:
            with contextlib.suppress(OSError):
                os.killpg(self.child.pid, signal.SIGTERM)

    # ------------------------------------------------------------ the life

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        if self.role == "head":
            self.serve_http()
        n = self.failures()
        if n >= self.max_failures:
            last = self.history[-1] if self.history else {}
            why = last.get("cause") or last.get("reason") or "?"
            self.set_phase(
                "parked", f"{n} lives in a row ended before serving; last: {why}; fix it, then orchestrate up"
            )
            while not self.stopping:
                time.sleep(0.5)
            return 143
        if n:
            delay = 0.0 if n == 1 else min(self.backoff_base * 2 ** (n - 2), 300.0)
            self.set_phase("backoff", f"{n} lives in a row ended before serving; waiting {delay:g} s")
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and not self.stopping:
                time.sleep(0.2)
        if self.stopping:
            return 143
        if self.role == "worker":
            threading.Thread(target=self.heartbeats, daemon=True).start()
            if not self.wait_admission():
                return self.end(143, "stopped")
        self.set_phase("starting", " ".join(self.argv[:2]))
        self.start_child()
        if self.role == "worker":
            self.set_phase("running", f"joined the head's life {self.head_epoch}")
        return self.watch()

    def wait_admission(self) -> bool:
        self.set_phase("waiting", f"for the head at {self.head}")
        while not self.stopping:
            with self.lock:
                seen = dict(self.head_seen)
            if seen.get("admitted") and seen.get("phase") in ("starting", "serving"):
                self.head_epoch = str(seen["epoch"])
                return True
            time.sleep(0.2)
        return False

    def watch(self) -> int:
        progress = ProgressWatch(self.stall_after)
        next_probe = next_save = time.monotonic()
        while True:
            time.sleep(0.2)
            self.tick_at = time.monotonic()
            self.reap()
            if self.stopping:
                self.kill_child(grace=25.0)
                return self.end(143, "stopped (SIGTERM)")
            if self.child_code is not None:
                code = self.child_code
                found = root_cause("".join(self.log))
                return self.end(
                    code or EXIT_CHILD_ZERO,
                    f"{self.argv[0]} exited with code {code}",
                    str(found) if found else "",
                )
            broken = self.group_broken()
            if broken:
                return self.end(EXIT_PEER, broken)
            now = time.monotonic()
            if self.role == "head" and self.api and now >= next_probe:
                next_probe = now + 2.0
                hung = self.probe(progress)
                if hung:
                    self.set_phase("hung", hung)
                    return self.end(EXIT_HANG, "engine hang", hung)
            elif (
                self.role == "head"
                and not self.api
                and self.phase == "starting"
                and time.time() - self.started >= self.served_after
            ):
                # nothing to ask (a Ray cluster without vLLM): serving once the child lasted
                self.served_at = time.time()
                self.set_phase("serving")
            if now >= next_save:
                next_save = now + 1.0  # status reads members' ages from it
                self.save()

    def group_broken(self) -> str:
        now = time.time()
        with self.lock:
            if self.role == "worker":
                if (
                    self.served_at is None
                    and self.head_seen.get("phase") == "serving"
                    and (self.head_seen.get("epoch") == self.head_epoch)
                ):
                    self.served_at = now
                age = time.monotonic() - self.head_ok_at
                if self.head_seen.get("epoch") not in (None, self.head_epoch):
                    return f"the head restarted (life {self.head_epoch} -> {self.head_seen['epoch']})"
                if age > self.peer_timeout:
                    return f"the head at {self.head} did not answer for {age:.0f} s"
                return ""
            if self.broken:
                return self.broken
            if self.loose:
                return ""
            for rank, m in self.members.items():
                if now - m["seen"] > self.peer_timeout:
                    return f"worker-{rank} lost: no heartbeat for {now - m['seen']:.0f} s"
        return ""

    def probe(self, progress: ProgressWatch) -> str:
        """Head: /health until serving, then /metrics each probe; the hang's text, or ''."""
        base = f"http://127.0.0.1:{self.api}"
        if self.phase != "serving":
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
                    if resp.status == 200:
                        self.served_at = time.time()
                        self.api_ok_at = self.health_ok_at = time.monotonic()
                        self.set_phase("serving")
                        threading.Thread(target=self.health_loop, daemon=True).start()
            except OSError:
                pass
            return ""
        failing = time.monotonic() - self.health_ok_at
        if failing >= self.health_grace:  # what a /health liveness probe would restart
            return f"vLLM's /health has not answered 200 for {failing:.0f} s"
        try:
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
                text = resp.read().decode("utf-8", "replace")
        except OSError as exc:
            # an API that stopped answering is a hang as well, whatever the engine does
            silent = time.monotonic() - (self.api_ok_at or time.monotonic())
            if silent >= self.stall_after:
                return f"vLLM's API did not answer /metrics for {silent:.0f} s ({exc})"
            return ""
        self.api_ok_at = time.monotonic()
        verdict = progress.feed(Sample.of(time.monotonic(), text))
        if verdict.hung:
            return verdict.detail
        return self.canary() if verdict.state == "idle" else ""

    def canary(self) -> str:
        """vLLM publishes its request gauges from the engine loop: a hung engine's last word may
        well be "idle", however many requests queue up behind it. So while it looks idle, a
        1-token request every CANARY_EVERY seconds (in a thread); one that has not finished
        within stall_after (at most 30 s) is a hang. The hang's text, or ''."""
        now = time.monotonic()
        with self.lock:
            started, done = self.canary_started, self.canary_done
        if started and not done:
            late = now - started
            return (
                f"vLLM looks idle but a 1-token canary request has not finished in {late:.0f} s"
                if late >= self.canary_timeout
                else ""
            )
        if self.canary_every > 0 and now - started >= self.canary_every:
            with self.lock:
                self.canary_started, self.canary_done = now, False
            threading.Thread(target=self._canary, daemon=True).start()
        return ""

    def _canary(self) -> None:
        base = f"http://127.0.0.1:{self.api}"
        key = os.environ.get("VLLM_API_KEY", "")
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
        try:
            req = urllib.request.Request(f"{base}/v1/models", headers=headers)
            with urllib.request.urlopen(req, timeout=10) as resp:
                model = json.loads(resp.read())["data"][0]["id"]
            body = json.dumps({"model": model, "prompt": "ok", "max_tokens": 1}).encode()
            req = urllib.request.Request(f"{base}/v1/completions", body, headers)
            with urllib.request.urlopen(req, timeout=self.canary_timeout + 30):
                pass
        except (OSError, ValueError, KeyError, IndexError):
            pass  # an error answer is an answer: the engine is not stuck
        with self.lock:
            self.canary_done = True

    def health_loop(self) -> None:
        """/health every 10 s once serving, in its own thread: with PP on vLLM 0.6 it is answered
        by the busy engine and may take long; the watch loop must not wait for it."""
        url = f"http://127.0.0.1:{self.api}/health"
        while not self.stopping:
            try:
                with urllib.request.urlopen(url, timeout=self.health_timeout) as resp:
                    if resp.status == 200:
                        self.health_ok_at = time.monotonic()
            except OSError:
                pass
            time.sleep(self.health_every)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "orchestrate-supervisor":
        argv = argv[1:]
    if not argv:
        print("usage: supervisor COMMAND [ARG...]", file=sys.stderr)
        return 2
    return Supervisor(argv).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
