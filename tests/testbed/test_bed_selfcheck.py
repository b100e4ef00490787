"""Self-check of the multi-host test bed: proves the fake hosts are real enough.

Runs on its OWN bed (10.124.0.0/24, bridge orchsc0, /var/tmp/orchestrate-bed-selfcheck), so it
neither disturbs nor depends on the session bed of tests/conftest.py (default 10.123.0.0/24), and
it takes only that bed down. Needs root; ~20 s when the base image exists (cold build: ~1 min more).
"""

from __future__ import annotations

import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import BASE_IMAGE, TestBed, bed_unavailable_reason, ensure_base_image

pytestmark = [pytest.mark.bed]

_reason = bed_unavailable_reason()
if _reason:
    pytestmark.append(pytest.mark.skip(reason=_reason))


SELFCHECK_BASE = Path("/var/tmp/orchestrate-bed-selfcheck")
SELFCHECK_NET = "10.124.0"
SELFCHECK_BRIDGE = "orchsc0"


@pytest.fixture(scope="module")
def selfbed() -> Iterator[TestBed]:
    bed = TestBed(SELFCHECK_BASE, net=SELFCHECK_NET, bridge=SELFCHECK_BRIDGE)
    bed.down()  # leftovers of an interrupted run
    hosts = bed.up(3)
    assert [h.name for h in hosts] == ["hb1", "hb2", "hb3"]
    try:
        yield bed
    finally:
        bed.down()


def _ssh(bed: TestBed, address: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh",
            "-i",
            str(bed.key_path),
            "-o",
            f"UserKnownHostsFile={bed.known_hosts_path}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=5",
            "-F",
            "/dev/null",
            f"root@{address}",
            *cmd,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_three_hosts_up(selfbed: TestBed) -> None:
    assert [(h.index, h.address, h.nic) for h in selfbed.hosts] == [
        (1, f"{SELFCHECK_NET}.11", "eth0"),
        (2, f"{SELFCHECK_NET}.12", "eth0"),
        (3, f"{SELFCHECK_NET}.13", "eth0"),
    ]
    for h in selfbed.hosts:
        cp = selfbed.run(h.index, "hostname")
        assert cp.returncode == 0 and cp.stdout.strip() == h.name, cp


def test_ssh_strict_host_key(selfbed: TestBed) -> None:
    cp = _ssh(selfbed, f"{SELFCHECK_NET}.12", "hostname")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.strip() == "hb2"


def test_paramiko_reject_policy(selfbed: TestBed) -> None:
    paramiko = pytest.importorskip("paramiko")
    client = paramiko.SSHClient()
    client.load_host_keys(str(selfbed.known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        f"{SELFCHECK_NET}.13",
        username="root",
        key_filename=str(selfbed.key_path),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
        banner_timeout=5,
        auth_timeout=5,
    )
    try:
        _, out, _ = client.exec_command("hostname", timeout=10)
        assert out.read().decode().strip() == "hb3"
    finally:
        client.close()


def test_docker_engine_per_host(selfbed: TestBed) -> None:
    names = []
    for h in selfbed.hosts:
        cp = selfbed.docker(h.index, "info", "--format", "{{.Name}}")
        assert cp.returncode == 0, cp.stderr
        names.append(cp.stdout.strip())
    assert names == ["hb1", "hb2", "hb3"]
    # and over ssh, the plain `docker` on a host talks to that host's engine
    cp = _ssh(selfbed, f"{SELFCHECK_NET}.11", "docker", "info", "--format", "{{.Name}}")
    assert cp.returncode == 0 and cp.stdout.strip() == "hb1", cp.stderr


def test_host_network_container_sees_host_address(selfbed: TestBed) -> None:
    image = ensure_base_image(BASE_IMAGE)
    selfbed.seed(image, hosts=[2])
    ip_cmd = ("ip", "-4", "-o", "addr", "show", "dev", "eth0")
    cp = selfbed.docker(2, "run", "--rm", "--network", "host", image, *ip_cmd)
    assert cp.returncode == 0, cp.stderr
    assert f"{SELFCHECK_NET}.12/24" in cp.stdout
    assert selfbed.docker(3, "image", "inspect", image).returncode != 0  # seeded on host 2 only


def test_private_and_shared_dirs(selfbed: TestBed) -> None:
    name = f"selfcheck-{uuid.uuid4().hex[:8]}"
    (selfbed.private_dir(2) / name).write_text("only on hb2\n")
    (selfbed.shared_dir / name).write_text("everywhere\n")
    assert selfbed.run(2, "cat", f"/srv/bed-private/{name}").stdout == "only on hb2\n"
    assert selfbed.run(3, "test", "-e", f"/srv/bed-private/{name}").returncode == 1
    assert selfbed.run(3, "cat", str(selfbed.shared_dir / name)).stdout == "everywhere\n"
    # /tmp is private as well
    assert selfbed.run(2, "sh", "-c", f"echo x > /tmp/{name}").returncode == 0
    assert selfbed.run(3, "test", "-e", f"/tmp/{name}").returncode == 1
    assert not Path(f"/tmp/{name}").exists()


def test_partition_blackholes_ssh_port(selfbed: TestBed) -> None:
    addr = selfbed.host(3).address
    socket.create_connection((addr, 22), timeout=3).close()
    selfbed.fault("partition", 3)
    try:
        with pytest.raises(TimeoutError):
            socket.create_connection((addr, 22), timeout=2).close()
    finally:
        selfbed.fault("heal", 3)
    socket.create_connection((addr, 22), timeout=3).close()


def test_down_leaves_nothing(selfbed: TestBed) -> None:
    selfbed.down()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10).stdout
    assert f"{selfbed.bridge}-hb" not in netns
    bridge = subprocess.run(["ip", "link", "show", selfbed.bridge], capture_output=True, timeout=10)
    assert bridge.returncode != 0
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10).stdout
    assert f"{selfbed.bridge}h" not in links
    assert not list(Path("/sys/fs/cgroup/freezer").glob(f"{selfbed.cgroup_prefix}*"))
    rules = subprocess.run(["iptables", "-w", "10", "-S"], capture_output=True, text=True, timeout=30).stdout
    assert f"BED-{selfbed.bridge}" not in rules
    assert not (selfbed.base / "hosts").exists()
