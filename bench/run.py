"""Run the benchmarks: `python bench/run.py` runs all, `python bench/run.py P4` some.

Each benchmark is a script that prints its own report (see bench/README.md); with --json-dir DIR
each also writes DIR/<id>.json. Exit status 1 when any benchmark failed to run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# id -> (what it measures, the script and its arguments); None: not written yet
BENCHMARKS: dict[str, tuple[str, list[str] | None]] = {
    "P1": ("orchestrate up fan-out: time to Ray ready on 6 hosts vs 2 (test bed)", ["bench/p1_fanout.py"]),
    "P2": (
        "orchestrate up vs hand-written ssh + docker run: time to first chat (test bed, vllm-cpu)",
        ["bench/p2_overhead.py"],
    ),
    "P3": (
        "readiness latency: vLLM's first /health 200 -> orchestrate's 'vLLM healthy'",
        ["bench/p3_readiness.py"],
    ),
    "P4": (
        "orchestrate bench vs vllm bench serve and aiohttp: SSE chunk rate and TTFT error",
        ["bench/p4_client.py"],
    ),
    "P5": (
        "a >= 4 GiB image to 3 test-bed hosts: by hand vs images.source local vs head-registry",
        ["bench/p5_images.py"],
    ),
    "P6": (
        "start-up of each command vs main's code and a bare click/yaml/pydantic import",
        ["bench/p6_startup.py"],
    ),
    "P7": (
        "self-healing: faults on a serving 2-host group, time to detect and to serve again",
        ["bench/p7_heal.py"],
    ),
    "P8": (
        "2 replicas behind the router vs 1 pipeline (PP 2) over the same 2 hosts; router overhead",
        ["bench/p8_replicas.py"],
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("ids", nargs="*", metavar="ID", help=f"some of {', '.join(BENCHMARKS)} (default: all)")
    p.add_argument("--json-dir", metavar="DIR", help="each benchmark also writes DIR/<id>.json")
    a = p.parse_args()
    unknown = [i for i in a.ids if i.upper() not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    failed = []
    for bench_id in [i.upper() for i in a.ids] or list(BENCHMARKS):
        what, script = BENCHMARKS[bench_id]
        print(f"== {bench_id}: {what}", flush=True)
        if script is None:
            print("   not written yet", flush=True)
            continue
        cmd = [sys.executable, *script]
        if a.json_dir:
            Path(a.json_dir).mkdir(parents=True, exist_ok=True)
            cmd += ["--json", str(Path(a.json_dir) / f"{bench_id.lower()}.json")]
        t0 = time.monotonic()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        print(
            f"== {bench_id}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.monotonic() - t0:.0f} s\n"
        )
        if rc != 0:
            failed.append(bench_id)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
