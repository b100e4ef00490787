"""Runs in the Ray head container (scripts.RAY_HEAD, as a heredoc): holds `vllm serve` until Ray
has every expected node and GPU (vLLM #13909, production-stack wait_for_ray.py). Values come from
the environment: ORCH_EXPECTED_NODES, ORCH_EXPECTED_GPUS, ORCH_EXPECTED_IPS, ORCH_JOIN_TIMEOUT.
Exit 3 when the deadline passes, naming the node IPs that never came."""

import os
import sys
import time

import ray


def main() -> None:
    want_nodes = int(os.environ["ORCH_EXPECTED_NODES"])
    want_gpus = float(os.environ["ORCH_EXPECTED_GPUS"])
    want_ips = set(os.environ.get("ORCH_EXPECTED_IPS", "").split(",")) - {""}
    deadline = time.monotonic() + float(os.environ.get("ORCH_JOIN_TIMEOUT", "300"))
    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    while True:
        # one per IP: a worker that healed itself rejoins before Ray's death timeout ends its old raylet
        alive = list({n["NodeManagerAddress"]: n for n in ray.nodes() if n.get("Alive")}.values())
        ips = {n["NodeManagerAddress"] for n in alive}
        gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in alive)
        if len(alive) >= want_nodes and gpus >= want_gpus and want_ips <= ips:
            print(f"orchestrate: ray ready: {len(alive)} nodes, {gpus:g} GPUs", file=sys.stderr, flush=True)
            break
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(want_ips - ips)) or "none"
            print(
                f"orchestrate: ray gate timed out: {len(alive)}/{want_nodes} nodes, "
                f"{gpus:g}/{want_gpus:g} GPUs; missing node IPs: {missing}",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(3)
        time.sleep(1)
    ray.shutdown()


if __name__ == "__main__":  # the heredoc (python3 -) runs it as __main__
    main()
