"""`docker build --network host` against the wheelhouse served on this machine's loopback for
the length of the build; skipped when the tag already carries the current recipe hash."""

from __future__ import annotations

import contextlib
import functools
import http.server
import math
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrate.errors import ImageBuildError
from orchestrate.events import Detail
from orchestrate.images.base import file_lock, fingerprint, resolve_base
from orchestrate.images.recipes import (
    DEFAULT_BASE,
    LABEL_BASE,
    LABEL_KIND,
    LABEL_RECIPE,
    LOCAL_BASE,
    EventCallback,
    ImageKind,
    _Recipe,
    _recipe,
    dockerfile_text,
    recipe_hash,
)
from orchestrate.images.util import (
    _ANSI,
    _LOG_TAIL,
    _client_scope,
    _emitter,
    _image_or_none,
    _make_dir,
    _remaining,
    _tail,
)
from orchestrate.images.wheels import wheelhouse

if TYPE_CHECKING:
    import docker


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up mid-download is the client's problem


@contextlib.contextmanager
def serve_directory(path: Path) -> Iterator[str]:
    """Serve path read-only over HTTP on 127.0.0.1:<free port>; yield the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(path))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="orchestrate-wheelhouse", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _ensure_base(client: docker.DockerClient, base: str, emit: EventCallback, timeout: float) -> object:
    image = _image_or_none(client, base)
    if image is not None:
        return image
    emit(f"base image {base} is not here; trying to pull it")
    problem = "not found"
    try:
        image = client.images.pull(base)
    except Exception as exc:  # APIError, ImageNotFound, requests timeouts
        problem = str(exc).strip() or type(exc).__name__
        image = None
    if image is None or isinstance(image, list):
        image = _image_or_none(client, base)
    if image is None:
        raise ImageBuildError(
            f"The base image {base!r} is not available locally and could not be pulled "
            f"({problem}).\nWhat to do: leave out --base: orchestrate then finds or makes one "
            f"({LOCAL_BASE!r} with debootstrap when no registry answers), or `docker load` "
            f"{base!r} from a machine that can reach a registry."
        )
    return image


def _remove_untagged(client: docker.DockerClient, image_ids: Sequence[str]) -> None:
    """Best effort: remove a failed build's intermediate images, newest first, if untagged."""
    for image_id in reversed(image_ids):
        with contextlib.suppress(Exception):
            if not client.images.get(image_id).tags:
                client.images.remove(image_id, noprune=True)


def build_image(
    kind: ImageKind,
    *,
    tag: str | None = None,
    base: str | None = DEFAULT_BASE,
    cache_dir: Path,
    docker_client: docker.DockerClient | None = None,
    on_event: EventCallback | None = None,
    timeout: float = 1800,
) -> str:
    """Build image ``kind`` (``"vllm-cpu"`` or ``"ray"``) from ``base`` and return its image id.

    ``base=None``: find or make one (:func:`orchestrate.images.base.resolve_base`: present, else
    pulled, else the debootstrap base from the cached rootfs). Skips the build when ``tag``
    (default :data:`CPU_IMAGE` / :data:`RAY_IMAGE`) exists and its :data:`LABEL_RECIPE` label
    equals :func:`recipe_hash` of (Dockerfile text, the base's layers and config, requirement
    set): re-importing the base from the same rootfs tarball does not force a rebuild.
    Otherwise downloads the wheelhouse (:func:`wheelhouse`, in ``cache_dir``),
    serves it on 127.0.0.1 and runs the daemon's build with ``network_mode="host"``, streaming
    the build log to ``on_event``. ``timeout`` bounds the whole call. An image that the new
    build replaces under ``tag`` is removed if nothing else uses it.
    """
    emit = _emitter(on_event)
    recipe = _recipe(kind)
    deadline = time.monotonic() + timeout
    cache_dir = _make_dir(Path(cache_dir), "the cache directory")
    # one build per kind at a time: a second caller waits, then finds the image up to date
    lock = file_lock(cache_dir / f".build-{kind}.lock", timeout=timeout, what=f"the {kind} image")
    with _client_scope(docker_client) as client, lock:
        return _build_image(recipe, tag or recipe.tag, base, cache_dir, client, emit, deadline, timeout)


