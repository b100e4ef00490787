"""Every `vllm serve` argv orchestrate plans is accepted by the option table of that vLLM version
(tables read from the real wheels by tools/vllm_options.py), or the plan fails with one clear
error. Pure: no bed, no network."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrate.core import inventory, vllm_caps
from orchestrate.core.plan import Plan, build_plan
from orchestrate.errors import UsageError
from orchestrate.ops import apply
from tests import ROOT

REFERENCE = sorted((ROOT / "inventory").glob("*.yaml"))
VERSIONS = vllm_caps.known_versions()


def _data(path: Path, backend: str, version: str) -> dict[str, Any]:
    data = copy.deepcopy(yaml.safe_load(path.read_text(encoding="utf-8")))
    data["backend"], data["vllm_version"] = backend, version
    return data


def _argvs(plan: Plan) -> list[tuple[str, ...]]:
    if plan.backend == "mp":
        return [("vllm", *n.container.command) for n in plan.nodes]
    return [plan.serve_argv]


def _accepted(version: str, argv: tuple[str, ...]) -> list[str]:
    """Parse the argv against the raw JSON table, independently of vllm_caps."""
    table = json.loads((ROOT / "orchestrate" / "core" / "vllm_flags" / f"{version}.json").read_text())
    opts = {f: a for a in table["options"] for f in a["flags"]}
    assert argv[:2] == ("vllm", "serve") and not argv[2].startswith("-")
    bad, rest = [], list(argv[3:])
    while rest:
        tok = rest.pop(0)
        a = opts.get(tok.split("=", 1)[0])
        if a is None:
            bad.append(tok)
        elif a["value"] == "required" and "=" not in tok:
            if not rest or rest[0].startswith("--"):
                bad.append(f"{tok} (no value)")
            else:
                rest.pop(0)
    return bad


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("backend", ["auto", "ray", "mp"])
@pytest.mark.parametrize("path", REFERENCE, ids=lambda p: p.stem)
def test_every_emitted_argv_is_accepted_or_one_clear_error(path: Path, backend: str, version: str) -> None:
    inv = inventory.parse(_data(path, backend, version))
    c = vllm_caps.caps(version)
    hosts_per_group = len(inv.hosts) // inv.replicas.count  # replicas: each its own group
    impossible = backend == "mp" and hosts_per_group > 1 and not c.has_mp_multinode
    if impossible:
        with pytest.raises(UsageError) as err:
            _plans(inv)
        assert "--nnodes" in err.value.message and version in err.value.message
        assert "\n" not in err.value.message
        return
    try:
        plans = _plans(inv)
    except UsageError as exc:  # only a serve.extra_args flag that version lacks may refuse
        assert exc.message.startswith("serve.extra_args: ") and version in exc.message, exc.message
        flag = exc.message.split()[1]
        assert _accepted(version, ("vllm", "serve", "m", flag, "x")) != []
        return
    for plan in plans:
        if backend == "auto":
            assert plan.backend == ("mp" if c.has_mp_multinode or len(plan.nodes) == 1 else "ray")
            assert plan.backend_reason.startswith("backend: auto")
        for argv in _argvs(plan):
            assert _accepted(version, argv) == [], (version, argv)
        if plan.backend == "ray":
            assert "--distributed-executor-backend" in plan.serve_argv


def _plans(inv: inventory.Inventory) -> list[Plan]:
    """The plan, or with replicas each replica's (tests/unit/core/test_fleet.py has the rest)."""
    if inv.replicas.count > 1:
        from orchestrate.core.fleet import build_fleet

        return list(build_fleet(inv).replicas)
    return [build_plan(inv)]


def test_mp_on_0_8_5_is_refused_before_any_container() -> None:
    data = _data(ROOT / "inventory" / "l20.yaml", "mp", "0.8.5")
    with pytest.raises(UsageError, match=r"vLLM 0\.8\.5 has no --nnodes"):
        build_plan(inventory.parse(data))


