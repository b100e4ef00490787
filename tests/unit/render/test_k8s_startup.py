"""Every k8s render comes up: tests/support/k8s_sim.py plays Kubernetes' start-order rules on the YAML."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrate.agents import bundle
from orchestrate.core import inventory
from orchestrate.core.plan import build_plan
from orchestrate.render import k8s, rendered
from tests import FIXTURES, ROOT
from tests.support.k8s_sim import Node, Scenario, Sim
from tests.unit.core.test_properties import valid_inventories

VALID = FIXTURES / "inventories" / "valid"
INVENTORIES = sorted(
    [
        *(ROOT / "inventory").glob("*.yaml"),
        *(VALID).glob("*.yaml"),
    ]
)
COLD_PULL_S = 900  # a 15 GB image at ~17 MB/s on every node but the head's: longer than join_timeout
PLACEHOLDER = "REPLACE-ME"


def _docs(path: Path, flavor: str, fill_secret: bool = True) -> list[dict[str, Any]]:
    """The rendered files as `kubectl apply` would read them; the Secret template filled in.
    Replicas: every replica's objects in one cluster (the router, SMG, is not played: the sim
    knows vLLM's and Ray's commands, not SMG's; tests/unit/core/test_fleet.py checks its objects)."""
    inv = inventory.load(path)
    if inv.replicas.count > 1:
        from orchestrate.core.fleet import build_fleet
        from orchestrate.render import rendered_fleet

        files = rendered_fleet("k8s", build_fleet(inv), flavor)
    else:
        files = rendered("k8s", build_plan(inv), flavor)
    docs: list[dict[str, Any]] = []
    for name, text in files.items():
        for doc in yaml.safe_load_all(text):
            if doc and doc["kind"] == "Secret":
                if not fill_secret:
                    continue
                assert set(doc["stringData"].values()) == {PLACEHOLDER}, name
                doc["stringData"] = {k: "s3cret" for k in doc["stringData"]}
            if doc and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "router":
                docs.append(doc)
    return docs


def _cluster(path: Path, reverse: bool = False, by_ip: bool = True) -> list[Node]:
    """One node per inventory host. Its hostname label: the inventory's k8s_node, else the ssh
    name, else (by_ip: a cluster whose kubelets run with --hostname-override=<IP>) its IP."""
    inv = inventory.load(path)
    nodes = []
    for host in inv.hosts:
        name = host.k8s_node or host.ssh.host or (host.address if by_ip else f"{host.name}-box")
        pull = 0 if host.role == "head" else COLD_PULL_S
        nodes.append(Node(name=name, ip=host.address, gpus=host.gpus, pull_s=pull))
    return nodes[::-1] if reverse else nodes


CASES = [
    (p, f, r)
    for p in INVENTORIES
    for f in ("deployment", "lws")
    for r in (False, True)
    if not (f == "deployment" and r)
]


@pytest.mark.parametrize(
    "path,flavor,reverse", CASES, ids=[f"{p.stem}-{f}{'-reversed' if r else ''}" for p, f, r in CASES]
)
def test_every_render_reaches_all_ready(path: Path, flavor: str, reverse: bool) -> None:
    # reversed: the scheduler meets the worker's node first, so the LWS leader lands there
    res = Sim(_docs(path, flavor), _cluster(path, reverse)).run()
    assert res.all_ready, res.why()


def _lws_doc(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "LeaderWorkerSet")


def test_sim_leader_ready_startup_policy_deadlocks() -> None:
    """The head is Ready only after the workers join: LeaderReady never creates them."""
    path = ROOT / "inventory" / "l20.yaml"
    docs = _docs(path, "lws")
    _lws_doc(docs)["spec"]["startupPolicy"] = "LeaderReady"
    assert not Sim(docs, _cluster(path), Scenario(horizon_s=5000)).run().all_ready


def test_sim_service_without_not_ready_addresses_never_comes_up() -> None:
    """Today's render: workers reach the head through a Service that has no Ready endpoint."""
    path = ROOT / "inventory" / "l20.yaml"
    docs = _docs(path, "deployment")
    for d in docs:
        if d["kind"] == "Service":
            d["spec"].pop("publishNotReadyAddresses", None)
    res = Sim(docs, _cluster(path), Scenario(horizon_s=5000)).run()
    assert not res.all_ready
    assert any("wait-for-head" in line for line in res.log), res.log[-5:]


