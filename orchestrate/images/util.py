"""Helpers the image steps share: event lines, bounded subprocesses and output tails, the
Docker client's scope, directories and sizes."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrate.errors import ImageBuildError
from orchestrate.images.recipes import EventCallback

if TYPE_CHECKING:
    import docker
    from docker.models.images import Image


_LOG_TAIL = 40


def _emitter(on_event: EventCallback | None) -> EventCallback:
    if on_event is None:
        return lambda _msg: None
    return on_event


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _clean(line: str, limit: int = 300) -> str:
    line = _ANSI.sub("", line).rstrip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _tail(lines: Sequence[str] | deque[str]) -> str:
    text = "\n".join(f"  | {_clean(line)}" for line in lines)
    return f"\nLast log lines:\n{text}" if text else ""


def _remaining(deadline: float, what: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ImageBuildError(f"Timed out before {what}. What to do: retry with a larger timeout.")
    return left


def _human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_streaming(
    cmd: Sequence[str], *, timeout: float, on_line: EventCallback
) -> tuple[int | None, deque[str]]:
    """Run cmd, passing each output line to on_line; return (exit code or None on timeout, tail)."""
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
        bufsize=1,
    )
    timed_out = threading.Event()

    def _kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, _kill)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                on_line(line)
        proc.wait(timeout=30)
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        proc.stdout.close()  # type: ignore[union-attr]
    return (None if timed_out.is_set() else proc.returncode), tail


@contextlib.contextmanager
def _client_scope(docker_client: docker.DockerClient | None) -> Iterator[docker.DockerClient]:
    """Yield the given client, or one from the environment that is closed afterwards."""
    if docker_client is not None:
        yield docker_client
        return
    import docker as docker_sdk

    try:
        client = docker_sdk.from_env(timeout=120)
        client.ping()
    except Exception as exc:  # DockerException, requests errors, PermissionError, ...
        raise ImageBuildError(
            f"Cannot reach the Docker daemon: {exc}. What to do: start dockerd, check DOCKER_HOST, "
            "and make sure this user may use the Docker socket."
        ) from None
    try:
        yield client
    finally:
        client.close()


def _make_dir(path: Path, what: str) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImageBuildError(
            f"Cannot create {what} {path}: {exc}. What to do: pick a writable one."
        ) from None
    return path


def _image_or_none(client: docker.DockerClient, ref: str) -> Image | None:
    import docker as docker_sdk

    try:
        return client.images.get(ref)
    except docker_sdk.errors.ImageNotFound:
        return None
    except docker_sdk.errors.APIError as exc:
        if getattr(exc, "status_code", None) == 404:
            return None
        raise ImageBuildError(f"Docker could not inspect image {ref!r}: {exc}") from None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
