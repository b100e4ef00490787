"""`model verify` and `model sync`: is the same model, byte for byte, on every host?

verify runs a small hashing program on every host at once (`python3 -c PROGRAM DIR ...`, values
only as argv): it walks the model directory, hashes each file once in large blocks, several files
in parallel (hashlib releases the GIL), and keeps a per-host cache
(`~/.cache/orchestrate/sha256-cache.json`, keyed by absolute path + size + mtime_ns + ctime_ns +
inode), so an unchanged re-verify reads nothing. The reference is the manifest (`sum.txt`, the
`sha256sum` output the seed checked by hand) where there is one, else the head's own listing.
A host without python3 falls back to `find` + `sha256sum` (no cache).

sync copies only the files that are missing or differ (size + sha256) to each host, from this
machine or from the head. Head -> host data is streamed through this machine (SFTP read, SFTP
write, chunked): hosts need not trust each other. Each file is written as `NAME.partial`,
resumed from its size after an interruption, hashed on the target and renamed into place only
when its sha256 matches. Then everything is verified again.

This module is the boundary for SFTP (paramiko) errors: they become HostErrors here.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import paramiko

from orchestrate.core.plan import NodePlan
from orchestrate.errors import HostError, OrchestrateError, PhaseError, RemoteCommandError, UsageError
from orchestrate.host.remote import Runner, SSHRunner
from orchestrate.host.session import Session, fan_out

HASH_TIMEOUT_S = 3600.0  # one host hashing its whole model directory (cold disk, large models)
LOCAL_HASH_TIMEOUT_S = 3600.0
CHUNK = 1 << 20  # sync: bytes per read/write
PROGRESS_S = 2.0  # sync: seconds between progress events per host
CONFIG = "config.json"
PARTIAL = ".partial"
MiB = float(1 << 20)

# ---------------------------------------------------------------- the host-side program

# Runs on the hosts as `python3 -c PROGRAM ROOT [options]` (Python >= 3.6, standard library only).
# Prints one JSON document: {"files": {rel: [size, mtime_ns, sha256]}, "bytes_read": ...}.
PROGRAM = r'''
import argparse, hashlib, json, os, stat, sys, time
from concurrent.futures import ThreadPoolExecutor

BLOCK = 4 << 20
RACY_NS = 2 * 10 ** 9
MAX_MANIFEST = 4 << 20


def sig(st):
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def sha256_of(path):
    h = hashlib.sha256()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            total += n
    return h.hexdigest(), total


def hash_one(path, st):
    """(sha256, bytes read, final stat, stable): re-hash while the file changes under us."""
    read = 0
    for _ in range(3):
        digest, n = sha256_of(path)
        read += n
        st2 = os.stat(path)
        if sig(st2) == sig(st):
            return digest, read, st2, True
        st = st2
    return digest, read, st, False


def walk(root, out):
    entries = []

    def onerror(exc):
        out["errors"][os.path.relpath(exc.filename or root, root)] = exc.strerror or str(exc)

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        # hidden directories (.cache/huggingface, .git) are download metadata, not the model
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            try:
                st = os.stat(path)
            except OSError as exc:
                out["errors"][rel] = exc.strerror or str(exc)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if name.endswith(".partial"):
                out["partials"][rel] = st.st_size
                continue
            entries.append((rel, path, st))
    return entries


def load_cache(path, out):
    try:
        with open(path, "r") as f:
            data = json.load(f)
        if isinstance(data, dict) and data.get("v") == 1 and isinstance(data.get("files"), dict):
            return data["files"]
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        out["cache_error"] = "ignored unreadable cache %s: %s" % (path, exc)
    return {}


def save_cache(path, files, out):
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "w") as f:
            json.dump({"v": 1, "files": files}, f, separators=(",", ":"))
        os.replace(tmp, path)
    except OSError as exc:
        out["cache_error"] = "cannot write cache %s: %s" % (path, exc)


def main():
    p = argparse.ArgumentParser(prog="orchestrate-modelcheck")
    p.add_argument("root")
    p.add_argument("--cache", default="~/.cache/orchestrate/sha256-cache.json")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--rehash", action="store_true")
    p.add_argument("--manifest", default="")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--only", action="append", default=[])
    a = p.parse_args()
    t0 = time.time()
    root = os.path.abspath(os.path.expanduser(a.root))
    threads = a.threads or min(8, os.cpu_count() or 1)
    out = {"v": 1, "root": root, "exists": os.path.isdir(root), "files": {}, "partials": {},
           "errors": {}, "manifest": None, "bytes_read": 0, "hashed": 0, "cached": 0,
           "threads": threads, "cache": None, "cache_error": None,
           "python": "%d.%d.%d" % sys.version_info[:3]}
    if not out["exists"]:
        out["seconds"] = time.time() - t0
        print(json.dumps(out, sort_keys=True))
        return
    if a.only:
        entries = []
        for rel in a.only:
            path = os.path.join(root, rel)
            try:
                entries.append((rel, path, os.stat(path)))
            except OSError as exc:
                out["errors"][rel] = exc.strerror or str(exc)
    else:
        entries = walk(root, out)
    use_cache = not a.no_cache and not a.only
    cache_path = os.path.expanduser(a.cache)
    cache = load_cache(cache_path, out) if use_cache else {}
    if use_cache:
        out["cache"] = cache_path
    start_ns = int(time.time() * 1e9)
    todo = []
    for rel, path, st in entries:
        hit = cache.get(path)
        if not a.rehash and isinstance(hit, list) and len(hit) == 5 and hit[:4] == sig(st):
            out["files"][rel] = [st.st_size, st.st_mtime_ns, hit[4]]
            out["cached"] += 1
        else:
            todo.append((rel, path, st))
    todo.sort(key=lambda e: -e[2].st_size)  # biggest first: the threads finish together

    def work(entry):
        rel, path, st = entry
        try:
            return rel, path, hash_one(path, st), None
        except OSError as exc:
            return rel, path, None, exc.strerror or str(exc)

    changed = False
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for rel, path, res, err in pool.map(work, todo):
            if err is not None:
                out["errors"][rel] = err
                continue
            digest, n, st, stable = res
            out["bytes_read"] += n
            out["hashed"] += 1
            if not stable:
                out["errors"][rel] = "the file kept changing while it was hashed"
                continue
            out["files"][rel] = [st.st_size, st.st_mtime_ns, digest]
            # racy: a write within the mtime granularity would not change the key
            if use_cache and st.st_mtime_ns < start_ns - RACY_NS:
                cache[path] = sig(st) + [digest]
                changed = True
    if use_cache:
        prefix = root.rstrip("/") + "/"
        seen = set(os.path.join(root, rel) for rel, _, _ in entries)
        for path in [k for k in cache if k.startswith(prefix) and k not in seen]:
            del cache[path]  # files gone from this model directory
            changed = True
        if changed:
            for path in [k for k in cache if k not in seen and not os.path.exists(k)]:
                del cache[path]  # ... and from anywhere else (deleted models)
            save_cache(cache_path, cache, out)
    if a.manifest and not a.only:
        mpath = os.path.join(root, a.manifest)
        try:
            with open(mpath, "rb") as f:
                out["manifest"] = f.read(MAX_MANIFEST).decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            pass
        except OSError as exc:
            out["errors"][a.manifest] = exc.strerror or str(exc)
    out["seconds"] = time.time() - t0
    print(json.dumps(out, sort_keys=True))


main()
'''


# ---------------------------------------------------------------- data


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


ProblemKind = Literal["missing", "size", "sha256", "unreadable", "no-dir", "no-config", "extra"]


@dataclass(frozen=True)
class Problem:
    kind: ProblemKind
    file: str
    message: str  # for people, without the host

    @property
    def fatal(self) -> bool:
        return self.kind != "extra"


@dataclass(frozen=True)
class HostCheck:
    host: str
    listing: Listing
    problems: tuple[Problem, ...]
    head: bool = False

    @property
    def ok(self) -> bool:
        return not any(p.fatal for p in self.problems)

    @property
    def config_json(self) -> bool:
        return CONFIG in self.listing.files

    def files_of(self, kind: ProblemKind) -> list[str]:
        return [p.file for p in self.problems if p.kind == kind]

    def error(self) -> HostError:
        fatal = [p for p in self.problems if p.fatal]
        text = "; ".join(p.message for p in fatal[:3])
        if len(fatal) > 3:
            text += f" (+{len(fatal) - 3} more)"
        if self.head:  # the head is the source of `sync --from head`: it needs a good copy
            return HostError(self.host, text, hint="orchestrate model sync --from local --dir DIR "
                             "(a good copy on this machine)")  # fmt: skip
        return HostError(self.host, text, hint="orchestrate model sync (copies only the missing "
                         "and differing files, from the head or from this machine)")  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        ls = self.listing
        return {
            "host": self.host, "ok": self.ok, "exists": ls.exists, "method": ls.method,
            "files": len(ls.files), "bytes": ls.total_bytes, "config_json": self.config_json,
            "hashed": ls.hashed, "cached": ls.cached, "bytes_read": ls.bytes_read,
            "seconds": round(ls.seconds, 3),
            "missing": self.files_of("missing"), "extra": self.files_of("extra"),
            "size_mismatch": self.files_of("size"), "sha256_mismatch": self.files_of("sha256"),
            "unreadable": self.files_of("unreadable"), "partials": sorted(ls.partials),
            "problems": [p.message for p in self.problems],
            "sha256": {name: f.sha256 for name, f in sorted(ls.files.items())},
        }  # fmt: skip


@dataclass(frozen=True)
class VerifyReport:
    path: str
    reference: str
    hosts: tuple[HostCheck, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(h.ok for h in self.hosts)

    def host(self, name: str) -> HostCheck:
        return next(h for h in self.hosts if h.host == name)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "path": self.path, "reference": self.reference,
                "seconds": round(self.seconds, 3), "hosts": [h.as_dict() for h in self.hosts]}  # fmt: skip

    def lines(self) -> list[str]:
        out = [f"model {self.path}, compared with {self.reference}"]
        width = max((len(h.host) for h in self.hosts), default=4)
        for h in self.hosts:
            ls = h.listing
            how = f"{ls.hashed} hashed ({_size(ls.bytes_read)} read), {ls.cached} cached"
            if ls.method != "python3":
                how += f", via {ls.method}"
            state = "ok" if h.ok else "FAILED"
            out.append(f"{h.host:<{width}}  {state:<6}  {len(ls.files)} files, "
                       f"{_size(ls.total_bytes)}; {how}; {ls.seconds:.2f}s")  # fmt: skip
            out += [f"{'':<{width}}  {'warning' if not p.fatal else '':<6}  {p.message}"
                    for p in h.problems]  # fmt: skip
        bad = sum(not h.ok for h in self.hosts)
        out.append("ok: every host has the same model" if self.ok else
                   f"FAILED on {bad} host(s); fix: orchestrate model sync")  # fmt: skip
        return out


class ModelMismatch(PhaseError):
    """verify found hosts whose model differs; one HostError per bad host, and the full report."""

    def __init__(self, report: VerifyReport) -> None:
        super().__init__("verify", [h.error() for h in report.hosts if not h.ok])
        self.report = report


@dataclass(frozen=True)
class CopiedFile:
    file: str
    bytes: int  # bytes sent this run
    resumed_from: int  # bytes of a .partial that were kept
    seconds: float


@dataclass(frozen=True)
class HostSync:
    host: str
    copied: tuple[CopiedFile, ...]
    matching: int  # files left alone: already the same size and sha256
    extra: tuple[str, ...]  # files the source lacks (left in place)
    seconds: float

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.copied)

    def as_dict(self) -> dict[str, Any]:
        rate = self.bytes / MiB / self.seconds if self.seconds > 0 else 0.0
        return {"host": self.host, "copied": [c.file for c in self.copied], "bytes": self.bytes,
                "resumed": {c.file: c.resumed_from for c in self.copied if c.resumed_from},
                "matching": self.matching, "extra": list(self.extra),
                "seconds": round(self.seconds, 3), "mib_per_s": round(rate, 1)}  # fmt: skip


@dataclass(frozen=True)
class SyncReport:
    source: str
    hosts: tuple[HostSync, ...]
    seconds: float
    verify: VerifyReport

    @property
    def ok(self) -> bool:
        return self.verify.ok

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "source": self.source, "seconds": round(self.seconds, 3),
                "hosts": [h.as_dict() for h in self.hosts], "verify": self.verify.as_dict()}  # fmt: skip

    def lines(self) -> list[str]:
        out = [f"sync from {self.source}"]
        for h in self.hosts:
            if not h.copied:
                out.append(f"{h.host}: nothing to copy ({h.matching} files already match)")
                continue
            rate = h.bytes / MiB / h.seconds if h.seconds > 0 else 0.0
            out.append(f"{h.host}: copied {len(h.copied)} file(s), {_size(h.bytes)} in "
                       f"{h.seconds:.1f}s ({rate:.1f} MiB/s); {h.matching} already matched")  # fmt: skip
            if h.extra:
                out.append(f"{h.host}: left {len(h.extra)} file(s) the source does not have: "
                           f"{', '.join(h.extra[:5])}")  # fmt: skip
        return out + self.verify.lines()


# ---------------------------------------------------------------- manifest and comparison

_GNU_LINE = re.compile(r"^(\\?)([0-9a-fA-F]{64}) [ *](.+)$")
_BSD_LINE = re.compile(r"^(\\?)SHA256 \((.+)\) = ([0-9a-fA-F]{64})$")
_ESCAPES = {"\\": "\\", "n": "\n", "r": "\r"}


def _unescape(name: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), name)


def _sum_lines(text: str, source: str) -> Iterator[tuple[int, str, str]]:
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
    for number, raw, digest in _sum_lines(text, source):
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
        return (Problem("no-dir", "", f"model directory {listing.root} does not exist "
                        f"({len(ref.entries)} file(s) expected)"),)  # fmt: skip
    problems: list[Problem] = []
    for name, exp in sorted(ref.entries.items()):
        have = listing.files.get(name)
        if name in listing.errors:
            problems.append(Problem("unreadable", name, f"{name}: cannot read: {listing.errors[name]}"))
        elif have is None:
            problems.append(Problem("missing", name, f"{name}: missing (present in {exp.source})"))
        elif exp.size is not None and have.size != exp.size:
            problems.append(Problem("size", name, f"{name}: size {have.size} differs from "
                                    f"{head} ({exp.size} bytes)"))  # fmt: skip
        elif have.sha256 != exp.sha256:
            problems.append(Problem("sha256", name, f"{name}: sha256 differs from {exp.source} "
                                    f"({have.sha256[:12]}..., expected {exp.sha256[:12]}...)"))  # fmt: skip
    if CONFIG not in listing.files and CONFIG not in ref.entries:
        problems.append(Problem("no-config", CONFIG, f"{CONFIG} missing: vLLM cannot load "
                                f"{listing.root}"))  # fmt: skip
    for name, err in sorted(listing.errors.items()):
        if name not in ref.entries:
            problems.append(Problem("unreadable", name, f"{name}: cannot read: {err}"))
    for name in sorted(set(listing.files) - set(ref.entries)):
        problems.append(Problem("extra", name, f"{name}: extra file, not on {head} "
                                "(left alone; remove it if it is stale)"))  # fmt: skip
    return tuple(problems)


# ---------------------------------------------------------------- hashing on a host


def _listing(host: str, data: Any, method: Literal["python3", "sha256sum"] = "python3") -> Listing:
    try:
        files = {str(k): FileInfo(int(v[0]), str(v[2]), int(v[1])) for k, v in data["files"].items()}
        return Listing(
            host=host, root=str(data["root"]), exists=bool(data["exists"]), files=files,
            partials={str(k): int(v) for k, v in data.get("partials", {}).items()},
            errors={str(k): str(v) for k, v in data.get("errors", {}).items()},
            manifest_text=data.get("manifest"), bytes_read=int(data.get("bytes_read", 0)),
            hashed=int(data.get("hashed", 0)), cached=int(data.get("cached", 0)),
            seconds=float(data.get("seconds", 0.0)), method=method,
            cache_error=data.get("cache_error"),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise HostError(host, f"the hashing program printed an unexpected document ({exc!r})") from None


def _program_argv(python: str, root: str, *, manifest: str | None, rehash: bool,
                  use_cache: bool, only: Sequence[str] = ()) -> list[str]:  # fmt: skip
    argv = [python, "-c", PROGRAM, root]
    if manifest:
        argv += ["--manifest", manifest]
    if rehash:
        argv.append("--rehash")
    if not use_cache:
        argv.append("--no-cache")
    for name in only:
        argv += ["--only", name]
    return argv


def _no_python(exited: int, stderr: str) -> bool:
    return exited == 127 or (exited != 0 and "python3: not found" in stderr)


def _decode(host: str, stdout: str) -> Any:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise HostError(host, f"the hashing program printed no result: {stdout.strip()[-200:]!r}")


def host_listing(s: Session, node: NodePlan, *, python: str = "python3", rehash: bool = False,
                 use_cache: bool = True, timeout: float = HASH_TIMEOUT_S) -> Listing:  # fmt: skip
    """Hash the model directory on one host (the python program, or find + sha256sum)."""
    root = s.plan.model_host_path
    argv = _program_argv(python, root, manifest=s.plan.model_manifest, rehash=rehash,
                         use_cache=use_cache)  # fmt: skip
    try:
        res = s.runner(node).run(argv, timeout=timeout, check=False)
    except RemoteCommandError:  # without check, only the deadline raises
        raise HostError(
            node.host,
            f"hashing {root} did not finish within {timeout:g}s",
            hint="check the disk (slow? failing?) or allow a longer timeout",
        ) from None
    if _no_python(res.exited, res.stderr):
        s.events("verify", node.host, f"{python} not found: falling back to find + sha256sum "
                 "(no cache, one file at a time)")  # fmt: skip
        return _fallback_listing(s, node, timeout)
    if not res.ok:
        raise HostError(node.host, f"hashing {root} failed (exit {res.exited}): {res.tail(3)}",
                        hint=f"run it by hand: {python} -c '...' {root}")  # fmt: skip
    listing = _listing(node.host, _decode(node.host, res.stdout))
    if listing.cache_error:
        s.events("verify", node.host, listing.cache_error)
    return listing


def _fallback_listing(s: Session, node: NodePlan, timeout: float) -> Listing:
    root = s.plan.model_host_path.rstrip("/")
    runner = s.runner(node)
    t0 = time.monotonic()
    if not runner.run(["test", "-d", root], timeout=30, check=False).ok:
        return Listing(node.host, root, False, {}, method="sha256sum")
    found = runner.run(["find", root, "-mindepth", "1", "-type", "d", "-name", ".*", "-prune", "-o",
                        "-type", "f", "-printf", "%s %T@ %P\\0"], timeout=300, check=False)  # fmt: skip
    if not found.ok:
        raise HostError(node.host, f"find {root} failed: {found.tail(3)}")
    sizes: dict[str, tuple[int, int]] = {}
    partials: dict[str, int] = {}
    for item in found.stdout.split("\0"):
        if not item:
            continue
        size, mtime, name = item.split(" ", 2)
        if name.endswith(PARTIAL):
            partials[name] = int(size)
        else:
            sizes[name] = (int(size), int(float(mtime) * 1e9))
    sums = _sha256sum(s, node, root, sorted(sizes), timeout)
    files = {n: FileInfo(sizes[n][0], sums[n], sizes[n][1]) for n in sizes if n in sums}
    errors = {n: "sha256sum could not read it" for n in sizes if n not in sums}
    manifest = None
    if s.plan.model_manifest and s.plan.model_manifest in files:
        cat = runner.run(["cat", "--", f"{root}/{s.plan.model_manifest}"], timeout=60, check=False)
        manifest = cat.stdout if cat.ok else None
    return Listing(node.host, root, True, files, partials, errors, manifest,
                   bytes_read=sum(f.size for f in files.values()), hashed=len(files),
                   seconds=time.monotonic() - t0, method="sha256sum")  # fmt: skip


def _sha256sum(s: Session, node: NodePlan, root: str, names: Sequence[str], timeout: float) -> dict[str, str]:
    """{name: sha256} with the host's sha256sum, in batches (argv length); unreadable names absent."""
    out: dict[str, str] = {}
    for i in range(0, len(names), 200):
        batch = names[i : i + 200]
        res = s.runner(node).run(["sha256sum", "--", *(f"{root}/{n}" for n in batch)],
                                 timeout=timeout, check=False)  # fmt: skip
        if res.exited == 127:
            raise HostError(node.host, "neither python3 nor sha256sum is installed",
                            hint="install python3 (or coreutils) on this host")  # fmt: skip
        for _, name, digest in _sum_lines(res.stdout, f"{node.host}: sha256sum output"):
            out[name.removeprefix(root + "/")] = digest
    return out


