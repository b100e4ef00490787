"""Golden and validity tests for the pure core: inventory -> plan -> k8s / compose."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from orchestrate.agents import bundle
from orchestrate.core import inventory
from orchestrate.core.plan import build_plan
from orchestrate.errors import InventoryError
from orchestrate.render import compose, k8s, plan_data, rendered
from tests import FIXTURES, ROOT
from tests.support import golden

CASES = FIXTURES / "inventories"
VALID = sorted(p for p in (CASES / "valid").glob("*.yaml"))
INVALID = sorted((CASES / "invalid").glob("*.yaml"))
K8S_VERSION = "1.33.0"


def _plan(path: Path):  # type: ignore[no-untyped-def]
    return build_plan(inventory.load(path))


@pytest.mark.parametrize("case", VALID, ids=lambda p: p.stem)
def test_golden_outputs(case: Path) -> None:
    plan = _plan(case)
    out = CASES / "valid" / case.stem
    golden.check(out / "plan.json", json.dumps(plan_data(plan), indent=2) + "\n")
    for flavor in ("deployment", "lws"):
        for name, text in rendered("k8s", plan, flavor).items():
            golden.check(out / "k8s" / name, text)
    for name, text in rendered("compose", plan, "").items():
        if name == compose.SUPERVISOR_FILE:  # the agent itself: checked once, in compose/
            assert text == bundle("supervisor")
            continue
        golden.check(out / "compose" / name, text)


@pytest.mark.parametrize("case", INVALID, ids=lambda p: p.stem)
def test_invalid_inventories_name_the_field(case: Path) -> None:
    with pytest.raises(InventoryError) as info:
        inventory.load(case)
    problems = info.value.problems
    expected = case.with_suffix(".errors").read_text(encoding="utf-8").splitlines()
    assert all(p.startswith(f"{case}: ") for p in problems), problems
    for want in expected:
        assert any(want in p for p in problems), f"{want!r} not in {problems}"
    assert len(problems) == len(expected), problems


def test_committed_renders_match_the_code() -> None:
    """k8s/ and compose/ hold the reference inventory's renders; they must not drift."""
    plan = _plan(ROOT / "inventory" / "l20.yaml")
    files = {**rendered("k8s", plan, "deployment"), **rendered("k8s", plan, "lws")}
    for name, text in files.items():
        golden.check(ROOT / "k8s" / name, text)
    for name, text in rendered("compose", plan, "").items():
        golden.check(ROOT / "compose" / name, text)


def _all_k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for case in VALID:
        for flavor in ("deployment", "lws"):
            for doc in k8s.render(_plan(case), flavor):  # type: ignore[arg-type]
                docs.append((f"{case.stem}/{flavor}/{doc['kind']}", doc))
    return docs


