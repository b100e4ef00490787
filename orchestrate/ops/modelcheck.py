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

host/files.py is the boundary for SFTP (paramiko) errors; agents/model_hasher.py is the program
that runs on the hosts; core/manifest.py the pure comparison.
"""

from __future__ import annotations

import json
import posixpath
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from orchestrate.core.manifest import (
    CONFIG,
    FileInfo,
    Listing,
    Problem,
    ProblemKind,
    build_reference,
    compare,
    parse_manifest,
    sum_lines,
)
from orchestrate.core.plan import NodePlan
from orchestrate.errors import HostError, OrchestrateError, PhaseError, RemoteCommandError, UsageError
from orchestrate.host.files import Files, LocalFiles, files_for
from orchestrate.host.session import Session, fan_out

HASH_TIMEOUT_S = 3600.0  # one host hashing its whole model directory (cold disk, large models)
LOCAL_HASH_TIMEOUT_S = 3600.0
CHUNK = 1 << 20  # sync: bytes per read/write
PROGRESS_S = 2.0  # sync: seconds between progress events per host
PARTIAL = ".partial"
MiB = float(1 << 20)

# ---------------------------------------------------------------- the host-side program

# agents/model_hasher.py, sent as `python3 -c PROGRAM ROOT [options]`
PROGRAM = (resources.files("orchestrate.agents") / "model_hasher.py").read_text(encoding="utf-8")


# ---------------------------------------------------------------- data


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
            return HostError(
                self.host,
                text,
                hint="orchestrate model sync --from local --dir DIR (a good copy on this machine)",
            )
        return HostError(
            self.host,
            text,
            hint="orchestrate model sync (copies only the missing "
            "and differing files, from the head or from this machine)",
        )

    def as_dict(self) -> dict[str, Any]:
        ls = self.listing
        return {
            "host": self.host,
            "ok": self.ok,
            "exists": ls.exists,
            "method": ls.method,
            "files": len(ls.files),
            "bytes": ls.total_bytes,
            "config_json": self.config_json,
            "hashed": ls.hashed,
            "cached": ls.cached,
            "bytes_read": ls.bytes_read,
            "seconds": round(ls.seconds, 3),
            "missing": self.files_of("missing"),
            "extra": self.files_of("extra"),
            "size_mismatch": self.files_of("size"),
            "sha256_mismatch": self.files_of("sha256"),
            "unreadable": self.files_of("unreadable"),
            "partials": sorted(ls.partials),
            "problems": [p.message for p in self.problems],
            "sha256": {name: f.sha256 for name, f in sorted(ls.files.items())},
        }


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
        return {
            "ok": self.ok,
            "path": self.path,
            "reference": self.reference,
            "seconds": round(self.seconds, 3),
            "hosts": [h.as_dict() for h in self.hosts],
        }

    def lines(self) -> list[str]:
        out = [f"model {self.path}, compared with {self.reference}"]
        width = max((len(h.host) for h in self.hosts), default=4)
        for h in self.hosts:
            ls = h.listing
            how = f"{ls.hashed} hashed ({_size(ls.bytes_read)} read), {ls.cached} cached"
            if ls.method != "python3":
                how += f", via {ls.method}"
            state = "ok" if h.ok else "FAILED"
            out.append(
                f"{h.host:<{width}}  {state:<6}  {len(ls.files)} files, "
                f"{_size(ls.total_bytes)}; {how}; {ls.seconds:.2f}s"
            )
            out += [f"{'':<{width}}  {'warning' if not p.fatal else '':<6}  {p.message}" for p in h.problems]
        bad = sum(not h.ok for h in self.hosts)
        out.append(
            "ok: every host has the same model"
            if self.ok
            else f"FAILED on {bad} host(s); fix: orchestrate model sync"
        )
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
        return {
            "host": self.host,
            "copied": [c.file for c in self.copied],
            "bytes": self.bytes,
            "resumed": {c.file: c.resumed_from for c in self.copied if c.resumed_from},
            "matching": self.matching,
            "extra": list(self.extra),
            "seconds": round(self.seconds, 3),
            "mib_per_s": round(rate, 1),
        }


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
        return {
            "ok": self.ok,
            "source": self.source,
            "seconds": round(self.seconds, 3),
            "hosts": [h.as_dict() for h in self.hosts],
            "verify": self.verify.as_dict(),
        }

    def lines(self) -> list[str]:
        out = [f"sync from {self.source}"]
        for h in self.hosts:
            if not h.copied:
                out.append(f"{h.host}: nothing to copy ({h.matching} files already match)")
                continue
            rate = h.bytes / MiB / h.seconds if h.seconds > 0 else 0.0
            out.append(
                f"{h.host}: copied {len(h.copied)} file(s), {_size(h.bytes)} in "
                f"{h.seconds:.1f}s ({rate:.1f} MiB/s); {h.matching} already matched"
            )
            if h.extra:
                out.append(
                    f"{h.host}: left {len(h.extra)} file(s) the source does not have: "
                    f"{', '.join(h.extra[:5])}"
                )
        return out + self.verify.lines()


# ---------------------------------------------------------------- manifest and comparison


# ---------------------------------------------------------------- hashing on a host


def _listing(host: str, data: Any, method: Literal["python3", "sha256sum"] = "python3") -> Listing:
    try:
        files = {str(k): FileInfo(int(v[0]), str(v[2]), int(v[1])) for k, v in data["files"].items()}
        return Listing(
            host=host,
            root=str(data["root"]),
            exists=bool(data["exists"]),
            files=files,
            partials={str(k): int(v) for k, v in data.get("partials", {}).items()},
            errors={str(k): str(v) for k, v in data.get("errors", {}).items()},
            manifest_text=data.get("manifest"),
            bytes_read=int(data.get("bytes_read", 0)),
            hashed=int(data.get("hashed", 0)),
            cached=int(data.get("cached", 0)),
            seconds=float(data.get("seconds", 0.0)),
            method=method,
            cache_error=data.get("cache_error"),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise HostError(host, f"the hashing program printed an unexpected document ({exc!r})") from None


def _program_argv(
    python: str, root: str, *, manifest: str | None, rehash: bool, use_cache: bool, only: Sequence[str] = ()
) -> list[str]:
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


def host_listing(
    s: Session,
    node: NodePlan,
    *,
    python: str = "python3",
    rehash: bool = False,
    use_cache: bool = True,
    timeout: float = HASH_TIMEOUT_S,
) -> Listing:
    """Hash the model directory on one host (the python program, or find + sha256sum)."""
    root = s.plan.model_host_path
    argv = _program_argv(python, root, manifest=s.plan.model_manifest, rehash=rehash, use_cache=use_cache)
    try:
        res = s.runner(node).run(argv, timeout=timeout, check=False)
    except RemoteCommandError:  # without check, only the deadline raises
        raise HostError(
            node.host,
            f"hashing {root} did not finish within {timeout:g}s",
            hint="check the disk (slow? failing?) or allow a longer timeout",
        ) from None
    if _no_python(res.exited, res.stderr):
        s.events(
            "verify",
            node.host,
            f"{python} not found: falling back to find + sha256sum (no cache, one file at a time)",
        )
        return _fallback_listing(s, node, timeout)
    if not res.ok:
        raise HostError(
            node.host,
            f"hashing {root} failed (exit {res.exited}): {res.tail(3)}",
            hint=f"run it by hand: {python} -c '...' {root}",
        )
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
    found = runner.run(
        [
            "find",
            root,
            "-mindepth",
            "1",
            "-type",
            "d",
            "-name",
            ".*",
            "-prune",
            "-o",
            "-type",
            "f",
            "-printf",
            "%s %T@ %P\\0",
        ],
        timeout=300,
        check=False,
    )
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
    return Listing(
        node.host,
        root,
        True,
        files,
        partials,
        errors,
        manifest,
        bytes_read=sum(f.size for f in files.values()),
        hashed=len(files),
        seconds=time.monotonic() - t0,
        method="sha256sum",
    )


def _sha256sum(s: Session, node: NodePlan, root: str, names: Sequence[str], timeout: float) -> dict[str, str]:
    """{name: sha256} with the host's sha256sum, in batches (argv length); unreadable names absent."""
    out: dict[str, str] = {}
    for i in range(0, len(names), 200):
        batch = names[i : i + 200]
        res = s.runner(node).run(
            ["sha256sum", "--", *(f"{root}/{n}" for n in batch)], timeout=timeout, check=False
        )
        if res.exited == 127:
            raise HostError(
                node.host,
                "neither python3 nor sha256sum is installed",
                hint="install python3 (or coreutils) on this host",
            )
        for _, name, digest in sum_lines(res.stdout, f"{node.host}: sha256sum output"):
            out[name.removeprefix(root + "/")] = digest
    return out


