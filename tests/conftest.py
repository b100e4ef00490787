"""Session fixtures for the real-infrastructure tests: the multi-host test bed, images, tiny model.

The bed (hosts with their own sshd + dockerd) is brought up once per run and always torn down.
Outside CI, a machine that cannot host it (not root, no dockerd binary) skips those tests;
in CI (CI=true) that is a failure, so a broken setup can never pass silently.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.testbed import (
    DEFAULT_BASE,
    DEFAULT_BRIDGE,
    DEFAULT_NET,
    TestBed,
    bed_unavailable_reason,
    ensure_base_image,
    ensure_root_dockerd,
)

CACHE = Path(os.environ.get("ORCH_CACHE", "/var/cache/orchestrate"))
ROOT = Path(__file__).resolve().parent.parent
# Every run gets its own working directory (the CLI remembers its last inventory in
# ./.orchestrate/) and its own XDG cache (locks, logs, the sha256 cache), so that nothing a run
# leaves behind changes the next one, and two runs on one machine never share a lock.
WORKDIR = Path(tempfile.mkdtemp(prefix="orchestrate-tests-", dir="/var/tmp"))
RUN_CACHE = WORKDIR / "xdg-cache"
RUN_CACHE.mkdir()
CHILD_ENV = {"XDG_CACHE_HOME": str(RUN_CACHE), "PYTHONUNBUFFERED": "1"}
os.environ["XDG_CACHE_HOME"] = str(RUN_CACHE)  # in-process CLI calls too: HOME stays untouched

# The session's bed: its network, bridge and state dir can be moved (ORCH_BED_NET=10.140.0
# ORCH_BED_BRIDGE=orchbr9 ORCH_BED_BASE=/var/tmp/bed9), so that two checkouts test side by side.
BED_NET = os.environ.get("ORCH_BED_NET", DEFAULT_NET)
BED_BRIDGE = os.environ.get("ORCH_BED_BRIDGE", DEFAULT_BRIDGE)
BED_BASE = Path(os.environ.get("ORCH_BED_BASE", str(DEFAULT_BASE)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(WORKDIR, ignore_errors=True)


# Measured tables (fault times, Ctrl-C times) outlive WORKDIR: written to the repo's ignored
# .pytest-results/ (or $ORCH_RESULTS_DIR; the fault table to $ORCH_FAULT_TABLE when set), each
# started afresh by the first row of a run, and printed at the end of the run.
RESULTS_DIR = Path(os.environ.get("ORCH_RESULTS_DIR") or ROOT / ".pytest-results")
_TABLES: dict[str, tuple[Path, str, list[str]]] = {}  # name -> (path, header, rows this run)


def table_path(name: str) -> Path:
    if name == "fault-table" and os.environ.get("ORCH_FAULT_TABLE"):
        return Path(os.environ["ORCH_FAULT_TABLE"])
    return RESULTS_DIR / f"{name}.md"


def record_row(name: str, header: str, row: str) -> None:
    """Append a row to the measured table `name` (a markdown table with `header`)."""
    if name not in _TABLES:
        path = table_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header.rstrip("\n") + "\n", encoding="utf-8")
        _TABLES[name] = (path, header, [])
    path, _, rows = _TABLES[name]
    rows.append(row)
    with path.open("a", encoding="utf-8") as f:
        f.write(row + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for name, (path, header, rows) in _TABLES.items():
        terminalreporter.write_sep("-", f"{name} ({path})")
        terminalreporter.write_line(header.rstrip("\n"))
        for row in rows:
            terminalreporter.write_line(row)


def need_bed() -> None:
    """Skip (fail in CI) where the bed cannot run."""
    reason = bed_unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the test bed cannot run here: {reason}")
        pytest.skip(f"the test bed cannot run here: {reason}")


@contextlib.contextmanager
def own_bed(tb: TestBed, n: int) -> Iterator[TestBed]:
    """A bed of a module's own (its own net and bridge): cleared of an interrupted run's leftovers,
    n hosts up, and always torn down."""
    ensure_root_dockerd()
    tb.down()
    try:
        tb.up(n)
        yield tb
    finally:
        tb.down()


@pytest.fixture(scope="session")
def bed() -> Iterator[TestBed]:
    need_bed()
    ensure_root_dockerd()
    tb = TestBed(base=BED_BASE, net=BED_NET, bridge=BED_BRIDGE)
    tb.down()  # leftovers of an interrupted run
    tb.up(3)
    try:
        yield tb
    finally:
        tb.down()


# process-wide caches that hold files open on purpose, for the life of the process
_CACHED_FILES = ("/matplotlib/mpl-data/fonts/",)  # matplotlib's FT2Font lru_cache


def _open_fds() -> set[str]:
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if not any(c in target for c in _CACHED_FILES):
                fds.add(f"{fd} -> {target}")
    return fds


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Every test ends with the file descriptors and threads it started with (after a bounded
    grace for threads that are finishing): a leak is an error of that test, not a warning that
    surfaces in whichever later test the garbage collector happens to run in."""
    fds, threads = _open_fds(), set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    while True:
        gc.collect()
        new_fds = sorted(_open_fds() - fds)
        new_threads = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        if not (new_fds or new_threads) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    leaks = [f"fd {f}" for f in new_fds] + [f"thread {t.name}" for t in new_threads]
    if leaks:
        pytest.fail(f"the test leaked: {', '.join(leaks)}", pytrace=False)


