"""`model verify` / `model sync` (orchestrate.ops.modelcheck) on a real 3-host bed, plus pure unit tests.

The bed is this module's own (10.125.0.0/24, bridge orchmc0, /var/tmp/orchestrate-bed-mc), so it
neither disturbs nor depends on the session bed. Each host gets its own copy of a small fake model
in its private /srv/bed-private, so hosts can differ: a config.json, three 3 MiB shards and a
sum.txt written by sha256sum, with mtimes in the past (fresh mtimes are never cached: racy).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrate.core.inventory import parse
from orchestrate.core.plan import Plan, build_plan
from orchestrate.host.session import Session
from orchestrate.ops import modelcheck
from orchestrate.ops.modelcheck import (
    FileInfo,
    Listing,
    ModelMismatch,
    build_reference,
    compare,
    parse_manifest,
)
from tests.conftest import need_bed, own_bed
from tests.testbed import TestBed

MC_BASE = Path("/var/tmp/orchestrate-bed-mc")
MC_NET = "10.125.0"
MC_BRIDGE = "orchmc0"
MODEL = "fake"
SHARDS = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
SHARD_BYTES = 3 << 20
OLD = time.time() - 86400  # mtimes of the seeded files: a day ago


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mcbed() -> Iterator[TestBed]:
    need_bed()
    with own_bed(TestBed(base=MC_BASE, net=MC_NET, bridge=MC_BRIDGE), 3) as bed:
        yield bed


@pytest.fixture(scope="module")
def plan(mcbed: TestBed) -> Plan:
    hosts = [
        {
            "name": h.name,
            "address": h.address,
            "role": "head" if h.index == 1 else "worker",
            "gpus": 1,
            "nic": h.nic,
        }
        for h in mcbed.hosts
    ]
    data = {
        "name": "mctest",
        "image": "orchestrate/ray:2.60.0",
        "images": {"source": "local"},
        "backend": "mp",
        "accelerator": "cpu",
        "ssh": {
            "key": str(mcbed.key_path),
            "known_hosts": str(mcbed.known_hosts_path),
            "connect_timeout": 5,
            "command_timeout": 60,
        },
        "model": {"host_dir": "/srv/bed-private", "name": MODEL, "manifest": "sum.txt"},
        "serve": {"tensor_parallel_size": 1, "pipeline_parallel_size": 3},
        "hosts": hosts,
    }
    return build_plan(parse(data))


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model as it should be, on this machine."""
    d = tmp_path_factory.mktemp("golden") / MODEL
    d.mkdir()
    (d / "config.json").write_text('{"architectures": ["FakeForCausalLM"]}\n', encoding="utf-8")
    for name in SHARDS:
        (d / name).write_bytes(os.urandom(SHARD_BYTES))
    sums = subprocess.run(
        ["sha256sum", *SHARDS], cwd=d, capture_output=True, text=True, check=True, timeout=60
    )
    (d / "sum.txt").write_text(sums.stdout, encoding="utf-8")
    for f in d.iterdir():
        os.utime(f, (OLD, OLD))
    return d


@pytest.fixture
def model(mcbed: TestBed, golden: Path) -> list[Path]:
    """A fresh, identical copy on every host; returns the root-namespace dir of each (index 0 = hb1)."""
    dirs = []
    for i in (1, 2, 3):
        dst = mcbed.private_dir(i) / MODEL
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(golden, dst)  # copy2: the old mtimes come along
        dirs.append(dst)
    return dirs


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, str]] = []
        self._lock = threading.Lock()

    def __call__(self, phase: str, host: str | None, message: str) -> None:
        with self._lock:
            self.events.append((phase, host, message))

    def text(self) -> str:
        return "\n".join(f"{p} {h}: {m}" for p, h, m in self.events)


@pytest.fixture
def session(plan: Plan) -> Iterator[tuple[Session, Recorder]]:
    rec = Recorder()
    with Session(plan, rec) as s:
        yield s, rec


