"""Docker SDK keyword arguments from a ContainerSpec: what `docker run` would be given."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrate.core.plan import ContainerSpec

# always, not unless-stopped: a dockerd that restarts without live-restore stops its running
# containers first, which marks them stopped by hand, and unless-stopped then leaves them down
# (measured on the bed, bench P7's dockerd row). `docker stop` still stops one until dockerd
# restarts; `orchestrate down` removes them.
RESTART_POLICY = "always"
SUPERVISOR_NAME = "orchestrate-supervisor"


def entrypoint(spec: ContainerSpec, supervisor_source: str) -> list[str]:
    """The container's entrypoint: the planned one, behind the supervisor when there is one."""
    if spec.supervisor is None:
        return list(spec.entrypoint)
    return ["python3", "-c", supervisor_source, SUPERVISOR_NAME, *spec.entrypoint]


def run_kwargs(spec: ContainerSpec, secrets: Mapping[str, str]) -> dict[str, Any]:
    """kwargs for `client.containers.create(**kw)` as plain data (host/engine.py makes docker-py's
    Mount/DeviceRequest/EndpointConfig of them); `secrets` maps container variable -> value."""
    from orchestrate.agents import bundle

    env = dict(spec.env) | {k: secrets[k] for k, _ in spec.secret_env}
    if spec.supervisor is not None:
        env |= spec.supervisor.env()
    kwargs: dict[str, Any] = {
        "image": spec.image,
        "name": spec.name,
        "entrypoint": entrypoint(spec, bundle("supervisor")),
        "command": list(spec.command),
        "environment": env,
        "labels": dict(spec.labels),
        "network_mode": spec.network_mode,
        "shm_size": spec.shm_size,
        "privileged": spec.privileged,
        "stop_signal": "SIGTERM",
        "mounts": [
            {"target": m.target, "source": m.source, "type": "bind", "read_only": m.read_only}
            for m in spec.mounts
        ],
        "detach": True,
    }
    if spec.supervisor is not None or spec.restart_always:
        kwargs["restart_policy"] = {"Name": RESTART_POLICY}
    if spec.ipc == "host":
        kwargs["ipc_mode"] = "host"
    if spec.ipv4_address:
        kwargs["network"] = spec.network_mode
        kwargs["networking_config"] = {spec.network_mode: {"ipv4_address": spec.ipv4_address}}
    if spec.gpu_ids:
        kwargs["device_requests"] = [{"device_ids": list(spec.gpu_ids), "capabilities": [["gpu"]]}]
    elif spec.gpus:
        kwargs["device_requests"] = [{"count": spec.gpus, "capabilities": [["gpu"]]}]
    return kwargs


def describe(spec: ContainerSpec) -> list[str]:
    """A `docker run`-like argv for people (plan, --dry-run); secret values never appear."""
    argv = ["docker", "run", "-d", "--name", spec.name, f"--network={spec.network_mode}"]
    if spec.ipv4_address:
        argv.append(f"--ip={spec.ipv4_address}")
    argv += [f"--shm-size={spec.shm_size}"]
    if spec.supervisor is not None or spec.restart_always:
        argv.append(f"--restart={RESTART_POLICY}")
    if spec.ipc == "host":
        argv.append("--ipc=host")
    if spec.privileged:
        argv.append("--privileged")
    if spec.gpu_ids:
        argv.append(f'--gpus="device={",".join(spec.gpu_ids)}"')
    elif spec.gpus:
        argv.append(f"--gpus={spec.gpus}")
    for m in spec.mounts:
        argv += ["-v", f"{m.source}:{m.target}{':ro' if m.read_only else ''}"]
    argv += [x for k, v in spec.env for x in ("-e", f"{k}={v}")]
    argv += [x for k, src in spec.secret_env for x in ("-e", f"{k}=${{{src}}}")]
    if spec.supervisor is not None:
        argv += [x for k, v in spec.supervisor.env().items() for x in ("-e", f"{k}={v}")]
    argv += [x for k, v in spec.labels for x in ("--label", f"{k}={v}")]
    # the supervisor's source is long: `python3 -m orchestrate.agents supervisor` prints it
    entry = entrypoint(spec, "$(python3 -m orchestrate.agents supervisor)")
    argv += ["--entrypoint", entry[0], spec.image]
    return [*argv, *entry[1:], *spec.command]
