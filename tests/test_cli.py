"""The CLI as people run it: exit codes, one line per problem, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).parent / "cases"


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("ORCHESTRATE_INVENTORY", None) if env is None else None
    return subprocess.run([sys.executable, "-m", "orchestrate", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=60)


def test_fresh_checkout_renders_the_reference_inventory(tmp_path: Path) -> None:
    res = run("--target", "k8s", "render")
    assert res.returncode == 0, res.stderr
    assert res.stdout == (ROOT / "k8s" / "qwen32b.yaml").read_text()
    assert "kind: Deployment" in res.stdout and "nvidia.com/gpu" in res.stdout


def test_render_writes_files(tmp_path: Path) -> None:
    res = run("--target", "compose", "render", "-o", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l20-head.yaml", "l20-worker.yaml"]


@pytest.mark.parametrize("case", sorted((CASES / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_inventory_exits_2_without_traceback(case: Path) -> None:
    res = run("validate", str(case))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stderr.startswith("error: ") and str(case) in res.stderr


def test_missing_inventory_file() -> None:
    res = run("plan", "no/such/inventory.yaml")
    assert res.returncode == 2 and "no such inventory file" in res.stderr


def test_plan_json_and_dry_run() -> None:
    res = run("--output", "json", "plan")
    assert res.returncode == 0
    data = json.loads(res.stdout)
    assert data["world_size"] == 8 and data["nodes"][1]["address"] == "192.168.30.5"
    dry = run("up", "--dry-run", "inventory/l20.yaml")
    assert dry.returncode == 0 and "docker run -d --name qwen32b-worker-1" in dry.stdout


def test_inventory_resolution_env_var() -> None:
    case = CASES / "valid" / "one-host-mp.yaml"
    res = run("validate", env={"ORCHESTRATE_INVENTORY": str(case)})
    assert res.returncode == 0 and "one-host-mp.yaml: ok" in res.stdout


def test_schema_is_json_schema() -> None:
    res = run("schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert "hosts" in schema["properties"] and schema["additionalProperties"] is False


def test_logs_unknown_node_is_a_usage_error() -> None:
    res = run("logs", "worker-9")
    assert res.returncode == 2 and "no node 'worker-9'" in res.stderr and "Traceback" not in res.stderr


def test_plan_with_model_config_warns_that_the_model_fits_one_gpu() -> None:
    res = run("plan", "--model-config", str(CASES.parent / "fit_configs" /
                                             "Qwen2.5-32B-Instruct-GPTQ-Int4.json"))
    assert res.returncode == 0, res.stderr
    assert "would fit on 1 GPU" in res.stdout and "suggested: TP 1 x PP 1" in res.stdout


def test_library_log_records_never_reach_the_terminal(tmp_path: Path) -> None:
    """paramiko logs a traceback when a host never sends its banner; people must not see it."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts (the kernel does), never speaks: a frozen sshd
    port = silent.getsockname()[1]
    known = tmp_path / "known_hosts"
    known.write_text("")
    inv = tmp_path / "frozen.yaml"
    inv.write_text(f"""
name: frozen
image: img:1
accelerator: cpu
ssh: {{port: {port}, known_hosts: {known}, connect_timeout: 2, host_key_policy: accept-new}}
model: {{host_dir: /m, name: m}}
serve: {{tensor_parallel_size: 1}}
hosts: [{{name: icy, address: 127.0.0.1, role: head, gpus: 1}}]
""")
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True)
    thread.start()
    res = run("preflight", str(inv), env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    thread.join(timeout=10)
    for conn in [*accepted, silent]:
        conn.close()
    assert res.returncode == 1
    assert "Traceback" not in res.stderr + res.stdout and "Exception" not in res.stderr
    assert "did not answer within 2s" in res.stdout
