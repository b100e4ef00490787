"""P4: how fast and how exactly `orchestrate bench` measures, next to `vllm bench serve` (the baseline).

Three clients load the same stub server (bench/stub_server.py, in its own process), which streams
vLLM's exact SSE format as fast as the socket takes it, so the client is the bottleneck:

  orchestrate  `orchestrate --output json bench ...` (its own HTTP/1.1 transport for httpx)
  aiohttp      the same command, driver, SSE parser and metrics with aiohttp in place of that
               transport, read as `vllm bench serve` reads (`resp.content.iter_any()`): does our
               transport beat a maintained client? (needs `pip install aiohttp`)
  vllm         `vllm bench serve` (in the vllm-cpu image)

  chunk rate   content chunks per second each client sustains (its output tok/s: the stub sends
               one token a chunk). Same load for all: chat endpoint, random prompts, N requests
               at concurrency C. Runs alternate between the clients; the median of --repeats
               counts; ratios orchestrate / vllm and aiohttp / orchestrate, target >= 1.0 for the
               first (for the second, >= 1.0 would mean aiohttp should replace our transport). The
               stub's token counter checks that every token reached the client. Client CPU per token
               for the two Python ones: the process's user + system time in the load level.
  TTFT error   a second stub holds every first token back --ttft-ms (spinning the last 1.5 ms so
               the delay is exact); concurrency 1. Reported against the nominal delay and against
               the stub's own measurement (request read -> first token written), which removes
               the machine's scheduling noise; target < 1 ms.

`vllm bench serve` runs in the vllm-cpu image (`--network host`, the tiny model's tokenizer
mounted); without Docker or the image (or without aiohttp), P4 says why and reports the others.

    python bench/p4_client.py                     # ~2.5 minutes on 2 cores
    python bench/p4_client.py --repeats 9 --json p4.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
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
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "orchestrate/vllm-cpu:0.32.0"
TOKENIZER = "/var/tmp/orchestrate-demo/models/tiny"
# `orchestrate --output json bench ...`, through the click command the CLI registers, with the
# client's CPU time in its load levels on stderr (count_cpu below)
SHIM = (
    "import sys, types, bench.p4_client; bench.p4_client.count_cpu(); "
    "from orchestrate.cli.bench import bench_command; "
    "bench_command.main(sys.argv[1:], prog_name='orchestrate bench', "
    "obj=types.SimpleNamespace(inventory=None, output='json', verbose=0))"
)
# the same, with aiohttp as the HTTP client (use_aiohttp below)
AIOHTTP_SHIM = "import bench.p4_client; bench.p4_client.use_aiohttp(); " + SHIM
CPU_LINE = "p4: load-level CPU seconds "
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


def count_cpu() -> None:
    """Print the process's CPU time (user + system) spent in the load levels, start-up and the model
    list left out, to stderr when the run ends."""
    from orchestrate.loadgen import runner

    inner = runner.run_levels

    async def run_levels(*args: Any, **kwargs: Any) -> None:
        start = time.process_time()
        try:
            await inner(*args, **kwargs)
        finally:
            print(f"{CPU_LINE}{time.process_time() - start:.6f}", file=sys.stderr)

    runner.run_levels = run_levels


def run_orchestrate(url: str, a: argparse.Namespace, load: Load, shim: str = SHIM) -> dict[str, Any]:
    args = (
        f"--url {url} --model tiny --input-len {a.input_len} --output-len {load['output_len']} "
        f"--num-prompts {load['num_prompts']} --concurrency {load['concurrency']} --seed 0"
    ).split()
    before = counters(url)
    res = subprocess.run(
        [sys.executable, "-c", shim, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    if res.returncode != 0:
        raise RuntimeError(f"orchestrate bench failed: {res.stderr[-2000:]}")
    level = json.loads(res.stdout)["levels"][0]
    cpu = float(res.stderr.rpartition(CPU_LINE)[2].split()[0])
    return {
        "chunk_rate": level["output_throughput"],
        "completed": level["completed"],
        "output_tokens": level["output_tokens"],
        "duration_s": level["duration_s"],
        "cpu_us_per_token": 1e6 * cpu / max(level["output_tokens"], 1),
        "ttft_ms": {k: level["ttft_ms"][k] for k in ("mean", "p50", "p99")},
        **delta(before, counters(url)),
    }


def run_aiohttp(url: str, a: argparse.Namespace, load: Load) -> dict[str, Any]:
    return run_orchestrate(url, a, load, AIOHTTP_SHIM)


def use_aiohttp() -> None:
    """orchestrate bench with aiohttp as its HTTP client: only the client and the send change (the
    driver, the SSE parser, the metrics and the command are the same). As `vllm bench serve` does,
    a chunk is timed when aiohttp hands its read over (`iter_any()`), not when it came off the socket."""
    import asyncio

    import aiohttp

    from orchestrate.loadgen import BenchConfig, RequestResult, read_sse, runner

    @asynccontextmanager
    async def make_client(cfg: BenchConfig, connections: int) -> AsyncIterator[aiohttp.ClientSession]:
        connector = aiohttp.TCPConnector(limit=connections, keepalive_timeout=60)  # as vllm's
        timeout = aiohttp.ClientTimeout(total=cfg.timeout, connect=min(cfg.timeout, 10.0))
        headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
        async with aiohttp.ClientSession(
            cfg.base_url, connector=connector, timeout=timeout, headers=headers, trust_env=False
        ) as session:
            yield session

    async def send_one(
        session: aiohttp.ClientSession, path: str, body: bytes, chat: bool, timeout: float
    ) -> RequestResult:
        rec = RequestResult(start=time.perf_counter())
        try:
            async with asyncio.timeout(timeout):
                headers = {"content-type": "application/json"}
                async with session.post(path, data=body, headers=headers) as resp:
                    if resp.status != 200:
                        rec.error = f"HTTP {resp.status}: {(await resp.text())[:120]}"
                    else:
                        await read_sse(resp.content.iter_any(), rec, chat)
        except TimeoutError:
            rec.error = f"timed out after {timeout:g} s"
        except aiohttp.ClientError as exc:
            rec.error = type(exc).__name__
        if rec.error:
            rec.ok = False
        return rec

    runner.make_client = make_client  # type: ignore[attr-defined,assignment]
    runner.send_one = send_one  # type: ignore[attr-defined,assignment]


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


def aiohttp_unavailable(a: argparse.Namespace) -> str | None:
    if a.skip_aiohttp:
        return "skipped (--skip-aiohttp)"
    if importlib.util.find_spec("aiohttp") is None:
        return "aiohttp is not installed (pip install aiohttp)"
    return None


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "clients": {lib: _version(lib) for lib in ("httpx", "aiohttp")},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_at_start": os.getloadavg()[0],
    }


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def main() -> None:
    p = argparse.ArgumentParser(
        description="P4: orchestrate bench vs aiohttp and vllm bench serve, against the stub"
    )
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--num-prompts", type=int, default=256)
    p.add_argument("--input-len", type=int, default=16)
    p.add_argument("--output-len", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--ttft-ms", type=float, default=50.0)
    p.add_argument("--ttft-prompts", type=int, default=50)
    p.add_argument("--image", default=IMAGE)
    p.add_argument("--tokenizer", default=TOKENIZER)
    p.add_argument("--skip-vllm", action="store_true", help="no vllm bench serve")
    p.add_argument("--skip-aiohttp", action="store_true", help="no aiohttp side")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    a = p.parse_args()

    unavailable = {"aiohttp": aiohttp_unavailable(a), "vllm": vllm_unavailable(a)}
    tools: dict[str, Callable[[str, argparse.Namespace, Load], dict[str, Any]]] = {
        "orchestrate": run_orchestrate
    }
    if not unavailable["aiohttp"]:
        tools["aiohttp"] = run_aiohttp
    if not unavailable["vllm"]:
        tools["vllm"] = run_vllm
    result: dict[str, Any] = {
        "machine": machine(),
        "unavailable": {k: v for k, v in unavailable.items() if v},
        "params": vars(a),
    }

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
    result["ratios"] = {}
    for top, bottom in (("orchestrate", "vllm"), ("aiohttp", "orchestrate")):
        if top in runs and bottom in runs:
            rates = result["chunk_rate"]
            pairs = zip(runs[top], runs[bottom], strict=True)  # back to back: similar machine load
            result["ratios"][f"{top} / {bottom}"] = {
                "of_medians": rates[top]["median"] / rates[bottom]["median"],
                "run_by_run": [t["chunk_rate"] / b["chunk_rate"] for t, b in pairs],
            }

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
    clients = ", ".join(f"{k} {v}" for k, v in m["clients"].items() if v)
    print(
        f"P4 on {m['cpus']} x {m['cpu']}, Python {m['python']} ({clients}), {m['date']}, "
        f"load avg {m['loadavg_at_start']:.2f}"
    )
    print(
        f"chunk rate (chat, {a.input_len} -> {a.output_len} tokens, {a.num_prompts} requests at concurrency "
        f"{a.concurrency}; median of {a.repeats} alternating runs):"
    )
    for name, r in result["chunk_rate"].items():
        each = ", ".join(f"{x['chunk_rate']:,.0f}" for x in r["runs"])
        cpu = [x["cpu_us_per_token"] for x in r["runs"] if "cpu_us_per_token" in x]
        cpu_text = f", client CPU {statistics.median(cpu):.2f} us/token (median)" if cpu else ""
        print(f"  {name:<12} {r['median']:>10,.0f} chunks/s   (runs: {each}){cpu_text}")
    for name, why in result["unavailable"].items():
        print(f"  {name}: {why}")
    for name, ratio in result["ratios"].items():
        if name == "orchestrate / vllm":
            verdict = f" ({'meets' if ratio['of_medians'] >= 1.0 else 'MISSES'} the target >= 1.0)"
        else:
            faster = "aiohttp is faster" if ratio["of_medians"] >= 1.0 else "our transport is faster"
            verdict = f" ({faster}; >= 1.0 would replace our transport)"
        pairs = ", ".join(f"{x:.2f}" for x in ratio["run_by_run"])
        print(f"  ratio {name} = {ratio['of_medians']:.2f}{verdict}")
        print(f"    run by run: {pairs} (median {statistics.median(ratio['run_by_run']):.2f})")
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
