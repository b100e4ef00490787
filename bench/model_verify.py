"""Benchmark (not a test): `orchestrate.ops.modelcheck.verify` vs the seed's sha256sum, host by host.

On its own 3-host test bed (10.125.0.0/24, bridge orchmc0, /var/tmp/orchestrate-bed-mc: the bed of
tests/bed/test_modelcheck.py, so do not run both at once), each host gets its OWN copy of
FILES x SIZE random "shards" (+ config.json + sum.txt) in its private /srv/bed-private/bench.
Then it times:

  * the seed: `ssh host sha256sum FILES...` for each host in turn (one host, and all three);
  * verify: the hashing program on all hosts at once (fan-out), caches ignored (--rehash);
  * verify again with every host's cache warm, in the open session and with a fresh session
    (SSH connects included).

The bed's hosts share this machine's cores, disk and page cache, so the three parallel hosts
compete for the same CPUs; on real hosts each has its own. Nothing is dropped from the page cache
(it is shared with everything else on the machine): the files were just written, so both methods
read them warm. The big files and the bed are removed at the end (--keep-bed keeps the bed).

    python3 bench/model_verify.py [--files 3] [--size-mib 1024] [--repeat 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrate.core.inventory import parse  # noqa: E402
from orchestrate.core.plan import Plan, build_plan  # noqa: E402
from orchestrate.host.session import Session  # noqa: E402
from orchestrate.ops import modelcheck  # noqa: E402
from tests.testbed import TestBed, bed_unavailable_reason  # noqa: E402

MODEL = "bench"
GiB = float(1 << 30)


def make_files(bed: TestBed, n_files: int, size: int) -> list[str]:
    """Random shards written once on hb1 (hashed while written), copied to hb2 and hb3."""
    first = bed.private_dir(1) / MODEL
    shutil.rmtree(first, ignore_errors=True)
    first.mkdir(parents=True)
    names = [f"model-{i:05d}-of-{n_files:05d}.safetensors" for i in range(1, n_files + 1)]
    sums = []
    for name in names:
        h = hashlib.sha256()
        with open(first / name, "wb") as f:
            left = size
            while left:
                block = os.urandom(min(64 << 20, left))
                h.update(block)
                f.write(block)
                left -= len(block)
        sums.append(f"{h.hexdigest()}  {name}\n")
    (first / "sum.txt").write_text("".join(sums), encoding="utf-8")
    (first / "config.json").write_text('{"architectures": ["BenchForCausalLM"]}\n', encoding="utf-8")
    for i in (2, 3):
        dst = bed.private_dir(i) / MODEL
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(first, dst)  # a separate copy per host, as on real machines
    old = time.time() - 3600  # a fresh mtime is never cached (racy); real models are older
    for i in (1, 2, 3):
        for path in (bed.private_dir(i) / MODEL).iterdir():
            os.utime(path, (old, old))
    return names


def build(bed: TestBed) -> Plan:
    hosts = [
        {
            "name": h.name,
            "address": h.address,
            "role": "head" if h.index == 1 else "worker",
            "gpus": 1,
            "nic": h.nic,
        }
        for h in bed.hosts
    ]
    return build_plan(
        parse(
            {
                "name": "mcbench",
                "image": "orchestrate/ray:2.60.0",
                "images": {"source": "local"},
                "backend": "mp",
                "accelerator": "cpu",
                "ssh": {
                    "key": str(bed.key_path),
                    "known_hosts": str(bed.known_hosts_path),
                    "connect_timeout": 5,
                    "command_timeout": 600,
                },
                "model": {"host_dir": "/srv/bed-private", "name": MODEL, "manifest": "sum.txt"},
                "serve": {"tensor_parallel_size": 1, "pipeline_parallel_size": 3},
                "hosts": hosts,
            }
        )
    )


def seed_sha256sum(bed: TestBed, i: int, names: list[str]) -> float:
    """What the seed did: ssh to the host and run sha256sum over the files."""
    paths = [f"/srv/bed-private/{MODEL}/{n}" for n in names]
    t0 = time.monotonic()
    res = subprocess.run(
        bed.ssh_argv(i, shlex.join(["sha256sum", "--", *paths])),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    elapsed = time.monotonic() - t0
    if res.returncode != 0 or len(res.stdout.splitlines()) != len(names):
        raise SystemExit(f"sha256sum on hb{i} failed: {res.stderr[-500:]}")
    return elapsed


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.monotonic()
    out = fn()
    return time.monotonic() - t0, out


def timed_verify(s: Session, **opts: Any) -> tuple[float, modelcheck.VerifyReport]:
    t0 = time.monotonic()
    report = modelcheck.verify(s, **opts)
    if not report.ok:
        raise SystemExit("\n".join(report.lines()))
    return time.monotonic() - t0, report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=3, help="shards per host (default 3)")
    ap.add_argument("--size-mib", type=int, default=1024, help="MiB per shard (default 1024)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per measurement; the best is kept")
    ap.add_argument("--keep-bed", action="store_true", help="leave the bed up afterwards")
    ap.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = ap.parse_args()
    reason = bed_unavailable_reason()
    if reason:
        raise SystemExit(f"the test bed cannot run here: {reason}")
    cmd = shlex.join(["python3", "bench/model_verify.py", *sys.argv[1:]])
    bed = TestBed(base=Path("/var/tmp/orchestrate-bed-mc"), net="10.125.0", bridge="orchmc0")
    bed.down()
    bed.up(3)
    size = args.size_mib << 20
    try:
        t_make, names = timed(lambda: make_files(bed, args.files, size))
        per_host = args.files * size
        print(
            f"bed up; wrote {args.files} x {args.size_mib} MiB per host (3 copies, "
            f"{3 * per_host / GiB:.1f} GiB) in {t_make:.1f}s",
            flush=True,
        )
        plan = build(bed)
        seed_one: list[float] = []
        seed_all: list[float] = []
        cold: list[float] = []
        warm: list[float] = []
        fresh: list[float] = []
        reads: list[int] = []
        for _ in range(args.repeat):
            times = [seed_sha256sum(bed, i, names) for i in (1, 2, 3)]
            seed_one.append(times[0])
            seed_all.append(sum(times))
            with Session(plan) as s:  # SSH connects happen inside this first verify
                t, _ = timed_verify(s, rehash=True)  # the caches are ignored (and refilled)
                cold.append(t)
                t, report = timed_verify(s)
                warm.append(t)
                reads.append(sum(h.listing.bytes_read for h in report.hosts))
            with Session(plan) as s:  # as a new `orchestrate model verify` would: SSH connects too
                t, report = timed_verify(s)
                fresh.append(t)
                reads.append(sum(h.listing.bytes_read for h in report.hosts))
        one, seq, par = min(seed_one), min(seed_all), min(cold)
        rows = [
            ("sha256sum over ssh, one host (hb1)", per_host, one),
            ("sha256sum over ssh, host by host (the seed)", 3 * per_host, seq),
            ("verify, 3 hosts in parallel, no cache", 3 * per_host, par),
            ("verify, cached (session open)", 3 * per_host, min(warm)),
            ("verify, cached (new session, SSH connect incl.)", 3 * per_host, min(fresh)),
        ]
        print(f"\n$ {cmd}\n")
        print(f"{'what':<50} {'data':>9} {'seconds':>8} {'GiB/s':>7}")
        for what, nbytes, sec in rows:
            print(f"{what:<50} {nbytes / GiB:>7.1f}Gi {sec:>8.3f} {nbytes / GiB / sec:>7.2f}")
        print(f"\nverify (3 hosts) / sha256sum (one host): {par / one:.2f}  (target <= 1.00)")
        print(f"verify (3 hosts) / the seed (3 hosts in turn): {par / seq:.2f}")
        print(
            f"cached re-verify: {min(warm):.3f}s in an open session, {min(fresh):.3f}s with SSH "
            f"connects (target < 0.2 s); bytes read by the cached runs: {max(reads)}"
        )
        print(f"best of {args.repeat}; cpus on this machine: {os.cpu_count()} (shared by the 3 hosts)")
        if args.json:
            print(
                json.dumps(
                    {
                        "cmd": cmd,
                        "rows": [{"what": w, "bytes": b, "seconds": round(t, 4)} for w, b, t in rows],
                    }
                )
            )
        return 0
    finally:
        for i in (1, 2, 3):
            shutil.rmtree(bed.private_dir(i) / MODEL, ignore_errors=True)
        if not args.keep_bed:
            bed.down()


if __name__ == "__main__":
    sys.exit(main())
