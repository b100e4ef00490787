"""`orchestrate up` on the real multi-host test bed with real Ray (issue 3).

Three hosts, each with its own sshd and Docker Engine; the Ray image is streamed from this
machine's engine by orchestrate itself (images.source: local). On these CPU hosts Ray declares
GPUs with --num-gpus, so the "every node and GPU" gate is real. serve.start is false: vLLM's Ray
executor cannot run on CPU (tests/bed/test_vllm.py proves that refusal reaches the user), so these
tests stop at the Ray cluster, like the post's first two steps.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import bed_inventory, deployed, orch, orch_json, ps, until
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow]
GPUS_PER_HOST = 4


@pytest.fixture(scope="module")
def ray_inventory(
    bed: TestBed, ray_image: str, ray_model: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    path = tmp_path_factory.mktemp("ray") / "ray3.yaml"
    return bed_inventory(
        bed,
        path,
        3,
        image=ray_image,
        backend="ray",
        gpus=GPUS_PER_HOST,
        model=ray_model,
        ray={"object_store_memory": "200Mi", "join_timeout": 120},
        serve={"tensor_parallel_size": 4, "pipeline_parallel_size": 3, "start": False},
    )


@pytest.fixture(scope="module")
def ray_up(bed: TestBed, ray_inventory: Path) -> Iterator[dict]:  # type: ignore[type-arg]
    with deployed(ray_inventory, timeout=600) as report:
        yield report


def test_up_forms_a_ray_cluster_with_every_node_and_gpu(bed: TestBed, ray_up: dict) -> None:  # type: ignore[type-arg]
    alive = [n for n in ray_up["ray_nodes"] if n["alive"]]
    assert sorted(n["ip"] for n in alive) == sorted(h.address for h in bed.hosts)
    assert sum(n["gpus"] for n in alive) == 3 * GPUS_PER_HOST
    assert set(ray_up["changes"].values()) == {"create"}


def test_host_network_containers_bind_their_own_host_address(bed: TestBed, ray_up: dict) -> None:  # type: ignore[type-arg]
    # Ray registered each node under the address its container saw on the host's NIC ...
    by_host = {n["host"]: n["ip"] for n in ray_up["ray_nodes"]}
    assert by_host == {h.name: h.address for h in bed.hosts}
    # ... and on host 2 the object manager really listens on host 2's own address.
    res = bed.run(2, "ss", "-Htln")
    assert ":8625" in res.stdout, res.stdout


def test_second_up_recreates_nothing(bed: TestBed, ray_inventory: Path, ray_up: dict) -> None:  # type: ignore[type-arg]
    before = {i: ps(bed, i) for i in (1, 2, 3)}
    report = orch_json("up", str(ray_inventory), timeout=300)
    assert set(report["changes"].values()) == {"keep"}
    after = {i: ps(bed, i) for i in (1, 2, 3)}
    assert [line.split()[0] for i in before for line in before[i]] == [
        line.split()[0] for i in after for line in after[i]
    ]  # same container IDs


def test_status_and_logs_show_the_truth(bed: TestBed, ray_inventory: Path, ray_up: dict) -> None:  # type: ignore[type-arg]
    res = orch("--output", "json", "status", str(ray_inventory), timeout=120)
    data = json.loads(res.stdout)
    assert [h["state"] for h in data["hosts"]] == ["running"] * 3
    assert data["ray"]["nodes_alive"] == 3 and data["ray"]["gpus"] == 3 * GPUS_PER_HOST
    assert data["vllm"]["serving"] is False and data["healthy"] and res.returncode == 0
    assert data["ray"]["missing"] == []
    logs = orch("-i", str(ray_inventory), "logs", "head", "--tail", "50", timeout=60)
    assert logs.returncode == 0
    assert "ray cluster only" in logs.stdout and "Ray runtime started" in logs.stdout


def test_a_frozen_worker_is_reported_lost_while_ray_still_lists_it_alive(
    bed: TestBed, ray_inventory: Path, ray_up: dict
) -> None:  # type: ignore[type-arg]
    """SIGSTOP of worker-2's supervisor (PID 1): its container runs and Ray keeps its raylet alive
    for its death timeout, but the head's supervisor no longer hears it: status says so."""
    pid = bed.docker(3, "inspect", "-f", "{{.State.Pid}}", "bedtest-worker-2").stdout.strip()
    assert pid.isdigit(), pid
    bed.run(3, "kill", "-STOP", pid)
    try:
        data = _until_status(ray_inventory, lambda d: not d["healthy"], 60)
        row = next(h for h in data["hosts"] if h["role"] == "worker-2")
        assert row["state"] == "running", json.dumps(data["hosts"])
        assert "has not heard it" in row.get("lost", ""), json.dumps(data["hosts"])
        assert data["ray"]["missing"] == []  # Ray: still alive
        text = orch("status", str(ray_inventory), timeout=120)
        assert "lost: the head's supervisor has not heard it" in text.stdout
    finally:
        bed.run(3, "kill", "-CONT", pid)
    _until_status(ray_inventory, lambda d: d["healthy"], 60)


