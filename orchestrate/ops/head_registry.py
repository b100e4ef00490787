"""images.source: head-registry: a private registry on the head, workers pull from it.

The registry runs as a container on the head's Docker Engine (image `images.head_registry.image`,
`registry:2` or any image of Distribution, e.g. one built from Debian's `docker-registry`
package), published on the head's 127.0.0.1:<port>: the head's engine pushes to its own loopback,
which every engine accepts over plain HTTP. Workers reach it one of two ways:

  tunnel  their own 127.0.0.1:<p>, forwarded through orchestrate's SSH connections (tunnel.py):
          no daemon config anywhere; the bytes pass through this machine
  direct  <head address>:<port> straight from the head: fastest, but each worker's engine must
          list it in `insecure-registries` (/etc/docker/daemon.json, then restart dockerd)

`auto` takes direct when every worker's engine already trusts the address, else the tunnel.
The container, its storage volume and the extra image name are removed when distribution ends,
whatever happened.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from typing import Any

from orchestrate.core.plan import NodePlan, RegistryPlan
from orchestrate.errors import EngineError, HostError
from orchestrate.host.engine import Engine
from orchestrate.host.tunnel import Dial
from orchestrate.waits import poll

CONTAINER_PORT = 5000  # what registry:2 and Debian's docker-registry listen on
READY_S = 30.0


def trusts_insecure(info: dict[str, Any], host: str, port: int) -> bool:
    """Does an engine (its `docker info`) pull from http://host:port? Reads RegistryConfig: a
    named entry in IndexConfigs, or an address inside InsecureRegistryCIDRs."""
    config = info.get("RegistryConfig") or {}
    index = (config.get("IndexConfigs") or {}).get(f"{host}:{port}")
    if index is not None:
        return not index.get("Secure", True)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    cidrs = config.get("InsecureRegistryCIDRs") or []
    return any(ip in ipaddress.ip_network(c, strict=False) for c in cidrs)


def daemon_json_line(address: str) -> str:
    return f'"insecure-registries": ["{address}"] in /etc/docker/daemon.json, then restart dockerd'


def repo_path(image: str) -> tuple[str, str]:
    """`[registry/]path[:tag]` -> (path, tag) to push under another registry's host:port."""
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        image = rest
    name, _, digest = image.partition("@")
    if ":" in name.split("/")[-1]:
        path, _, tag = name.rpartition(":")
        return path, tag
    return name, "orchestrate" if digest else "latest"


def container_name(deployment: str) -> str:
    return f"orchestrate-{deployment}-registry"


@contextlib.contextmanager
def running(
    engine: Engine, head: NodePlan, deployment: str, reg: RegistryPlan, direct: bool, dial: Dial
) -> Iterator[None]:
    """The registry container on the head while the block runs; removed with its volume after."""
    name = container_name(deployment)
    old = engine.container(name)
    if old is not None:
        engine.discard(old)
    binds: list[tuple[str, int]] = [("127.0.0.1", reg.port)]
    if direct:
        binds.append((head.address, reg.port))
    labels = {
        "orchestrate.deployment": deployment,
        "orchestrate.host": head.host,
        "orchestrate.role": "registry",
    }
    if engine.image_id(reg.image) is None:
        engine.pull(reg.image)
    container = engine.create_and_start(
        {
            "image": reg.image,
            "name": name,
            "labels": labels,
            "ports": {f"{CONTAINER_PORT}/tcp": binds},
            "environment": {"REGISTRY_HTTP_ADDR": f"0.0.0.0:{CONTAINER_PORT}"},
        }
    )
    try:
        _wait_ready(engine, container, dial)
        yield
    finally:
        engine.discard(container)


def _wait_ready(engine: Engine, container: Any, dial: Dial) -> None:
    """Until GET /v2/ answers 200 through `dial` (docker-proxy accepts before the registry does)."""
    last = ""

    def answers() -> bool | None:
        nonlocal last
        try:
            return True if _answers(dial) else None
        except (HostError, OSError, EOFError) as exc:
            last = str(exc)
            return None

    if poll(answers, timeout=READY_S, every=0.2):
        return
    tail = engine.logs(container, tail=15).decode("utf-8", "replace")
    raise EngineError(
        engine.name,
        f"the image registry did not answer within {READY_S:g}s ({last or 'no HTTP 200 on /v2/'})",
        tail=tail,
    )


def _answers(dial: Dial) -> bool:
    conn = dial()
    try:
        conn.settimeout(5)
        conn.sendall(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        head = conn.recv(64)
    finally:
        conn.close()
    return head.startswith(b"HTTP/1.") and b" 200 " in head[:16]
