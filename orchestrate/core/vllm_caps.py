"""What each vLLM version's `vllm serve` accepts, from the option tables read out of real wheels.

The tables (orchestrate/core/vllm_flags/<version>.json) come from tools/vllm_options.py. Capabilities
are derived from them where the parser shows them (multi-node mp = the wheel has --nnodes); the
few behaviours a parser cannot show are written here with where they come from.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

TABLES = Path(__file__).resolve().parent / "vllm_flags"
# `backend: auto` with no known vLLM version (render for k8s/compose offline): mp, what every
# vLLM since 0.11.1 runs without Ray (stock images have no Ray since ~0.18)
DEFAULT_BACKEND: Literal["mp"] = "mp"


def parse_version(text: str) -> tuple[int, int, int]:
    """'0.6.4.post1' / '0.11.1+cpu' / 'v0.8.5' -> (0, 6, 4); post/dev/local parts are ignored."""
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a vLLM version such as 0.11.1")
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


@dataclass(frozen=True)
class Option:
    flags: tuple[str, ...]
    value: str  # "required", "optional" or "none"
    choices: tuple[str, ...] | None


@dataclass(frozen=True)
class Caps:
    version: str  # the version asked about
    table: str  # the table that answers (the nearest known version at or below it)
    options: dict[str, Option]

    @property
    def exact(self) -> bool:
        return parse_version(self.version) == parse_version(self.table)

    @property
    def has_mp_multinode(self) -> bool:
        """--nnodes/--node-rank/--master-addr/--master-port with --headless (vLLM >= 0.11.1)."""
        return all(
            f in self.options
            for f in ("--nnodes", "--node-rank", "--master-addr", "--master-port", "--headless")
        )

    @property
    def ray_fallback_multinode(self) -> bool:
        """Before --nnodes, vLLM picked Ray by itself when the world spanned nodes; since 0.11.1
        --distributed-executor-backend ray must be explicit (orchestrate always passes it)."""
        return not self.has_mp_multinode

    @property
    def headless_refuses_api_server_count(self) -> bool:
        """vllm/entrypoints/cli/serve.py run_headless: 'api_server_count can't be set in headless
        mode' (every version with both flags)."""
        return "--headless" in self.options and "--api-server-count" in self.options

    def executor_backends(self) -> tuple[str, ...] | None:
        opt = self.options.get("--distributed-executor-backend")
        return opt.choices if opt else ()


def known_versions() -> tuple[str, ...]:
    return tuple(sorted((p.stem for p in TABLES.glob("*.json")), key=parse_version))


@cache
def _load(version: str) -> dict[str, Option]:
    data: dict[str, Any] = json.loads((TABLES / f"{version}.json").read_text(encoding="utf-8"))
    out: dict[str, Option] = {}
    for a in data["options"]:
        choices = tuple(str(c) for c in a["choices"]) if a["choices"] is not None else None
        opt = Option(tuple(a["flags"]), a["value"], choices)
        out.update({f: opt for f in opt.flags})
    return out


def caps(version: str) -> Caps:
    want = parse_version(version)
    known = known_versions()
    below = [v for v in known if parse_version(v) <= want] or [known[0]]
    return Caps(version, below[-1], _load(below[-1]))


def versions_with(flag: str) -> list[str]:
    return [v for v in known_versions() if flag in _load(v)]


def _hint(c: Caps, flag: str) -> str:
    close = difflib.get_close_matches(flag, [f for f in c.options if f.startswith("--")], n=1)
    others = versions_with(flag)
    parts = []
    if others:
        parts.append(f"{flag} exists in vLLM {_span(others)}")
    if close:
        parts.append(f"did you mean {close[0]}?")
    return "; ".join(parts)


def _span(versions: list[str]) -> str:
    return versions[0] if len(versions) == 1 else f"{versions[0]} .. {versions[-1]}"


def check_argv(c: Caps, args: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """Parse the options of a `vllm serve` argv (after the model) against the table, as argparse
    would: [(flag, problem)] for unknown options, missing values and values outside choices."""
    problems: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("-") or token == "-":
            problems.append((token, f"unexpected argument {token!r}"))
            continue
        name, eq, inline = token.partition("=")
        if name.startswith("--"):
            name = "--" + name[2:].replace("_", "-")  # FlexibleArgumentParser does the same
        opt = c.options.get(name)
        if opt is None and not name.startswith("--") and len(name) > 2:  # -O3 style
            opt, inline, eq = c.options.get(name[:2]), name[2:], "="
            name = name[:2]
        if opt is None:
            hint = _hint(c, name)
            problems.append(
                (
                    name,
                    f"{name} is not an option of vllm serve in vLLM {c.version}"
                    + (f" ({hint})" if hint else ""),
                )
            )
            continue
        if opt.value == "none":
            if eq:
                problems.append((name, f"{name} takes no value"))
            continue
        if not eq:
            if i < len(args) and not (
                args[i].startswith("-") and len(args[i]) > 1 and not re.fullmatch(r"-\d+(\.\d+)?", args[i])
            ):
                inline = args[i]
                i += 1
            elif opt.value == "required":
                problems.append((name, f"{name} needs a value"))
                continue
            else:
                continue
        if opt.choices and "None" not in opt.choices and inline not in opt.choices:
            problems.append(
                (name, f"{name} {inline}: vLLM {c.version} accepts only {', '.join(opt.choices)}")
            )
    return problems
