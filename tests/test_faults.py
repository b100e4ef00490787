"""The fault matrix on the test bed (issue 6): real faults, injected for real, on the worker host and
on the head host, before `up` and after it. `up` must fail fast with one line naming the host,
`status` must tell the truth, and after recovery `up` must converge and `down` clean up.

Each measured time-to-error is appended to FAULT_TABLE for the closing note (not asserted
beyond the 15 s bound the issue sets for connection faults).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CPU_BIND, CPU_SERVE, WORKDIR, bed_inventory, orch, orch_json, ps
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow]
FAULT_TABLE = WORKDIR / "fault-table.md"
BOUND_S = 15
# fault -> how to undo it
FAULTS = {
    "kill-sshd": "start-sshd",
    "kill-dockerd": "start-dockerd",
    "freeze": "thaw",
    "partition": "heal",
    "link-down": "link-up",
    "crash": "boot",
}


@pytest.fixture(scope="module")
def ray2(bed: TestBed, ray_image: str, ray_model: dict[str, str],
         tmp_path_factory: pytest.TempPathFactory) -> Any:  # fmt: skip
    path = bed_inventory(
        bed, tmp_path_factory.mktemp("faults") / "faults.yaml", 2, name="faulty",
        image=ray_image, backend="ray",
        model=ray_model, ray={"object_store_memory": "200Mi", "join_timeout": 90},
        serve={"tensor_parallel_size": 1, "pipeline_parallel_size": 2, "start": False},
    )  # fmt: skip
    yield path
    orch("down", str(path), timeout=300)


def _record(row: str) -> None:
    with FAULT_TABLE.open("a", encoding="utf-8") as f:
        f.write(row + "\n")


def _one_error_line(stderr: str, host: str) -> str:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and host in errors[0], stderr
    return errors[0]


@pytest.mark.parametrize("host", [2, 1], ids=["worker", "head"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_before_up_fails_fast_naming_the_host(bed: TestBed, ray2: Path, fault: str,
                                                     host: int) -> None:  # fmt: skip
    name = bed.hosts[host - 1].name
    bed.fault(fault, host)
    try:
        res = orch("up", str(ray2), timeout=120)
    finally:
        bed.fault(FAULTS[fault], host)
    line = _one_error_line(res.stderr, name)
    assert res.returncode == 1
    _record(f"| {fault} | {name} ({'head' if host == 1 else 'worker'}) | before up | "
            f"{res.elapsed:.1f} s | {line[7:160]} |")  # type: ignore[attr-defined]
    assert res.elapsed < BOUND_S  # type: ignore[attr-defined]


AFTER = [(f, 2) for f in FAULTS] + [("crash", 1), ("kill-dockerd", 1), ("partition", 1)]


@pytest.mark.parametrize("fault,host", AFTER, ids=[f"{f}-hb{h}" for f, h in AFTER])
def test_fault_after_up_status_is_truthful_and_up_converges(bed: TestBed, ray2: Path, fault: str,
                                                            host: int) -> None:  # fmt: skip
    name = bed.hosts[host - 1].name
    orch_json("up", str(ray2), timeout=400)  # a no-op when the previous case converged
    bed.fault(fault, host)
    try:
        res = orch("--output", "json", "status", str(ray2), timeout=120)
        data = json.loads(res.stdout)
        state = {h["host"]: h["state"] for h in data["hosts"]}
        assert res.returncode == 1 and not data["healthy"]
        assert state[name] != "running", state  # the faulty host is never reported healthy
        assert res.elapsed < BOUND_S + 10  # type: ignore[attr-defined]
    finally:
        bed.fault(FAULTS[fault], host)
    report = orch_json("up", str(ray2), timeout=400)  # converges after recovery
    alive = [n for n in report["ray_nodes"] if n["alive"]]
    assert sorted(n["ip"] for n in alive) == sorted(h.address for h in bed.hosts[:2])
    _record(f"| {fault} | {name} ({'head' if host == 1 else 'worker'}) | after up | status "
            f"{res.elapsed:.1f} s: {name} {state[name]} | up after recovery: "  # type: ignore[attr-defined]
            f"{', '.join(f'{h} {a}' for h, a in report['changes'].items())}, "
            f"{sum(n['gpus'] for n in alive):g} GPUs |")


def test_down_after_the_fault_matrix_leaves_nothing(bed: TestBed, ray2: Path) -> None:
    assert orch("down", str(ray2), timeout=300).returncode == 0
    assert ps(bed, 1) == [] and ps(bed, 2) == []


def test_vllm_crashing_at_start_is_reported_with_its_cause(
    bed: TestBed, cpu_image: str, tiny_model: Path, tmp_path: Path
) -> None:
    path = bed_inventory(
        bed, tmp_path / "badflag.yaml", 2, name="badflag", image=cpu_image, backend="mp",
        model={"host_dir": str(tiny_model.parent), "name": "tiny"},
        serve={**CPU_SERVE, "port": 8011, "startup_timeout": 300,
               "extra_args": [*CPU_SERVE["extra_args"], "--no-such-flag"]},
        host_env=CPU_BIND,
    )  # fmt: skip
    try:
        res = orch("up", str(path), timeout=600)
        line = _one_error_line(res.stderr, "hb")
        assert res.returncode == 1 and "unrecognized arguments: --no-such-flag" in res.stderr
        assert "serve.extra_args" in res.stderr  # what to do
        _record(f"| vLLM bad flag | {line[7:10]} | at start | {res.elapsed:.1f} s | "  # type: ignore[attr-defined]
                f"{line[7:160]} |")
    finally:
        assert orch("down", str(path), timeout=300).returncode == 0
    assert ps(bed, 1) == [] and ps(bed, 2) == []
