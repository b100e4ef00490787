"""Image distribution on the test bed (issue 11, "Images of 10-20 GB"): streamed loads show
progress while they run, a host that fails mid-load is named at once while the others finish,
and images.source head-registry pushes from the head to a registry there that workers pull from.

Images: a base image plus 2 x 128 MiB of random data (tests/support/imagetools.py, cached in the root
dockerd); the registry image is Debian's docker-registry package on the base image.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrate.core.inventory import load
from orchestrate.core.plan import Plan, build_plan
from orchestrate.errors import PhaseError
from orchestrate.host.session import Session
from orchestrate.ops import images_dist, progress
from tests.conftest import bed_inventory
from tests.support.imagetools import blob_image, registry_image
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow]


@pytest.fixture(scope="module")
def blob(bed: TestBed) -> str:
    return blob_image(2, 128)


@pytest.fixture(autouse=True)
def fast_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.3)


def _root_id(tag: str) -> str:
    import subprocess

    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Id}}", tag], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _has(bed: TestBed, i: int, tag: str) -> bool:
    return bed.docker(i, "image", "inspect", tag, timeout=60).returncode == 0


def _forget(bed: TestBed, tag: str, hosts: list[int]) -> None:
    for i in hosts:
        bed.docker(i, "image", "rm", "-f", tag, timeout=120)


def _plan(bed: TestBed, tmp_path: Path, n: int, image: str, images: dict[str, object]) -> Plan:
    serve = {"tensor_parallel_size": 1, "pipeline_parallel_size": n, "max_model_len": 512}
    path = bed_inventory(bed, tmp_path / "inv.yaml", n, image=image, images=images, backend="mp", serve=serve)
    return build_plan(load(path))


class Recorder:
    """Events as they come, with what a callback observed while the stream was running."""

    def __init__(self) -> None:
        self.lines: list[tuple[str | None, str]] = []
        self.lock = threading.Lock()

    def __call__(self, phase: str, host: str | None, message: str) -> None:
        with self.lock:
            self.lines.append((host, message))

    def of(self, host: str) -> list[str]:
        with self.lock:
            return [m for h, m in self.lines if h == host]


@pytest.fixture
def clean_blob(bed: TestBed, blob: str) -> Iterator[str]:
    _forget(bed, blob, [1, 2, 3])
    yield blob
    _forget(bed, blob, [1, 2, 3])


def test_stream_shows_progress_while_loading(bed: TestBed, clean_blob: str, tmp_path: Path) -> None:
    plan = _plan(bed, tmp_path, 2, clean_blob, {"source": "local"})
    seen_before_load: dict[str, bool] = {}
    rec = Recorder()

    def events(phase: str, host: str | None, message: str) -> None:
        rec(phase, host, message)
        if host and "MiB/s" in message and host not in seen_before_load:
            # the first progress line of a host: is that host's load still running?
            seen_before_load[host] = not _has(bed, int(host[2:]), clean_blob)

    with Session(plan, events) as s:
        ids = images_dist.ensure(s)
    want = _root_id(clean_blob)
    assert ids == {"hb1": want, "hb2": want}
    assert seen_before_load == {"hb1": True, "hb2": True}, rec.lines
    for host in ("hb1", "hb2"):
        assert any(m.startswith("sent ") and "MiB/s" in m for m in rec.of(host)), rec.lines


def test_host_failing_mid_load_is_named_at_once(bed: TestBed, clean_blob: str, tmp_path: Path) -> None:
    plan = _plan(bed, tmp_path, 2, clean_blob, {"source": "local"})
    rec = Recorder()
    killed = threading.Event()

    def events(phase: str, host: str | None, message: str) -> None:
        rec(phase, host, message)
        if host == "hb2" and message.startswith("sent ") and not killed.is_set():
            killed.set()
            bed.fault("kill-dockerd", 2)  # mid-stream: hb2's engine dies under the upload

    try:
        with Session(plan, events) as s, pytest.raises(PhaseError) as err:
            images_dist.ensure(s)
    finally:
        bed.fault("start-dockerd", 2)
    assert killed.is_set(), rec.lines
    assert [f.host for f in err.value.failures] == ["hb2"]  # type: ignore[attr-defined]
    assert "not answering" in err.value.failures[0].message, err.value.lines()
    # at once: hb2's failure was said while hb1 was still loading, and hb1 finished
    order = [(h, m) for h, m in rec.lines if h in ("hb1", "hb2")]
    failed_at = next(i for i, (h, m) in enumerate(order) if h == "hb2" and "FAILED" in m)
    hb1_done = next(
        i for i, (h, m) in enumerate(order) if h == "hb1" and m.endswith(_root_id(clean_blob)[7:19])
    )
    assert failed_at < hb1_done, order
    assert _has(bed, 1, clean_blob)


@pytest.mark.parametrize(("pull", "n"), [("tunnel", 3), ("direct", 2)])
def test_head_registry_end_to_end(bed: TestBed, clean_blob: str, tmp_path: Path, pull: str, n: int) -> None:
    bed.seed(clean_blob, registry_image(), hosts=[1])
    plan = _plan(
        bed,
        tmp_path,
        n,
        clean_blob,
        {"source": "head-registry", "head_registry": {"image": registry_image(), "port": 5000, "pull": pull}},
    )
    rec = Recorder()
    with Session(plan, rec) as s:
        ids = images_dist.ensure(s)
    want = _root_id(clean_blob)
    workers = [f"hb{i}" for i in range(2, n + 1)]
    assert ids == {f"hb{i}": want for i in range(1, n + 1)}
    assert any(m.startswith("pushed in") for m in rec.of("hb1")), rec.lines
    for host in workers:
        lines = rec.of(host)
        via = "pulling 127.0.0.1:" if pull == "tunnel" else f"pulling {plan.head.address}:5000/"
        assert any(m.startswith(via) for m in lines), lines
        assert any(m.startswith("pulled ") and "MiB/s" in m for m in lines), lines
    # nothing left behind: no registry container or volume on the head, no registry names
    for i in range(1, n + 1):
        names = bed.docker(i, "image", "ls", "--format", "{{.Repository}}", timeout=60).stdout
        assert "127.0.0.1:" not in names and ":5000/" not in names, names
    assert bed.docker(1, "ps", "-aq", timeout=60).stdout.strip() == ""
    assert bed.docker(1, "volume", "ls", "-q", timeout=60).stdout.strip() == ""


def test_trust_is_read_from_docker_info(bed: TestBed) -> None:
    """The bed's engines list the bed's /24 in insecure-registries (bed.sh daemon.json)."""
    from orchestrate.ops.head_registry import trusts_insecure

    info = json.loads(bed.docker(2, "info", "--format", "{{json .}}", timeout=60).stdout)
    head = bed.host(1).address
    assert trusts_insecure(info, head, 5000)
    assert trusts_insecure(info, "127.0.0.1", 5000)  # loopback: trusted by default
    assert not trusts_insecure(info, "10.255.9.9", 5000)
    assert not trusts_insecure(info, "registry.example.com", 5000)