def test_sim_join_race_with_a_cold_pull_loops_under_the_old_budget() -> None:
    """ORCH_JOIN_TIMEOUT 300 and RecreateGroupOnPodRestart: each recreation loses the pull."""
    path = ROOT / "inventory" / "l20.yaml"
    docs = _docs(path, "lws")
    _lws_doc(docs)["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "RecreateGroupOnPodRestart"
    next(d for d in docs if d["kind"] == "ConfigMap")["data"]["ORCH_JOIN_TIMEOUT"] = "300"
    res = Sim(docs, _cluster(path), Scenario(horizon_s=6000)).run()
    assert not res.all_ready
    assert any("recreates group" in line for line in res.log)


def test_lws_uses_recreate_group_after_start_and_leader_created() -> None:
    lws = _lws_doc(_docs(ROOT / "inventory" / "l20.yaml", "lws"))
    assert lws["spec"]["startupPolicy"] == "LeaderCreated"
    assert lws["spec"]["leaderWorkerTemplate"]["restartPolicy"] == "RecreateGroupAfterStart"


def test_mp_lws_leader_binds_its_own_pod_ip_workers_the_leaders_address() -> None:
    lws = _lws_doc(_docs(VALID / "two-host-mp-secrets.yaml", "lws"))
    tpl = lws["spec"]["leaderWorkerTemplate"]
    lead = tpl["leaderTemplate"]["spec"]["containers"][0]["args"]
    work = tpl["workerTemplate"]["spec"]["containers"][0]["args"]
    assert lead[lead.index("--master-addr") + 1] == "$(VLLM_HOST_IP)"
    assert work[work.index("--master-addr") + 1] == "$(LWS_LEADER_ADDRESS)"


# ---------------------------------------------------------------- nodeSelector


def test_ip_node_selector_stays_pending_on_a_hostname_labelled_cluster() -> None:
    path = ROOT / "inventory" / "l20.yaml"
    res = Sim(_docs(path, "deployment"), _cluster(path, by_ip=False), Scenario(horizon_s=600)).run()
    assert not res.all_ready
    assert all(p.node is None for p in res.pods), res.why()
    assert len(k8s.node_warnings(build_plan(inventory.load(path)))) == 2


def test_k8s_node_and_ssh_hostname_select_the_node(tmp_path: Path) -> None:
    text = (ROOT / "inventory" / "l20.yaml").read_text()
    text = text.replace(
        "    gpus: 4\n  - name: l20-worker", "    gpus: 4\n    k8s_node: gpu-a\n  - name: l20-worker"
    )
    text = text.replace("address: 192.168.30.5", "address: 192.168.30.5\n    ssh: {host: GPU-B}")
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    plan = build_plan(inventory.load(path))
    assert [n.k8s_node for n in plan.nodes] == ["gpu-a", "gpu-b"]
    assert k8s.node_warnings(plan) == []
    nodes = [Node("gpu-a", "192.168.30.4", 4), Node("gpu-b", "192.168.30.5", 4, COLD_PULL_S)]
    for flavor in ("deployment", "lws"):
        assert Sim(_docs(path, flavor), nodes).run().all_ready, flavor


def test_render_warns_on_ip_fallback(tmp_path: Path) -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrate",
            "--target",
            "k8s",
            "render",
            "-i",
            str(ROOT / "inventory" / "l20.yaml"),
            "-o",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "host l20-head: no k8s_node" in res.stderr and "k8s_node" in res.stderr


# ---------------------------------------------------------------- probes


def _head_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    dep = next(d for d in docs if d["kind"] == "Deployment")
    return dep["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_default_one_second_probe_timeout_restarts_a_pp_head() -> None:
    path = ROOT / "inventory" / "l20.yaml"  # PP 2
    docs = _docs(path, "deployment")
    head = _head_container(docs)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert head[kind]["timeoutSeconds"] >= Scenario().health_latency_pp
        head[kind].pop("timeoutSeconds")
    res = Sim(docs, _cluster(path), Scenario(horizon_s=6000)).run()
    assert not res.all_ready
    assert any("startupProbe failed" in line for line in res.log)


@pytest.mark.parametrize("startup_timeout", [900, 3600, 7200])
def test_startup_budget_follows_serve_startup_timeout(tmp_path: Path, startup_timeout: int) -> None:
    """A head that loads for almost serve.startup_timeout, behind a cold worker, still comes up."""
    text = (ROOT / "inventory" / "l20.yaml").read_text()
    text = text.replace("serve:\n", f"serve:\n  startup_timeout: {startup_timeout}\n")
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    docs = _docs(path, "deployment")
    probe = _head_container(docs)["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= startup_timeout
    scenario = Scenario(load_s=startup_timeout - 60, horizon_s=startup_timeout + 5000)
    res = Sim(docs, _cluster(path), scenario).run()
    assert res.all_ready, res.why()


def test_probe_timeout_grows_with_the_model() -> None:
    small = build_plan(inventory.load(VALID / "three-host-tp2-pp3.yaml"))
    big = build_plan(inventory.load(VALID / "two-host-mp-secrets.yaml"))
    assert k8s.model_gib(small) < k8s.model_gib(big)  # 7B bf16 < 70B bf16
    assert 5 < k8s.probe_timeout(small) < k8s.probe_timeout(big) <= 60


# ---------------------------------------------------------------- Secret and compose


def test_secret_is_rendered_as_a_template_and_pods_need_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLLM_API_KEY", "canary-value-42")
    path = VALID / "two-host-mp-secrets.yaml"
    plan = build_plan(inventory.load(path))
    files = rendered("k8s", plan, "deployment")
    assert "canary-value-42" not in "".join(files.values())
    secret = yaml.safe_load(files["duo-secret.yaml"])
    assert secret["metadata"]["name"] == k8s.secret_name(plan)
    assert set(secret["stringData"]) == set(plan.secret_sources().values())
    assert "TEMPLATE" in files["duo-secret.yaml"]
    nodes = [Node("172.16.0.1", "172.16.0.1", 4), Node("gpu-node-2", "172.16.0.2", 4)]
    res = Sim(_docs(path, "deployment", fill_secret=False), nodes, Scenario(horizon_s=600)).run()
    assert not res.all_ready and "CreateContainerConfigError" in res.why()


def test_compose_fails_on_an_unset_api_key(tmp_path: Path) -> None:
    plan = build_plan(inventory.load(VALID / "two-host-mp-secrets.yaml"))
    text = rendered("compose", plan, "")["n1.yaml"]
    assert "${VLLM_API_KEY:?" in text
    exe = shutil.which("docker-compose")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("docker-compose is not installed")
        pytest.skip("docker-compose is not installed")
    path = tmp_path / "n1.yaml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_API_KEY", "HF_TOKEN", "WANDB_KEY")}
    res = subprocess.run(
        [exe, "-f", str(path), "config", "-q"], capture_output=True, text=True, timeout=60, env=env
    )
    assert res.returncode != 0 and "VLLM_API_KEY" in res.stderr, res.stderr


# ---------------------------------------------------------------- generated inventories


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_inventories(), st.sampled_from(["deployment", "lws"]), st.booleans())
def test_generated_inventories_reach_all_ready(data: dict[str, Any], flavor: str, reverse: bool) -> None:
    """Any valid inventory (1-6 hosts, either backend, head anywhere), on a cluster whose nodes
    carry the k8s_node names and where every node but the head's pulls the image cold."""
    for host in data["hosts"]:
        host["k8s_node"] = f"node-{host['name']}"
    plan = build_plan(inventory.parse(data, "gen.yaml"))
    docs = [d for text in rendered("k8s", plan, flavor).values() for d in yaml.safe_load_all(text) if d]
    nodes = [Node(n.k8s_node, n.address, n.gpus, 0 if n.role == "head" else COLD_PULL_S) for n in plan.nodes]
    res = Sim(docs, nodes[::-1] if reverse else nodes).run()
    assert res.all_ready, res.why()