def _until_status(inv: Path, cond: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        data: dict[str, Any] = json.loads(orch("--output", "json", "status", str(inv), timeout=120).stdout)
        return data if cond(data) else None

    found: dict[str, Any] = until(probe, timeout, "the status to change")
    return found


def test_changed_inventory_restarts_the_group_in_order(
    bed: TestBed, ray_inventory: Path, ray_up: dict, tmp_path: Path
) -> None:  # type: ignore[type-arg]
    import yaml

    data = yaml.safe_load(ray_inventory.read_text())
    data["env"] = {"ORCH_TEST_CHANGE": "1"}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    before = {line.split()[0] for i in (1, 2, 3) for line in ps(bed, i)}
    report = orch_json("up", str(changed), timeout=600)
    assert set(report["changes"].values()) == {"recreate"}
    after = {line.split()[0] for i in (1, 2, 3) for line in ps(bed, i)}
    assert not before & after
    assert sum(n["gpus"] for n in report["ray_nodes"] if n["alive"]) == 3 * GPUS_PER_HOST
    # back to the fixture's spec so later tests see what they expect
    assert orch_json("up", str(ray_inventory), timeout=600)["changes"]["hb1"] == "recreate"


def test_logs_follow_streams_until_stopped(ray_inventory: Path, ray_up: dict) -> None:  # type: ignore[type-arg]
    from tests.conftest import orch_popen

    with orch_popen("-i", str(ray_inventory), "logs", "worker-1", "-f", "--tail", "5") as proc:
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # the tail arrives, and the stream stays open
            assert first.strip()
            assert proc.poll() is None
        finally:
            proc.terminate()
            proc.communicate(timeout=30)


def test_down_leaves_nothing_and_is_idempotent(bed: TestBed, ray_inventory: Path, ray_up: dict) -> None:  # type: ignore[type-arg]
    first = orch_json("down", str(ray_inventory), timeout=300)
    assert sum(first["removed"].values()) == 3
    assert all(ps(bed, i) == [] for i in (1, 2, 3))
    assert sum(orch_json("down", str(ray_inventory), timeout=120)["removed"].values()) == 0


@pytest.mark.parametrize(
    "fault,restore,host",
    [
        ("kill-sshd", "start-sshd", 2),
        ("kill-dockerd", "start-dockerd", 3),
        ("partition", "heal", 2),
    ],
)
def test_unreachable_host_fails_fast_with_one_line_naming_it(
    bed: TestBed, ray_inventory: Path, fault: str, restore: str, host: int
) -> None:
    try:  # undone even when the fault itself failed halfway
        bed.fault(fault, host)
        res = orch("up", str(ray_inventory), timeout=60)
    finally:
        bed.fault(restore, host)
    name = bed.hosts[host - 1].name
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and name in errors[0], res.stderr
    assert res.elapsed < 15, f"took {res.elapsed:.1f}s"  # type: ignore[attr-defined]
