"""vLLM's own data parallel (issue 14, MoE models): serve.data_parallel_size, the multi-node
flags of vLLM's docs/serving/data_parallel_deployment.md, checked against the option tables read
out of the real wheels (orchestrate/core/vllm_flags), and what the renders and firewall make of it."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrate.core import inventory, ports
from orchestrate.core.plan import Plan, build_plan
from orchestrate.errors import InventoryError, UsageError
from orchestrate.render import k8s
from tests import ROOT


def _data(**serve: Any) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "inventory" / "l20.yaml").read_text(encoding="utf-8"))
    data["backend"] = "auto"
    data["image"] = "vllm/vllm-openai:v0.32.0"
    data["serve"].update(
        {"tensor_parallel_size": 2, "pipeline_parallel_size": 1, "data_parallel_size": 4, **serve}
    )
    return data  # type: ignore[no-any-return]


def _plan(data: dict[str, Any], version: str | None = "0.32.0") -> Plan:
    return build_plan(inventory.parse(data, "dp.yaml"), vllm_version=version)


def _after(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_two_hosts_of_two_dp_ranks_each() -> None:
    plan = _plan(_data())
    assert plan.backend == "mp" and "data parallel" in plan.backend_reason
    assert plan.world_size == 8 == plan.total_gpus and plan.data_parallel == 4
    head, worker = (n.container.command for n in plan.nodes)
    for argv in (head, worker):
        assert _after(argv, "--data-parallel-size") == "4"
        assert _after(argv, "--data-parallel-size-local") == "2"  # 4 GPUs / TP 2
        assert _after(argv, "--data-parallel-address") == "192.168.30.4"
        assert _after(argv, "--data-parallel-rpc-port") == "13345"
        assert "--nnodes" not in argv and "--master-addr" not in argv
    assert "--headless" not in head and _after(head, "--port") == "8009"
    assert "--headless" in worker and _after(worker, "--data-parallel-start-rank") == "2"
    assert "--port" not in worker


def test_one_host_needs_only_the_size() -> None:
    data = _data(data_parallel_size=2)
    data["hosts"] = data["hosts"][:1]
    (head,) = (n.container.command for n in _plan(data).nodes)
    assert _after(head, "--data-parallel-size") == "2"
    assert "--data-parallel-address" not in head and "--headless" not in head


@pytest.mark.parametrize("version", ["0.11.0", "0.18.1", "0.32.0", "0.33.0"])
def test_the_flags_exist_in_the_wheels_that_have_them(version: str) -> None:
    _plan(_data(), version)  # check_flags: every flag against that wheel's own option table


@pytest.mark.parametrize("version", ["0.6.4.post1", "0.8.5"])
def test_older_wheels_refuse_with_the_flag_named(version: str) -> None:
    with pytest.raises(UsageError, match=r"--data-parallel-size(-local)? is not an option of vllm serve"):
        _plan(_data(), version)


@pytest.mark.parametrize(
    "change,want",
    [
        ({"serve": {"pipeline_parallel_size": 2, "data_parallel_size": 2}}, "needs pipeline_parallel_size 1"),
        ({"backend": "ray"}, "use backend: mp or auto"),
        ({"serve": {"data_parallel_size": 2}}, "2 x 2 = 4 but the hosts have 8"),
        ({"serve": {"tensor_parallel_size": 3, "data_parallel_size": 2}}, "must be equal"),
        ({"replicas": {"count": 2}}, "replicas.count is also set"),
        ({"serve": {"data_parallel_rpc_port": 8009}}, "port 8009 is already used by serve.port"),
    ],
)
def test_bad_data_parallel_layouts_name_the_field(change: dict[str, Any], want: str) -> None:
    data = _data()
    for key, value in change.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    with pytest.raises(InventoryError) as info:
        inventory.parse(data, "dp.yaml")
    assert any(want in p for p in info.value.problems), info.value.problems


def test_k8s_binds_the_head_on_its_pod_ip_and_the_others_dial_the_peers_service() -> None:
    plan = _plan(_data(), None)
    docs = k8s.render(plan, "deployment")
    for doc in docs:
        kubernetes_validate.validate(yaml.safe_load(yaml.safe_dump(doc)), "1.33.0", strict=True)
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    head = deps["qwen32b-head"]["spec"]["template"]["spec"]["containers"][0]["args"]
    worker = deps["qwen32b-worker-1"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert _after(tuple(head), "--data-parallel-address") == "$(VLLM_HOST_IP)"
    assert _after(tuple(worker), "--data-parallel-address") == "qwen32b-head-peers.vllm.svc.cluster.local"
    peers = next(d for d in docs if d["metadata"]["name"] == "qwen32b-head-peers")
    assert {"name": "dp-rpc", "port": 13345, "targetPort": 13345, "protocol": "TCP"} in peers["spec"]["ports"]


def test_the_firewall_opens_the_dp_rpc_port_on_the_head() -> None:
    needs = ports.needs(_plan(_data()))
    assert any(n.first == 13345 and n.dst == "l20-head" and n.src == "l20-worker" for n in needs)
    assert not any(n.field == "mp.master_port" for n in needs)