def test_auto_picks_by_version_and_unknown_version_is_documented() -> None:
    old = build_plan(inventory.parse(_data(ROOT / "inventory" / "l20.yaml", "auto", "0.11.0")))
    new = build_plan(inventory.parse(_data(ROOT / "inventory" / "l20.yaml", "auto", "0.11.1")))
    assert (old.backend, new.backend) == ("ray", "mp")
    data = _data(ROOT / "inventory" / "l20.yaml", "auto", "0.11.1")
    del data["vllm_version"]
    unknown = build_plan(inventory.parse(data))
    assert unknown.backend == vllm_caps.DEFAULT_BACKEND and "unknown" in unknown.backend_reason
    with pytest.raises(UsageError, match="no ray"):
        build_plan(
            inventory.parse(_data(ROOT / "inventory" / "l20.yaml", "auto", "0.8.5")), image_has_ray=False
        )


def test_inventory_default_backend_is_auto() -> None:
    data = _data(ROOT / "inventory" / "l20.yaml", "auto", "0.33.0")
    del data["backend"]
    assert inventory.parse(data).backend == "auto"


def test_unknown_extra_arg_names_flag_version_and_hint() -> None:
    data = _data(ROOT / "inventory" / "l20.yaml", "ray", "0.33.0")
    data["serve"]["extra_args"] = ["--disable-log-requests"]
    with pytest.raises(UsageError) as err:
        build_plan(inventory.parse(data))
    msg = err.value.message
    assert msg.startswith("serve.extra_args: --disable-log-requests") and "0.33.0" in msg
    assert "exists in vLLM" in msg  # an older version's table has it


def test_value_flag_without_value_is_refused() -> None:
    data = _data(ROOT / "inventory" / "l20.yaml", "ray", "0.8.5")
    data["serve"]["extra_args"] = ["--kv-cache-dtype"]
    with pytest.raises(UsageError, match="needs a value"):
        build_plan(inventory.parse(data))


def test_headless_with_api_server_count_is_refused() -> None:
    data = _data(ROOT / "inventory" / "local-cpu.yaml", "mp", "0.32.0")
    data["serve"]["extra_args"] = ["--api-server-count", "2"]
    with pytest.raises(UsageError, match="api-server-count"):
        build_plan(inventory.parse(data))


def test_unrecognized_emitted_flag_gets_version_advice_not_extra_args() -> None:
    plan = build_plan(inventory.parse(_data(ROOT / "inventory" / "local-cpu.yaml", "mp", "0.32.0")))
    log = "vllm: error: unrecognized arguments: --nnodes 2 --node-rank 0 --master-addr 172.30.99.11"
    cause, hint = apply.known_failure(log, plan)
    assert cause and hint and "extra_args" not in hint and "0.11.1" in hint
    _, hint2 = apply.known_failure("vllm: error: unrecognized arguments: --kv-cache-memory-bytes 64M", plan)
    assert hint2 and "extra_args" in hint2


def test_tables_agree_with_cached_wheels() -> None:
    tools = pytest.importorskip("tools.vllm_options")
    found = [(v, w) for v in VERSIONS if (w := tools.find_wheel(v)) is not None]
    if not found:
        pytest.skip(f"no vLLM wheel in {tools.cache_dir()} (python tools/vllm_options.py fills it)")
    for version, wheel in found:
        assert tools.dump(tools.table(wheel)) == tools.table_path(version).read_text(), version