def _local_listing(root: Path, manifest: str | None, *, rehash: bool = False,
                   timeout: float = LOCAL_HASH_TIMEOUT_S) -> Listing:  # fmt: skip
    """The same program on this machine (sync --from local)."""
    argv = _program_argv(sys.executable, str(root), manifest=manifest, rehash=rehash, use_cache=True)
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                             stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise OrchestrateError(f"hashing {root} on this machine took over {timeout:g}s") from None
    if res.returncode != 0:
        raise OrchestrateError(f"hashing {root} on this machine failed: {res.stderr.strip()[-300:]}")
    return _listing("local", _decode("local", res.stdout))


def _report_listing(s: Session, listing: Listing) -> None:
    rate = listing.bytes_read / MiB / listing.seconds if listing.seconds > 0 else 0.0
    if not listing.exists:
        s.events("verify", listing.host, f"{listing.root} does not exist")
        return
    s.events("verify", listing.host, f"{len(listing.files)} files, {_size(listing.total_bytes)}: "
             f"{listing.hashed} hashed ({_size(listing.bytes_read)}, {rate:.0f} MiB/s), "
             f"{listing.cached} from cache, {listing.seconds:.2f}s")  # fmt: skip


# ---------------------------------------------------------------- verify


def _local_manifest(path: Path) -> tuple[str, dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
    try:
        return f"local {path.name}", parse_manifest(text, str(path))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _host_manifest(s: Session, listing: Listing) -> dict[str, str]:
    name = s.plan.model_manifest or ""
    try:
        return parse_manifest(listing.manifest_text or "", name)
    except ValueError as exc:
        raise PhaseError("verify", [HostError(listing.host, str(exc),
                         hint=f"regenerate it: cd {s.plan.model_host_path} && sha256sum "
                         f"*.safetensors > {name}")]) from None  # fmt: skip


def _manifest(
    s: Session, listings: dict[str, Listing], local: Path | None
) -> tuple[str, dict[str, str]] | None:
    """The reference manifest: a local file, else the head's, else the first host's that has one."""
    if local is not None:
        return _local_manifest(local)
    name = s.plan.model_manifest
    if not name:
        return None
    head = s.plan.head.host
    for host in [head, *(h for h in listings if h != head)]:
        if host in listings and listings[host].manifest_text is not None:
            return (name if host == head else f"{name} on {host}"), _host_manifest(s, listings[host])
    s.events("verify", None, f"no host has {name}; comparing every host with {head}")
    return None


def _survey(s: Session, nodes: Sequence[NodePlan], phase: str, **opts: Any) -> dict[str, Listing]:
    def one(node: NodePlan) -> Listing:
        listing = host_listing(s, node, **opts)
        _report_listing(s, listing)
        return listing

    return {ls.host: ls for ls in fan_out(phase, nodes, one, s.events)}


def verify(
    s: Session,
    nodes: Sequence[NodePlan] | None = None,
    *,
    manifest: Path | None = None,
    rehash: bool = False,
    use_cache: bool = True,
    check: bool = True,
    python: str = "python3",
    timeout: float = HASH_TIMEOUT_S,
) -> VerifyReport:
    """Hash the model directory on every host in parallel and compare with the reference.

    `manifest`: a local sum.txt to compare with (else the plan's manifest on the head, else the
    head's listing). `rehash`: ignore the caches. Raises ModelMismatch (a PhaseError with one
    HostError per bad host, and `.report`) unless check is false.
    """
    t0 = time.monotonic()
    plan = s.plan
    wanted = list(nodes or plan.nodes)
    survey = [plan.head, *(n for n in wanted if n.host != plan.head.host)]  # the head: reference
    listings = _survey(s, survey, "verify", python=python, rehash=rehash, use_cache=use_cache,
                       timeout=timeout)  # fmt: skip
    sums = _manifest(s, listings, manifest)
    head = listings[plan.head.host]
    ref = build_reference(head, sums)
    checks = tuple(HostCheck(n.host, listings[n.host], compare(listings[n.host], ref, head.host),
                             head=n.host == head.host) for n in wanted)  # fmt: skip
    report = VerifyReport(plan.model_host_path, ref.label, checks, time.monotonic() - t0)
    for h in checks:
        s.events("verify", h.host, "ok" if h.ok else f"FAILED {h.error().message.split(': ', 1)[1]}")
    if check and not report.ok:
        raise ModelMismatch(report)
    return report


# ---------------------------------------------------------------- file endpoints (SFTP or local)


class _Reader(Protocol):
    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


class _Writer(Protocol):
    def write(self, data: bytes) -> Any: ...
    def close(self) -> None: ...


class _Files(Protocol):
    host: str

    def size(self, path: str) -> int | None: ...
    def reader(self, path: str, offset: int, size: int) -> _Reader: ...
    def writer(self, path: str, offset: int) -> _Writer: ...
    def replace(self, src: str, dst: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def close(self) -> None: ...


@contextmanager
def _io(host: str, what: str) -> Iterator[None]:
    """Map OS/SFTP/SSH errors of one file operation to a HostError naming the host."""
    try:
        yield
    except HostError:
        raise
    except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise HostError(host, f"{what}: {detail}") from None


class _SFTPFiles:
    def __init__(self, host: str, runner: SSHRunner, timeout: float) -> None:
        self.host = host
        with _io(host, "cannot open an SFTP session"):
            self.sftp = runner.client.open_sftp()
            channel = self.sftp.get_channel()
            if channel is not None:
                channel.settimeout(timeout)  # every read/write/stat fails instead of hanging

    def size(self, path: str) -> int | None:
        try:
            with _io(self.host, f"stat {path}"):
                return int(self.sftp.stat(path).st_size)
        except HostError:
            return None

    def reader(self, path: str, offset: int, size: int) -> _Reader:
        with _io(self.host, f"cannot read {path}"):
            f = self.sftp.open(path, "rb")
            f.seek(offset)
            if size > offset:
                f.prefetch(size, max_concurrent_requests=64)  # ~2 MiB in flight, not the whole file
            return f  # type: ignore[no-any-return]

    def writer(self, path: str, offset: int) -> _Writer:
        with _io(self.host, f"cannot write {path}"):
            f = self.sftp.open(path, "r+b" if offset else "wb")
            f.seek(offset)
            f.set_pipelined(True)
            return f  # type: ignore[no-any-return]

    def replace(self, src: str, dst: str) -> None:
        with _io(self.host, f"cannot rename {src} to {dst}"):
            self.sftp.posix_rename(src, dst)

    def remove(self, path: str) -> None:
        with _io(self.host, f"cannot remove {path}"):
            self.sftp.remove(path)

    def close(self) -> None:
        with suppress(OSError, EOFError, paramiko.SSHException, paramiko.SFTPError):
            self.sftp.close()


class _LocalFiles:
    def __init__(self, host: str) -> None:
        self.host = host

    def size(self, path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except OSError:
            return None

    def reader(self, path: str, offset: int, size: int) -> _Reader:
        with _io(self.host, f"cannot read {path}"):
            f = open(path, "rb")  # noqa: SIM115 - closed by the copy loop
            f.seek(offset)
            return f

    def writer(self, path: str, offset: int) -> _Writer:
        with _io(self.host, f"cannot write {path}"):
            f = open(path, "r+b" if offset else "wb")  # noqa: SIM115
            f.seek(offset)
            return f

    def replace(self, src: str, dst: str) -> None:
        with _io(self.host, f"cannot rename {src} to {dst}"):
            os.replace(src, dst)

    def remove(self, path: str) -> None:
        with _io(self.host, f"cannot remove {path}"):
            os.remove(path)

    def close(self) -> None:
        pass


def _files(s: Session, node: NodePlan) -> _Files:
    runner: Runner = s.runner(node)
    if isinstance(runner, SSHRunner):
        return _SFTPFiles(node.host, runner, node.ssh.command_timeout)
    return _LocalFiles(node.host)


# ---------------------------------------------------------------- sync


@dataclass(frozen=True)
class _Source:
    name: str  # "hb1" or "this machine (DIR)"
    root: str
    listing: Listing
    open: Callable[[], _Files]  # a fresh endpoint per target thread (SFTP clients are not shared)


class _Progress:
    """Throttled MiB/s events for one target host."""

    def __init__(self, s: Session, host: str) -> None:
        self.s, self.host = s, host
        self.last = time.monotonic()

    def __call__(self, name: str, done: int, total: int, t0: float, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < PROGRESS_S:
            return
        self.last = now
        rate = done / MiB / max(now - t0, 1e-6)
        verb = "copied" if final else "copying"
        self.s.events("sync", self.host, f"{verb} {name}: {done / MiB:.1f}/{total / MiB:.1f} MiB "
                      f"({rate:.1f} MiB/s)")  # fmt: skip


def _copy(src: _Files, src_path: str, dst: _Files, dst_path: str, size: int, name: str,
          progress: _Progress) -> CopiedFile:  # fmt: skip
    """Append src[offset:] to dst_path (a .partial), offset = what dst_path already holds."""
    have = dst.size(dst_path) or 0
    if have > size:
        have = 0  # longer than the source: not a prefix of it; start over
    t0 = time.monotonic()
    reader = src.reader(src_path, have, size)
    try:
        writer = dst.writer(dst_path, have)
        done = have
        try:
            while done < size:
                with _io(src.host, f"cannot read {src_path}"):
                    block = reader.read(min(CHUNK, size - done))
                if not block:
                    raise HostError(src.host, f"{src_path} ended at {done} of {size} bytes "
                                    "(did it change during the sync?)")  # fmt: skip
                with _io(dst.host, f"cannot write {dst_path}"):
                    writer.write(block)
                done += len(block)
                progress(name, done - have, size - have, t0)
        finally:
            with _io(dst.host, f"cannot write {dst_path}"):
                writer.close()  # pipelined writes report their errors here
    finally:
        with _io(src.host, f"cannot read {src_path}"):
            reader.close()
    progress(name, size - have, size - have, t0, final=True)
    return CopiedFile(name, size - have, have, time.monotonic() - t0)


def _hash_on(s: Session, node: NodePlan, names: Sequence[str], python: str, timeout: float) -> dict[str, str]:
    """sha256 of a few files (the .partials) on the host, no cache."""
    root = s.plan.model_host_path
    res = s.runner(node).run(_program_argv(python, root, manifest=None, rehash=True, use_cache=False,
                                           only=names), timeout=timeout, check=False)  # fmt: skip
    if _no_python(res.exited, res.stderr):
        return _sha256sum(s, node, root.rstrip("/"), names, timeout)
    if not res.ok:
        raise HostError(node.host, f"hashing the copied files failed: {res.tail(3)}")
    return {k: v.sha256 for k, v in _listing(node.host, _decode(node.host, res.stdout)).files.items()}


def _sync_host(s: Session, node: NodePlan, src: _Source, source: _Files, todo: Sequence[str],
               python: str, timeout: float) -> list[CopiedFile]:  # fmt: skip
    """Copy `todo` from `source` (this thread's own endpoint) to the host; closes `source`."""
    root = s.plan.model_host_path
    dirs = sorted({posixpath.dirname(posixpath.join(root, n)) for n in todo})
    progress = _Progress(s, node.host)
    try:
        s.runner(node).run(["mkdir", "-p", "--", *dirs], timeout=60)
        dst = _files(s, node)
    except BaseException:
        source.close()
        raise
    try:
        copied: list[CopiedFile] = []
        pending = list(todo)
        for attempt in (1, 2):
            for name in pending:
                size = src.listing.files[name].size
                partial = posixpath.join(root, name + PARTIAL)
                copied.append(_copy(source, posixpath.join(src.root, name), dst, partial, size, name,
                                    progress))  # fmt: skip
            sums = _hash_on(s, node, [n + PARTIAL for n in pending], python, timeout)
            bad = [n for n in pending if sums.get(n + PARTIAL) != src.listing.files[n].sha256]
            for name in pending:
                if name not in bad:
                    dst.replace(posixpath.join(root, name + PARTIAL), posixpath.join(root, name))
            for name in bad:  # a stale or damaged .partial: drop it and copy once more from 0
                dst.remove(posixpath.join(root, name + PARTIAL))
            if bad and attempt == 1:
                s.events("sync", node.host, f"sha256 of {', '.join(bad)} did not match after "
                         "the copy; copying again from the start")  # fmt: skip
            pending = bad
            if not pending:
                break
        if pending:
            raise HostError(node.host, f"{pending[0]}: sha256 still differs after copying it twice "
                            f"from {src.name}", hint="check the disk and memory of this host")  # fmt: skip
        return copied
    finally:
        dst.close()
        source.close()


def _source(
    s: Session, source: Literal["local", "head"], local_dir: Path | None, listings: dict[str, Listing]
) -> _Source:
    plan = s.plan
    if source == "local":
        if local_dir is None:
            raise UsageError("sync --from local needs the local model directory")
        local_dir = local_dir.expanduser().resolve()
        s.events("sync", None, f"hashing {local_dir} on this machine")
        listing = _local_listing(local_dir, plan.model_manifest)
        if not listing.exists:
            raise UsageError(f"{local_dir} is not a directory")
        return _Source(f"this machine ({local_dir})", str(local_dir), listing,
                       lambda: _LocalFiles("local"))  # fmt: skip
    head = plan.head
    return _Source(head.host, plan.model_host_path, listings[head.host], lambda: _files(s, head))


def _check_source(s: Session, src: _Source, manifest: Path | None) -> None:
    """Refuse to spread a copy that does not match its own manifest (or has no config.json)."""
    sums: tuple[str, dict[str, str]] | None = None
    if manifest is not None:
        sums = _local_manifest(manifest)
    elif s.plan.model_manifest and src.listing.manifest_text is not None:
        sums = s.plan.model_manifest, _host_manifest(s, src.listing)
    ref = build_reference(src.listing, sums)
    bad = [p for p in compare(src.listing, ref, src.name) if p.fatal]
    if bad:
        raise OrchestrateError(
            f"the source {src.name} is not a good copy: " + "; ".join(p.message for p in bad[:3]),
            hint="repair the source first, or sync from another copy (--from local DIR)",
        )


def sync(
    s: Session,
    source: Literal["local", "head"],
    local_dir: Path | None = None,
    *,
    nodes: Sequence[NodePlan] | None = None,
    manifest: Path | None = None,
    check: bool = True,
    python: str = "python3",
    timeout: float = HASH_TIMEOUT_S,
) -> SyncReport:
    """Copy the missing and differing files to every host (but the head, from the head), then
    verify again. Files that already match are not touched; extra files are left in place."""
    t0 = time.monotonic()
    plan = s.plan
    targets = [n for n in (nodes or plan.nodes) if source == "local" or n.host != plan.head.host]
    survey = targets if source == "local" else [plan.head, *targets]
    listings = _survey(s, survey, "sync", python=python, timeout=timeout)
    src = _source(s, source, local_dir, listings)
    _check_source(s, src, manifest)
    plans: dict[str, list[str]] = {}
    for node in targets:
        plans[node.host] = _differing(src.listing, listings[node.host])
        total = sum(src.listing.files[n].size for n in plans[node.host])
        s.events("sync", node.host, f"{len(plans[node.host])} file(s) to copy ({_size(total)}) from "
                 f"{src.name}" if plans[node.host] else "already matches; nothing to copy")  # fmt: skip
    busy = [n for n in targets if plans[n.host]]
    started: dict[str, float] = {}
    # one source endpoint per target, opened here: SFTP clients are not shared between threads
    sources = {n.host: src.open() for n in busy}

    def one(node: NodePlan) -> HostSync:
        started[node.host] = time.monotonic()
        copied = _sync_host(s, node, src, sources[node.host], plans[node.host], python, timeout)
        return _host_sync(node.host, copied, listings[node.host], src, time.monotonic() - started[node.host])

    done = {h.host: h for h in fan_out("sync", busy, one, s.events)}
    results = tuple(done.get(n.host) or _host_sync(n.host, [], listings[n.host], src, 0.0) for n in targets)
    for h in results:
        if h.copied:
            rate = h.bytes / MiB / h.seconds if h.seconds > 0 else 0.0
            s.events("sync", h.host, f"done: {len(h.copied)} file(s), {_size(h.bytes)} in "
                     f"{h.seconds:.1f}s ({rate:.1f} MiB/s)")  # fmt: skip
    report = verify(s, nodes or plan.nodes, manifest=manifest, check=False, python=python,
                    timeout=timeout)  # fmt: skip
    out = SyncReport(src.name, results, time.monotonic() - t0, report)
    if check and not report.ok:
        raise ModelMismatch(report)
    return out


def _differing(src: Listing, dst: Listing) -> list[str]:
    """Files of src that dst lacks or holds with another size or sha256."""
    out = []
    for name, info in sorted(src.files.items()):
        have = dst.files.get(name)
        if have is None or (have.size, have.sha256) != (info.size, info.sha256):
            out.append(name)
    return out


def _host_sync(
    host: str, copied: Sequence[CopiedFile], before: Listing, src: _Source, seconds: float
) -> HostSync:
    names = {c.file for c in copied}
    matching = sum(1 for n in src.listing.files if n not in names and n in before.files)
    extra = tuple(sorted(set(before.files) - set(src.listing.files)))
    return HostSync(host, tuple(copied), matching, extra, seconds)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