def _local_listing(
    root: Path, manifest: str | None, *, rehash: bool = False, timeout: float = LOCAL_HASH_TIMEOUT_S
) -> Listing:
    """The same program on this machine (sync --from local)."""
    argv = _program_argv(sys.executable, str(root), manifest=manifest, rehash=rehash, use_cache=True)
    try:
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
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
    s.events(
        "verify",
        listing.host,
        f"{len(listing.files)} files, {_size(listing.total_bytes)}: "
        f"{listing.hashed} hashed ({_size(listing.bytes_read)}, {rate:.0f} MiB/s), "
        f"{listing.cached} from cache, {listing.seconds:.2f}s",
    )


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
        raise PhaseError(
            "verify",
            [
                HostError(
                    listing.host,
                    str(exc),
                    hint=f"regenerate it: cd {s.plan.model_host_path} && sha256sum *.safetensors > {name}",
                )
            ],
        ) from None


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
    listings = _survey(
        s, survey, "verify", python=python, rehash=rehash, use_cache=use_cache, timeout=timeout
    )
    sums = _manifest(s, listings, manifest)
    head = listings[plan.head.host]
    ref = build_reference(head, sums)
    checks = tuple(
        HostCheck(
            n.host, listings[n.host], compare(listings[n.host], ref, head.host), head=n.host == head.host
        )
        for n in wanted
    )
    report = VerifyReport(plan.model_host_path, ref.label, checks, time.monotonic() - t0)
    for h in checks:
        s.events("verify", h.host, "ok" if h.ok else f"FAILED {h.error().message.split(': ', 1)[1]}")
    if check and not report.ok:
        raise ModelMismatch(report)
    return report


