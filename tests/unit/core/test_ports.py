"""Issue 11 (hosts as they are): every port Ray and vLLM can pin is pinned, the firewall rules
that follow from the plan, and the preflight probes' parse/judge on recorded probe output."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrate.agents import scripts
from orchestrate.core import inventory, ports
from orchestrate.core.plan import Plan, build_plan
from orchestrate.ops import preflight
from tests import ROOT

VALID = ROOT / "tests" / "fixtures" / "inventories" / "valid"


def _plan(name: str) -> Plan:
    return build_plan(inventory.load(VALID / f"{name}.yaml"))


def test_ray_start_gets_every_pinned_port(tmp_path: Path) -> None:
    """Run the real worker entrypoint with a fake `ray` that records its argv."""
    plan = _plan("three-host-tp2-pp3")
    worker = plan.workers[0].container
    fake = tmp_path / "ray"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ORCH_ARGV_OUT"\n')
    fake.chmod(0o755)
    gcs = socket.socket()
    gcs.bind(("127.0.0.1", 0))
    gcs.listen()
    env = dict(worker.env) | {
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "ORCH_HEAD_ADDR": "127.0.0.1",
        "ORCH_RAY_PORT": str(gcs.getsockname()[1]),
        "ORCH_ARGV_OUT": str(tmp_path / "argv"),
    }
    assert worker.command[0] == scripts.RAY_WORKER
    res = subprocess.run(["bash", "-c", *worker.command], env=env, capture_output=True, text=True, timeout=30)
    gcs.close()
    assert res.returncode == 0, res.stderr
    argv = (tmp_path / "argv").read_text().split()
    for flag, value in [
        ("--node-manager-port", plan.node_manager_port),
        ("--object-manager-port", plan.object_manager_port),
        ("--runtime-env-agent-port", plan.runtime_env_agent_port),
        ("--dashboard-agent-grpc-port", plan.dashboard_agent_grpc_port),
        ("--dashboard-agent-listen-port", plan.dashboard_agent_listen_port),
        ("--metrics-export-port", plan.metrics_export_port),
        ("--min-worker-port", plan.worker_ports[0]),
        ("--max-worker-port", plan.worker_ports[1]),
    ]:
        assert f"{flag}={value}" in argv
    assert dict(worker.env)["VLLM_PORT"] == str(plan.vllm_ports[0])


def test_every_node_pins_vllm_port_on_both_backends() -> None:
    for name in ("seed-l20", "two-host-mp-secrets"):
        plan = _plan(name)
        assert {dict(n.container.env)["VLLM_PORT"] for n in plan.nodes} == {str(plan.vllm_ports[0])}


def test_needs_follow_who_listens_and_who_calls() -> None:
    plan = _plan("three-host-tp2-pp3")
    head, w1, w2 = (n.host for n in plan.nodes)
    got = {(n.src, n.dst, n.field) for n in ports.needs(plan)}
    assert (w1, head, "ray.port") in got and (w2, head, "ray.port") in got
    assert not any(f == "ray.port" and d != head for _, d, f in got)  # the GCS is on the head only
    assert {
        (head, w2, "ray.node_manager_port"),
        (w1, w2, "ray.node_manager_port"),
        (w2, w1, "ray.min_worker_port"),
        (head, w1, "(ephemeral)"),
    } <= got
    agent = {(s, d) for s, d, f in got if f == "ray.dashboard_agent_grpc_port"}
    assert agent == {(head, w1), (head, w2)}  # the dashboard on the head calls the agents
    assert not any(f == "ray.runtime_env_agent_port" for _, _, f in got)  # local to the node
    assert all(s != d for s, d, _ in got)


def test_mp_needs_the_master_port_on_the_head_and_no_ray_port() -> None:
    plan = _plan("two-host-mp-secrets")
    fields = {(n.dst, n.field) for n in ports.needs(plan)}
    assert (plan.head.host, "mp.master_port") in fields
    assert not any(f.startswith("ray.") for _, f in fields)
    assert (plan.workers[0].host, "(ephemeral)") in fields


def test_one_host_needs_nothing_between_hosts() -> None:
    plan = _plan("one-host-mp")
    assert ports.needs(plan) == []
    assert "needs no port between hosts" in ports.rules_text(plan)


def test_iptables_rules_pass_iptables_restore() -> None:
    """The real iptables parser checks every rule (skipped where iptables-restore cannot run)."""
    if not shutil.which("iptables-restore"):
        pytest.skip("no iptables-restore")
    plan = _plan("three-host-tp2-pp3")
    lines = []
    for node in plan.nodes:
        for rule in ports.rules_data(plan)["rules"][node.host]["iptables"]:  # type: ignore[index]
            argv = shlex.split(rule)
            assert argv[0] == "iptables"
            # the shell's quoting undone; iptables-restore quotes with "" only
            lines.append(" ".join(f'"{a}"' if " " in a else a for a in argv[1:]))
    probe = subprocess.run(
        ["iptables-restore", "--test"], input="*filter\nCOMMIT\n", text=True, capture_output=True
    )
    if probe.returncode:
        pytest.skip(f"iptables-restore cannot run here: {probe.stderr.strip()}")
    good = subprocess.run(
        ["iptables-restore", "--test"],
        text=True,
        capture_output=True,
        input="*filter\n" + "\n".join(lines) + "\nCOMMIT\n",
    )
    assert good.returncode == 0, good.stderr
    bad = subprocess.run(
        ["iptables-restore", "--test"],
        text=True,
        capture_output=True,
        input="*filter\n-I INPUT -p tcp --dport 19999:10002x -j ACCEPT\nCOMMIT\n",
    )
    assert bad.returncode != 0  # the check can fail


def test_firewalld_rules_are_rich_rules_per_source() -> None:
    plan = _plan("seed-l20")
    head, worker = plan.nodes
    rules = ports.rules_data(plan)["rules"]
    into_head = rules[head.host]["firewalld"]  # type: ignore[index]
    want = (
        'firewall-cmd --permanent --add-rich-rule=\'rule family="ipv4" source address='
        f'"{worker.address}" port port="{plan.ray_port}" protocol="tcp" accept\''
    )
    assert want in into_head
    lo, hi = plan.worker_ports
    assert any(f'port="{lo}-{hi}"' in r for r in rules[worker.host]["firewalld"])  # type: ignore[index]
    assert any(f"--dport {lo}:{hi}" in r for r in rules[worker.host]["iptables"])  # type: ignore[index]
    assert any(f"port {lo}:{hi}" in r for r in rules[worker.host]["ufw"])  # type: ignore[index]
    assert any(f"tcp dport {lo}-{hi} accept" in r for r in rules[worker.host]["nftables"])  # type: ignore[index]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrate", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_firewall_command_prints_rules_per_host() -> None:
    inv = str(VALID / "three-host-tp2-pp3.yaml")
    res = _cli("firewall", inv)
    assert res.returncode == 0, res.stderr
    plan = _plan("three-host-tp2-pp3")
    for node in plan.nodes:
        assert f"## {node.host} ({node.address}, {node.alias})" in res.stdout
    for fmt in ports.FORMATS:
        assert f"# {fmt}\n" in res.stdout
    assert res.stdout.count("firewall-cmd --reload") == len(plan.nodes)
    only = _cli("firewall", inv, "--format", "ufw", "--host", "worker-2")
    assert only.returncode == 0 and "firewall-cmd" not in only.stdout and "ufw allow" in only.stdout
    assert f"## {plan.nodes[2].host}" in only.stdout and f"## {plan.head.host}" not in only.stdout
    data = json.loads(_cli("--output", "json", "firewall", inv).stdout)
    assert len(data["needs"]) == len(ports.needs(plan))
    bad = _cli("firewall", inv, "--host", "nope")
    assert bad.returncode == 2 and "--host nope" in bad.stderr


# Recorded from PROBE_SCRIPT: 127.0.0.1 with a listener on 50901 and none on 6380; the timeout
# (exit 124 from coreutils timeout) and "No route to host" lines are what a DROP and firewalld's
# icmp-host-prohibited REJECT make bash print.
REC_OK = "probe 6380 1 Connection refused\nprobe 50901 0 \n"
REC_BLOCKED = "probe 8000 1 Connection refused\nprobe 6379 124 \nprobe 6380 1 No route to host\n"


def test_parse_probe_recorded_output() -> None:
    assert preflight.parse_probe(REC_OK) == {6380: "refused", 50901: "open"}
    assert preflight.parse_probe(REC_BLOCKED) == {8000: "refused", 6379: "dropped", 6380: "rejected"}


def test_probe_script_really_probes(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    res = subprocess.run(
        preflight.probe_argv("127.0.0.1", [port, free]), capture_output=True, text=True, timeout=30
    )
    listener.close()
    assert preflight.parse_probe(res.stdout) == {port: "open", free: "refused"}


def test_judge_names_the_pair_the_port_its_user_and_the_rule() -> None:
    plan = _plan("seed-l20")
    head, worker = plan.nodes
    wanted = [n for n in ports.needs(plan) if n.src == worker.host and n.dst == head.host]
    targets = preflight.probe_targets(wanted)
    assert plan.ray_port in targets and plan.vllm_ports[0] in targets and plan.vllm_ports[1] in targets
    answers = {p: "refused" for p in targets} | {plan.ray_port: "dropped"}
    row = preflight.judge_reach(worker, "reach-head", plan.name, {head.host: (targets, answers)})
    assert row.status == "fail" and row.host == worker.host
    assert f"{worker.host} -> {head.host} ({head.address})" in row.message
    assert f"{plan.ray_port} (ray.port) Ray GCS: dropped" in row.message
    assert f'source address="{worker.address}" port port="{plan.ray_port}"' in row.fix
    assert row.fix.startswith(f"on {head.host}: firewall-cmd")
    ok = preflight.judge_reach(
        worker, "reach-head", plan.name, {head.host: (targets, {p: "refused" for p in targets})}
    )
    assert ok.status == "ok"
    missing = preflight.judge_reach(worker, "reach-head", plan.name, {head.host: (targets, {})})
    assert missing.status == "fail" and "no answer" in missing.message


def test_ports_check_looks_for_every_pinned_port_a_node_listens_on() -> None:
    plan = _plan("seed-l20")
    on_worker = preflight.node_ports(plan, plan.workers[0])
    assert {
        plan.node_manager_port,
        plan.dashboard_agent_grpc_port,
        plan.metrics_export_port,
        plan.runtime_env_agent_port,
        plan.object_manager_port,
    } <= set(on_worker)
    assert plan.ray_port not in on_worker and plan.ray_port in preflight.node_ports(plan, plan.head)
