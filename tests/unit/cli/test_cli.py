"""The CLI as people run it: exit codes, one line per problem, never a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests import FIXTURES, ROOT

CASES = FIXTURES / "inventories"


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    full_env.pop("ORCHESTRATE_INVENTORY", None) if env is None else None
    return subprocess.run(
        [sys.executable, "-m", "orchestrate", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_fresh_checkout_renders_the_reference_inventory(tmp_path: Path) -> None:
    res = run("--target", "k8s", "render")
    assert res.returncode == 0, res.stderr
    assert res.stdout == (ROOT / "k8s" / "qwen32b.yaml").read_text()
    assert "kind: Deployment" in res.stdout and "nvidia.com/gpu" in res.stdout


def test_render_writes_files(tmp_path: Path) -> None:
    res = run("--target", "compose", "render", "-o", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "l20-head.yaml",
        "l20-worker.yaml",
        "orchestrate-supervisor.py",
    ]


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
    res = run(
        "plan", "--model-config", str(FIXTURES / "model-configs" / "Qwen2.5-32B-Instruct-GPTQ-Int4.json")
    )
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


# ---------------------------------------------------------------- start-up (issue 15)

HOST_LIBRARIES = ("docker", "fabric", "paramiko", "httpx", "invoke", "requests", "rich")
_PROBE = """
import json, sys
from orchestrate.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    assert not exc.code, exc.code
libs = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.stdin.read())))
print(json.dumps(libs), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["validate"],
        ["--target", "k8s", "render"],
        ["schema"],
        ["plan"],
        ["up", "--dry-run"],
        ["firewall"],
    ],
    ids=lambda a: " ".join(a),
)
def test_pure_commands_import_no_host_library(args: list[str]) -> None:
    """--help, validate, render, ... must not pay for docker, fabric, paramiko, httpx or rich
    (not a terminal here): they are what made every command start in ~0.7 s."""
    res = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        input=json.dumps(HOST_LIBRARIES),
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stderr.splitlines()[-1]) == []


# ---------------------------------------------------------------- global options after the command


def test_global_options_after_the_subcommand_mean_the_same(tmp_path: Path) -> None:
    case = str(CASES / "valid" / "one-host-mp.yaml")
    before = run("--output", "json", "-i", case, "validate")
    after = run("validate", "-i", case, "--output", "json")
    assert before.returncode == after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    assert json.loads(after.stdout)["inventory"] == case
    k8s = run("render", "--target", "k8s")
    assert k8s.returncode == 0 and k8s.stdout == (ROOT / "k8s" / "qwen32b.yaml").read_text()
    # render's own -o DIR is still render's: --output is the global one
    res = run("render", "-o", str(tmp_path), "--target", "compose", "--output", "text")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "l20-head.yaml",
        "l20-worker.yaml",
        "orchestrate-supervisor.py",
    ]


def test_verbose_and_output_merge_from_both_sides() -> None:
    from click.testing import CliRunner

    from orchestrate import cli as cli_mod
    from orchestrate.cli.options import Options

    seen: list[tuple[str, str | None, int, str]] = []

    @cli_mod.cli.command("probe-options")
    @click.pass_obj
    def probe(opts: Options) -> None:
        seen.append((opts.target, opts.inventory, opts.verbose, opts.output))

    try:
        runner = CliRunner()
        assert (
            runner.invoke(
                cli_mod.cli,
                ["-v", "probe-options", "-v", "--output", "json", "-i", "x.yaml", "--target", "k8s"],
            ).exit_code
            == 0
        )
        assert runner.invoke(cli_mod.cli, ["probe-options"]).exit_code == 0
    finally:
        del cli_mod.cli.commands["probe-options"]
    assert seen == [("k8s", "x.yaml", 2, "json"), ("docker", None, 0, "text")]


@pytest.mark.skipif(not Path("/var/run/docker.sock").exists(), reason="needs a local Docker Engine")
def test_status_takes_output_json_after_the_inventory(tmp_path: Path) -> None:
    """The issue's own example: `orchestrate status inv.yaml --output json` (nothing deployed)."""
    inv = tmp_path / "inv.yaml"
    text = (ROOT / "inventory" / "local-cpu.yaml").read_text()
    inv.write_text(text.replace("name: tinydemo", "name: clistatusprobe"))
    res = run("status", str(inv), "--output", "json")
    assert res.returncode == 1, res.stderr  # not deployed: unhealthy, but a JSON answer
    data = json.loads(res.stdout)
    assert data["deployment"] == "clistatusprobe" and data["hosts"][0]["state"] == "absent"


# ---------------------------------------------------------------- shell completion


def _complete(words: str, cwd: Path) -> list[str]:
    env = {
        **os.environ,
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
        "_ORCHESTRATE_COMPLETE": "bash_complete",
    }
    env.pop("ORCHESTRATE_INVENTORY", None)
    res = subprocess.run(
        [sys.executable, "-m", "orchestrate"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return [line.split(",", 1)[1] for line in res.stdout.splitlines()]


def test_logs_completes_node_names_from_the_last_inventory(tmp_path: Path) -> None:
    (tmp_path / ".orchestrate").mkdir()
    (tmp_path / ".orchestrate" / "last-inventory").write_text(str(ROOT / "inventory" / "l20.yaml"))
    assert _complete("orchestrate logs ", tmp_path) == ["head", "l20-head", "worker-1", "l20-worker"]
    assert _complete("orchestrate logs w", tmp_path) == ["worker-1"]
    local = ROOT / "inventory" / "local-cpu.yaml"
    assert _complete(f"orchestrate logs -i {local} ", tmp_path) == ["head", "node-0", "worker-1", "node-1"]
    assert "status" in _complete("orchestrate st", tmp_path)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_shell_script(shell: str) -> None:
    res = run("completion", shell)
    assert res.returncode == 0 and "_ORCHESTRATE_COMPLETE" in res.stdout
