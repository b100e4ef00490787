"""Docker SDK keyword arguments from a ContainerSpec: what `docker run` would be given."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrate.plan import ContainerSpec


def run_kwargs(spec: ContainerSpec, secrets: Mapping[str, str]) -> dict[str, Any]:
    """kwargs for `client.containers.create(**kw)`; `secrets` maps container variable -> value."""
    from docker.types import DeviceRequest, EndpointConfig, Mount

    env = dict(spec.env) | {k: secrets[k] for k, _ in spec.secret_env}
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": spec.name,
        "entrypoint": list(spec.entrypoint),
        "command": list(spec.command),
        "environment": env,
        "labels": dict(spec.labels),
        "network_mode": spec.network_mode,
        "shm_size": spec.shm_size,
        "privileged": spec.privileged,
        "stop_signal": "SIGTERM",
        "mounts": [
            Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only)
            for m in spec.mounts
        ],
        "detach": True,
    }
    if spec.ipc == "host":
        kwargs["ipc_mode"] = "host"
    if spec.ipv4_address:
        kwargs["network"] = spec.network_mode
        endpoint = EndpointConfig("1.41", ipv4_address=spec.ipv4_address)
        kwargs["networking_config"] = {spec.network_mode: endpoint}
    if spec.gpus:
        kwargs["device_requests"] = [DeviceRequest(count=spec.gpus, capabilities=[["gpu"]])]
    return kwargs


def describe(spec: ContainerSpec) -> list[str]:
    """A `docker run`-like argv for people (plan, --dry-run); secret values never appear."""
    argv = ["docker", "run", "-d", "--name", spec.name, f"--network={spec.network_mode}"]
    if spec.ipv4_address:
        argv.append(f"--ip={spec.ipv4_address}")
    argv += [f"--shm-size={spec.shm_size}"]
    if spec.ipc == "host":
        argv.append("--ipc=host")
    if spec.privileged:
        argv.append("--privileged")
    if spec.gpus:
        argv.append(f"--gpus={spec.gpus}")
    for m in spec.mounts:
        argv += ["-v", f"{m.source}:{m.target}{':ro' if m.read_only else ''}"]
    argv += [x for k, v in spec.env for x in ("-e", f"{k}={v}")]
    argv += [x for k, src in spec.secret_env for x in ("-e", f"{k}=${{{src}}}")]
    argv += [x for k, v in spec.labels for x in ("--label", f"{k}={v}")]
    argv += ["--entrypoint", spec.entrypoint[0], spec.image]
    return [*argv, *spec.entrypoint[1:], *spec.command]