@pytest.mark.parametrize("name,doc", _all_k8s_docs(), ids=lambda x: x if isinstance(x, str) else "")
def test_k8s_documents_are_valid(name: str, doc: dict[str, Any]) -> None:
    # round-trip through YAML exactly as a user would apply it
    doc = yaml.safe_load(yaml.safe_dump(doc))
    if doc["kind"] == "LeaderWorkerSet":
        jsonschema.validate(doc, _strict(_lws_schema()))
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _lws_schema() -> dict[str, Any]:
    path = FIXTURES / "schemas" / "leaderworkerset-v1.openapi.json"
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _strict(schema: Any) -> Any:
    """A structural CRD schema prunes unknown fields; for tests, reject them instead."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes")}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        if schema.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def test_lws_schema_check_catches_a_wrong_field() -> None:
    doc = next(d for n, d in _all_k8s_docs() if n.endswith("LeaderWorkerSet"))
    bad = copy.deepcopy(doc)
    bad["spec"]["leaderWorkerTemplate"]["sise"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, _strict(_lws_schema()))


def test_kubernetes_validate_catches_a_wrong_field() -> None:
    doc = next(d for n, d in _all_k8s_docs() if n.endswith("/Deployment"))
    bad = copy.deepcopy(doc)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    bad["spec"]["replica"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def _compose_files(tmp: Path) -> list[Path]:
    paths = []
    for case in VALID:
        for host, doc in compose.render(_plan(case)).items():
            path = tmp / f"{case.stem}-{host}.yaml"
            path.write_text(yaml.safe_dump(doc), encoding="utf-8")
            paths.append(path)
    return paths


def _docker_compose() -> str:
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed (apt-get install docker-compose)")
        pytest.skip("docker-compose is not installed")
    return exe


def test_compose_files_pass_docker_compose_config(tmp_path: Path) -> None:
    exe = _docker_compose()
    env = {**os.environ, "HF_TOKEN": "x", "VLLM_API_KEY": "x", "WANDB_KEY": "x"}
    for path in _compose_files(tmp_path):
        res = subprocess.run(
            [exe, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60, env=env
        )
        assert res.returncode == 0, f"{path.name}: {res.stderr}"


def test_compose_config_rejects_a_broken_file(tmp_path: Path) -> None:
    exe = _docker_compose()
    path = _compose_files(tmp_path)[0]
    doc = yaml.safe_load(path.read_text())
    next(iter(doc["services"].values()))["shm_size"] = {"not": "a size"}
    path.write_text(yaml.safe_dump(doc))
    res = subprocess.run([exe, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0


def test_compose_keeps_dollar_signs_literal_and_secrets_as_references(tmp_path: Path) -> None:
    exe = _docker_compose()
    plan = _plan(CASES / "valid" / "two-host-mp-secrets.yaml")
    path = tmp_path / "n1.yaml"
    path.write_text(rendered("compose", plan, "")["n1.yaml"])
    env = {**os.environ, "HF_TOKEN": "hf-canary-123", "VLLM_API_KEY": "k", "WANDB_KEY": "w"}
    res = subprocess.run(
        [exe, "-f", str(path), "config"], capture_output=True, text=True, timeout=60, env=env
    )
    assert res.returncode == 0, res.stderr
    assert "hf-canary-123" in res.stdout  # interpolated by compose at `up` time ...
    assert "hf-canary-123" not in path.read_text()  # ... never written into the file


def test_ray_plan_gates_serve_on_every_node_and_gpu() -> None:
    plan = _plan(ROOT / "inventory" / "l20.yaml")
    head = plan.head.container.env_dict()
    assert head["ORCH_EXPECTED_NODES"] == "2" and head["ORCH_EXPECTED_GPUS"] == "8"
    assert head["ORCH_EXPECTED_IPS"] == "192.168.30.4,192.168.30.5"
    assert plan.head.container.command[2:4] == ("vllm", "serve")
    worker = plan.workers[0].container.env_dict()
    assert worker["ORCH_HEAD_ADDR"] == "192.168.30.4" and worker["VLLM_HOST_IP"] == "192.168.30.5"


def test_mp_plan_ranks_and_headless() -> None:
    plan = _plan(CASES / "valid" / "two-host-mp-secrets.yaml")
    head, worker = plan.nodes
    assert head.container.entrypoint == ("vllm",)
    assert "--headless" not in head.container.command
    assert worker.container.command[-1] == "--headless"
    i = worker.container.command.index("--node-rank")
    assert worker.container.command[i + 1] == "1"
    assert "--port" not in worker.container.command


def test_spec_hash_changes_with_the_spec_only() -> None:
    data = yaml.safe_load((ROOT / "inventory" / "l20.yaml").read_text())
    a = build_plan(inventory.parse(data))
    b = build_plan(inventory.parse(copy.deepcopy(data)))
    assert a.head.container.spec_hash() == b.head.container.spec_hash()
    data["serve"]["max_model_len"] = 8192
    c = build_plan(inventory.parse(data))
    assert c.head.container.spec_hash() != a.head.container.spec_hash()


@pytest.mark.parametrize("path", sorted((ROOT / "inventory").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_inventories_are_valid(path: Path) -> None:
    inv = inventory.load(path)
    if inv.replicas.count > 1:  # tests/unit/core/test_fleet.py
        from orchestrate.core.fleet import build_fleet

        plans = build_fleet(inv).replicas
    else:
        plans = (build_plan(inv),)
    assert all(plan.world_size == plan.total_gpus for plan in plans)
    assert sum(plan.total_gpus for plan in plans) == sum(h.gpus for h in inv.hosts)


def test_local_demo_plan_uses_its_own_bridge_addresses() -> None:
    plan = _plan(ROOT / "inventory" / "local-cpu.yaml")
    for node in plan.nodes:
        assert node.ssh.local and node.container.network_mode == "orchestrate-demo"
        assert node.container.ipv4_address == node.address
        assert node.container.env_dict()["VLLM_HOST_IP"] == node.address
    doc = compose.render(plan)["node-1"]
    assert doc["networks"]["orchestrate-demo"]["ipam"]["config"] == [{"subnet": "172.30.99.0/24"}]


def test_docker_kwargs_carry_resolved_secrets_by_container_name() -> None:
    from orchestrate.render.docker import run_kwargs

    plan = _plan(CASES / "valid" / "two-host-mp-secrets.yaml")
    values = {"HF_TOKEN": "t", "VLLM_API_KEY": "k", "WANDB_API_KEY": "w"}
    kwargs = run_kwargs(plan.head.container, values)
    assert {k: kwargs["environment"][k] for k in values} == values
    assert "k" not in kwargs["command"]


def test_plain_docker_kwargs_become_the_sdk_types_docker_run_sent_before() -> None:
    # render/docker.py makes plain data; host/engine.py alone makes docker-py's types of it, and
    # they must be what docker-py built before the boundary moved (the JSON on the wire)
    from docker.types import DeviceRequest, EndpointConfig, Mount

    from orchestrate.host.engine import MIN_API, sdk_kwargs
    from orchestrate.render.docker import run_kwargs

    gpu = _plan(ROOT / "inventory" / "l20.yaml").head.container
    kw = sdk_kwargs(run_kwargs(gpu, {}))
    assert (
        kw["mounts"]
        == [Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only) for m in gpu.mounts]
        and gpu.mounts
    )
    assert all(isinstance(m, Mount) for m in kw["mounts"])
    assert kw["device_requests"] == [DeviceRequest(count=gpu.gpus, capabilities=[["gpu"]])] and gpu.gpus
    assert isinstance(kw["device_requests"][0], DeviceRequest)
    bridged = _plan(ROOT / "inventory" / "local-cpu.yaml").head.container
    kw = sdk_kwargs(run_kwargs(bridged, {}))
    want = EndpointConfig(MIN_API, ipv4_address=bridged.ipv4_address)
    assert kw["networking_config"] == {bridged.network_mode: want} and bridged.ipv4_address
    assert "device_requests" not in kw