# ---------------------------------------------------------------- sync


@dataclass(frozen=True)
class _Source:
    name: str  # "hb1" or "this machine (DIR)"
    root: str
    listing: Listing
    open: Callable[[], Files]  # a fresh endpoint per target thread (SFTP clients are not shared)


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
        self.s.events(
            "sync", self.host, f"{verb} {name}: {done / MiB:.1f}/{total / MiB:.1f} MiB ({rate:.1f} MiB/s)"
        )


def _copy(
    src: Files, src_path: str, dst: Files, dst_path: str, size: int, name: str, progress: _Progress
) -> CopiedFile:
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
                block = reader.read(min(CHUNK, size - done))
                if not block:
                    raise HostError(
                        src.host,
                        f"{src_path} ended at {done} of {size} bytes (did it change during the sync?)",
                    )
                writer.write(block)
                done += len(block)
                progress(name, done - have, size - have, t0)
        finally:
            writer.close()  # pipelined writes report their errors here
    finally:
        reader.close()
    progress(name, size - have, size - have, t0, final=True)
    return CopiedFile(name, size - have, have, time.monotonic() - t0)


def _hash_on(s: Session, node: NodePlan, names: Sequence[str], python: str, timeout: float) -> dict[str, str]:
    """sha256 of a few files (the .partials) on the host, no cache."""
    root = s.plan.model_host_path
    res = s.runner(node).run(
        _program_argv(python, root, manifest=None, rehash=True, use_cache=False, only=names),
        timeout=timeout,
        check=False,
    )
    if _no_python(res.exited, res.stderr):
        return _sha256sum(s, node, root.rstrip("/"), names, timeout)
    if not res.ok:
        raise HostError(node.host, f"hashing the copied files failed: {res.tail(3)}")
    return {k: v.sha256 for k, v in _listing(node.host, _decode(node.host, res.stdout)).files.items()}


def _sync_host(
    s: Session, node: NodePlan, src: _Source, source: Files, todo: Sequence[str], python: str, timeout: float
) -> list[CopiedFile]:
    """Copy `todo` from `source` (this thread's own endpoint) to the host; closes `source`."""
    root = s.plan.model_host_path
    dirs = sorted({posixpath.dirname(posixpath.join(root, n)) for n in todo})
    progress = _Progress(s, node.host)
    try:
        s.runner(node).run(["mkdir", "-p", "--", *dirs], timeout=60)
        dst = files_for(node.host, s.runner(node), node.ssh.command_timeout)
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
                copied.append(
                    _copy(source, posixpath.join(src.root, name), dst, partial, size, name, progress)
                )
            sums = _hash_on(s, node, [n + PARTIAL for n in pending], python, timeout)
            bad = [n for n in pending if sums.get(n + PARTIAL) != src.listing.files[n].sha256]
            for name in pending:
                if name not in bad:
                    dst.replace(posixpath.join(root, name + PARTIAL), posixpath.join(root, name))
            for name in bad:  # a stale or damaged .partial: drop it and copy once more from 0
                dst.remove(posixpath.join(root, name + PARTIAL))
            if bad and attempt == 1:
                s.events(
                    "sync",
                    node.host,
                    f"sha256 of {', '.join(bad)} did not match after the copy; copying again from the start",
                )
            pending = bad
            if not pending:
                break
        if pending:
            raise HostError(
                node.host,
                f"{pending[0]}: sha256 still differs after copying it twice from {src.name}",
                hint="check the disk and memory of this host",
            )
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
        return _Source(f"this machine ({local_dir})", str(local_dir), listing, lambda: LocalFiles("local"))
    head = plan.head
    return _Source(
        head.host,
        plan.model_host_path,
        listings[head.host],
        lambda: files_for(head.host, s.runner(head), head.ssh.command_timeout),
    )


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
        s.events(
            "sync",
            node.host,
            f"{len(plans[node.host])} file(s) to copy ({_size(total)}) from {src.name}"
            if plans[node.host]
            else "already matches; nothing to copy",
        )
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
            s.events(
                "sync",
                h.host,
                f"done: {len(h.copied)} file(s), {_size(h.bytes)} in {h.seconds:.1f}s ({rate:.1f} MiB/s)",
            )
    report = verify(s, nodes or plan.nodes, manifest=manifest, check=False, python=python, timeout=timeout)
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
