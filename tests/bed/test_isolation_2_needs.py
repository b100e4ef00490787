"""Isolation, part 2 of 2 (issue 10): needs the ports that tests/bed/test_isolation_1_leaves.py left
taken, and passes because the bed is cleaned before every module that uses it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bed.test_isolation_1_leaves import ray_pair
from tests.conftest import deployed, ps
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow]


def test_the_same_ports_are_free_for_the_next_module(
    bed: TestBed, ray_image: str, ray_model: dict[str, str], tmp_path: Path
) -> None:
    assert not any("leftover" in line for i in (1, 2) for line in ps(bed, i))
    path = ray_pair(bed, tmp_path / "next.yaml", "nextone", ray_model, ray_image)
    with deployed(path, timeout=600) as report:  # preflight's port check would refuse 6379/8625
        assert set(report["changes"].values()) == {"create"}
        assert sum(n["gpus"] for n in report["ray_nodes"] if n["alive"]) == 2
    assert ps(bed, 1) == [] and ps(bed, 2) == []
