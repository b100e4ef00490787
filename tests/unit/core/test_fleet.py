"""Replicas behind a router, the pure part (issue 14): inventory layout rules, the fleet plan, the
router's argv, and the renders (golden, valid for Kubernetes and docker-compose)."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from orchestrate.core import inventory
from orchestrate.core.fleet import Fleet, build_fleet
from orchestrate.core.plan import build_plan
from orchestrate.errors import InventoryError, UsageError
from orchestrate.host.engine import sdk_kwargs
from orchestrate.render import fleet as fleet_r
from orchestrate.render import fleet_data, rendered_fleet
from orchestrate.render.docker import run_kwargs
from tests import ROOT
from tests.support import golden

L20 = ROOT / "inventory" / "l20.yaml"
REPLICAS = ROOT / "inventory" / "l20-replicas.yaml"
K8S_VERSION = "1.33.0"


def _data(path: Path = REPLICAS) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _fleet(data: dict[str, Any]) -> Fleet:
    return build_fleet(inventory.parse(data, "inv.yaml"))


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(InventoryError) as info:
        inventory.parse(data, "inv.yaml")
    return info.value.problems


def _four_tp2() -> dict[str, Any]:
    data = _data()
    data["replicas"]["count"] = 4
    data["serve"]["tensor_parallel_size"] = 2
    return data


# ---------------------------------------------------------------- layout


def test_two_replicas_of_tp4_take_one_host_each() -> None:
    fleet = _fleet(_data())
    assert [p.name for p in fleet.replicas] == ["qwen32b-replicas-r0", "qwen32b-replicas-r1"]
    assert [[n.host for n in p.nodes] for p in fleet.replicas] == [["l20-head"], ["l20-worker"]]
    assert all(p.tensor_parallel == 4 and p.pipeline_parallel == 1 for p in fleet.replicas)
    assert [p.endpoint for p in fleet.replicas] == ["http://192.168.30.4:8009", "http://192.168.30.5:8009"]
    # one host each: the GPUs are the host's, by count, as for one group
    assert all(n.container.gpus == 4 and n.container.gpu_ids == () for p in fleet.replicas for n in p.nodes)
    assert fleet.endpoint == "http://192.168.30.4:30000"
    assert all(p.namespace == "vllm" for p in (*fleet.replicas, fleet.router))


def test_replicas_that_share_a_host_get_their_own_gpus_and_ports() -> None:
    fleet = _fleet(_four_tp2())
    nodes = [p.head for p in fleet.replicas]
    assert [(n.host, n.container.gpu_ids) for n in nodes] == [
        ("l20-head", ("0", "1")),
        ("l20-head", ("2", "3")),
        ("l20-worker", ("0", "1")),
        ("l20-worker", ("2", "3")),
    ]
    assert [p.api_port for p in fleet.replicas] == [8009, 8010, 8009, 8010]
    env = [n.container.env_dict()["VLLM_PORT"] for n in nodes]
    assert env == ["29510", "29526", "29510", "29526"]  # vLLM's 16-port blocks do not overlap
    assert [n.container.supervisor.port for n in nodes if n.container.supervisor] == [8626, 8627, 8626, 8627]
    assert all(p.backend == "mp" for p in fleet.replicas)
    # docker: exactly these devices, as `docker run --gpus device=2,3`
    kw = sdk_kwargs(run_kwargs(nodes[1].container, {}))
    assert kw["device_requests"][0]["DeviceIDs"] == ["2", "3"]
    assert kw["device_requests"][0]["Count"] == 0


def test_a_replica_across_two_hosts_keeps_its_own_head() -> None:
    data = _data()
    data["hosts"] += [
        {"name": "l20-c", "address": "192.168.30.6", "gpus": 4},
        {"name": "l20-d", "address": "192.168.30.7", "gpus": 4},
    ]
    data["serve"]["pipeline_parallel_size"] = 2
    fleet = _fleet(data)
    assert [[(n.host, n.role) for n in p.nodes] for p in fleet.replicas] == [
        [("l20-head", "head"), ("l20-worker", "worker")],
        [("l20-c", "head"), ("l20-d", "worker")],
    ]
    assert fleet.replicas[1].head.address == "192.168.30.6"


@pytest.mark.parametrize(
    "change,want",
    [
        (lambda d: d["replicas"].update(count=3), "replicas.count x tensor_parallel_size"),
        (lambda d: d["serve"].update(tensor_parallel_size=3), "3 x 1 = 6 but the hosts have 8"),
        (lambda d: d["replicas"]["router"].update(host="nowhere"), "replicas.router.host: 'nowhere'"),
        (lambda d: d["replicas"]["router"].update(port=8009), "port 8009 on l20-head is already used"),
        (lambda d: d["replicas"]["router"].update(metrics_port=30000), "metrics_port: 30000 is also"),
        (lambda d: d["hosts"][1].update(role="head"), "hosts[1].role: with replicas"),
        (lambda d: d["replicas"]["router"].update(policy="manual"), "replicas.router.policy"),
        (lambda d: d["serve"].update(start=False), "serve.start: false (a Ray cluster only) cannot"),
    ],
)
def test_bad_replica_layouts_name_the_field(change: Any, want: str) -> None:
    data = _data()
    change(data)
    problems = _problems(data)
    assert any(want in p for p in problems), problems
    assert all(p.startswith("inv.yaml: ") for p in problems)


def test_shared_hosts_refuse_ray_and_a_replica_port_on_the_router_port() -> None:
    data = _four_tp2()
    data["backend"] = "ray"
    assert any("replicas that share a host" in p for p in _problems(data))
    data = _four_tp2()
    data["replicas"]["router"]["port"] = 8010  # replica 1's shifted serve.port
    assert any("replicas[1].serve.port: port 8010 on l20-head" in p for p in _problems(data))


def test_one_group_plans_and_the_fleet_path_are_kept_apart() -> None:
    with pytest.raises(UsageError, match="fleet of replicas"):
        build_plan(inventory.parse(_data(), "inv.yaml"))
    assert inventory.parse(_data(L20), "l20.yaml").replicas.count == 1


# ---------------------------------------------------------------- the router


def _flag(argv: tuple[str, ...] | list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_router_routes_to_every_replica_and_holds_the_key_as_a_secret() -> None:
    data = _data()
    data["serve"]["api_key"] = "${VLLM_KEY}"
    fleet = _fleet(data)
    spec = fleet.router.head.container
    argv = spec.command[2:]
    assert argv[0] == "launch"
    urls = list(argv[argv.index("--worker-urls") + 1 : argv.index("--policy")])
    assert urls == [p.endpoint for p in fleet.replicas]
    assert _flag(argv, "--policy") == "cache_aware"
    assert _flag(argv, "--health-check-interval-secs") == "5"
    assert "--remove-unhealthy-workers" not in argv  # a static fleet would shrink for good
    assert spec.secret_env == (("VLLM_API_KEY", "VLLM_KEY"),)
    assert "VLLM_KEY" not in " ".join(spec.command) and "--api-key" in spec.command[0]
    assert spec.restart_always and spec.gpus == 0 and spec.supervisor is None
    assert fleet.router.head.host == "l20-head"
    assert fleet.router.name == "qwen32b-replicas-router"


def test_the_router_host_can_be_chosen() -> None:
    data = _data()
    data["replicas"]["router"]["host"] = "l20-worker"
    assert _fleet(data).endpoint == "http://192.168.30.5:30000"


# ---------------------------------------------------------------- renders


def test_committed_replica_renders_match_the_code() -> None:
    """k8s/replicas/ and compose/replicas/ hold inventory/l20-replicas.yaml's renders."""
    fleet = _fleet(_data())
    for flavor in ("deployment", "lws"):
        for name, text in rendered_fleet("k8s", fleet, flavor).items():
            golden.check(ROOT / "k8s" / "replicas" / name, text)
    for name, text in rendered_fleet("compose", fleet, "").items():
        golden.check(ROOT / "compose" / "replicas" / name, text)