def flip_byte(path: Path, offset: int = 123_457) -> None:
    """Corrupt one byte in place: same size."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


# ---------------------------------------------------------------- verify on the bed


@pytest.mark.bed
def test_identical_hosts_verify_ok(session: tuple[Session, Recorder], model: list[Path]) -> None:
    s, rec = session
    report = modelcheck.verify(s)
    assert report.ok, report.lines()
    assert report.reference.startswith("sum.txt")
    data = report.as_dict()
    assert [h["host"] for h in data["hosts"]] == ["hb1", "hb2", "hb3"]
    for h in data["hosts"]:
        assert h["ok"] and h["config_json"] and h["files"] == 5 and h["method"] == "python3"
        assert h["bytes"] == 3 * SHARD_BYTES + sum(
            f.stat().st_size for f in model[0].iterdir() if not f.name.endswith(".safetensors")
        )
    assert data["hosts"][0]["sha256"] == data["hosts"][2]["sha256"]
    assert any(h == "hb2" and "files" in m for _, h, m in rec.events), rec.text()


@pytest.mark.bed
def test_corrupted_shard_on_hb2_is_named(session: tuple[Session, Recorder], model: list[Path]) -> None:
    s, _ = session
    flip_byte(model[1] / SHARDS[2])
    with pytest.raises(ModelMismatch) as info:
        modelcheck.verify(s)
    err = info.value
    assert [getattr(f, "host", None) for f in err.failures] == ["hb2"]
    line = err.failures[0].message
    assert line.startswith(f"hb2: {SHARDS[2]}: sha256 differs from sum.txt ("), line
    assert "model sync" in (err.failures[0].hint or "")
    hosts = {h["host"]: h for h in err.report.as_dict()["hosts"]}
    assert hosts["hb2"]["sha256_mismatch"] == [SHARDS[2]]
    assert hosts["hb2"]["size_mismatch"] == [] and hosts["hb2"]["missing"] == []
    assert hosts["hb1"]["ok"] and hosts["hb3"]["ok"]
    text = "\n".join(err.report.lines())
    print(text)
    assert "hb2  FAILED" in text and f"{SHARDS[2]}: sha256 differs" in text


@pytest.mark.bed
def test_missing_file_on_hb3_is_named(session: tuple[Session, Recorder], model: list[Path]) -> None:
    s, _ = session
    (model[2] / SHARDS[0]).unlink()
    report = modelcheck.verify(s, check=False)
    assert not report.ok
    bad = [h for h in report.hosts if not h.ok]
    assert [h.host for h in bad] == ["hb3"]
    assert bad[0].files_of("missing") == [SHARDS[0]]
    assert bad[0].error().message == f"hb3: {SHARDS[0]}: missing (present in sum.txt)"
    with pytest.raises(ModelMismatch, match="hb3"):
        modelcheck.verify(s)


@pytest.mark.bed
def test_cached_reverify_reads_nothing(session: tuple[Session, Recorder], model: list[Path]) -> None:
    s, _ = session
    first = modelcheck.verify(s)
    assert all(h.listing.bytes_read >= 3 * SHARD_BYTES for h in first.hosts)  # fresh copies: hashed
    t0 = time.monotonic()
    second = modelcheck.verify(s)
    elapsed = time.monotonic() - t0
    for a, b in zip(first.hosts, second.hosts, strict=True):
        assert b.listing.bytes_read == 0 and b.listing.hashed == 0, b.as_dict()
        assert b.listing.cached == 5
        assert b.listing.files == a.listing.files
    assert second.ok
    print(f"cached re-verify of 3 hosts: {elapsed:.3f}s")
    # --rehash ignores the cache
    third = modelcheck.verify(s, rehash=True)
    assert all(h.listing.bytes_read >= 3 * SHARD_BYTES for h in third.hosts)


@pytest.mark.bed
def test_modified_file_is_rehashed(session: tuple[Session, Recorder], model: list[Path]) -> None:
    s, _ = session
    modelcheck.verify(s)  # fills every host's cache
    target = model[1] / SHARDS[0]
    flip_byte(target)
    os.utime(target, (OLD + 60, OLD + 60))  # a new mtime, old enough to be cached again
    report = modelcheck.verify(s, check=False)
    hb2 = report.host("hb2")
    assert hb2.listing.hashed == 1 and hb2.listing.bytes_read == SHARD_BYTES
    assert hb2.files_of("sha256") == [SHARDS[0]]
    assert report.host("hb1").listing.bytes_read == 0 and report.host("hb1").ok
    again = modelcheck.verify(s, check=False)  # the new sum is cached: still wrong, read nothing
    assert again.host("hb2").listing.bytes_read == 0
    assert again.host("hb2").files_of("sha256") == [SHARDS[0]]


@pytest.mark.bed
def test_without_python3_falls_back_to_sha256sum(
    session: tuple[Session, Recorder], model: list[Path]
) -> None:
    s, rec = session
    flip_byte(model[2] / SHARDS[1])
    report = modelcheck.verify(s, python="python3-not-installed", check=False)
    assert {h.listing.method for h in report.hosts} == {"sha256sum"}
    assert [h.host for h in report.hosts if not h.ok] == ["hb3"]
    assert report.host("hb3").files_of("sha256") == [SHARDS[1]]
    by_python = modelcheck.verify(s, check=False).host("hb3").listing.files
    assert {n: (f.size, f.sha256) for n, f in report.host("hb3").listing.files.items()} == {
        n: (f.size, f.sha256) for n, f in by_python.items()
    }
    assert "falling back to find + sha256sum" in rec.text()


# ---------------------------------------------------------------- sync on the bed


@pytest.mark.bed
def test_sync_from_head_repairs_hosts(session: tuple[Session, Recorder], model: list[Path]) -> None:
    s, rec = session
    flip_byte(model[1] / SHARDS[1])
    (model[2] / SHARDS[2]).unlink()
    (model[2] / "config.json").unlink()
    untouched = {p: identity(p) for p in (model[1] / SHARDS[0], model[2] / SHARDS[0], model[0] / SHARDS[1])}
    report = modelcheck.sync(s, "head")
    assert report.ok, report.lines()
    copied = {h.host: sorted(c.file for c in h.copied) for h in report.hosts}
    assert copied == {"hb2": [SHARDS[1]], "hb3": sorted(["config.json", SHARDS[2]])}
    assert all(identity(p) == ident for p, ident in untouched.items())  # matching files untouched
    assert not list(model[1].glob("*.partial")) and not list(model[2].glob("*.partial"))
    assert (model[2] / SHARDS[2]).read_bytes() == (model[0] / SHARDS[2]).read_bytes()
    assert "MiB/s" in rec.text()
    assert modelcheck.verify(s).ok  # and once more, independently


@pytest.mark.bed
def test_sync_resumes_a_partial_file(session: tuple[Session, Recorder], model: list[Path]) -> None:
    s, _ = session
    name = SHARDS[1]
    half = SHARD_BYTES // 2 + 12345
    content = (model[0] / name).read_bytes()
    (model[2] / name).unlink()
    (model[2] / f"{name}.partial").write_bytes(content[:half])  # an interrupted earlier sync
    report = modelcheck.sync(s, "head")
    hb3 = next(h for h in report.hosts if h.host == "hb3")
    assert [(c.file, c.resumed_from, c.bytes) for c in hb3.copied] == [(name, half, SHARD_BYTES - half)]
    assert (model[2] / name).read_bytes() == content
    assert not (model[2] / f"{name}.partial").exists()
    assert report.ok


@pytest.mark.bed
def test_sync_discards_a_damaged_partial(session: tuple[Session, Recorder], model: list[Path]) -> None:
    s, rec = session
    name = SHARDS[0]
    (model[1] / name).unlink()
    (model[1] / f"{name}.partial").write_bytes(os.urandom(1000))  # not a prefix of the file
    report = modelcheck.sync(s, "head")
    assert report.ok
    assert (model[1] / name).read_bytes() == (model[0] / name).read_bytes()
    assert "copying again from the start" in rec.text()


@pytest.mark.bed
def test_sync_from_local_dir(session: tuple[Session, Recorder], model: list[Path], golden: Path) -> None:
    s, _ = session
    shutil.rmtree(model[2])  # hb3 has no model at all
    flip_byte(model[0] / SHARDS[0])  # and the head's copy is damaged
    with pytest.raises(ModelMismatch) as info:
        modelcheck.verify(s)
    assert sorted(getattr(f, "host", "") for f in info.value.failures) == ["hb1", "hb3"]
    assert "does not exist" in info.value.report.host("hb3").error().message
    report = modelcheck.sync(s, "local", golden)
    copied = {h.host: sorted(c.file for c in h.copied) for h in report.hosts}
    assert copied == {"hb1": [SHARDS[0]], "hb2": [], "hb3": sorted(p.name for p in golden.iterdir())}
    assert report.ok


@pytest.mark.bed
def test_sync_refuses_a_bad_source(session: tuple[Session, Recorder], model: list[Path]) -> None:
    s, _ = session
    flip_byte(model[0] / SHARDS[2])  # the head no longer matches its sum.txt
    (model[1] / SHARDS[0]).unlink()
    with pytest.raises(modelcheck.OrchestrateError, match="not a good copy"):
        modelcheck.sync(s, "head")
    assert not (model[1] / SHARDS[0]).exists()


# ---------------------------------------------------------------- pure


def _ls(host: str, files: dict[str, tuple[int, str]], exists: bool = True) -> Listing:
    return Listing(host, "/m", exists, {n: FileInfo(size, sha) for n, (size, sha) in files.items()})


def test_parse_manifest_formats() -> None:
    a, b, c = "a" * 64, "B" * 64, "c" * 64
    text = f"{a}  model-1.safetensors\n{b} *./model-2.safetensors\n\n\\{c}  odd\\\\name\\n.bin\n"
    text += f"SHA256 (sub/x.json) = {a}\n"
    assert parse_manifest(text) == {
        "model-1.safetensors": a,
        "model-2.safetensors": "b" * 64,
        "odd\\name\n.bin": c,
        "sub/x.json": a,
    }
    with pytest.raises(ValueError, match="line 1"):
        parse_manifest("nothing here\n")
    with pytest.raises(ValueError, match="outside"):
        parse_manifest(f"{a}  ../etc/passwd\n")


def test_compare_manifest_and_head() -> None:
    head = _ls("hb1", {"config.json": (2, "1" * 64), "w.safetensors": (10, "a" * 64)})
    ref = build_reference(head, ("sum.txt", {"w.safetensors": "a" * 64}))
    assert compare(head, ref, "hb1") == ()
    worker = _ls("hb2", {"config.json": (2, "1" * 64), "w.safetensors": (9, "b" * 64), "x": (1, "0" * 64)})
    kinds = [(p.kind, p.file) for p in compare(worker, ref, "hb1")]
    assert kinds == [("size", "w.safetensors"), ("extra", "x")]
    missing = compare(_ls("hb3", {}, exists=False), ref, "hb1")
    assert [p.kind for p in missing] == ["no-dir"]
    no_config = build_reference(_ls("hb1", {"w": (1, "a" * 64)}), None)
    assert [p.kind for p in compare(_ls("hb1", {"w": (1, "a" * 64)}), no_config, "hb1")] == ["no-config"]
