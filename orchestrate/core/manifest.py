"""Model manifests and listings, pure: what a host has (size + sha256 per file), the reference
every host must match (the `sha256sum` manifest where there is one, else the head's listing),
and the problems of one host against it. ops/modelcheck.py gathers the listings."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Expected",
    "FileInfo",
    "Listing",
    "Problem",
    "Reference",
    "build_reference",
    "compare",
    "parse_manifest",
    "sum_lines",
]

CONFIG = "config.json"
ProblemKind = Literal["missing", "size", "sha256", "unreadable", "no-dir", "no-config", "extra"]


@dataclass(frozen=True)
class FileInfo:
    size: int
    sha256: str
    mtime_ns: int = 0


@dataclass(frozen=True)
class Listing:
    """What one host (or this machine) holds under the model directory."""

    host: str
    root: str
    exists: bool
    files: dict[str, FileInfo]
    partials: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    manifest_text: str | None = None
    bytes_read: int = 0
    hashed: int = 0
    cached: int = 0
    seconds: float = 0.0
    method: Literal["python3", "sha256sum"] = "python3"
    cache_error: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values())


@dataclass(frozen=True)
class Expected:
    sha256: str
    size: int | None  # None: only the manifest speaks for this file, and it has no sizes
    source: str  # what says so: "sum.txt", "sum.txt on hb2", "hb1", "local sum.txt"


@dataclass(frozen=True)
class Reference:
    label: str
    entries: dict[str, Expected]


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    file: str
    message: str  # for people, without the host

    @property
    def fatal(self) -> bool:
        return self.kind != "extra"


_GNU_LINE = re.compile(r"^(\\?)([0-9a-fA-F]{64}) [ *](.+)$")


_BSD_LINE = re.compile(r"^(\\?)SHA256 \((.+)\) = ([0-9a-fA-F]{64})$")


_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def _unescape(name: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), name)


def sum_lines(text: str, source: str) -> Iterator[tuple[int, str, str]]:
    """(line number, unescaped name, sha256) for each line of `sha256sum` output."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if match := _GNU_LINE.match(line):
            escaped, digest, name = match.groups()
        elif match := _BSD_LINE.match(line):
            escaped, name, digest = match.groups()
        else:
            raise ValueError(f"{source} line {number} is not `<sha256>  <file>`: {line[:80]!r}")
        yield number, _unescape(name) if escaped else name, digest.lower()


def parse_manifest(text: str, source: str = "sum.txt") -> dict[str, str]:
    """`sha256sum` output (`<sha256>  name`, `<sha256> *name`, escaped names, BSD tags) ->
    {relative name: sha256}. Raises ValueError naming the line for anything else."""
    out: dict[str, str] = {}
    for number, raw, digest in sum_lines(text, source):
        name = posixpath.normpath(raw.removeprefix("./"))
        if name.startswith(("/", "../")) or name in ("..", "."):
            raise ValueError(f"{source} line {number}: {name!r} is outside the model directory")
        if out.get(name, digest) != digest:
            raise ValueError(f"{source} line {number}: {name} is listed twice with different sums")
        out[name] = digest
    return out


def build_reference(head: Listing, manifest: tuple[str, dict[str, str]] | None) -> Reference:
    """The manifest's sums where it has one, the head's listing for every other file."""
    entries: dict[str, Expected] = {}
    label = head.host
    if manifest is not None:
        source, sums = manifest
        label = f"{source} (+ {head.host} for files it does not list)"
        for name, digest in sums.items():
            mine = head.files.get(name)
            size = mine.size if mine is not None and mine.sha256 == digest else None
            entries[name] = Expected(digest, size, source)
    for name, info in head.files.items():
        entries.setdefault(name, Expected(info.sha256, info.size, head.host))
    return Reference(label, entries)


def compare(listing: Listing, ref: Reference, head: str) -> tuple[Problem, ...]:
    if not listing.exists:
        return (
            Problem(
                "no-dir",
                "",
                f"model directory {listing.root} does not exist ({len(ref.entries)} file(s) expected)",
            ),
        )
    problems: list[Problem] = []
    for name, exp in sorted(ref.entries.items()):
        have = listing.files.get(name)
        if name in listing.errors:
            problems.append(Problem("unreadable", name, f"{name}: cannot read: {listing.errors[name]}"))
        elif have is None:
            problems.append(Problem("missing", name, f"{name}: missing (present in {exp.source})"))
        elif exp.size is not None and have.size != exp.size:
            problems.append(
                Problem("size", name, f"{name}: size {have.size} differs from {head} ({exp.size} bytes)")
            )
        elif have.sha256 != exp.sha256:
            problems.append(
                Problem(
                    "sha256",
                    name,
                    f"{name}: sha256 differs from {exp.source} "
                    f"({have.sha256[:12]}..., expected {exp.sha256[:12]}...)",
                )
            )
    if CONFIG not in listing.files and CONFIG not in ref.entries:
        problems.append(Problem("no-config", CONFIG, f"{CONFIG} missing: vLLM cannot load {listing.root}"))
    for name, err in sorted(listing.errors.items()):
        if name not in ref.entries:
            problems.append(Problem("unreadable", name, f"{name}: cannot read: {err}"))
    for name in sorted(set(listing.files) - set(ref.entries)):
        problems.append(
            Problem(
                "extra", name, f"{name}: extra file, not on {head} (left alone; remove it if it is stale)"
            )
        )
    return tuple(problems)
