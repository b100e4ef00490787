"""P4: how fast and how exactly `orchestrate bench` measures, next to `vllm bench serve` (the baseline).

Both clients load the same stub server (bench/stub_server.py, in its own process), which streams
vLLM's exact SSE format as fast as the socket takes it, so the client is the bottleneck:

  chunk rate   content chunks per second each client sustains (its output tok/s: the stub sends
               one token a chunk). Same load for both: chat endpoint, random prompts, N requests
               at concurrency C. Runs alternate between the clients; the median of --repeats
               counts; ratio = orchestrate / vllm, target >= 1.0. The stub's token counter checks
               that every token reached the client.
  TTFT error   a second stub holds every first token back --ttft-ms (spinning the last 1.5 ms so
               the delay is exact); concurrency 1. Reported against the nominal delay and against
               the stub's own measurement (request read -> first token written), which removes
               the machine's scheduling noise; target < 1 ms.

`vllm bench serve` runs in the vllm-cpu image (`--network host`, the tiny model's tokenizer
mounted); without Docker or the image, P4 says why and reports orchestrate's numbers alone.

    python bench/p4_client.py                     # ~2.5 minutes on 2 cores
    python bench/p4_client.py --repeats 9 --json p4.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "orchestrate/vllm-cpu:0.32.0"
TOKENIZER = "/var/tmp/orchestrate-demo/models/tiny"
# `orchestrate --output json bench ...`, as the CLI runs it (whether or not cli.py registers it yet)
SHIM = (
    "import sys, types; from orchestrate.bench import bench_command; "
    "bench_command.main(sys.argv[1:], prog_name='orchestrate bench', "
    "obj=types.SimpleNamespace(inventory=None, output='json', verbose=0))"
)
Load = dict[str, int]  # concurrency, num_prompts, output_len


@contextmanager
def stub(ttft_ms: float = 0.0) -> Iterator[str]:
    cmd = [sys.executable, str(ROOT / "bench" / "stub_server.py"), "--port", "0", "--ttft-ms", str(ttft_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"the stub did not start: {line!r}")
        yield line.split()[2]
    finally:
        proc.terminate()
        proc.wait(10)


def counters(url: str) -> dict[str, float]:
    """The stub's /metrics, name (labels dropped) -> value."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {m[1]: float(m[2]) for m in re.finditer(r"^([a-z_:]+)(?:\{[^}]*\})? (\S+)$", text, re.M)}


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    ttft_n = (
        after["stub:time_to_first_token_seconds_count"] - before["stub:time_to_first_token_seconds_count"]
    )
    ttft_s = after["stub:time_to_first_token_seconds_sum"] - before["stub:time_to_first_token_seconds_sum"]
    return {
        "server_tokens": after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"],
        "server_ttft_ms": 1000 * ttft_s / ttft_n if ttft_n else float("nan"),
    }