LABEL = "orchestrate.deployment"


def clean_bed(bed: TestBed, when: str) -> list[str]:
    """Remove every orchestrate container left on the bed's hosts and wait (bounded) until their
    ports are free; returns what was removed, and says so on stderr. Raises when a host stays
    busy, naming it and its listeners."""
    removed: list[str] = []
    # a host a fault left crashed, frozen or without its daemons is booted or healed first
    # (idempotent): one module's broken fault must not fail every module after it
    bed.up(len(bed.hosts))
    for host in bed.hosts:
        res = bed.docker(host.index, "ps", "-aq", "--filter", f"label={LABEL}", timeout=60)
        ids = res.stdout.split()
        if ids:
            names = bed.docker(host.index, "inspect", "--format", "{{.Name}}", *ids, timeout=60)
            bed.docker(host.index, "rm", "-f", *ids, timeout=120)
            removed += [f"{host.name}:{n.strip('/')}" for n in names.stdout.split()]
    if removed:
        sys.stderr.write(f"[bed] {when}: removed leftover containers {', '.join(removed)}\n")
    for host in bed.hosts:
        busy = _wait_ports_free(bed, host.index, deadline=time.monotonic() + 60)
        if busy:
            raise RuntimeError(
                f"bed host {host.name} still has listeners {busy} {when}; "
                "a process outside any container holds them"
            )
    return removed


def _wait_ports_free(bed: TestBed, i: int, deadline: float) -> list[str]:
    """Listening TCP ports on host i other than its sshd, once none are left or at the deadline."""
    while True:
        out = bed.run(i, "ss", "-Htln", timeout=30).stdout
        busy = sorted(
            {line.split()[3] for line in out.splitlines() if line.split()[3:4]}
            - {"0.0.0.0:22", "[::]:22", "*:22"}
        )
        if not busy or time.monotonic() > deadline:
            return busy
        time.sleep(0.5)


