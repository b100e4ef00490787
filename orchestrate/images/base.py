"""The base image that the vllm-cpu and ray images are built on, found or made without a registry.

:func:`resolve_base` is what `orchestrate demo` and `orchestrate image build` use when no
``--base`` is given, in this order, and it says which path it took:

1. ``orchestrate/debian-py:bookworm`` or ``python:3.11-slim-bookworm`` already in the engine;
2. ``python:3.11-slim-bookworm`` pulled, when a registry answers;
3. ``orchestrate/debian-py:bookworm`` made here (:func:`ensure_local_base`): ``debootstrap
   --variant=minbase bookworm`` plus python3, ca-certificates, iproute2, procps and libnuma1,
   slimmed and packed as a rootfs tarball in the image cache directory, then ``docker import``-ed.
   A later call re-imports the cached tarball (seconds). debootstrap needs root; when it is
   missing, it is installed with apt-get (as root), or the error says what to install.

The test suite's ``ensure_base_image`` calls :func:`ensure_local_base` too: one implementation.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrate.errors import ImageBuildError
from orchestrate.waits import poll

if TYPE_CHECKING:
    import docker

__all__ = [
    "LOCAL_BASE",
    "REGISTRY_BASE",
    "ensure_local_base",
    "fingerprint",
    "pull_base",
    "resolve_base",
    "rootfs_tarball",
]

REGISTRY_BASE = "python:3.11-slim-bookworm"
LOCAL_BASE = "orchestrate/debian-py:bookworm"
SUITE = "bookworm"
PACKAGES = ("python3", "ca-certificates", "iproute2", "procps", "libnuma1")
_IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    "ENV DEBIAN_FRONTEND=noninteractive",
    "WORKDIR /",
    'CMD ["bash"]',
)
_DEBOOTSTRAP_TIMEOUT = 1200.0
_PULL_TIMEOUT = 120.0

Emit = Callable[[str], None]


def _error(message: str) -> Exception:
    return ImageBuildError(message)


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float, what: str) -> Iterator[None]:
    """An exclusive flock on path, waited for at most timeout seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:

        def take() -> bool | None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return None

        if not poll(take, timeout=timeout, every=0.5):
            raise ImageBuildError(
                f"Timed out after {timeout:.0f} s waiting for another process that is "
                f"preparing {what} (lock file {path}). What to do: wait for it to finish, "
                "or remove the lock file if no such process is running."
            )
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- which base


def fingerprint(image: Any) -> str:
    """What an image build depends on in its base: the layers and the run config, not the image
    ID (a re-import of the same rootfs makes a new ID, but the same layer digest)."""
    attrs = getattr(image, "attrs", None) or {}
    config = attrs.get("Config") or {}
    keep = {k: config.get(k) for k in ("Env", "Cmd", "Entrypoint", "WorkingDir", "User")}
    payload = repr((attrs.get("RootFS", {}).get("Layers"), sorted(keep.items())))
    return "layers:" + hashlib.sha256(payload.encode()).hexdigest()


def _present(client: docker.DockerClient, tag: str) -> Any:
    import docker as docker_sdk

    try:
        return client.images.get(tag)
    except docker_sdk.errors.ImageNotFound:
        return None
    except docker_sdk.errors.APIError as exc:
        raise _error(f"Docker could not inspect image {tag!r}: {exc}") from None


def pull_base(client: docker.DockerClient, tag: str) -> str | None:
    """None when pulled, else why not (one line)."""
    repo, _, version = tag.partition(":")
    saved = client.api.timeout  # APIClient.pull takes no timeout: bound each read of this one
    client.api.timeout = int(_PULL_TIMEOUT)
    try:
        client.api.pull(repo, tag=version or "latest")
    except Exception as exc:  # APIError, ImageNotFound, requests errors and timeouts: no registry
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    finally:
        client.api.timeout = saved
    return None if _present(client, tag) is not None else "the engine did not keep it"


def resolve_base(client: docker.DockerClient, cache_dir: Path, emit: Emit) -> str:
    """The base to build from, found or made (see the module docstring); emits the path taken."""
    for tag in (LOCAL_BASE, REGISTRY_BASE):
        if _present(client, tag) is not None:
            emit(f"base image {tag}: already here")
            return tag
    emit(f"base image: trying the registry for {REGISTRY_BASE}")
    problem = pull_base(client, REGISTRY_BASE)
    if problem is None:
        emit(f"base image {REGISTRY_BASE}: pulled from the registry")
        return REGISTRY_BASE
    emit(f"base image: no registry ({problem}); making {LOCAL_BASE} with debootstrap")
    ensure_local_base(client, cache_dir, emit)
    return LOCAL_BASE