def test_preflight_refuses_mp_argv_on_an_old_image() -> None:
    from orchestrate.ops import preflight

    plan = build_plan(inventory.parse(_data(ROOT / "inventory" / "local-cpu.yaml", "mp", "0.32.0")))
    plan_unknown = build_plan(
        inventory.parse(
            {**_data(ROOT / "inventory" / "local-cpu.yaml", "mp", "0.32.0"), "vllm_version": None}
        )
    )
    assert preflight.version_problem(plan, {"VLLM": "0.32.0", "RAY": "no"}) is None
    # the vllm-cpu image says 0.32.0+cpu (a PEP 440 local build): a 0.32.0 pin means it too
    assert preflight.version_problem(plan, {"VLLM": "0.32.0+cpu", "RAY": "no"}) is None
    assert preflight.version_problem(plan, {"VLLM": "0.33.0+cpu", "RAY": "no"}) is not None
    assert "vllm_version" in preflight.version_problem(plan, {"VLLM": "0.8.5"})[1]  # type: ignore[index]
    problem = preflight.version_problem(plan_unknown, {"VLLM": "0.8.5", "RAY": "yes"})
    assert problem is not None and "--nnodes" in problem[0] and "0.8.5" in problem[0]


def test_0_32_0_table_matches_the_real_parser_dump() -> None:
    """tests/fixtures/vllm holds the options of the real parser built inside vllm-cpu 0.32.0."""
    real = json.loads((ROOT / "tests" / "fixtures" / "vllm" / "vllm-0.32.0-serve-parser.json").read_text())
    real_flags = {f for a in real for f in a["options"]}
    assert real_flags == set(vllm_caps.caps("0.32.0").options)


def test_replan_follows_the_image_unless_the_inventory_names_a_version(tmp_path: Path) -> None:
    """What `up` and `status` do with what preflight read in the image (options.load_for_hosts)."""
    from orchestrate.cli import options

    data = _data(ROOT / "inventory" / "l20.yaml", "auto", "0.33.0")
    del data["vllm_version"]
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    plan, replan = options.load_for_hosts(str(path))
    assert (plan.backend, plan.vllm_version) == ("mp", None)
    old = replan("0.10.2", True)
    assert (old.backend, old.vllm_version) == ("ray", "0.10.2") and "0.10.2" in old.backend_reason
    new = replan("0.32.0+cpu", False)
    assert (new.backend, new.vllm_version) == ("mp", "0.32.0+cpu")
    with pytest.raises(UsageError, match="no ray"):
        replan("0.10.2", False)  # neither mp (too old) nor Ray (not in the image)
    pinned = {**data, "vllm_version": "0.11.0"}
    path.write_text(yaml.safe_dump(pinned), encoding="utf-8")
    _, replan_pinned = options.load_for_hosts(str(path))
    assert replan_pinned("0.32.0", True).vllm_version == "0.11.0"  # preflight reports the mismatch


@pytest.mark.parametrize(
    ("dists", "want"),
    [
        ({"vllm": "0.32.0+cpu", "vllm_cpu": "0.32.0"}, "VLLM=0.32.0+cpu"),  # vllm-cpu 0.32.0's layout
        ({"vllm_cpu": "0.10.2"}, "VLLM=0.10.2"),  # vllm-cpu 0.10.2: one distribution, named vllm-cpu
        ({}, "VLLM=none"),
    ],
)
def test_image_probe_reads_the_version_of_whichever_distribution_installed_vllm(
    tmp_path: Path, dists: dict[str, str], want: str
) -> None:
    """The probe preflight runs in the image, run by this Python on a site dir laid out as
    pip lays those wheels out (dist-info METADATA + RECORD naming the `vllm` package)."""
    import os
    import subprocess
    import sys

    from orchestrate.ops import preflight

    site = tmp_path / "site"
    (site / "vllm").mkdir(parents=True)
    for name, version in dists.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
        )
        (info / "RECORD").write_text("vllm/__init__.py,,\n")
        (info / "top_level.txt").write_text("vllm\n")
    probe = preflight.IMAGE_PROBE.replace("python3 ", f"{sys.executable} ", 1)
    env = {**os.environ, "PATH": "/nonexistent", "PYTHONPATH": str(site)}  # no ray on PATH
    out = subprocess.run(
        ["/bin/sh", "-c", probe], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert out.stdout.splitlines() == ["RAY=no", want], (probe, out.stdout, out.stderr)
