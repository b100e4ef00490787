"""Self-healing on the test bed (issue 13): real vLLM (mp, PP=2 over two hosts), real faults, and
nobody running orchestrate while the group heals. Each case records its times as a row of the
heal table (.pytest-results/heal-table.md); the bounds asserted are generous deadlines, the
numbers themselves live in bench P7."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CPU_BIND, CPU_SERVE, bed_inventory, deployed, orch, ps, record_row, until
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow, pytest.mark.vllm]
NAME = "healpp"
TABLE_HEADER = (
    "| fault | detected (first unhealthy status) | chat check passes again | "
    "restarts head/worker |\n|---|---|---|---|"
)
HEAL_DEADLINE_S = 600  # a vLLM start on a loaded 2-core CI machine, with margin


@pytest.fixture(scope="module")
def heal_inventory(
    bed: TestBed, cpu_image: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return bed_inventory(
        bed,
        tmp_path_factory.mktemp("heal") / "heal.yaml",
        2,
        name=NAME,
        image=cpu_image,
        backend="mp",
        model={"host_dir": str(tiny_model.parent), "name": "tiny", "served_name": "tiny"},
        serve=CPU_SERVE,
        host_env=CPU_BIND,
        watchdog={"peer_timeout": 10, "backoff": 2},
        checks={"prompt": "Say hello.", "max_tokens": 8, "timeout": 120},
    )


@pytest.fixture(scope="module")
def heal_up(heal_inventory: Path) -> Any:
    with deployed(heal_inventory, timeout=1200) as report:
        yield report


def _status(inv: Path) -> dict[str, Any]:
    res = orch("--output", "json", "status", str(inv), timeout=120)
    data: dict[str, Any] = json.loads(res.stdout)
    assert (res.returncode == 0) == data["healthy"]
    return data


def _pid(bed: TestBed, host: int, container: str) -> str:
    res = bed.docker(host, "inspect", "-f", "{{.State.Pid}}", container)
    assert res.returncode == 0 and res.stdout.strip() not in ("", "0"), res.stderr
    return res.stdout.strip()


def _heals(bed: TestBed, inv: Path, fault: str, t0: float) -> dict[str, Any]:
    unhealthy = until(lambda: not _status(inv)["healthy"] and time.monotonic(), 60, "reported by status")
    until(lambda: orch("check", str(inv), timeout=180).returncode == 0, HEAL_DEADLINE_S, "serving again")
    healed = time.monotonic()
    data = until(lambda: (d := _status(inv))["healthy"] and d, 120, "healthy in status")
    rows = {h["role"]: h for h in data["hosts"]}
    record_row(
        "heal-table",
        TABLE_HEADER,
        f"| {fault} | {unhealthy - t0:.1f} s | {healed - t0:.1f} s | "
        f"{rows['head']['restarts']}/{rows['worker-1']['restarts']} |",
    )
    return rows


def test_a_killed_worker_container_heals_the_group_without_orchestrate(
    bed: TestBed, heal_inventory: Path, heal_up: Any
) -> None:
    # the head's supervisor sees /health 200 within its 2 s probe, maybe after `up` returned
    until(
        lambda: _status(heal_inventory)["hosts"][0]["supervisor"]["phase"] == "serving",
        60,
        "the head's supervisor to say serving",
    )
    before = {h["role"]: h for h in _status(heal_inventory)["hosts"]}
    assert before["worker-1"]["supervisor"]["phase"] == "running"
    t0 = time.monotonic()
    # SIGKILL of the container's PID 1 from its host, as the OOM killer would (`docker kill`
    # would mark it stopped by hand, and Docker rightly does not restart those)
    assert bed.run(2, "kill", "-9", _pid(bed, 2, f"{NAME}-worker-1")).returncode == 0
    rows = _heals(bed, heal_inventory, "worker container killed (SIGKILL of its PID 1)", t0)
    assert rows["worker-1"]["restarts"] >= 1 and rows["head"]["restarts"] >= 1
    head_failure = rows["head"]["supervisor"]["last_failure"]
    assert head_failure["exit"] == 70 and "worker-1" in head_failure["reason"]
    assert len(ps(bed, 1)) == 1 and len(ps(bed, 2)) == 1  # the same containers, restarted


def test_a_sigkilled_headless_vllm_heals_the_group(bed: TestBed, heal_inventory: Path, heal_up: Any) -> None:
    t0 = time.monotonic()
    # the supervisor's child, inside the container: vllm serve --headless
    res = bed.docker(2, "exec", f"{NAME}-worker-1", "pkill", "-9", "-f", "vllm serve")
    assert res.returncode == 0, res.stderr
    rows = _heals(bed, heal_inventory, "headless vLLM SIGKILLed in its container", t0)
    last = rows["worker-1"]["supervisor"]["last_failure"]
    assert last["exit"] != 70 and "exited with code" in last["reason"]


def test_a_second_up_after_healing_changes_nothing(heal_inventory: Path, heal_up: Any) -> None:
    res = orch("--output", "json", "up", str(heal_inventory), timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert set(json.loads(res.stdout)["changes"].values()) == {"keep"}