# ---------------------------------------------------------------- a hang /health does not see

HANG_CASES = [(ROOT / "inventory" / "l20.yaml", f) for f in ("deployment", "lws")] + [
    (VALID / "two-host-mp-secrets.yaml", f) for f in ("deployment", "lws")
]
HANG_AT = 5000  # well after the group first served (cold pull + load)


def _without_watchdog(path: Path, tmp: Path) -> Path:
    data = yaml.safe_load(path.read_text())
    data["watchdog"] = {"enabled": False}
    out = tmp / path.name
    out.write_text(yaml.safe_dump(data))
    return out


@pytest.mark.parametrize("path,flavor", HANG_CASES, ids=[f"{p.stem}-{f}" for p, f in HANG_CASES])
def test_an_engine_hang_restarts_the_group_and_it_serves_again(path: Path, flavor: str) -> None:
    docs = _docs(path, flavor)
    head = next(d for d in docs if d["kind"] in ("Deployment", "LeaderWorkerSet"))
    tpl = head["spec"].get("leaderWorkerTemplate", {}).get("leaderTemplate") or head["spec"]["template"]
    probe = tpl["spec"]["containers"][0]["livenessProbe"]
    assert probe["httpGet"]["path"] == "/livez"
    res = Sim(docs, _cluster(path), Scenario(hang_at=HANG_AT, horizon_s=4 * 3600)).run()
    assert res.all_ready and res.at is not None and res.at > HANG_AT, res.why()
    assert any("engine hang" in line for line in res.log), res.log
    if flavor == "lws":
        assert any("recreates group" in line for line in res.log), res.log


