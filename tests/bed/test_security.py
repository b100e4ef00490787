"""Reliability and security on the test bed (issue 6): host keys, shell injection, concurrent runs,
Ctrl-C in the middle of `up`."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import RUN_CACHE, background, bed_inventory, orch, orch_json, orch_popen, ps, until
from tests.testbed import TestBed

pytestmark = [pytest.mark.bed, pytest.mark.slow]


@pytest.fixture(scope="module")
def ray2(
    bed: TestBed, ray_image: str, ray_model: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return bed_inventory(
        bed,
        tmp_path_factory.mktemp("sec") / "ray2.yaml",
        2,
        name="sectest",
        image=ray_image,
        backend="ray",
        model=ray_model,
        ray={"object_store_memory": "200Mi", "join_timeout": 120},
        serve={"tensor_parallel_size": 1, "pipeline_parallel_size": 2, "start": False},
    )


def _with(path: Path, tmp: Path, **ssh: str) -> Path:
    data = yaml.safe_load(path.read_text())
    data["ssh"].update(ssh)
    out = tmp / "variant.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def test_unknown_host_key_is_refused_with_how_to_trust_it(bed: TestBed, ray2: Path, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    res = orch("up", str(_with(ray2, tmp_path, known_hosts=str(empty))), timeout=60)
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert f"host key of {bed.hosts[0].address} is unknown" in res.stderr
    assert "ssh-keyscan" in res.stderr and "accept-new" in res.stderr
    assert empty.read_text() == ""


def test_changed_host_key_is_refused_even_with_accept_new(bed: TestBed, ray2: Path, tmp_path: Path) -> None:
    wrong = tmp_path / "known_hosts"
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fake = other.with_suffix(".pub").read_text().split()[:2]
    lines = [
        line
        for line in bed.known_hosts_path.read_text().splitlines()
        if not line.startswith(bed.hosts[1].address)
    ]
    wrong.write_text("\n".join([*lines, f"{bed.hosts[1].address} {' '.join(fake)}"]) + "\n")
    for policy in ("strict", "accept-new"):
        path = _with(ray2, tmp_path, known_hosts=str(wrong), host_key_policy=policy)
        res = orch("preflight", str(path), timeout=60)
        assert res.returncode == 1
        assert "hb2" in res.stdout + res.stderr and "CHANGED" in res.stdout + res.stderr


def test_accept_new_trusts_on_first_use_and_records_the_key(bed: TestBed, ray2: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "known_hosts"
    res = orch(
        "preflight",
        str(_with(ray2, tmp_path, known_hosts=str(fresh), host_key_policy="accept-new")),
        timeout=60,
    )
    assert res.returncode == 0, res.stdout
    recorded = fresh.read_text()
    assert all(f"{h.address} ssh-ed25519" in recorded for h in bed.hosts[:2])


CANARY = "/tmp/orchestrate-pwned"  # /tmp is private per host: checked on each host and here


def test_inventory_values_never_reach_a_shell(bed: TestBed, ray2: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(ray2.read_text())
    evil = f"x'; touch {CANARY}; echo '$(touch {CANARY})`touch {CANARY}`"
    data["env"] = {"EVIL": evil, "EVIL2": f"$(touch {CANARY})"}
    data["model"]["served_name"] = evil
    data["serve"] = {
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 2,
        "start": True,
        "extra_args": [f"--x=$(touch {CANARY})", f"; touch {CANARY}"],
        "startup_timeout": 30,
    }
    path = tmp_path / "evil.yaml"
    path.write_text(yaml.safe_dump(data))
    for args in (["preflight"], ["up"], ["status"], ["down"]):
        orch(*args, str(path), timeout=300)
    for i in (1, 2):
        assert bed.run(i, "test", "-e", CANARY).returncode == 1, f"injected on hb{i}"
    assert not Path(CANARY).exists()
    assert all(ps(bed, i) == [] for i in (1, 2))


def test_two_ups_at_once_one_refuses(bed: TestBed, ray2: Path) -> None:
    lock = RUN_CACHE / "orchestrate" / "locks" / "sectest.lock"
    with background("up", str(ray2)) as first:
        # the holder writes its pid into the lock file once it holds the lock
        until(
            lambda: (
                first.poll() is not None or f"pid {first.pid}" in (lock.read_text() if lock.exists() else "")
            ),
            60,
            "the first up to take the lock",
            0.05,
        )
        assert first.poll() is None, "the first up ended before it took the lock"
        second = orch("up", str(ray2), timeout=60)
        assert second.returncode == 4, second.stderr
        assert "busy" in second.stderr and "orchestrate up" in second.stderr
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    assert orch_json("up", str(ray2), timeout=300)["changes"] == {"hb1": "keep", "hb2": "keep"}
    assert orch("down", str(ray2), timeout=300).returncode == 0


HEAD_LOCK = "/var/tmp/orchestrate-locks/sectest.lock"


def test_an_operator_on_another_machine_is_refused_by_the_lock_on_the_head(
    bed: TestBed, ray2: Path, tmp_path: Path
) -> None:
    """Another machine has its own flock; the lock on the head host is the one they share."""
    with background("up", str(ray2)) as first:
        until(
            lambda: first.poll() is not None or bed.run(1, "cat", f"{HEAD_LOCK}/holder").returncode == 0,
            60,
            "the first up to take the lock on the head",
            0.1,
        )
        assert first.poll() is None, "the first up ended before it took the lock"
        other = tmp_path / "another-machines-cache"  # so its own flock is free
        other.mkdir()
        second = orch("up", str(ray2), timeout=60, env={"XDG_CACHE_HOME": str(other)})
        assert second.returncode == 4, second.stderr
        head = bed.hosts[0].name
        assert f"the lock on the head {head}" in second.stderr, second.stderr
        assert "`orchestrate up` by " in second.stderr and f"pid {first.pid} since" in second.stderr
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    assert bed.run(1, "test", "-e", HEAD_LOCK).returncode != 0  # released when up ended


def test_a_stale_lock_on_the_head_is_broken_and_said(bed: TestBed, ray2: Path) -> None:
    ghost = "`orchestrate up` by ghost@gone pid 1 since long ago"
    made = bed.run(
        1,
        "bash",
        "-c",
        f"mkdir -p {HEAD_LOCK} && printf 'deadbeef\\n%s\\n' '{ghost}' "
        f"> {HEAD_LOCK}/holder && touch -d '-10 minutes' {HEAD_LOCK}/holder",
    )
    assert made.returncode == 0, made.stderr
    try:
        res = orch("up", str(ray2), timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "broke a stale lock" in res.stderr and "ghost@gone" in res.stderr
    finally:
        bed.run(1, "rm", "-rf", HEAD_LOCK)
        orch("down", str(ray2), timeout=300)


def test_ctrl_c_in_the_middle_of_up_leaves_a_state_up_and_down_finish(bed: TestBed, ray2: Path) -> None:
    try:
        with orch_popen("up", str(ray2)) as proc:
            seen = ""
            assert proc.stderr is not None
            deadline = time.monotonic() + 120
            while "creating sectest-head" not in seen and time.monotonic() < deadline:
                line = proc.stderr.readline()
                if not line:
                    break
                seen += line
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, seen + err
        assert "interrupted" in err and "Traceback" not in err
        report = orch_json("up", str(ray2), timeout=300)  # finishes the job
        assert sum(n["gpus"] for n in report["ray_nodes"] if n["alive"]) == 2
    finally:
        assert orch("down", str(ray2), timeout=300).returncode == 0
    assert all(ps(bed, i) == [] for i in (1, 2))