# ---------------------------------------------------------------- the local Debian base


def ensure_local_base(
    client: docker.DockerClient,
    cache_dir: Path,
    emit: Emit,
    *,
    tag: str = LOCAL_BASE,
    force: bool = False,
    rebuild_rootfs: bool = False,
) -> str:
    """Import the cached rootfs tarball as ``tag`` (making it with debootstrap first when there is
    none) unless ``tag`` exists; returns the image ID."""
    existing = _present(client, tag)
    if existing is not None and not (force or rebuild_rootfs):
        return str(existing.id)
    # one debootstrap or import at a time per cache directory; a second caller then finds it
    with file_lock(
        Path(cache_dir) / ".base-image.lock", timeout=_DEBOOTSTRAP_TIMEOUT + 600, what=f"the base image {tag}"
    ):
        again = _present(client, tag)
        if again is not None and not (force or rebuild_rootfs):
            return str(again.id)
        tarball = rootfs_tarball(Path(cache_dir), emit, rebuild=rebuild_rootfs)
        return _import(client, tarball, tag, existing, emit)


def _import(client: docker.DockerClient, tarball: Path, tag: str, existing: Any, emit: Emit) -> str:
    started = time.monotonic()
    repo, _, version = tag.partition(":")
    try:
        client.api.import_image(
            src=str(tarball), repository=repo, tag=version or "latest", changes=list(_IMPORT_CHANGES)
        )
    except Exception as exc:  # APIError, requests errors
        raise _error(
            f"docker import of {tarball} as {tag} failed: {exc}. What to do: check "
            f"`docker info` and the disk space, or delete {tarball} to rebuild it."
        ) from None
    image = _present(client, tag)
    if image is None:
        raise _error(f"docker import of {tarball} reported success but {tag} is missing.")
    emit(
        f"base image {tag}: imported {image.short_id} from {tarball.name} in "
        f"{time.monotonic() - started:.0f} s"
    )
    if existing is not None and existing.id != image.id:
        with contextlib.suppress(Exception):  # still used by other images or containers: keep it
            client.images.remove(existing.id, noprune=False)
    return str(image.id)


def rootfs_tarball(cache_dir: Path, emit: Emit, *, rebuild: bool = False) -> Path:
    """``cache_dir/debian-py-bookworm-<key>.rootfs.tar``, made with debootstrap when missing.
    The key hashes the suite and the package list, so changing either makes a new tarball."""
    key = hashlib.sha256(f"{SUITE} {','.join(PACKAGES)} v1".encode()).hexdigest()[:12]
    tarball = cache_dir / f"debian-py-{SUITE}-{key}.rootfs.tar"
    if tarball.is_file() and tarball.stat().st_size > 0 and not rebuild:
        emit(f"base image: cached rootfs {tarball}")
        return tarball
    _require_root()
    debootstrap = _debootstrap_binary(emit)
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with _workdir(cache_dir) as work:
        rootfs, log = work / "rootfs", cache_dir / "debootstrap.log"
        mirror = debian_mirror()
        emit(f"base image: debootstrap --variant=minbase {SUITE} from {mirror} (about a minute; log {log})")
        _debootstrap(debootstrap, rootfs, mirror, log)
        _slim(rootfs)
        partial = tarball.with_suffix(".tmp")
        _check([*_tar(), "-C", str(rootfs), "-cf", str(partial), "."], "tar of the rootfs", 600)
        partial.replace(tarball)
    for old in cache_dir.glob(f"debian-py-{SUITE}-*.rootfs.tar"):
        if old != tarball:
            old.unlink(missing_ok=True)
    emit(
        f"base image: rootfs {tarball} ({tarball.stat().st_size >> 20} MiB) in "
        f"{time.monotonic() - started:.0f} s"
    )
    return tarball


def _require_root() -> None:
    if os.geteuid() != 0:
        raise _error(
            f"No base image here and no registry: making {LOCAL_BASE} needs root "
            "(debootstrap). What to do: run this once as root (sudo orchestrate image "
            f"build), or `docker load` {REGISTRY_BASE} from a machine with a registry, "
            "or pass --base IMAGE."
        )


