"""What a starting vLLM rank is doing, read from its own log: the latest meaningful line.

A 32B model takes minutes to load on GPUs; `up` shows, per rank, where vLLM is (shards k/n,
weights loaded, torch.compile, KV cache size, CUDA graph capture, API server) instead of a
silent screen. Pure: text in, one short phrase out. The patterns follow vLLM's own log lines
from 0.6 to today's (tests/fixtures/logs holds recorded real ones).
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["latest", "phrase"]

# "(Worker_TP0 pid=34322) ", "(EngineCore_DP0 pid=559) (Worker_TP0 pid=566) ", docker timestamps
_PREFIX = re.compile(r"^(?:\S+Z\s+)?(?:\([A-Za-z0-9_]+ pid=\d+\)\s*)*")


def _num(text: str) -> str:
    return text.replace(",", "")


def _shards(m: re.Match[str]) -> str:
    return f"loading weights: shard {m[1]}/{m[2]}"


def _graphs(m: re.Match[str]) -> str:
    return f"capturing CUDA graphs {m[1]}/{m[2]}"


# (pattern, phrase maker); the first that matches a line wins
_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (re.compile(r"Loading (?:safetensors|pt) checkpoint shards:.*?(\d+)/(\d+)"), _shards),
    (re.compile(r"\bversion (\d+\.\d+\S*)\s*$"), lambda m: f"vLLM {m[1]} starting"),
    (re.compile(r"Resolved architecture: (\S+)"), lambda m: f"model architecture {m[1]}"),
    (
        re.compile(r"Initializing an? (?:V1 )?LLM engine \((v?[\w.+]+)\)"),
        lambda m: f"initializing the engine ({m[1]})",
    ),
    (re.compile(r"world_size=(\d+) rank=(\d+)"), lambda m: f"joined the group as rank {m[2]} of {m[1]}"),
    (re.compile(r"Starting to load model (\S+)"), lambda m: f"loading model {m[1]}"),
    (re.compile(r"Model loading took ([\d.]+) (GiB|GB)"), lambda m: f"model loaded ({m[1]} {m[2]})"),
    (
        re.compile(r"Loading (?:model )?weights took ([\d.]+) (GiB|GB)"),
        lambda m: f"weights loaded ({m[1]} {m[2]})",
    ),
    (re.compile(r"Loading weights took ([\d.]+) seconds"), lambda m: f"weights loaded in {m[1]} s"),
    (re.compile(r"Dynamo bytecode transform time"), lambda m: "compiling the model (torch.compile)"),
    (re.compile(r"torch\.compile takes? ([\d.]+) s in total"), lambda m: f"torch.compile done in {m[1]} s"),
    (re.compile(r"Available KV cache memory: ([\d.]+) GiB"), lambda m: f"KV cache memory {m[1]} GiB"),
    (re.compile(r"(GPU|CPU) KV cache size: ([\d,]+) tokens"), lambda m: f"KV cache: {_num(m[2])} tokens"),
    (re.compile(r"# (GPU|CPU) blocks: ([\d,]+)"), lambda m: f"KV cache: {_num(m[2])} {m[1]} blocks"),
    (
        re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x"),
        lambda m: f"KV cache fits {m[2]}x requests of {_num(m[1])} tokens",
    ),
    (re.compile(r"Capturing (?:CUDA )?graphs?.*?(\d+)/(\d+)"), _graphs),
    (re.compile(r"Capturing cudagraphs? for decoding"), lambda m: "capturing CUDA graphs"),
    (re.compile(r"Graph capturing finished in (\d+) secs?"), lambda m: f"CUDA graphs captured in {m[1]} s"),
    (
        re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) seconds"),
        lambda m: f"engine ready in {float(m[1]):.0f} s",
    ),
    (re.compile(r"Starting vLLM API server"), lambda m: "starting the API server"),
    (re.compile(r"Uvicorn running on"), lambda m: "API server up"),
    (re.compile(r"Application startup complete"), lambda m: "API server up"),
)


def phrase(line: str) -> str | None:
    """The progress one log line shows, or None when it shows none."""
    text = _PREFIX.sub("", line.strip())
    for pattern, make in _RULES:
        m = pattern.search(text)
        if m:
            return make(m)
    return None


def latest(log: str) -> str | None:
    """The latest progress in a log (tqdm bars end their updates with \\r, lines with \\n)."""
    for line in reversed(re.split(r"[\r\n]+", log)):
        found = phrase(line)
        if found is not None:
            return found
    return None
