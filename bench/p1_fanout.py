"""P1: does `orchestrate up` fan out, or does its time grow with the number of hosts?

A Ray cluster (image orchestrate/ray:2.60.0, backend ray, serve.start false, 1 "GPU" per host, so
TP 1 x PP n) on a private 6-host test bed (tests/testbed: each host its own network namespace,
sshd and Docker Engine). The Ray image is pre-seeded on all 6 hosts, so no image is transferred
(orchestrate still checks it on every host). Measured: the time from spawning
`orchestrate --output json up INVENTORY` to "Ray ready", i.e. the harness reading the stderr line
`ray ... N nodes alive, N GPUs, IPs match the inventory`; the JSON report's phase times split it.

  baseline   the same inventory on the first 2 hosts
  candidate  all 6 hosts

Runs alternate (ABBA: 2, 6, 6, 2, 2, 6, ...), with `orchestrate down` between runs. Ratio =
median(6 hosts) / median(2 hosts), target <= 1.3.

    python bench/p1_fanout.py                  # 3 repetitions each, ~6 minutes on 2 cores
    python bench/p1_fanout.py --reps 5 --json p1.json

Needs root, the test-bed tools and orchestrate/ray:2.60.0 in this machine's Docker Engine
(`orchestrate image build ray`). The bed is always torn down. On a machine with few cores the
6 Ray nodes' own start-up (about 6 Python processes per node) competes for the same CPUs: the
phase table shows how much of the growth is orchestrate's (connect ... workers) and how much is
Ray forming (the `ray` phase).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.p2_overhead import (
    RAY_IMAGE,
    WORK,
    base_inventory,
    bench_bed,
    fmt,
    log,
    machine,
    machine_line,
    med,
    orch,
    table,
    timed_orchestrate,
    write_yaml,
)
from tests.testbed import TestBed

NAME = "benchp1"
RAY_READY = re.compile(r"\bray\b.*\bnodes alive\b")
TARGET = 1.3
SIZES = (2, 6)


def ray_inventory(bed: TestBed, n: int) -> Path:
    model = bed.shared_dir / "models" / "ray-only"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}\n")
    data = base_inventory(
        bed,
        n,
        NAME,
        image=RAY_IMAGE,
        backend="ray",
        model={"host_dir": str(model.parent), "name": model.name},
        ray={"object_store_memory": "200Mi", "join_timeout": 120},
        serve={"tensor_parallel_size": 1, "pipeline_parallel_size": n, "start": False},
    )
    return write_yaml(data, WORK / "p1" / f"ray{n}.yaml")


def down(inventory: Path) -> None:
    res = orch("down", str(inventory), timeout=300)
    if res.returncode != 0:
        log(f"orchestrate down: rc {res.returncode}: {res.stderr[-500:]}")


def ray_started(bed: TestBed, n: int) -> float | None:
    """Wall time at which the last of the n containers logged "Ray runtime started" (`ray start`
    prints it once its node has joined), from `docker logs -t` on each host; None if missing."""
    last = None
    for i in range(1, n + 1):
        names = bed.docker(
            i, "ps", "-a", "--filter", f"label=orchestrate.deployment={NAME}", "--format", "{{.Names}}"
        ).stdout.split()
        stamps = []
        for name in names:
            res = bed.docker(i, "logs", "-t", name)
            out = res.stdout + res.stderr
            for line in out.splitlines():
                if "Ray runtime started" in line:
                    stamp = line.split(" ", 1)[0]  # 2026-11-26T00:52:45.123456789Z
                    day, frac = stamp.rstrip("Z").split(".")
                    t = datetime.strptime(day, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
                    stamps.append(t.timestamp() + float("0." + frac))
                    break
        if not stamps:
            return None
        last = max(stamps) if last is None else max(last, *stamps)
    return last


def one_run(bed: TestBed, inventory: Path, n: int) -> dict[str, Any]:
    run = timed_orchestrate("--output", "json", "up", str(inventory), timeout=600)
    report = run.report()
    ready = run.first(RAY_READY)
    if run.rc != 0 or ready is None:
        raise RuntimeError(f"orchestrate up ({n} hosts) failed (rc {run.rc}):\n{run.tail()}")
    alive = [x for x in report.get("ray_nodes", []) if x.get("alive")]
    if len(alive) != n:
        raise RuntimeError(f"{n} hosts: {len(alive)} Ray nodes alive")
    formed = ray_started(bed, n)
    formed_s = None if formed is None else formed - run.t0_wall
    return {
        "hosts": n,
        "ray_ready_s": ready,
        "up_returns_s": run.wall,
        "phases_s": report["phases_s"],
        "ray_formed_s": formed_s,
        "gate_latency_s": None if formed_s is None else ready - formed_s,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions of each size (default 3)")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    a = p.parse_args()
    m = machine()
    runs: list[dict[str, Any]] = []
    with bench_bed(max(SIZES), [RAY_IMAGE]) as bed:
        inventories = {n: ray_inventory(bed, n) for n in SIZES}
        everything = inventories[max(SIZES)]  # `down` with every host
        down(everything)
        for rep in range(a.reps):
            for n in SIZES if rep % 2 == 0 else tuple(reversed(SIZES)):
                log(f"rep {rep + 1}/{a.reps}: {n} hosts")
                try:
                    r = one_run(bed, inventories[n], n)
                finally:
                    down(everything)
                r["rep"] = rep + 1
                r["loadavg"] = os.getloadavg()[0]
                log(f"  Ray ready in {r['ray_ready_s']:.1f} s")
                runs.append(r)
    by = {n: [r for r in runs if r["hosts"] == n] for n in SIZES}
    base, cand = med([r["ray_ready_s"] for r in by[2]]), med([r["ray_ready_s"] for r in by[6]])
    ratio = cand / base
    pair = [c["ray_ready_s"] / b["ray_ready_s"] for b in by[2] for c in by[6] if b["rep"] == c["rep"]]
    phase_names = list(runs[0]["phases_s"])
    phases = {n: {k: med([r["phases_s"].get(k, 0.0) for r in by[n]]) for k in phase_names} for n in SIZES}

    print(
        "\nP1: orchestrate up -> Ray ready, 6 hosts vs 2 hosts (Ray image pre-seeded, serve.start "
        "false, 1 GPU per host)"
    )
    print(f"machine: {machine_line(m)}\n")
    rows = [
        [
            r["rep"],
            r["hosts"],
            fmt(r["ray_ready_s"], 2),
            fmt(r["up_returns_s"], 2),
            fmt(r["ray_formed_s"], 2),
            fmt(r["gate_latency_s"], 2),
            *(fmt(r["phases_s"].get(k), 2) for k in phase_names),
            f"{r['loadavg']:.1f}",
        ]
        for r in runs
    ]
    print(
        table(
            [
                "rep",
                "hosts",
                "Ray ready s",
                "up returns s",
                "last node joined s",
                "gate lag s",
                *phase_names,
                "load",
            ],
            rows,
        )
    )
    print(
        "(last node joined: the latest 'Ray runtime started' in the containers' `docker logs -t`; "
        "gate lag: Ray ready minus that)"
    )
    print("\nmedian phases (s):")
    print(table(["hosts", *phase_names], [[n, *(fmt(phases[n][k], 2) for k in phase_names)] for n in SIZES]))
    own = {n: sum(v for k, v in phases[n].items() if k != "ray") for n in SIZES}
    print(
        f"orchestrate's phases before the Ray gate (sum of medians): 2 hosts {own[2]:.2f} s, "
        f"6 hosts {own[6]:.2f} s; the Ray gate: {phases[2].get('ray', 0):.2f} s vs "
        f"{phases[6].get('ray', 0):.2f} s"
    )
    formed = {n: med([r["ray_formed_s"] for r in by[n] if r["ray_formed_s"] is not None]) for n in SIZES}
    lag = {n: med([r["gate_latency_s"] for r in by[n] if r["gate_latency_s"] is not None]) for n in SIZES}
    print(
        f"last node joined (median): 2 hosts {formed[2]:.2f} s, 6 hosts {formed[6]:.2f} s "
        f"(ratio {formed[6] / formed[2]:.3f}); gate lag after it: {lag[2]:.2f} s vs {lag[6]:.2f} s"
    )
    mine = {n: own[n] + lag[n] for n in SIZES}
    print(
        f"orchestrate's own time (phases before the gate + gate lag): 2 hosts {mine[2]:.2f} s, "
        f"6 hosts {mine[6]:.2f} s (ratio {mine[6] / mine[2]:.3f}); the rest is the containers' "
        "Ray start-up"
    )
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"\nmedian Ray ready: 2 hosts {base:.2f} s, 6 hosts {cand:.2f} s")
    print(
        f"ratio 6 / 2 hosts = {ratio:.3f} (target <= {TARGET}): {verdict}; per repetition "
        f"{' '.join(f'{x:.3f}' for x in pair)}"
    )
    cmd = f"python bench/p1_fanout.py --reps {a.reps}"
    print(f"command: {cmd}")
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "id": "P1",
                    "machine": m,
                    "command": cmd,
                    "runs": runs,
                    "median_2_s": base,
                    "median_6_s": cand,
                    "ratio": ratio,
                    "pair_ratios": pair,
                    "target": TARGET,
                    "verdict": verdict,
                    "phases_median_s": phases,
                    "last_node_joined_median_s": formed,
                    "gate_lag_median_s": lag,
                    "orchestrate_own_median_s": mine,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