@pytest.fixture(scope="module", autouse=True)
def bed_clean_around_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module that uses the bed starts on a clean bed and leaves one, whatever its tests did:
    one failing module never fails the next."""
    uses_bed = any(
        "bed" in item.fixturenames for item in request.session.items if item.module is request.module
    )
    if not uses_bed:
        yield
        return
    bed: TestBed = request.getfixturevalue("bed")
    clean_bed(bed, f"before {request.module.__name__}")
    try:
        yield
    finally:
        clean_bed(bed, f"after {request.module.__name__}")


@contextlib.contextmanager
def deployed(path: Path, timeout: float = 900) -> Iterator[Any]:
    """`up` (JSON report) and, whatever happens in the block or in `up` itself, `down`."""
    try:
        yield orch_json("up", str(path), timeout=timeout)
    finally:
        down = orch("down", str(path), timeout=300)
        if down.returncode != 0:
            sys.stderr.write(f"[bed] down {path.name} failed: {down.stderr[-2000:]}\n")


@pytest.fixture(scope="session")
def base_image() -> str:
    need_bed()
    ensure_root_dockerd()
    return ensure_base_image()


def _build(kind: str, base: str) -> str:
    from orchestrate import images

    tag = {"ray": images.RAY_IMAGE, "smg": images.SMG_IMAGE}.get(kind, images.CPU_IMAGE)
    images.build_image(
        kind,
        tag=tag,
        base=base,
        cache_dir=CACHE,  # type: ignore[arg-type]
        on_event=lambda line: print(f"[image {kind}] {line}", file=sys.stderr),
    )
    return tag


@pytest.fixture(scope="session")
def ray_image(base_image: str) -> str:
    return _build("ray", base_image)


@pytest.fixture(scope="session")
def smg_image(base_image: str) -> str:
    """SMG, the router in front of replicas (48 MB wheelhouse from PyPI, cached)."""
    return _build("smg", base_image)


@pytest.fixture(scope="session")
def cpu_image(base_image: str) -> str:
    return _build("vllm-cpu", base_image)


@pytest.fixture(scope="session")
def tiny_model(bed: TestBed, cpu_image: str) -> Path:
    """The tiny random Qwen2 model, at the same path on every host (the bed's shared dir)."""
    from orchestrate import images

    out = bed.shared_dir / "models" / "tiny"
    images.make_tiny_model(out, image=cpu_image)
    return out


# vLLM on CPU, PP=2 across two bed hosts (the reference notes' working settings)
CPU_SERVE: dict[str, Any] = {
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 2,
    "max_model_len": 512,
    "dtype": "float32",
    "port": 8009,
    "startup_timeout": 600,
    # no C++ compiler in the image, and PP needs the warm-up pass that --enforce-eager skips
    "extra_args": ["--compilation-config", '{"mode":2,"backend":"eager"}', "--kv-cache-memory-bytes", "64M"],
}
# vLLM's CPU workers must be bound to cores explicitly when world size > 1
CPU_BIND = [{"VLLM_CPU_OMP_THREADS_BIND": "0"}, {"VLLM_CPU_OMP_THREADS_BIND": "1"}]


@pytest.fixture(scope="session")
def ray_model(bed: TestBed) -> dict[str, str]:
    """A model section for Ray-only tests (serve.start false): preflight wants config.json."""
    model = bed.shared_dir / "models" / "ray-only"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}\n")
    return {"host_dir": str(model.parent), "name": "ray-only"}


