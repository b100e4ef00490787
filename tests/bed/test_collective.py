"""`preflight --collective` on the test bed (issue 5): a real Gloo all-reduce across two hosts inside
the vllm-cpu image, with the deployment's own NIC settings; a wrong NIC is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import bed_inventory, orch, ps
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow]


@pytest.fixture(scope="module")
def seeded(bed: TestBed, cpu_image: str, tiny_model: Path) -> TestBed:
    bed.seed(cpu_image, hosts=[1, 2])
    return bed


def _inventory(bed: TestBed, tmp: Path, cpu_image: str, tiny_model: Path, **over: object) -> Path:
    return bed_inventory(
        bed,
        tmp / "coll.yaml",
        2,
        name="coll",
        image=cpu_image,
        backend="mp",
        model={"host_dir": str(tiny_model.parent), "name": "tiny"},
        serve={"tensor_parallel_size": 1, "pipeline_parallel_size": 2},
        **over,
    )


def _rows(res: object) -> list[dict[str, str]]:
    return [r for r in json.loads(res.stdout)["rows"] if r["check"] == "collective"]  # type: ignore[attr-defined]


def test_gloo_all_reduce_across_hosts(
    seeded: TestBed, cpu_image: str, tiny_model: Path, tmp_path: Path
) -> None:
    path = _inventory(seeded, tmp_path, cpu_image, tiny_model)
    res = orch("--output", "json", "preflight", "--collective", str(path), timeout=400)
    rows = _rows(res)
    assert res.returncode == 0, res.stdout
    assert [r["host"] for r in rows] == ["hb1", "hb2"] and all(r["status"] == "ok" for r in rows)
    assert "bus bandwidth" in rows[0]["message"]
    assert ps(seeded, 1) == [] and ps(seeded, 2) == []  # throwaway containers are gone


def test_wrong_gloo_nic_on_a_worker_is_caught(
    seeded: TestBed, cpu_image: str, tiny_model: Path, tmp_path: Path
) -> None:
    path = _inventory(seeded, tmp_path, cpu_image, tiny_model, host_env=[{}, {"GLOO_SOCKET_IFNAME": "eth9"}])
    res = orch("--output", "json", "preflight", "--collective", str(path), timeout=600)
    rows = _rows(res)
    assert res.returncode == 1
    assert any(r["status"] == "fail" for r in rows), rows
    assert ps(seeded, 1) == [] and ps(seeded, 2) == []
