"""The tiny random-weight Qwen2 model the demo and the tests serve, made inside an image that
holds torch and transformers (tiny_model.py is the program it runs there)."""

from __future__ import annotations

import contextlib
import os
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrate.errors import ImageBuildError
from orchestrate.images.recipes import CPU_IMAGE, EventCallback
from orchestrate.images.util import _LOG_TAIL, _client_scope, _emitter, _image_or_none, _make_dir, _tail

if TYPE_CHECKING:
    import docker


def _run_tiny_model(
    client: docker.DockerClient, image: str, script: str, out_dir: Path, timeout: float
) -> tuple[object, list[str]]:
    """Run the script in a throwaway container (always removed); return (exit status, log lines)."""
    import docker as docker_sdk
    import requests

    try:
        container = client.containers.run(
            image,
            ["python3", "-c", script, "/out"],
            detach=True,
            network_mode="none",
            user=f"{os.getuid()}:{os.getgid()}",
            environment={"HOME": "/tmp", "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"},
            volumes={str(out_dir): {"bind": "/out", "mode": "rw"}},
            labels={"org.orchestrate.purpose": "tiny-model"},
        )
    except docker_sdk.errors.APIError as exc:
        raise ImageBuildError(
            f"Docker could not start {image} to write the tiny model: {exc.explanation or exc}"
        ) from None
    try:
        try:
            result = container.wait(timeout=timeout)
        except requests.exceptions.RequestException:
            logs = container.logs(tail=_LOG_TAIL).decode("utf-8", "replace").splitlines()
            raise ImageBuildError(
                f"Writing the tiny model timed out after {timeout:.0f} s.{_tail(logs)}\n"
                "What to do: retry with a larger timeout (the host may be busy)."
            ) from None
        logs = container.logs().decode("utf-8", "replace").splitlines()
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)
    return result.get("StatusCode"), logs


def make_tiny_model(
    out_dir: Path,
    *,
    image: str = CPU_IMAGE,
    docker_client: docker.DockerClient | None = None,
    timeout: float = 300,
    on_event: EventCallback | None = None,
) -> Path:
    """Write a tiny random-weight Qwen2 chat model to ``out_dir`` and return ``out_dir``.

    Runs ``tiny_model.py`` inside ``image`` (which has torch/transformers/tokenizers) with no
    network and ``out_dir`` bind-mounted, as the calling user. Skipped when ``out_dir`` already
    holds config.json and model.safetensors (the script moves those into place last).
    """
    emit = _emitter(on_event)
    out_dir = Path(out_dir).resolve()
    if (out_dir / "config.json").is_file() and (out_dir / "model.safetensors").is_file():
        emit(f"tiny model {out_dir}: already there")
        return out_dir
    _make_dir(out_dir, "the model directory")

    script = resources.files("orchestrate.images").joinpath("tiny_model.py").read_text(encoding="utf-8")
    started = time.monotonic()
    with _client_scope(docker_client) as client:
        if _image_or_none(client, image) is None:
            raise ImageBuildError(
                f"The image {image!r} is not here. What to do: build it first with "
                "orchestrate.images.build_image('vllm-cpu', ...)."
            )
        emit(f"tiny model {out_dir}: writing it with {image}")
        status, logs = _run_tiny_model(client, image, script, out_dir, timeout)
    if status != 0:
        raise ImageBuildError(
            f"Writing the tiny model with {image} failed (exit {status}).{_tail(logs[-_LOG_TAIL:])}\n"
            f"What to do: check that {image} was built by build_image('vllm-cpu') and that the "
            f"Docker daemon can write to {out_dir}."
        )
    expected = ("config.json", "model.safetensors", "tokenizer.json")
    missing = [name for name in expected if not (out_dir / name).is_file()]
    if missing:
        raise ImageBuildError(
            f"The tiny model script finished but {', '.join(missing)} is missing in {out_dir}."
            f"{_tail(logs[-_LOG_TAIL:])}\nWhat to do: is {out_dir} on a filesystem the Docker "
            "daemon shares with this machine?"
        )
    summary = logs[-1] if logs else ""
    emit(f"tiny model {out_dir}: done in {time.monotonic() - started:.1f} s {summary}")
    return out_dir
