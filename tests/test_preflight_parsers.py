"""The `gpus` preflight check as argv / parse / judge, the parsers fed with recorded outputs of real
hosts (pyinfra's facts-fixture shape: tests/fixtures/hosts/<check>/<case>.json holds the command,
its stdout and where it was recorded). moby starts `--gpus` containers when
nvidia-container-runtime-hook is on dockerd's PATH (daemon/nvidia_linux.go), whatever `docker info`
lists; an `nvidia` runtime is how the NVIDIA Container Toolkit's own setup shows (issue 11)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrate import preflight
from orchestrate.inventory import load
from orchestrate.plan import NodePlan, build_plan

FIXTURES = Path(__file__).parent / "fixtures" / "hosts" / "gpus"
ROOT = Path(__file__).resolve().parent.parent


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    assert data["source"] and data["command"]
    return data


def l20_node() -> NodePlan:
    return build_plan(load(ROOT / "inventory" / "l20.yaml")).nodes[0]


def test_the_fixtures_were_made_by_the_argv_the_check_runs() -> None:
    assert fixture("nvidia-smi-h200")["command"] == " ".join(preflight.NVIDIA_SMI_ARGV)
    assert preflight.GPU_HOOK in fixture("hook-absent-h200")["command"]


def test_runtimes_of_real_engines() -> None:
    plain = json.loads(fixture("runtimes-debian12-no-nvidia")["stdout"])
    configured = json.loads(fixture("runtimes-nvidia-configured")["stdout"])
    assert "nvidia" not in preflight.parse_runtimes({"Runtimes": plain})
    assert "nvidia" in preflight.parse_runtimes({"Runtimes": configured})
    assert preflight.parse_runtimes({"Runtimes": None}) == ()  # null on some engines


def test_nvidia_smi_of_a_real_h200() -> None:
    (gpu,) = preflight.parse_nvidia_smi(fixture("nvidia-smi-h200")["stdout"])
    assert (gpu.driver, gpu.name, gpu.memory) == ("580.159.04", "NVIDIA H200", "143771 MiB")


def test_hook_absent_and_present() -> None:
    assert preflight.parse_hook(fixture("hook-absent-h200")["stdout"]) is None
    assert preflight.parse_hook("/usr/bin/nvidia-container-runtime-hook\n") == (
        "/usr/bin/nvidia-container-runtime-hook")


@pytest.mark.parametrize("runtimes,hook,ok,via", [
    ("runtimes-debian12-no-nvidia", "/usr/bin/nvidia-container-runtime-hook", True,
     "nvidia-container-runtime-hook at /usr/bin/nvidia-container-runtime-hook"),
    ("runtimes-nvidia-configured", None, True, "the nvidia runtime"),
    ("runtimes-debian12-no-nvidia", None, False, "install the NVIDIA Container Toolkit"),
], ids=["hook-only", "runtime-only", "neither"])  # fmt: skip
def test_gpus_judge_accepts_the_hook_or_the_runtime(runtimes: str, hook: str | None, ok: bool,
                                                    via: str) -> None:  # fmt: skip
    node = l20_node()
    smi = "".join([fixture("nvidia-smi-h200")["stdout"]] * node.gpus)  # the host's N GPUs
    names = preflight.parse_runtimes({"Runtimes": json.loads(fixture(runtimes)["stdout"])})
    row = preflight.judge_gpus(node, names, hook, True, smi)
    assert (row.status == "ok") is ok, row
    assert via in (row.message + " " + row.fix), row


def test_gpus_judge_counts_against_the_inventory() -> None:
    node = l20_node()
    assert node.gpus == 4
    row = preflight.judge_gpus(node, ("nvidia", "runc"), None, True, fixture("nvidia-smi-h200")["stdout"])
    assert row.status == "fail" and "1 GPUs found, the inventory says 4" in row.message


def test_gpus_judge_reports_a_failing_nvidia_smi() -> None:
    out = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    row = preflight.judge_gpus(l20_node(), ("nvidia",), None, False, out)
    assert row.status == "fail" and "couldn't communicate" in row.message and "driver" in row.fix
