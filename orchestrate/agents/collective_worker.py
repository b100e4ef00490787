"""All-reduce sanity check across hosts (vLLM's troubleshooting test, plus a bandwidth figure).

Self-contained: orchestrate runs this file's text inside a throwaway container on every host
(`python3 -c`), and it runs as is on a machine without orchestrate (`python3 collective_worker.py`).
Configuration comes from the environment only:

  ORCH_COLL_BACKEND  gloo | nccl          ORCH_COLL_MASTER   address of node rank 0
  ORCH_COLL_PORT     TCP port             ORCH_COLL_NODES    number of nodes
  ORCH_COLL_NODE     this node's rank     ORCH_COLL_LOCAL    processes on this node (GPUs)
  ORCH_COLL_MIB      bandwidth payload in MiB (default 64)
  ORCH_COLL_TIMEOUT  seconds for init and each collective (default 60)

Prints one JSON line per local process: {"rank", "ok", "value", "busbw_gbps", "error"}.
Exit status 0 when every local process succeeded.
"""

import datetime
import json
import os
import sys
import time


def _env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"collective_worker: {name} is not set")
    return value


def run_rank(local_rank, out):
    import torch
    import torch.distributed as dist

    backend = _env("ORCH_COLL_BACKEND", "gloo")
    nodes, node = int(_env("ORCH_COLL_NODES")), int(_env("ORCH_COLL_NODE"))
    local = int(_env("ORCH_COLL_LOCAL", "1"))
    world, rank = nodes * local, node * local + local_rank
    timeout = float(_env("ORCH_COLL_TIMEOUT", "60"))
    result = {"rank": rank, "node": node, "ok": False, "value": None, "busbw_gbps": None}
    try:
        device = torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        dist.init_process_group(
            backend,
            init_method=f"tcp://{_env('ORCH_COLL_MASTER')}:{_env('ORCH_COLL_PORT')}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout),
        )
        ones = torch.ones(1, device=device)
        dist.all_reduce(ones)
        result["value"] = float(ones.item())
        result["ok"] = result["value"] == world
        payload = torch.ones(int(_env("ORCH_COLL_MIB", "64")) * 2**18, device=device)  # fp32
        dist.all_reduce(payload)  # warm-up
        _sync(torch, backend)
        iters, t0 = 5, time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(payload)
        _sync(torch, backend)
        seconds = (time.perf_counter() - t0) / iters
        nbytes = payload.numel() * 4
        # nccl-tests' bus bandwidth: algbw * 2(n-1)/n
        result["busbw_gbps"] = round(nbytes / seconds * 2 * (world - 1) / max(world, 1) / 1e9, 3)
        dist.destroy_process_group()
    except Exception as exc:  # report every failure as data; the orchestrator names the host
        result["error"] = f"{type(exc).__name__}: {exc}"[:500]
    out.put(result) if out is not None else print(json.dumps(result), flush=True)
    return result


def _sync(torch, backend):
    if backend == "nccl":
        torch.cuda.synchronize()


def main():
    local = int(_env("ORCH_COLL_LOCAL", "1"))
    if local == 1:
        return 0 if run_rank(0, None)["ok"] else 1
    import torch.multiprocessing as mp

    ctx = mp.get_context("fork")  # also works under `python3 -c`; the parent never touches CUDA
    queue = ctx.Queue()
    procs = [ctx.Process(target=run_rank, args=(i, queue)) for i in range(local)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=float(_env("ORCH_COLL_TIMEOUT", "60")) * 3) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    for r in sorted(results, key=lambda r: r["rank"]):
        print(json.dumps(r), flush=True)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
