"""P6: how long each command takes to start, against today's code and a bare import.

Four interpreters of the same Python (this one), alternating within every repetition so that
machine load hits all three alike:

  bare       python3 -c 'import click, yaml, pydantic'   (what any such CLI pays at least)
  floor      the same imports plus one pydantic model built and used (what pydantic costs)
  base       python3 -m orchestrate ARGS   from `git archive BASE` (default: main)
  candidate  python3 -m orchestrate ARGS   from this checkout

Each number is the median of --reps runs, as wall time and as CPU time (user + system of the
child, from wait4: steadier than wall time on a shared machine). Target: --help, validate and
render within 2x bare; no command slower than base.

    python bench/p6_startup.py                # 15 repetitions, ~1 minute
    python bench/p6_startup.py --reps 31 --base main --json p6.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INV = "inventory/l20.yaml"
BARE = ["-c", "import click, yaml, pydantic"]
# what any pydantic-validated CLI pays: the same imports plus one model built and used
FLOOR = ["-c", "import click, yaml, pydantic\nclass M(pydantic.BaseModel):\n    a: int = 1\nM(a=2)"]
COMMANDS: dict[str, list[str]] = {
    "--help": ["--help"],
    "validate": ["validate", INV],
    "schema": ["schema"],
    "render (k8s)": ["--target", "k8s", "render", INV],
    "plan": ["plan", INV],
    "up --dry-run": ["up", "--dry-run", INV],
    "bench --help": ["bench", "--help"],
}
GOAL_2X = ("--help", "validate", "render (k8s)")


def export(ref: str, dest: Path) -> None:
    """The package and inventories at `ref`, without touching the repository's worktrees."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "orchestrate", "inventory"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")


def once(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of one run; fails loudly when the command fails."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    env.pop("ORCHESTRATE_INVENTORY", None)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        err = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True).stderr
        raise SystemExit(f"p6: {' '.join(argv)} in {cwd} exited {proc.returncode}: {err[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def measure(reps: int, base_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    runs: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for name, args in COMMANDS.items():
        variants = {
            "bare": (BARE, ROOT),
            "floor": (FLOOR, ROOT),
            "base": (["-m", "orchestrate", *args], base_dir),
            "candidate": (["-m", "orchestrate", *args], ROOT),
        }
        for argv, cwd in variants.values():
            once(argv, cwd)  # warm: .pyc files and the page cache
        runs[name] = {k: [] for k in variants}
        for rep in range(reps):
            order = list(variants)
            order = order[rep % len(order) :] + order[: rep % len(order)]  # rotate who goes first
            for side in order:
                runs[name][side].append(once(*variants[side]))
    return {
        name: {
            side: {"wall": statistics.median(w for w, _ in xs), "cpu": statistics.median(c for _, c in xs)}
            for side, xs in by_side.items()
        }
        for name, by_side in runs.items()
    }


def table(result: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    lines = [
        "| command | bare wall / cpu | one pydantic model (floor) | base wall / cpu "
        "| candidate wall / cpu | candidate / bare (wall, cpu) | candidate / base (wall, cpu) "
        "| floor / bare |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result.items():
        b, f, o, c = r["bare"], r["floor"], r["base"], r["candidate"]
        lines.append(
            f"| `{name}` | {b['wall'] * 1000:.0f} / {b['cpu'] * 1000:.0f} ms "
            f"| {f['wall'] * 1000:.0f} ms "
            f"| {o['wall'] * 1000:.0f} / {o['cpu'] * 1000:.0f} ms "
            f"| {c['wall'] * 1000:.0f} / {c['cpu'] * 1000:.0f} ms "
            f"| **{c['wall'] / b['wall']:.2f}**, {c['cpu'] / b['cpu']:.2f} "
            f"| **{c['wall'] / o['wall']:.2f}**, {c['cpu'] / o['cpu']:.2f} "
            f"| {f['wall'] / b['wall']:.2f} |"
        )
    return lines


def verdict(result: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    out = []
    for name in GOAL_2X:
        r = result[name]
        ratio = r["candidate"]["wall"] / r["bare"]["wall"]
        out.append(f"{name}: {ratio:.2f}x bare ({'PASS' if ratio <= 2.0 else 'FAIL'}, target <= 2)")
    slower = [n for n, r in result.items() if r["candidate"]["wall"] > r["base"]["wall"]]
    out.append("no command slower than base: " + ("PASS" if not slower else f"FAIL ({', '.join(slower)})"))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--base", default="main", help="git ref of today's code (default: main)")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args()
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="orchestrate-p6-") as tmp:
        export(a.base, Path(tmp))
        result = measure(a.reps, Path(tmp))
    load1 = os.getloadavg()[0]
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", a.base], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"P6 start-up, {a.reps} alternating repetitions, medians; base {a.base} ({rev}); "
        f"{time.strftime('%H:%M', time.gmtime())} UTC, load {load0:.1f}-{load1:.1f}, "
        f"Python {sys.version.split()[0]}"
    )
    print("\n".join(table(result)))
    print("\n".join(verdict(result)))
    if a.json:
        Path(a.json).write_text(
            json.dumps(
                {"reps": a.reps, "base": a.base, "base_rev": rev, "load": [load0, load1], "result": result},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
