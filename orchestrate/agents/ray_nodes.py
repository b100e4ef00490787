"""Runs inside the head container (`python3 -c <this file>`, from `up` and `status`): Ray's node
table as one JSON line. With arguments (nodes, GPUs, comma-separated IPs, seconds) it first polls,
cheaply and in-process, until Ray has them or the seconds pass: `up` notices readiness within
~0.2 s instead of paying a `ray.init` per poll."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import ray


def table() -> list[dict[str, Any]]:
    return [
        {
            "ip": n["NodeManagerAddress"],
            "alive": bool(n.get("Alive")),
            "gpus": n.get("Resources", {}).get("GPU", 0),
            "host": n.get("NodeManagerHostname"),
        }
        for n in ray.nodes()
    ]


def main() -> None:
    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    if len(sys.argv) == 5:
        nodes, gpus = int(sys.argv[1]), float(sys.argv[2])
        ips, deadline = set(sys.argv[3].split(",")), time.monotonic() + float(sys.argv[4])
        while time.monotonic() < deadline:
            alive = [n for n in table() if n["alive"]]
            if (
                len(alive) >= nodes
                and sum(n["gpus"] for n in alive) >= gpus
                and ips <= {n["ip"] for n in alive}
            ):
                break
            time.sleep(0.2)
    print(json.dumps(table()))


if __name__ == "__main__":  # python3 -c runs it as __main__
    main()