class BuildLog:
    """The build's stream, line by line: each line to the events, the log's tail for an error,
    and the intermediate images the build made (each ``---> id`` but the FROM step's, which is
    the base) so that a failed build can remove them."""

    def __init__(self, emit: EventCallback) -> None:
        self.emit = emit
        self.tail: deque[str] = deque(maxlen=_LOG_TAIL)
        self.layers: list[str] = []
        self._partial = ""
        self._after_from = False

    def feed(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self._partial.strip():
            self._line(self._partial)
        self._partial = ""

    def _line(self, line: str) -> None:
        line = _ANSI.sub("", line).rstrip()
        if not line:
            return
        self.tail.append(line)
        self.emit(Detail(line))
        layer = re.match(r" ---> ([0-9a-f]{12,64})$", line)
        if layer and not self._after_from:
            self.layers.append(layer.group(1))
        self._after_from = bool(re.match(r"Step \d+/\d+ : FROM ", line))


def chunk_error(chunk: dict[str, object]) -> str | None:
    """The error a build-stream chunk reports, in one line; None for a chunk that is no error."""
    if "error" not in chunk and "errorDetail" not in chunk:
        return None
    detail = chunk.get("errorDetail")
    message = detail.get("message") if isinstance(detail, dict) else None
    error = str(chunk.get("error") or message or chunk).strip()
    code = re.search(r"returned a non-zero code: (\d+)", error)
    # docker repeats the whole RUN command line; the log has it
    return f"a RUN step exited with code {code.group(1)}" if code else error


def _run_build(
    client: docker.DockerClient,
    context: str,
    tag: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
    log: BuildLog,
    deadline: float,
    timeout: float,
) -> str | None:
    """Run the build and read its stream to the end; None when it succeeded, else why not."""
    import docker as docker_sdk
    import requests

    try:
        stream = client.api.build(
            path=context,
            tag=tag,
            buildargs=buildargs,
            network_mode="host",
            rm=True,
            forcerm=True,
            pull=False,
            labels=labels,
            decode=True,
            timeout=math.ceil(_remaining(deadline, f"building {tag}")),
        )
        for chunk in stream:
            error = chunk_error(chunk)
            if error is not None:
                return error
            text = chunk.get("stream")
            if isinstance(text, str):
                log.feed(text)
            if time.monotonic() > deadline:
                return f"timed out after {timeout:.0f} s"
        return None
    except requests.exceptions.RequestException as exc:
        error = f"lost the Docker daemon's build stream ({type(exc).__name__}: {exc})"
        if isinstance(exc, (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError)):
            error += f"; the build may have run past the {timeout:.0f} s timeout"
        return error
    except docker_sdk.errors.APIError as exc:
        return f"Docker refused the build: {exc.explanation or exc}"
    finally:
        log.close()


def _build_image(
    recipe: _Recipe,
    tag: str,
    base: str | None,
    cache_dir: Path,
    client: docker.DockerClient,
    emit: EventCallback,
    deadline: float,
    timeout: float,
) -> str:
    kind = recipe.kind
    dockerfile = dockerfile_text(kind)

    if base is None:
        base = resolve_base(client, cache_dir, emit)
    base_image = _ensure_base(client, base, emit, _remaining(deadline, "checking the base image"))
    base_id = str(getattr(base_image, "id", ""))
    wanted = recipe_hash(kind, dockerfile, fingerprint(base_image))
    # images labelled before the fingerprint keyed on the base's image ID: still up to date
    accepted = {wanted, recipe_hash(kind, dockerfile, base_id)}
    existing = _image_or_none(client, tag)
    if existing is not None and (existing.labels or {}).get(LABEL_RECIPE) in accepted:
        emit(f"{tag}: up to date ({existing.short_id}), not rebuilding")
        return str(existing.id)
    if existing is not None:
        emit(f"{tag}: exists but was built from another recipe or base; rebuilding")

    wheels = wheelhouse(kind, cache_dir, emit, timeout=_remaining(deadline, "the wheelhouse"))
    pip_wheels = sorted(wheels.glob("pip-*.whl"))
    if not pip_wheels:
        raise ImageBuildError(
            f"The wheelhouse {wheels} has no pip wheel. What to do: delete {wheels} and retry."
        )

    emit(f"{tag}: building from {base} ({base_id[:19]})")
    started = time.monotonic()
    log = BuildLog(emit)
    with tempfile.TemporaryDirectory(prefix="orchestrate-build-") as context:
        Path(context, "Dockerfile").write_text(dockerfile, encoding="utf-8")
        with serve_directory(wheels) as url:
            buildargs = {"BASE": base, "WHEELS_URL": url, "PIP_WHEEL": pip_wheels[-1].name}
            labels = {LABEL_RECIPE: wanted, LABEL_KIND: kind, LABEL_BASE: base}
            error = _run_build(client, context, tag, buildargs, labels, log, deadline, timeout)
    if error is not None:
        _remove_untagged(client, log.layers)
        raise ImageBuildError(
            f"Building {tag} ({kind}) from {base} failed: {error}{_tail(log.tail)}\n"
            "What to do: read the log lines above; lines starting with ERROR: come from the "
            f"Dockerfile's own checks. The wheelhouse is {wheels}; delete it to download afresh."
        )

    image = _image_or_none(client, tag)
    if image is None or (image.labels or {}).get(LABEL_RECIPE) != wanted:
        raise ImageBuildError(
            f"The build of {tag} reported success, but the tagged image is missing or unlabelled."
            f"{_tail(log.tail)}\nWhat to do: check `docker images {tag}` and retry."
        )
    emit(f"{tag}: built {image.short_id} in {time.monotonic() - started:.0f} s")

    if existing is not None and existing.id and existing.id != image.id:
        with contextlib.suppress(Exception):  # still used by a container or another tag: keep it
            client.images.remove(existing.id, noprune=False)
            emit(f"removed the replaced image {existing.short_id}")
    return str(image.id)
