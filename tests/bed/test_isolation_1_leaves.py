"""Isolation, part 1 of 2 (issue 10): this module deliberately leaves a deployment up, holding the
Ray ports on two bed hosts, as a test that fails half-way would. tests/bed/test_isolation_2_needs.py,
which pytest runs next, needs those same ports and must pass all the same: the bed is cleaned
around every module that uses it (tests/conftest.py::bed_clean_around_module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import bed_inventory, orch_json, ps
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow]

RAY_ONLY = {"tensor_parallel_size": 1, "pipeline_parallel_size": 2, "start": False}


def ray_pair(bed: TestBed, path: Path, name: str, model: dict[str, str], image: str) -> Path:
    return bed_inventory(
        bed,
        path,
        2,
        name=name,
        image=image,
        backend="ray",
        model=model,
        ray={"object_store_memory": "200Mi", "join_timeout": 120},
        serve=RAY_ONLY,
    )


def test_a_deployment_left_up_on_purpose(
    bed: TestBed, ray_image: str, ray_model: dict[str, str], tmp_path: Path
) -> None:
    path = ray_pair(bed, tmp_path / "left.yaml", "leftover", ray_model, ray_image)
    report = orch_json("up", str(path), timeout=600)
    assert set(report["changes"].values()) == {"create"}
    # no down: the containers keep 6379/8625 on both hosts
    assert any("leftover-head" in line for line in ps(bed, 1))
    assert any("leftover-worker-1" in line for line in ps(bed, 2))
