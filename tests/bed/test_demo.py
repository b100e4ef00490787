"""The README's no-GPU demo command, run exactly as written (issue 4): real vLLM on this machine,
two CPU nodes with their own addresses on a Docker bridge, PP=2, checks pass."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ROOT
from tests.conftest import CACHE, CHILD_ENV, orch

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def readme_command(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker} -->\s*```bash\n(.+?)\n```", text, flags=re.S)
    assert match, f"README.md has no command under <!-- {marker} -->"
    return match.group(1).strip()


@pytest.fixture
def checkout_state() -> Iterator[None]:
    """The demo runs in the checkout, as the README says, and `up` records its inventory in
    ./.orchestrate/: put that back as it was, so a later run's default inventory is unchanged."""
    state = ROOT / ".orchestrate"
    saved = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()} if state.is_dir() else None
    try:
        yield
    finally:
        if saved is None:
            shutil.rmtree(state, ignore_errors=True)
        else:
            for p in state.iterdir():
                if p.is_file() and p.name not in saved:
                    p.unlink()
            for name, data in saved.items():
                (state / name).write_bytes(data)


SCREEN_LINES = 24  # "fits on one screen per phase"


def phase_lines(stderr: str) -> Counter[str]:
    """Lines per phase of the non-TTY output (`[  12.3s] phase   ...`); other lines count as '?'."""
    counts: Counter[str] = Counter()
    for line in stderr.splitlines():
        m = re.match(r"\[\s*[\d.]+s\] (\S+)", line)
        counts[m.group(1) if m else "?"] += 1
    return counts


def remove_base_images() -> None:
    """No base image present: the demo must find or make one itself (issue 15). Untagging is
    enough: images built from it keep their layers."""
    import docker

    from orchestrate.images.base import LOCAL_BASE, REGISTRY_BASE

    client = docker.from_env(timeout=120)
    try:
        for tag in (LOCAL_BASE, REGISTRY_BASE):
            with contextlib.suppress(docker.errors.ImageNotFound):
                client.images.remove(tag)
            assert not client.images.list(name=tag), f"{tag} is still here"
    finally:
        client.close()


@pytest.mark.usefixtures("checkout_state")
def test_readme_demo_command_serves_and_passes_the_checks(cpu_image: str) -> None:
    command = readme_command("demo")
    remove_base_images()
    # as a user with this environment activated: its pip and orchestrate come first on PATH
    # the suite's cache: the rootfs tarball the image fixtures made is re-imported, not rebuilt
    env = {
        **os.environ,
        **CHILD_ENV,
        "ORCH_CACHE": str(CACHE),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    try:
        res = subprocess.run(
            ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
        )
        sys.stderr.write(res.stderr[-5000:])
        assert res.returncode == 0, res.stderr[-3000:]
        assert "ready: http://172.30.99.11:8009 serves 'tiny'" in res.stdout
        for check in ("health", "models", "chat", "chat-stream"):
            assert re.search(rf"checks\s+ok\s+{check}\s", res.stderr), check
        assert re.search(r"base image orchestrate/debian-py:bookworm: imported", res.stderr)
        # calm: pip's and docker build's own lines are in the log file, not on the screen
        counts = phase_lines(res.stderr)
        assert max(counts.values()) <= SCREEN_LINES, counts
        log = re.search(r"full output in (\S+\.log)", res.stderr)
        assert log and Path(log.group(1)).is_file(), res.stderr[-2000:]
    finally:
        down = orch("down", str(ROOT / "inventory" / "local-cpu.yaml"), timeout=300)
        assert down.returncode == 0, down.stderr