def _k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    data = _data()
    data["serve"]["api_key"] = "${VLLM_KEY}"
    out = []
    for case, d in (("2xTP4", data), ("4xTP2", _four_tp2())):
        for doc in fleet_r.k8s(_fleet(d), "deployment") + fleet_r.k8s_secrets(_fleet(d)):
            out.append((f"{case}/{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


@pytest.mark.parametrize("name,doc", _k8s_docs(), ids=lambda x: x if isinstance(x, str) else "")
def test_replica_k8s_documents_are_valid(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(yaml.safe_load(yaml.safe_dump(doc)), K8S_VERSION, strict=True)


def test_k8s_router_reaches_each_replica_by_its_head_service() -> None:
    data = _data()
    data["serve"]["api_key"] = "${VLLM_KEY}"
    docs = fleet_r.k8s(_fleet(data), "deployment")
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    router = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-router"))
    c = router["spec"]["template"]["spec"]["containers"][0]
    urls = c["args"][c["args"].index("--worker-urls") + 1 : c["args"].index("--policy")]
    for k, url in enumerate(urls):
        svc = f"qwen32b-replicas-r{k}-head"
        assert url == f"http://{svc}.vllm.svc.cluster.local:8009"
        assert svc in services and services[svc]["spec"]["ports"][0]["port"] == 8009
    # the endpoint users get selects the router's pods, on its port
    front = services["qwen32b-replicas"]["spec"]
    assert front["selector"] == router["spec"]["selector"]["matchLabels"]
    assert front["ports"][0]["port"] == 30000
    key = next(e for e in c["env"] if e["name"] == "VLLM_API_KEY")
    secrets = {d["metadata"]["name"]: d for d in fleet_r.k8s_secrets(_fleet(data))}
    ref = key["valueFrom"]["secretKeyRef"]
    assert ref["key"] in secrets[ref["name"]]["stringData"]
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"] == ["vllm"]


def test_compose_puts_the_router_in_its_hosts_file_and_merges_shared_hosts(tmp_path: Path) -> None:
    docs = fleet_r.compose(_fleet(_four_tp2()))
    assert sorted(docs) == ["l20-head", "l20-worker"]
    assert sorted(docs["l20-head"]["services"]) == ["r0-head", "r1-head", "router"]
    assert sorted(docs["l20-worker"]["services"]) == ["r2-head", "r3-head"]
    devices = docs["l20-head"]["services"]["r1-head"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["2", "3"], "capabilities": ["gpu"]}]
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed")
        pytest.skip("docker-compose is not installed")
    for host, doc in docs.items():
        path = tmp_path / f"{host}.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        res = subprocess.run(
            [exe, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60
        )
        assert res.returncode == 0, f"{host}: {res.stderr}"
    broken = copy.deepcopy(docs["l20-head"])
    broken["services"]["router"]["restart"] = 7
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(broken), encoding="utf-8")
    res = subprocess.run(
        [exe, "-f", str(tmp_path / "bad.yaml"), "config", "-q"], capture_output=True, timeout=60
    )
    assert res.returncode != 0


def test_plan_data_lists_replicas_and_router() -> None:
    data = fleet_data(_fleet(_data()))
    assert data["endpoint"] == "http://192.168.30.4:30000"
    assert [r["name"] for r in data["replicas"]] == ["qwen32b-replicas-r0", "qwen32b-replicas-r1"]
    assert data["router"]["nodes"][0]["container"]["image"] == "orchestrate/smg:1.13.0"


def test_firewall_opens_each_replicas_api_port_to_the_router_host() -> None:
    from orchestrate.core import ports

    fleet = _fleet(_data())
    needs = ports.fleet_needs(fleet)
    assert [(n.src, n.dst, n.ports) for n in needs] == [("l20-head", "l20-worker", "8009")]
    text = ports.fleet_rules_text(fleet, ("iptables",))
    assert "iptables -I INPUT -p tcp -s 192.168.30.4 --dport 8009" in text
    assert "tcp 30000 (replicas.router.port)" in text


def test_model_commands_cover_every_host_of_the_fleet() -> None:
    plan = _fleet(_four_tp2()).hosts_plan()
    assert [n.host for n in plan.nodes] == ["l20-head", "l20-worker"]  # once each, shared or not
    assert plan.head.host == "l20-head" and plan.model_host_path.endswith("Qwen2.5-32B-Instruct-GPTQ-Int4")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run(
        [sys.executable, "-m", "orchestrate", *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_cli_validates_plans_and_renders_a_fleet_without_touching_a_host(tmp_path: Path) -> None:
    res = _cli("validate", str(REPLICAS))
    assert res.returncode == 0 and "2 replicas of TP=4 x PP=1" in res.stdout, res.stderr
    res = _cli("up", "--dry-run", str(REPLICAS))
    assert res.returncode == 0 and "# ==== router on l20-head" in res.stdout, res.stderr
    res = _cli("--target", "compose", "render", str(REPLICAS), "-o", str(tmp_path))
    assert res.returncode == 0 and (tmp_path / "l20-head.yaml").exists(), res.stderr
    assert "router" in yaml.safe_load((tmp_path / "l20-head.yaml").read_text())["services"]


def test_cli_names_the_nodes_of_a_fleet_and_refuses_watch_in_one_line() -> None:
    res = _cli("logs", "r5", str(REPLICAS))
    assert res.returncode == 2 and "no node 'r5'" in res.stderr and "r0 .. r1" in res.stderr
    assert "Traceback" not in res.stderr
    res = _cli("watch", str(REPLICAS))
    assert res.returncode == 2 and "does not follow replicas" in res.stderr


def test_the_router_image_can_travel_another_way_than_the_vllm_image() -> None:
    data = _data()
    data["images"] = {"source": "registry"}
    assert _fleet(data).router.image_source == "registry"
    data["replicas"]["router"]["image_source"] = "local"  # built here, streamed over SSH
    fleet = _fleet(data)
    assert fleet.router.image_source == "local" and fleet.replicas[0].image_source == "registry"
