"""Make sure every host has the plan's image, with the same image ID everywhere.

Sources (inventory `images.source`):
  registry       each host pulls the image from its registry
  local | head   stream `docker save` from this machine's engine (local) or the head's (head) into
                 each host's `docker load`, for hosts without registry access
  head-registry  push from the head to a registry orchestrate runs on the head; workers pull from
                 it (head_registry.py): layers already on a worker are skipped, and with a direct
                 pull the bytes go head -> worker without passing through this machine

Every transfer streams: the engines' progress messages are read as they come (the read timeout
applies per message, not to the whole transfer), each host shows MiB and MiB/s, and a host that
fails says so at once with its name while the other hosts' transfers go on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from orchestrate.core.plan import NodePlan, RegistryPlan
from orchestrate.errors import EngineError, HostError, UsageError
from orchestrate.host import tunnel
from orchestrate.host.engine import Engine, local_client
from orchestrate.host.remote import SSHRunner
from orchestrate.host.session import Session, fan_out
from orchestrate.ops import head_registry
from orchestrate.ops.progress import Layers, Meter, mib


def _local_engine() -> Engine:
    try:
        return Engine("local", local_client("local", timeout=120))
    except EngineError as exc:
        raise UsageError(
            f"images.source is local, but {exc.detail}",
            hint="start Docker here, or use images.source: registry or head",
        ) from None


def _failed(s: Session, node: NodePlan, meter: Meter, exc: HostError) -> None:
    """Say at once which host failed (fan-out raises only when every host has finished)."""
    what = exc.message.removeprefix(f"{exc.host}: ") if exc.host == node.host else exc.message
    s.events("image", node.host, f"FAILED after {meter.line().split(' ', 1)[1]}: {what}")


def _copy(s: Session, source: Engine, node: NodePlan, want: str, size: int) -> str:
    image = s.plan.image
    s.events("image", node.host, f"sending {image} from {source.name}")
    sent = Meter(s.events, node.host, "sent", size)
    loaded = Meter(s.events, node.host, "loading")
    layers = Layers("Loading layer")
    chunks = source.save(image)
    try:
        for msg in s.engine(node).load(sent.count(chunks)):
            layers.feed(msg)
            loaded.update(layers.done, layers.total)
    except HostError as exc:
        _failed(s, node, loaded if loaded.done else sent, exc)
        raise
    finally:
        chunks.close()  # an abandoned save releases its connection to the source
    return _check(s, node, want, f"sent {mib(sent.done)} MiB in {sent.elapsed:.1f}s ({sent.rate()}), loaded")


def _check(s: Session, node: NodePlan, want: str, done: str) -> str:
    got = s.engine(node).image_id(s.plan.image)
    if got != want:
        raise HostError(node.host, f"image {s.plan.image} arrived as {got}, expected {want}")
    s.events("image", node.host, f"{done}, image {want[7:19]}")
    return want


def _source_id(s: Session, source: Engine, ids: dict[str, str | None]) -> str:
    image, plan = s.plan.image, s.plan
    want_id = source.image_id(image)
    agreed = {ids[n.host] for n in plan.nodes}
    if want_id is None and len(agreed) == 1 and None not in agreed:
        want_id = str(agreed.pop())
        s.events(
            "image",
            None,
            f"{image} is not on the image source, but every host has the same {want_id[7:19]}: using it",
        )
    if want_id is None:
        where = "this machine" if plan.image_source == "local" else plan.head.host
        raise UsageError(
            f"image {image} is not on {where}, the image source", hint=f"build or pull {image} there first"
        )
    return want_id


def ensure(s: Session) -> dict[str, str]:
    plan, image = s.plan, s.plan.image
    ids: dict[str, str | None] = dict(
        zip(
            (n.host for n in plan.nodes),
            fan_out("image", plan.nodes, lambda n: s.engine(n).image_id(image), s.events),
            strict=True,
        )
    )
    if plan.image_source == "registry":
        missing = [n for n in plan.nodes if ids[n.host] is None]
        for n, got in zip(missing, fan_out("image", missing, _pull(s), s.events), strict=True):
            ids[n.host] = got
        want = ids[plan.head.host] or ""
    else:
        source = _local_engine() if plan.image_source == "local" else s.engine(plan.head)
        try:
            want = _source_id(s, source, ids)
            stale = [n for n in plan.nodes if ids[n.host] != want]
            if plan.image_source == "head-registry":
                _through_registry(s, want, stale)
            else:
                size = source.image_size(image)
                fan_out("image", stale, lambda n: _copy(s, source, n, want, size), s.events)
        finally:
            if source.name == "local":
                source.client.api.close()
        ids |= {n.host: want for n in stale}
    differ = [f"{h} has {i}" for h, i in ids.items() if i != want]
    if differ:
        raise UsageError(
            f"image {image} differs between hosts (head has {want}): " + "; ".join(differ),
            hint="pin the image by digest, or use images.source: head",
        )
    s.events("image", None, f"{image} is {want[7:19]} on every host")
    if plan.backend == "ray":
        _require_ray(s)
    return {h: str(i) for h, i in ids.items()}


def _pull(s: Session) -> Callable[[NodePlan], str]:
    def one(node: NodePlan) -> str:
        s.events("image", node.host, f"pulling {s.plan.image}")
        meter = Meter(s.events, node.host, "pulled")
        try:
            _pull_with_progress(s.engine(node), s.plan.image, meter)
            got = s.engine(node).image_id(s.plan.image)
        except HostError as exc:
            _failed(s, node, meter, exc)
            raise HostError(
                node.host,
                exc.message.removeprefix(f"{node.host}: "),
                hint="use images.source: local, head or head-registry for hosts without registry access",
            ) from None
        if got is None:
            raise HostError(node.host, f"pull of {s.plan.image} finished but the image is missing")
        s.events("image", node.host, f"pulled in {meter.elapsed:.1f}s")
        return got

    return one


def _pull_with_progress(engine: Engine, ref: str, meter: Meter) -> None:
    layers = Layers("Downloading")
    for msg in engine.pull_progress(ref):
        layers.feed(msg)
        meter.update(layers.done, layers.total)


# ---------------------------------------------------------------- images.source: head-registry
def _through_registry(s: Session, want: str, stale: list[NodePlan]) -> None:
    plan, head = s.plan, s.plan.head
    reg = plan.image_registry or RegistryPlan("registry:2", 5000, "auto")
    stale = [n for n in stale if n.host != head.host]
    if not stale:
        return
    direct = _direct(s, reg, stale)
    engine = s.engine(head)
    path, tag = head_registry.repo_path(plan.image)
    pushed = f"127.0.0.1:{reg.port}/{path}:{tag}"
    with head_registry.running(engine, head, plan.name, reg, direct, _dial(s, head, reg.port)):
        engine.tag(plan.image, pushed)
        try:
            _push(s, engine, pushed)
        finally:
            engine.untag(pushed)
        fan_out("image", stale, lambda n: _pull_from_head(s, n, want, direct, path, tag), s.events)


def _dial(s: Session, node: NodePlan, port: int) -> tunnel.Dial:
    runner = s.runner(node)
    if isinstance(runner, SSHRunner):
        transport = runner.client.get_transport()
        assert transport is not None  # connect() succeeded
        return tunnel.ssh_dial(transport, port, node.host)
    return tunnel.local_dial(port)


def _direct(s: Session, reg: RegistryPlan, workers: list[NodePlan]) -> bool:
    """Whether workers pull straight from the head: every worker's engine must trust it."""
    address = f"{s.plan.head.address}:{reg.port}"
    untrusted = [
        n.host
        for n in workers
        if not head_registry.trusts_insecure(s.engine(n).info(), s.plan.head.address, reg.port)
    ]
    local = [n.host for n in workers if not isinstance(s.runner(n), SSHRunner)]
    if reg.pull == "tunnel" and not local:
        return False
    if not untrusted:
        s.events("image", None, f"workers pull straight from the head's registry at {address}")
        return True
    if reg.pull == "direct" or local:
        raise UsageError(
            f"{', '.join(untrusted)}: the Docker Engine does not trust the head's "
            f"registry at {address} (plain HTTP)",
            hint=f"add {head_registry.daemon_json_line(address)}; or use images.head_registry.pull: tunnel",
        )
    s.events(
        "image",
        None,
        f"{', '.join(untrusted)} do not trust {address}: pulling through SSH "
        f"tunnels (for direct pulls add {head_registry.daemon_json_line(address)})",
    )
    return False


