"""Make sure every host has the plan's image, with the same image ID everywhere.

Sources (inventory `images.source`): `registry` (each host pulls), `local` (stream `docker save`
from this machine's engine into each host's `docker load`, for hosts without registry access) or
`head` (the same, from the head host's engine).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import docker
from docker.errors import DockerException, ImageNotFound

from orchestrate.engine import Engine
from orchestrate.errors import HostError, UsageError
from orchestrate.plan import NodePlan
from orchestrate.session import Session, fan_out


def _local_engine() -> Engine:
    try:
        return Engine("local", docker.from_env(timeout=600))
    except DockerException as exc:
        raise UsageError(
            f"images.source is local, but this machine's Docker Engine is unreachable: {exc}",
            hint="start Docker here, or use images.source: registry or head",
        ) from None


def _counting(chunks: Iterator[bytes], counter: list[int], report: Callable[[int], None]
              ) -> Iterator[bytes]:  # fmt: skip
    next_report = 512 << 20
    for chunk in chunks:
        counter[0] += len(chunk)
        if counter[0] >= next_report:
            report(counter[0])
            next_report += 512 << 20
        yield chunk


def _copy(s: Session, source: Engine, node: NodePlan, want: str) -> str:
    image = s.plan.image
    t0 = time.monotonic()
    sent = [0]
    s.events("image", node.host, f"sending {image} from {source.name}")

    def progress(sent_bytes: int) -> None:
        s.events("image", node.host, f"{sent_bytes >> 20} MiB sent")

    s.engine(node).load(_counting(source.save(image), sent, progress))
    got = s.engine(node).image_id(image)
    if got != want:
        raise HostError(node.host, f"image {image} loaded as {got}, expected {want}")
    mib = sent[0] / 2**20
    s.events("image", node.host, f"loaded {mib:.0f} MiB in {time.monotonic() - t0:.1f}s")
    return want


def ensure(s: Session) -> dict[str, str]:
    plan, image = s.plan, s.plan.image
    ids = dict(zip((n.host for n in plan.nodes),
                   fan_out("image", plan.nodes, lambda n: s.engine(n).image_id(image), s.events),
                   strict=True))  # fmt: skip
    if plan.image_source == "registry":
        missing = [n for n in plan.nodes if ids[n.host] is None]
        for n, got in zip(missing, fan_out("image", missing, _pull(s), s.events), strict=True):
            ids[n.host] = got
        want = ids[plan.head.host] or ""
    else:
        source = _local_engine() if plan.image_source == "local" else s.engine(plan.head)
        want_id = source.image_id(image)
        agreed = {ids[n.host] for n in plan.nodes}
        if want_id is None and len(agreed) == 1 and None not in agreed:
            want_id = str(agreed.pop())
            s.events("image", None, f"{image} is not on the image source, but every host has "
                     f"the same {want_id[7:19]}: using it")  # fmt: skip
        if want_id is None:
            where = "this machine" if plan.image_source == "local" else plan.head.host
            raise UsageError(f"image {image} is not on {where}, the image source",
                             hint=f"build or pull {image} there first")  # fmt: skip
        want = want_id
        stale = [n for n in plan.nodes if ids[n.host] != want]
        for n in stale:
            ids[n.host] = None
        fan_out("image", stale, lambda n: _copy(s, source, n, want), s.events)
        ids |= {n.host: want for n in stale}
    differ = [f"{h} has {i}" for h, i in ids.items() if i != want]
    if differ:
        raise UsageError(f"image {image} differs between hosts (head has {want}): "
                         + "; ".join(differ),
                         hint="pin the image by digest, or use images.source: head")  # fmt: skip
    s.events("image", None, f"{image} is {want[7:19]} on every host")
    if plan.backend == "ray":
        _require_ray(s)
    return {h: str(i) for h, i in ids.items()}


def _pull(s: Session):  # type: ignore[no-untyped-def]
    def one(node: NodePlan) -> str:
        s.events("image", node.host, f"pulling {s.plan.image}")
        try:
            return s.engine(node).pull(s.plan.image)
        except HostError as exc:
            raise HostError(node.host, exc.message.split(": ", 1)[-1],
                            hint="use images.source: local or head for hosts without "
                                 "registry access") from None  # fmt: skip

    return one


def _require_ray(s: Session) -> None:
    """Current vllm/vllm-openai images dropped Ray (vLLM RFC #33445): catch that before starting."""
    head = s.plan.head
    engine = s.engine(head)
    try:
        out = engine.call("run", engine.client.containers.run, s.plan.image,
                          ["-c", "command -v ray || echo MISSING"], entrypoint="sh",
                          remove=True, network_mode="none")  # fmt: skip
    except ImageNotFound:
        raise HostError(head.host, f"image {s.plan.image} vanished") from None
    if b"MISSING" in out:
        raise HostError(
            head.host,
            f"ray is not installed in {s.plan.image}; current vllm/vllm-openai images no longer "
            "ship Ray",
            hint="set backend: mp in the inventory (vLLM's Ray-free multi-node mode), "
            "or use an image that contains ray",
        )