@pytest.mark.parametrize("path,flavor", HANG_CASES[:2], ids=["deployment", "lws"])
def test_without_the_watchdog_a_hang_behind_a_healthy_health_never_heals(
    path: Path, flavor: str, tmp_path: Path
) -> None:
    docs = _docs(_without_watchdog(path, tmp_path), flavor)
    assert not any(d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-supervisor") for d in docs)
    res = Sim(docs, _cluster(path), Scenario(hang_at=HANG_AT, horizon_s=4 * 3600)).run()
    assert not res.all_ready
    assert not any("restarts" in line and int(line.split(":")[0]) >= HANG_AT for line in res.log)


def test_workers_find_the_head_supervisor_through_the_peer_service() -> None:
    docs = _docs(VALID / "two-host-mp-secrets.yaml", "deployment")
    peers = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-peers"))
    worker = next(d for d in docs if d["kind"] == "Deployment" and "worker" in d["metadata"]["name"])
    env = {e["name"]: e.get("value") for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ORCH_SUP_ROLE"] == "worker"
    assert env["ORCH_SUP_HEAD"].startswith(peers["metadata"]["name"] + ".")
    assert int(env["ORCH_SUP_PORT"]) in {p["port"] for p in peers["spec"]["ports"]}
    cmd = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:2] == ["python3", k8s.SUPERVISOR_PATH]
    lws = _lws_doc(_docs(VALID / "two-host-mp-secrets.yaml", "lws"))
    wenv = {
        e["name"]: e.get("value")
        for e in lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["env"]
    }
    assert wenv["ORCH_SUP_RANK"] == "$(LWS_WORKER_INDEX)"
    assert wenv["ORCH_SUP_HEAD"] == "$(LWS_LEADER_ADDRESS)"


def test_a_new_supervisor_rolls_the_pods_through_their_template() -> None:
    from orchestrate.agents import bundle_hash

    docs = _docs(VALID / "two-host-mp-secrets.yaml", "deployment")
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert deployments and all(
        d["spec"]["template"]["metadata"]["annotations"]["orchestrate/supervisor"]
        == bundle_hash("supervisor")
        for d in deployments
    )
    cm = next(d for d in docs if d["metadata"]["name"].endswith("-supervisor"))
    assert cm["data"]["supervisor.py"] == bundle("supervisor")
    tpl = _lws_doc(_docs(VALID / "two-host-mp-secrets.yaml", "lws"))
    for part in ("leaderTemplate", "workerTemplate"):
        meta = tpl["spec"]["leaderWorkerTemplate"][part]["metadata"]
        assert meta["annotations"]["orchestrate/supervisor"] == bundle_hash("supervisor")