def _push(s: Session, engine: Engine, ref: str) -> None:
    head = s.plan.head.host
    s.events("image", head, f"pushing {s.plan.image} to the registry on the head")
    meter = Meter(s.events, head, "pushed", engine.image_size(s.plan.image))
    layers = Layers("Pushing")
    try:
        for msg in engine.push_progress(ref):
            layers.feed(msg)
            meter.update(layers.done)
    except HostError as exc:
        _failed(s, s.plan.head, meter, exc)
        raise
    s.events("image", head, f"pushed in {meter.elapsed:.1f}s")


def _pull_from_head(s: Session, node: NodePlan, want: str, direct: bool, path: str, tag: str) -> str:
    engine, port = s.engine(node), (s.plan.image_registry or RegistryPlan("", 5000, "auto")).port
    with contextlib.ExitStack() as stack:
        if direct:
            ref = f"{s.plan.head.address}:{port}/{path}:{tag}"
        else:
            runner = s.runner(node)
            assert isinstance(runner, SSHRunner)  # _direct refused local workers
            transport = runner.client.get_transport()
            assert transport is not None
            fwd = stack.enter_context(tunnel.Forward(node.host, transport, _dial(s, s.plan.head, port)))
            ref = f"127.0.0.1:{fwd.port}/{path}:{tag}"
        s.events("image", node.host, f"pulling {ref}")
        meter = Meter(s.events, node.host, "pulled")
        try:
            _pull_with_progress(engine, ref, meter)
            engine.tag(ref, s.plan.image)
        except HostError as exc:
            _failed(s, node, meter, exc)
            raise
        finally:
            engine.untag(ref)
    return _check(s, node, want, f"pulled in {meter.elapsed:.1f}s")


def _require_ray(s: Session) -> None:
    """Current vllm/vllm-openai images dropped Ray (vLLM RFC #33445): catch that before starting."""
    head = s.plan.head
    engine = s.engine(head)
    out = engine.run_once(s.plan.image, ["-c", "command -v ray || echo MISSING"], entrypoint="sh")
    if b"MISSING" in out:
        raise HostError(
            head.host,
            f"ray is not installed in {s.plan.image}; current vllm/vllm-openai images no longer ship Ray",
            hint="set backend: mp in the inventory (vLLM's Ray-free multi-node mode), "
            "or use an image that contains ray",
        )