def until(
    cond: Callable[[], Any], timeout: float = 30.0, what: str = "the condition", every: float = 1.0
) -> Any:
    """cond()'s first truthy value, polled every `every` seconds; fails after `timeout` naming
    `what` (a condition with a deadline, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def bed_inventory(bed: TestBed, path: Path, n: int, **sections: Any) -> Path:
    """Write an inventory for the bed's first n hosts; `sections` override top-level keys."""
    hosts = [
        {
            "name": h.name,
            "address": h.address,
            "role": "head" if h.index == 1 else "worker",
            "gpus": 1,
            "nic": h.nic,
        }
        for h in bed.hosts[:n]
    ]
    data: dict[str, Any] = {
        "name": "bedtest",
        "image": "orchestrate/ray:2.60.0",
        "images": {"source": "local"},
        "accelerator": "cpu",
        "ssh": {
            "key": str(bed.key_path),
            "known_hosts": str(bed.known_hosts_path),
            "connect_timeout": 5,
            "command_timeout": 60,
        },
        "container": {"shm_size": "1Gi", "stop_timeout": 20},
        "model": {"host_dir": str(bed.shared_dir / "models"), "name": "tiny"},
        "hosts": hosts,
    }
    for key, value in sections.items():
        if key == "gpus":
            for host in data["hosts"]:
                host["gpus"] = value
        elif key == "host_env":
            for host, env in zip(data["hosts"], value, strict=False):
                host["env"] = env
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def orch(
    *args: str, timeout: float = 900, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a user would; its stderr is echoed so CI logs show progress."""
    full_env = {**os.environ, **CHILD_ENV, **(env or {})}
    t0 = time.monotonic()
    # not the checkout: `up` remembers its inventory in ./.orchestrate/
    res = subprocess.run(
        [sys.executable, "-m", "orchestrate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=WORKDIR,
    )
    res.elapsed = time.monotonic() - t0  # type: ignore[attr-defined]
    sys.stderr.write(
        f"$ orchestrate {' '.join(args)}  -> {res.returncode} ({res.elapsed:.1f}s)\n{res.stderr[-6000:]}\n"
    )  # type: ignore[attr-defined]
    return res


def _default_sigint() -> None:
    # A child started from a background job of a non-interactive shell inherits SIGINT as
    # *ignored*, and Python then installs no KeyboardInterrupt handler: a test that sends Ctrl-C
    # sets the receiving side up itself, whatever launched the suite.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def orch_popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The real CLI in the background (stdout/stderr piped, text), ready to receive SIGINT."""
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrate", *args],
        cwd=WORKDIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **CHILD_ENV, **(env or {})},
        preexec_fn=_default_sigint,
    )


@contextlib.contextmanager
def background(*args: str, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """orch_popen that never outlives the test: killed and reaped on the way out, pass or fail."""
    proc = orch_popen(*args, env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


class Watched:
    """The real CLI in the background (orch_popen), its stderr read as it comes, so that a test
    acts on a progress line the moment it appears, with a deadline, never a fixed sleep."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = orch_popen(*args, env=env)
        self.lines: list[str] = []
        self.exited_at = 0.0  # time.monotonic() when finish() saw the exit
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="watched-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first new stderr line matching `pattern`; fails when none comes by the deadline or
        the command exits first."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout:g}s:\n" + self.stderr[-4000:]
                )
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self._queue.put(None)
                raise AssertionError(
                    f"orchestrate {' '.join(self.args)} exited "
                    f"({self.proc.wait()}) before a line matching {pattern!r}:"
                    f"\n{self.stderr[-4000:]}"
                )
            self.lines.append(line)
            if rx.search(line):
                return line

    def interrupt(self) -> float:
        """Ctrl-C (SIGINT to the process); returns when it was sent (time.monotonic())."""
        self.proc.send_signal(signal.SIGINT)
        return time.monotonic()

    def finish(self, timeout: float) -> int:
        """Wait (bounded) for the exit and the rest of stderr; returns the exit code."""
        try:
            code = self.proc.wait(timeout)
            self.exited_at = time.monotonic()
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"orchestrate {' '.join(self.args)} still running after {timeout:g}s:\n{self.stderr[-4000:]}"
            ) from None
        self._drain()
        return code

    def _drain(self) -> None:
        self._reader.join(30)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._drain()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        sys.stderr.write(
            f"$ orchestrate {' '.join(self.args)}  -> {self.proc.returncode}\n{self.stderr[-6000:]}\n"
        )

    def __enter__(self) -> Watched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def orch_json(*args: str, timeout: float = 900) -> Any:
    res = orch("--output", "json", *args, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


def ps(bed: TestBed, i: int) -> list[str]:
    """Names and IDs of every container on host i, straight from its engine (not via orchestrate)."""
    res = bed.docker(i, "ps", "-a", "--format", "{{.ID}} {{.Names}} {{.Status}}")
    assert res.returncode == 0, res.stderr
    return [line for line in res.stdout.splitlines() if line.strip()]
