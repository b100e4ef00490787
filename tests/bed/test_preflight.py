"""Preflight on the test bed (issue 5): each failure mode that can be simulated here is injected for
real and caught with a message naming the host, before any container starts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import FIXTURES
from tests.conftest import bed_inventory, orch, ps
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow]
MODEL = "/srv/bed-private/models"  # private per host: hosts can differ


@pytest.fixture(scope="module")
def hosts_ready(bed: TestBed, ray_image: str) -> TestBed:
    bed.seed(ray_image, hosts=[1, 2])
    return bed


@pytest.fixture()
def models(hosts_ready: TestBed) -> Iterator[TestBed]:
    for i in (1, 2):
        d = hosts_ready.private_dir(i) / "models" / "m"
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text("{}\n")
    yield hosts_ready
    for i in (1, 2):
        shutil.rmtree(hosts_ready.private_dir(i) / "models", ignore_errors=True)


def inventory(bed: TestBed, tmp: Path, **over: Any) -> Path:
    sections: dict[str, Any] = {
        "image": "orchestrate/ray:2.60.0",
        "backend": "ray",
        "model": {"host_dir": MODEL, "name": "m"},
        "serve": {"tensor_parallel_size": 1, "pipeline_parallel_size": 2, "start": False},
    }
    sections.update(over)
    return bed_inventory(bed, tmp / "pf.yaml", 2, **sections)


def preflight(path: Path, *extra: str) -> tuple[int, list[dict[str, str]]]:
    res = orch("--output", "json", "preflight", str(path), *extra, timeout=180)
    assert "Traceback" not in res.stderr
    return res.returncode, json.loads(res.stdout)["rows"]


def failed(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(r["host"], r["check"]) for r in rows if r["status"] == "fail"]


def assert_nothing_started(bed: TestBed) -> None:
    assert ps(bed, 1) == [] and ps(bed, 2) == []


def test_clean_bed_passes(models: TestBed, tmp_path: Path) -> None:
    code, rows = preflight(inventory(models, tmp_path))
    assert code == 0, failed(rows)
    checks = {r["check"] for r in rows}
    assert {"ssh", "docker", "nic", "route", "ports", "reach-head", "model", "shm", "image"} <= checks


def test_missing_model_on_one_host(models: TestBed, tmp_path: Path) -> None:
    shutil.rmtree(models.private_dir(2) / "models" / "m")
    code, rows = preflight(inventory(models, tmp_path))
    assert code == 1 and failed(rows) == [("hb2", "model")]
    res = orch("up", str(inventory(models, tmp_path)), timeout=120)
    assert res.returncode == 1 and "hb2: model:" in res.stderr
    assert_nothing_started(models)


def test_different_image_on_one_host(models: TestBed, tmp_path: Path, base_image: str) -> None:
    models.seed(base_image, hosts=[2])
    tag = models.docker(2, "tag", base_image, "orchestrate/other:1")
    assert tag.returncode == 0
    models.docker(1, "tag", "orchestrate/ray:2.60.0", "orchestrate/other:1")
    try:
        code, rows = preflight(
            inventory(
                models,
                tmp_path,
                image="orchestrate/other:1",
                backend="mp",
                serve={"tensor_parallel_size": 1, "pipeline_parallel_size": 2},
            )
        )
        assert code == 1 and ("hb2", "same-image") in failed(rows)
    finally:
        for i in (1, 2):
            models.docker(i, "rmi", "orchestrate/other:1")


def test_ray_missing_from_the_image(models: TestBed, tmp_path: Path, base_image: str) -> None:
    models.seed(base_image, hosts=[1, 2])
    code, rows = preflight(inventory(models, tmp_path, image=base_image))
    assert code == 1 and {("hb1", "image"), ("hb2", "image")} <= set(failed(rows))
    message = next(r["message"] for r in rows if r["check"] == "image")
    assert "ray is not installed" in message
    assert "backend: mp" in next(r["fix"] for r in rows if r["check"] == "image")


def test_port_taken_on_a_worker(models: TestBed, tmp_path: Path, base_image: str) -> None:
    models.seed(base_image, hosts=[2])
    squat = models.docker(
        2,
        "run",
        "-d",
        "--name",
        "squatter",
        "--network",
        "host",
        base_image,
        "python3",
        "-m",
        "http.server",
        "8625",
    )
    assert squat.returncode == 0, squat.stderr
    try:
        code, rows = preflight(inventory(models, tmp_path))
        assert code == 1 and failed(rows) == [("hb2", "ports")]
        assert "8625 (ray.object_manager_port)" in next(
            r["message"] for r in rows if r["check"] == "ports" and r["host"] == "hb2"
        )
    finally:
        models.docker(2, "rm", "-f", "squatter")


def test_nic_that_does_not_own_the_address(models: TestBed, tmp_path: Path) -> None:
    path = inventory(models, tmp_path)
    data = yaml.safe_load(path.read_text())
    for host in data["hosts"]:
        host["nic"] = "lo"  # exists, but the host's address is on eth0
    path.write_text(yaml.safe_dump(data))
    code, rows = preflight(path)
    assert code == 1 and ("hb1", "nic") in failed(rows) and ("hb2", "nic") in failed(rows)
    nic = next(r["message"] for r in rows if r["check"] == "nic")
    assert f"lo does not own {models.hosts[0].address}" in nic


def test_head_port_unreachable_from_a_worker(models: TestBed, tmp_path: Path) -> None:
    rule = ["INPUT", "-p", "tcp", "--dport", "6379", "-s", models.hosts[1].address, "-j", "DROP"]
    assert models.run(1, "iptables", "-I", *rule).returncode == 0
    try:
        code, rows = preflight(inventory(models, tmp_path))
    finally:
        models.run(1, "iptables", "-D", *rule)
    assert code == 1 and failed(rows) == [("hb2", "reach-head")]
    assert "6379 (ray.port)" in next(
        r["message"] for r in rows if r["check"] == "reach-head" and r["host"] == "hb2"
    )


def test_shm_too_small(models: TestBed, tmp_path: Path) -> None:
    code, rows = preflight(inventory(models, tmp_path, container={"shm_size": "64Mi"}))
    assert code == 1 and set(failed(rows)) == {("hb1", "shm"), ("hb2", "shm")}
    res = orch("up", str(inventory(models, tmp_path, container={"shm_size": "64Mi"})), timeout=120)
    assert res.returncode == 1 and "shm" in res.stderr
    assert_nothing_started(models)


def test_skipping_a_check(models: TestBed, tmp_path: Path) -> None:
    code, rows = preflight(inventory(models, tmp_path, container={"shm_size": "64Mi"}), "--skip", "shm")
    assert code == 0 and "shm" not in {r["check"] for r in rows}


def test_fit_fails_when_the_weights_do_not_fit(models: TestBed, tmp_path: Path) -> None:
    config = (FIXTURES / "model-configs" / "Qwen2.5-7B-Instruct.json").read_text()
    (models.private_dir(1) / "models" / "m" / "config.json").write_text(config)
    code, rows = preflight(inventory(models, tmp_path, gpu_memory_gib=4))
    assert code == 1 and failed(rows) == [("hb1", "fit")]
    assert "GiB" in next(r["message"] for r in rows if r["check"] == "fit")


def test_one_corrupted_shard_is_caught_by_its_hash(models: TestBed, tmp_path: Path) -> None:
    import hashlib
    import os

    shards = {f"model-0000{k}-of-00002.safetensors": os.urandom(1 << 20) for k in (1, 2)}
    sums = "".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in sorted(shards.items()))
    for i in (1, 2):  # the same bytes and sum.txt on both hosts ...
        d = models.private_dir(i) / "models" / "m"
        for name, blob in shards.items():
            (d / name).write_bytes(blob)
        (d / "sum.txt").write_text(sums)
    shard = models.private_dir(2) / "models" / "m" / "model-00002-of-00002.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[4096] ^= 0xFF  # ... except one flipped byte on hb2, same size
    shard.write_bytes(bytes(blob))
    path = inventory(models, tmp_path, model={"host_dir": MODEL, "name": "m", "manifest": "sum.txt"})
    code, rows = preflight(path)
    assert code == 1 and failed(rows) == [("hb2", "model-hash")]
    assert "model-00002-of-00002.safetensors" in next(
        r["message"] for r in rows if r["check"] == "model-hash" and r["host"] == "hb2"
    )
    res = orch("up", str(path), timeout=120)
    assert res.returncode == 1 and "hb2: model-hash:" in res.stderr
    assert_nothing_started(models)
