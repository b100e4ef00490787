"""The README's no-GPU demo command, run exactly as written (issue 4): real vLLM on this machine,
two CPU nodes with their own addresses on a Docker bridge, PP=2, checks pass."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CHILD_ENV, orch

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
ROOT = Path(__file__).resolve().parent.parent


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


@pytest.mark.usefixtures("checkout_state")
def test_readme_demo_command_serves_and_passes_the_checks(cpu_image: str) -> None:
    command = readme_command("demo")
    # as a user with this environment activated: its pip and orchestrate come first on PATH
    env = {**os.environ, **CHILD_ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    try:
        res = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=1200)  # fmt: skip
        sys.stderr.write(res.stderr[-5000:])
        assert res.returncode == 0, res.stderr[-3000:]
        assert "ready: http://172.30.99.11:8009 serves 'tiny'" in res.stdout
        for check in ("health", "models", "chat", "chat-stream"):
            assert re.search(rf"checks\s+ok\s+{check}\s", res.stderr), check
    finally:
        down = orch("down", str(ROOT / "inventory" / "local-cpu.yaml"), timeout=300)
        assert down.returncode == 0, down.stderr
