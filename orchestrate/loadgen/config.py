"""What a benchmark run is: load levels, prompts, the request body, and the parsers for the options."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orchestrate.errors import UsageError

Endpoint = Literal["chat", "completions"]
PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
SLO_KEYS = ("ttft", "tpot", "e2el")
DEFAULT_SWEEP = (1, 4, 16)
# A fixed, seeded vocabulary: one common English word is about one token for most tokenizers.
_WORD_LIST = """
time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government
number night point home water room mother area money story fact month lot right study book
eye job word business issue side kind head house service friend father power hour game line
end member law car city community name president team minute idea kid body information back
parent face others level office door health person art war history party result change
morning reason research girl guy moment air teacher force education
"""
WORDS = tuple(_WORD_LIST.split())


@dataclass(frozen=True)
class Level:
    concurrency: int | None  # closed loop: in flight; open loop: the cap (None = no cap)
    request_rate: float | None = None  # None: closed loop; math.inf: all at once

    @property
    def label(self) -> str:
        if self.request_rate is None:
            return f"c={self.concurrency}"
        rate = "inf" if math.isinf(self.request_rate) else f"{self.request_rate:g}/s"
        return f"rate={rate}" + (f" c<={self.concurrency}" if self.concurrency else "")


@dataclass(frozen=True)
class Prompt:
    prompt: str | None = None  # /v1/completions, or one user message for chat
    messages: tuple[dict[str, Any], ...] | None = None
    approx_tokens: int = 0


@dataclass(frozen=True)
class BenchConfig:
    base_url: str
    model: str
    levels: tuple[Level, ...]
    prompts: tuple[Prompt, ...]  # cycled through, request i sends prompts[i % len]
    endpoint: Endpoint = "chat"
    output_len: int = 128
    num_prompts: int = 100
    api_key: str | None = None
    goodput: dict[str, float] = field(default_factory=dict)  # SLO name -> milliseconds
    seed: int = 0
    timeout: float = 300.0  # seconds, per request


def parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--concurrency {text!r}: expected positive integers, e.g. 1,4,16")
    return values


def parse_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not rate > 0:
        raise UsageError(f"--request-rate {text!r}: expected requests per second > 0, or inf")
    return rate


def parse_goodput(specs: Sequence[str]) -> dict[str, float]:
    """`ttft:500 tpot:50`, `ttft:500,tpot:50` or repeated options -> {name: ms}."""
    out: dict[str, float] = {}
    for item in " ".join(specs).replace(",", " ").split():
        key, _, value = item.partition(":")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if key not in SLO_KEYS or not ms > 0:
            raise UsageError(
                f"--goodput {item!r}: expected KEY:MS with KEY one of "
                f"{', '.join(SLO_KEYS)} and MS > 0, e.g. ttft:500 tpot:50"
            )
        out[key] = ms
    return out


def make_levels(concurrency: Sequence[int] | None, request_rate: float | None) -> tuple[Level, ...]:
    if request_rate is None:
        return tuple(Level(c) for c in (concurrency or DEFAULT_SWEEP))
    return tuple(Level(c, request_rate) for c in concurrency) if concurrency else (Level(None, request_rate),)


def random_prompts(count: int, input_len: int, seed: int) -> tuple[Prompt, ...]:
    """`count` distinct prompts of `input_len` words drawn from a fixed list (seeded)."""
    rng = random.Random(seed)
    return tuple(
        Prompt(prompt=" ".join(rng.choices(WORDS, k=input_len)), approx_tokens=input_len)
        for _ in range(count)
    )


def load_prompts(path: str | Path) -> tuple[Prompt, ...]:
    """One JSON object per line: {"prompt": "..."} or {"messages": [...]}; blank lines skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--prompts {path}: cannot read: {exc}") from None
    out: list[Prompt] = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            out.append(_prompt_line(f"{path}:{number}", line))
    if not out:
        raise UsageError(f"--prompts {path}: no prompts in the file")
    return tuple(out)


def _prompt_line(where: str, line: str) -> Prompt:
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise UsageError(f"{where}: not JSON: {exc}") from None
    if isinstance(item, dict) and isinstance(item.get("prompt"), str):
        return Prompt(prompt=item["prompt"], approx_tokens=len(item["prompt"].split()))
    messages = item.get("messages") if isinstance(item, dict) else None
    if isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages):
        words = sum(len(str(m.get("content", "")).split()) for m in messages)
        return Prompt(messages=tuple(messages), approx_tokens=words)
    raise UsageError(
        f'{where}: expected {{"prompt": "..."}} or {{"messages": [{{"role": ..., "content": ...}}]}}'
    )


def request_body(cfg: BenchConfig, prompt: Prompt) -> bytes:
    body: dict[str, Any] = {"model": cfg.model}
    if cfg.endpoint == "chat":
        body["messages"] = (
            list(prompt.messages)
            if prompt.messages is not None
            else [{"role": "user", "content": prompt.prompt}]
        )
    elif prompt.messages is not None:
        raise UsageError(
            '--endpoint completions takes {"prompt": ...} lines, not messages', hint="--endpoint chat"
        )
    else:
        body["prompt"] = prompt.prompt
    body.update(
        {
            "max_tokens": cfg.output_len,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    return json.dumps(body, separators=(",", ":")).encode()
