"""The wheelhouse: `pip download` on this machine (Python 3.11, like the images') into the
cache, plus the Debian packages an image needs, so the build itself reaches no network."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrate.errors import ImageBuildError
from orchestrate.events import Detail
from orchestrate.images.base import file_lock
from orchestrate.images.recipes import (
    _PIP_BOOTSTRAP,
    EventCallback,
    ImageKind,
    _canonical,
    _Recipe,
    _recipe,
    wheelhouse_spec,
)
from orchestrate.images.util import (
    _dir_size,
    _emitter,
    _human_size,
    _make_dir,
    _read_json,
    _remaining,
    _tail,
    run_streaming,
)

if TYPE_CHECKING:
    pass


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
    spec = wheelhouse_spec(recipe)

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
            _pip_download(recipe, work, emit, deadline, timeout)
            pins = _lock(recipe, work)
            _fetch_debs(recipe, work, emit)
            (work / ".stamp.json").write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
            _swap_in(work, dest)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        emit(
            f"wheelhouse {dest}: {len(pins)} packages, {_human_size(_dir_size(dest))}, "
            f"{time.monotonic() - started:.0f} s"
        )
        return dest


def _pip_download(recipe: _Recipe, work: Path, emit: EventCallback, deadline: float, timeout: float) -> None:
    """`pip download` the recipe's requirements (wheels only) into work, its lines to the events."""
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
    code, tail = run_streaming(
        cmd,
        timeout=_remaining(deadline, "downloading the wheelhouse"),
        on_line=lambda line: emit(Detail(f"pip: {line}")),
    )
    if code == 0:
        return
    what = f"timed out after {timeout:.0f} s" if code is None else f"exited with {code}"
    hint = ""
    if "torch==2.13.0+cpu" in "\n".join(tail):
        hint = (
            " torch 2.13.0+cpu is not on PyPI: set PIP_EXTRA_INDEX_URL="
            "https://download.pytorch.org/whl/cpu or PIP_FIND_LINKS to a directory "
            "holding the wheel."
        )
    raise ImageBuildError(
        f"Downloading the {recipe.kind} wheelhouse failed: `pip download` {what}."
        f"{_tail(tail)}\nWhat to do: check that this machine reaches the package "
        f"index (pip's proxy and certificate settings apply).{hint}"
    )


def _lock(recipe: _Recipe, work: Path) -> list[str]:
    """Drop the recipe's excluded wheels and pin the rest in work/requirements.lock (what the
    Dockerfile installs with --no-deps); the pins, pip's own left out."""
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
    return pins


def _swap_in(work: Path, dest: Path) -> None:
    """Put the finished work directory in dest's place; the old one goes only once it is out."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}-old-{os.getpid()}"
        dest.rename(old)
    work.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
