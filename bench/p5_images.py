"""P5: a large image (>= 4 GiB) from this machine to 3 test-bed hosts, three ways, side by side.

  hand      what the blog post's readers do: `docker save IMAGE | ssh root@HOST docker load`, one
            host after the other (the baseline)
  stream    orchestrate's images.source: local: one `docker save` stream per host, all hosts at
            once, progress (MiB, MiB/s) read as it runs
  registry  orchestrate's images.source: head-registry: the image streamed to the head (as
            `stream` does, one host), then pushed to a registry container on the head and pulled
            by the workers through SSH tunnels (pull: tunnel), layers in parallel

The image is a base image plus N layers of /dev/urandom (incompressible; tests/support/imagetools.py),
4 GiB by default. It is removed from every host before each run (and the registry's volume
with the registry), so every run moves every byte. Runs alternate by mode (hand, stream,
registry, registry, stream, hand, ...); medians count. Ratio = median(mode) / median(hand):
lower is faster. orchestrate's modes run through its library (images_dist.ensure, the code
of `up`'s image phase) in this process, each with a fresh Session.

    python bench/p5_images.py                          # 4 GiB, 1 repetition each, ~15 min
    python bench/p5_images.py --layers 32 --layer-mib 128 --reps 2 --json p5.json
    python bench/p5_images.py --layers 2 --layer-mib 64   # a quick smoke run

Needs root, the test-bed tools and ~5x the image size on disk (this machine's engine, 3 hosts,
the registry). The bed (its own: /var/tmp/orchestrate-bed-bench-p5, 10.127.0.0/24) is always
torn down.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.p2_overhead import WORK, base_inventory, fmt, log, machine, machine_line, med, table, write_yaml
from tests.support.imagetools import blob_image, registry_image
from tests.testbed import TestBed, bed_unavailable_reason, ensure_root_dockerd

BED = {"base": Path("/var/tmp/orchestrate-bed-bench-p5"), "net": "10.127.0", "bridge": "orchbn5"}
NAME = "benchp5"
HOSTS = 3
MODES = ("hand", "stream", "registry")


def image_bytes(tag: str) -> int:
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", tag],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(out.stdout.strip())


def forget(bed: TestBed, tag: str) -> None:
    """The image gone from every host, so that the next run moves every byte."""
    for i in range(1, HOSTS + 1):
        bed.docker(i, "image", "rm", "-f", tag, timeout=300)
        bed.docker(i, "image", "prune", "-f", timeout=300)
        left = bed.docker(i, "image", "inspect", tag, timeout=60)
        if left.returncode == 0:
            raise SystemExit(f"hb{i}: {tag} is still there after docker image rm")
        bed.docker(i, "volume", "prune", "-f", timeout=300)


def run_hand(bed: TestBed, tag: str) -> dict[str, Any]:
    per_host = {}
    t0 = time.monotonic()
    for i in range(1, HOSTS + 1):
        ssh = " ".join(bed.ssh_argv(i, "docker", "load"))
        res = subprocess.run(
            f"set -o pipefail; docker save {tag} | {ssh}",
            shell=True,
            executable="/bin/bash",
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if res.returncode != 0:
            raise SystemExit(f"hand: hb{i}: docker save | ssh docker load failed: {res.stderr[-500:]}")
        per_host[f"hb{i}"] = time.monotonic() - t0  # when this host has it
    return {"wall": time.monotonic() - t0, "per_host": per_host}


def _plan(bed: TestBed, tag: str, n: int, images: dict[str, Any]) -> Any:
    from orchestrate.core.inventory import load
    from orchestrate.core.plan import build_plan

    model = bed.shared_dir / "models" / "none"
    model.mkdir(parents=True, exist_ok=True)
    data = base_inventory(
        bed,
        n,
        NAME,
        image=tag,
        images=images,
        backend="mp",
        model={"host_dir": str(model.parent), "name": model.name},
        serve={"tensor_parallel_size": 1, "pipeline_parallel_size": n},
    )
    return build_plan(load(write_yaml(data, WORK / "p5" / f"{images['source']}{n}.yaml")))


def _ensure(plan: Any) -> dict[str, float]:
    """images_dist.ensure with a fresh Session; per host, the time of its last image event."""
    from orchestrate.host.session import Session
    from orchestrate.ops import images_dist

    t0 = time.monotonic()
    last: dict[str, float] = {}

    def events(phase: str, host: str | None, message: str) -> None:
        if host:
            last[host] = time.monotonic() - t0

    with Session(plan, events) as s:
        images_dist.ensure(s)
    return last


def run_stream(bed: TestBed, tag: str) -> dict[str, Any]:
    t0 = time.monotonic()
    per_host = _ensure(_plan(bed, tag, HOSTS, {"source": "local"}))
    return {"wall": time.monotonic() - t0, "per_host": per_host}


def run_registry(bed: TestBed, tag: str, registry: str) -> dict[str, Any]:
    bed.seed(registry, hosts=[1])  # the registry image itself, once (it is not what is measured)
    t0 = time.monotonic()
    head = _ensure(_plan(bed, tag, 1, {"source": "local"}))
    to_head = time.monotonic() - t0
    workers = _ensure(
        _plan(
            bed,
            tag,
            HOSTS,
            {"source": "head-registry", "head_registry": {"image": registry, "port": 5000, "pull": "tunnel"}},
        )
    )
    wall = time.monotonic() - t0
    per_host = {"hb1": head.get("hb1", to_head)} | {h: to_head + t for h, t in workers.items() if h != "hb1"}
    return {"wall": wall, "per_host": per_host, "to_head": to_head, "push_pull": wall - to_head}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--layer-mib", type=int, default=128)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    reason = bed_unavailable_reason()
    if reason:
        raise SystemExit(f"the test bed cannot run here: {reason}")
    ensure_root_dockerd()
    t = time.monotonic()
    tag, registry = blob_image(args.layers, args.layer_mib), registry_image()
    size = image_bytes(tag)
    log(f"image {tag}: {size / 2**30:.2f} GiB ({time.monotonic() - t:.0f} s to find or build)")
    m = machine()
    order = [MODES[i % 3] if (i // 3) % 2 == 0 else MODES[2 - i % 3] for i in range(3 * args.reps)]
    runs: list[dict[str, Any]] = []
    bed = TestBed(**BED)  # type: ignore[arg-type]
    bed.down()
    try:
        bed.up(HOSTS)
        for mode in order:
            forget(bed, tag)
            log(f"{mode}: {size >> 20} MiB to {HOSTS} hosts")
            if mode == "hand":
                r = run_hand(bed, tag)
            elif mode == "stream":
                r = run_stream(bed, tag)
            else:
                r = run_registry(bed, tag, registry)
            r |= {"mode": mode, "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg())}
            runs.append(r)
            log(
                f"{mode}: {r['wall']:.1f} s, {HOSTS * size / 2**20 / r['wall']:.0f} MiB/s delivered; "
                f"per host {', '.join(f'{h} {v:.1f} s' for h, v in sorted(r['per_host'].items()))}"
            )
    finally:
        bed.down()
    base = med([r["wall"] for r in runs if r["mode"] == "hand"])
    rows = []
    for mode in MODES:
        walls = [r["wall"] for r in runs if r["mode"] == mode]
        last = [max(r["per_host"].values()) for r in runs if r["mode"] == mode]
        first = [min(r["per_host"].values()) for r in runs if r["mode"] == mode]
        extra = ""
        if mode == "registry":
            extra = (
                f"to head {fmt(med([r['to_head'] for r in runs if r['mode'] == mode]))} s, "
                f"push + pulls {fmt(med([r['push_pull'] for r in runs if r['mode'] == mode]))} s"
            )
        rows.append(
            [
                mode,
                f"{fmt(med(walls))} s",
                f"{med(walls) / base:.2f}",
                f"{HOSTS * size / 2**20 / med(walls):.0f}",
                f"{fmt(med(first))} s",
                f"{fmt(med(last))} s",
                " ".join(f"{w:.1f}" for w in walls),
                extra,
            ]
        )
    print(f"P5: {size / 2**30:.2f} GiB image ({tag}) to {HOSTS} test-bed hosts; {machine_line(m)}")
    print(
        table(
            [
                "mode",
                "wall (median)",
                "x hand",
                "MiB/s delivered",
                "first host has it",
                "last host has it",
                "runs (s)",
                "registry split",
            ],
            rows,
        )
    )
    print("command: python bench/p5_images.py " + " ".join(sys.argv[1:]))
    if args.json:
        args.json.write_text(
            json.dumps({"machine": m, "image": tag, "bytes": size, "runs": runs}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