def _debootstrap_binary(emit: Emit) -> str:
    found = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if found:
        return found
    if not shutil.which("apt-get"):
        raise _error(
            "debootstrap is not installed and this is not a Debian/Ubuntu machine. "
            "What to do: install debootstrap, or pass --base IMAGE."
        )
    emit("base image: installing debootstrap with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "debootstrap"]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if res.returncode != 0 and cmd[1] == "install":
            raise _error(
                f"`apt-get install debootstrap` failed: {_last(res.stderr or res.stdout)}. "
                "What to do: run `apt-get install debootstrap` as root."
            )
    found = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if not found:
        raise _error(
            "apt-get installed debootstrap, but it is not on PATH. What to do: add /usr/sbin to PATH."
        )
    return found


def debian_mirror() -> str:
    """$BED_DEBIAN_MIRROR, else this machine's Debian mirror from its apt sources, else deb.debian.org."""
    if os.environ.get("BED_DEBIAN_MIRROR"):
        return os.environ["BED_DEBIAN_MIRROR"]
    sources = [
        Path("/etc/apt/sources.list"),
        *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")),
        *sorted(Path("/etc/apt/sources.list.d").glob("*.list")),
    ]
    for path in sources:
        with contextlib.suppress(OSError):
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                for uri in _uris(line):
                    if re.search(r"/debian/?$", uri) and "security" not in uri:
                        return uri
    return "http://deb.debian.org/debian"


def _uris(line: str) -> list[str]:
    """URIs of one apt sources line, deb822 (`URIs: ...`) or one-line (`deb [opts] URI suite`)."""
    words = line.split()
    if words[:1] == ["URIs:"]:
        return words[1:]
    if words[:1] == ["deb"]:
        return [w for w in words[1:] if re.match(r"^[a-z]+://", w)][:1]
    return []


@contextlib.contextmanager
def _workdir(cache_dir: Path) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix="build.", dir=cache_dir))
    try:
        yield work
    finally:
        # debootstrap may leave proc/sys mounted inside the target when it fails
        with contextlib.suppress(OSError):
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
            for mount in sorted((m for m in mounts if m.startswith(str(work))), reverse=True):
                subprocess.run(["umount", "-l", mount], capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def _debootstrap(binary: str, rootfs: Path, mirror: str, log: Path) -> None:
    cmd = [binary, "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs), mirror]
    try:
        with open(log, "w", encoding="utf-8") as out:
            res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=_DEBOOTSTRAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise _error(
            f"debootstrap timed out after {_DEBOOTSTRAP_TIMEOUT:.0f} s (log {log}). What to "
            "do: check the mirror (BED_DEBIAN_MIRROR) and retry."
        ) from None
    if res.returncode != 0:
        inner = rootfs / "debootstrap" / "debootstrap.log"
        tail = _tail(inner if inner.is_file() else log)
        raise _error(
            f"debootstrap exited with {res.returncode} (log {log}):\n{tail}\nWhat to do: "
            f"check that {mirror} answers (or set BED_DEBIAN_MIRROR), then retry."
        )


def _slim(root: Path) -> None:
    """Drop package lists, caches, docs and locales; reset machine-specific files; leave /dev,
    /proc and /sys empty (docker mounts them)."""
    subprocess.run(["chroot", str(root), "apt-get", "clean"], capture_output=True, timeout=120)
    for pattern in (
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/debconf/*-old",
        "usr/share/doc/*",
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
        "var/log/*.log",
        "var/log/apt/*",
        "tmp/*",
        "var/tmp/*",
        "debootstrap",
        "dev/*",
        "proc/*",
        "sys/*",
    ):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    (root / "etc" / "resolv.conf").unlink(missing_ok=True)
    (root / "etc" / "resolv.conf").write_text("")
    (root / "etc" / "hostname").write_text("localhost\n")
    (root / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    (root / "etc" / "machine-id").unlink(missing_ok=True)
    (root / "etc" / "machine-id").write_text("")


def _tar() -> list[str]:
    return ["tar", "--numeric-owner", "--xattrs"]


def _check(cmd: list[str], what: str, timeout: float) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise _error(f"{what} failed: {_last(res.stderr)}")


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def _tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-n:]
    except OSError:
        return ""
    return "\n".join(f"  | {line}" for line in lines)