def run_orchestrate(url: str, a: argparse.Namespace, load: Load) -> dict[str, Any]:
    args = (
        f"--url {url} --model tiny --input-len {a.input_len} --output-len {load['output_len']} "
        f"--num-prompts {load['num_prompts']} --concurrency {load['concurrency']} --seed 0"
    ).split()
    before = counters(url)
    res = subprocess.run(
        [sys.executable, "-c", SHIM, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if res.returncode != 0:
        raise RuntimeError(f"orchestrate bench failed: {res.stderr[-2000:]}")
    level = json.loads(res.stdout)["levels"][0]
    return {
        "chunk_rate": level["output_throughput"],
        "completed": level["completed"],
        "output_tokens": level["output_tokens"],
        "duration_s": level["duration_s"],
        "ttft_ms": {k: level["ttft_ms"][k] for k in ("mean", "p50", "p99")},
        **delta(before, counters(url)),
    }


def vllm_command(url: str, a: argparse.Namespace, load: Load, out: str) -> list[str]:
    docker = f"docker run --rm --network host -v {a.tokenizer}:/tok:ro -v {out}:/out {a.image}"
    serve = (
        f"vllm bench serve --backend openai-chat --endpoint /v1/chat/completions --base-url {url} "
        f"--model tiny --tokenizer /tok --dataset-name random --random-input-len {a.input_len} "
        f"--random-output-len {load['output_len']} --num-prompts {load['num_prompts']} "
        f"--max-concurrency {load['concurrency']} --ignore-eos --seed 0 --disable-tqdm "
        "--percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,99 "
        "--save-result --result-dir /out --result-filename r.json"
    )
    return (docker + " " + serve).split()


def run_vllm(url: str, a: argparse.Namespace, load: Load) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        before = counters(url)
        res = subprocess.run(vllm_command(url, a, load, out), capture_output=True, text=True, timeout=900)
        if res.returncode != 0:
            raise RuntimeError(
                f"vllm bench serve failed (rc {res.returncode}): {(res.stdout + res.stderr)[-3000:]}"
            )
        data = json.loads((Path(out) / "r.json").read_text())
    return {
        "chunk_rate": data["output_throughput"],
        "completed": data["completed"],
        "output_tokens": data["total_output_tokens"],
        "duration_s": data["duration"],
        "ttft_ms": {"mean": data["mean_ttft_ms"], "p50": data["p50_ttft_ms"], "p99": data["p99_ttft_ms"]},
        **delta(before, counters(url)),
    }


def vllm_unavailable(a: argparse.Namespace) -> str | None:
    if a.skip_vllm:
        return "skipped (--skip-vllm)"
    if not shutil.which("docker"):
        return "docker is not installed"
    probe = subprocess.run(["docker", "image", "inspect", a.image], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"image {a.image} not found: {probe.stderr.strip()[:200]} (orchestrate image build vllm-cpu)"
    if not (Path(a.tokenizer) / "tokenizer.json").exists():
        return f"no tokenizer at {a.tokenizer} (orchestrate model make-tiny)"
    return None


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_at_start": os.getloadavg()[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description="P4: orchestrate bench vs vllm bench serve, against the stub")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=16)
    p.add_argument("--output-len", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--ttft-prompts", type=int, default=50)
    p.add_argument("--image", default=IMAGE)
    p.add_argument("--tokenizer", default=TOKENIZER)
    p.add_argument("--skip-vllm", action="store_true", help="orchestrate's numbers only")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    a = p.parse_args()

    why_not = vllm_unavailable(a)
    tools: dict[str, Callable[[str, argparse.Namespace, Load], dict[str, Any]]] = {
        "orchestrate": run_orchestrate
    }
    if not why_not:
        tools["vllm"] = run_vllm
    result: dict[str, Any] = {"machine": machine(), "vllm_unavailable": why_not, "params": vars(a)}

    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in tools}
    load = {"concurrency": a.concurrency, "num_prompts": a.num_prompts, "output_len": a.output_len}
    with stub() as url:
        for i in range(a.repeats):
            for name, fn in tools.items():
                r = fn(url, a, load)
                runs[name].append(r)
                print(
                    f"[chunk rate {i + 1}/{a.repeats}] {name}: {r['chunk_rate']:,.0f} chunks/s, "
                    f"{r['output_tokens']} tokens counted, the stub sent {r['server_tokens']:.0f}",
                    file=sys.stderr,
                )
    result["chunk_rate"] = {
        name: {"median": statistics.median(r["chunk_rate"] for r in rs), "runs": rs}
        for name, rs in runs.items()
    }
    if "vllm" in runs:
        result["ratio"] = (
            result["chunk_rate"]["orchestrate"]["median"] / result["chunk_rate"]["vllm"]["median"]
        )
        pairs = zip(runs["orchestrate"], runs["vllm"], strict=True)  # back to back: similar machine load
        result["pair_ratios"] = [o["chunk_rate"] / v["chunk_rate"] for o, v in pairs]

    result["ttft"] = {}
    with stub(a.ttft_ms) as url:
        for name, fn in tools.items():
            r = fn(url, a, {"concurrency": 1, "num_prompts": a.ttft_prompts, "output_len": 8})
            t = r["ttft_ms"]
            result["ttft"][name] = {
                **t,
                "server_mean": r["server_ttft_ms"],
                "error_vs_nominal_ms": {"mean": t["mean"] - a.ttft_ms, "p50": t["p50"] - a.ttft_ms},
                "error_vs_server_ms": t["mean"] - r["server_ttft_ms"],
            }
    report(result, a)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def report(result: dict[str, Any], a: argparse.Namespace) -> None:
    m = result["machine"]
    print(
        f"P4 on {m['cpus']} x {m['cpu']}, Python {m['python']}, {m['date']}, "
        f"load avg {m['loadavg_at_start']:.2f}"
    )
    print(
        f"chunk rate (chat, {a.input_len} -> {a.output_len} tokens, {a.num_prompts} requests at concurrency "
        f"{a.concurrency}; median of {a.repeats} alternating runs):"
    )
    for name, r in result["chunk_rate"].items():
        each = ", ".join(f"{x['chunk_rate']:,.0f}" for x in r["runs"])
        print(f"  {name:<12} {r['median']:>10,.0f} chunks/s   (runs: {each})")
    if "ratio" in result:
        verdict = "meets" if result["ratio"] >= 1.0 else "MISSES"
        print(f"  ratio orchestrate / vllm = {result['ratio']:.2f} ({verdict} the target >= 1.0)")
        pairs = ", ".join(f"{x:.2f}" for x in result["pair_ratios"])
        print(f"  run by run: {pairs} (median {statistics.median(result['pair_ratios']):.2f})")
    else:
        print(f"  vllm bench serve: {result['vllm_unavailable']}")
    print(
        f"TTFT (the stub holds each first token {a.ttft_ms:g} ms; "
        f"{a.ttft_prompts} requests at concurrency 1):"
    )
    for name, t in result["ttft"].items():
        nominal = t["error_vs_nominal_ms"]
        verdict = "meets" if abs(nominal["p50"]) < 1 else "MISSES"
        print(
            f"  {name:<12} mean {t['mean']:.3f} ms, p50 {t['p50']:.3f}, p99 {t['p99']:.3f}; "
            f"error vs {a.ttft_ms:g} ms: p50 {nominal['p50']:+.3f}, mean {nominal['mean']:+.3f} "
            f"({verdict} < 1 ms at p50); vs the stub's own mean {t['server_mean']:.3f}: "
            f"{t['error_vs_server_ms']:+.3f}"
        )


if __name__ == "__main__":
    main()
