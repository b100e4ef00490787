"""Multi-host test bed for orchestrate: N fake SSH + Docker hosts on one Linux machine.

Each host ``hbI`` (I = 1..N) is a set of Linux namespaces (net, mount, pid, uts, ipc) created by
``bed.sh`` next to this file, with

* address ``{net}.{10+I}`` on its ``eth0`` (a veth on the bridge ``orchbr0`` = ``{net}.1``); the hosts
  reach each other and the root namespace, nothing is forwarded off the machine;
* its own sshd on port 22 (key-only root login, own ed25519 host key; client key in
  :attr:`TestBed.key_path`, strict known_hosts in :attr:`TestBed.known_hosts_path`, ready-made
  ``ssh -F`` config in :attr:`TestBed.ssh_config_path`);
* its own dockerd + managed containerd with stock default paths (``/var/run/docker.sock``,
  ``/var/lib/docker``, ``/etc/docker/daemon.json``); containers live in cgroup ``/bed-hI``;
* tini as pid 1 (so ``pkill``/``ps`` inside a host only see that host).

Filesystem: hosts share the machine's root filesystem, except private per-host copies of
``/etc/ssh /etc/docker /var/lib/docker /root /var/log /etc/hosts /etc/hostname /etc/resolv.conf
/tmp /srv/bed-private`` and private tmpfs ``/run`` and ``/dev/shm``.

* ``/srv/bed-private`` inside host I is :meth:`TestBed.private_dir` (I) in the root namespace: put a
  file there to make it exist on that one host only (e.g. a model on a single node).
* :attr:`TestBed.shared_dir` (``<base>/shared``, default ``/var/tmp/orchestrate-bed/shared``) is
  the same directory, at the same path, on every host and in the root namespace (like NFS).
* Anything else (``/usr``, ``/opt``, ``/work``...) is shared too: installing software "on one host"
  changes all of them.

Everything here needs root. ``bed.sh down`` (:meth:`TestBed.down`) deletes all per-host state,
so the next ``up`` starts from empty engines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BASE_IMAGE",
    "BED_SH",
    "DEFAULT_BASE",
    "DEFAULT_BRIDGE",
    "DEFAULT_NET",
    "FAULTS",
    "PRIVATE_MOUNT",
    "BedHost",
    "TestBed",
    "bed_unavailable_reason",
    "ensure_base_image",
    "ensure_root_dockerd",
]

HERE = Path(__file__).resolve().parent
BED_SH = HERE / "bed.sh"
DEFAULT_BASE = Path("/var/tmp/orchestrate-bed")
DEFAULT_NET = "10.123.0"
DEFAULT_BRIDGE = "orchbr0"
BASE_IMAGE = "orchestrate/debian-py:bookworm"
#: path, inside every host, of its private directory (see TestBed.private_dir)
PRIVATE_MOUNT = Path("/srv/bed-private")

#: fault kind -> bed.sh arguments ("{i}" = host index)
FAULTS: dict[str, tuple[str, ...]] = {
    "crash": ("crash", "{i}"),
    "boot": ("boot", "{i}"),
    "kill-sshd": ("kill-svc", "{i}", "sshd"),
    "start-sshd": ("start-svc", "{i}", "sshd"),
    "kill-dockerd": ("kill-svc", "{i}", "dockerd"),
    "start-dockerd": ("start-svc", "{i}", "dockerd"),
    "link-down": ("link-down", "{i}"),
    "link-up": ("link-up", "{i}"),
    "partition": ("partition", "{i}"),
    "heal": ("heal", "{i}"),
    "freeze": ("freeze", "{i}"),
    "thaw": ("thaw", "{i}"),
}


@dataclass(frozen=True)
class BedHost:
    index: int
    name: str  # "hb2"
    address: str  # "10.123.0.12"
    nic: str = "eth0"  # the host's only external interface


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with a timeout that kills the whole process group.

    ``bed.sh exec`` goes through nsenter, which forks; killing only the direct child would leave
    the command running inside the host. Raises subprocess.TimeoutExpired like subprocess.run.
    """
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:
            # e.g. the command joined a frozen host: SIGKILL stays pending until thaw; give up
            out, err = "", ""
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        raise subprocess.TimeoutExpired(list(argv), timeout, output=out, stderr=err) from None
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def bed_unavailable_reason() -> str | None:
    """Why the bed cannot run here (for pytest.skip), or None if it can."""
    if os.geteuid() != 0:
        return "the test bed needs root"
    tools = (
        "/usr/bin/docker-init",
        "/usr/bin/nsenter",
        "/usr/bin/unshare",
        "/usr/sbin/dockerd",
        "/usr/sbin/sshd",
    )
    for tool in tools:
        if not os.path.exists(tool):
            return f"{tool} is missing"
    if not os.path.isdir("/sys/fs/cgroup/freezer"):
        return "cgroup v1 freezer controller is not mounted"
    return None


class TestBed:
    """Python handle on ``bed.sh`` for one bed (state dir + /24 network + bridge)."""

    __test__ = False  # not a pytest test class

    def __init__(
        self, base: Path | None = None, net: str = DEFAULT_NET, bridge: str = DEFAULT_BRIDGE
    ) -> None:
        self.base: Path = Path(base) if base is not None else DEFAULT_BASE
        self.net = net
        self.bridge = bridge
        self.hosts: list[BedHost] = []
        self.key_path: Path = self.base / "keys" / "id_ed25519"
        self.known_hosts_path: Path = self.base / "known_hosts"
        self.ssh_config_path: Path = self.base / "ssh_config"
        #: same directory at the same path on every host and in the root namespace
        self.shared_dir: Path = self.base / "shared"
        #: host i's processes and containers live in cgroup /<cgroup_prefix><i> (every v1 controller)
        self.cgroup_prefix = "bed-h" if bridge == DEFAULT_BRIDGE else f"bed-{bridge}-h"
        self._env = dict(
            os.environ,
            BED_BASE=str(self.base),
            BED_NET=net,
            BED_BRIDGE=bridge,
            BED_CGROUP_PREFIX=self.cgroup_prefix,
        )

    # ------------------------------------------------------------------ helpers
    def host(self, i: int) -> BedHost:
        return BedHost(index=i, name=f"hb{i}", address=f"{self.net}.{10 + i}", nic="eth0")

    def _bed(self, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["/bin/bash", str(BED_SH), *args]
        try:
            cp = _run(argv, timeout=timeout, env=self._env)
        except subprocess.TimeoutExpired as e:
            err = e.stderr if isinstance(e.stderr, str) else ""
            raise RuntimeError(f"bed.sh {' '.join(args)}: timed out after {timeout}s\n{_tail(err)}") from None
        if check and cp.returncode != 0:
            raise RuntimeError(f"bed.sh {' '.join(args)} failed (rc={cp.returncode}):\n{_tail(cp.stderr)}")
        return cp

    def ssh_argv(self, i: int, *command: str) -> list[str]:
        """``ssh`` command line for host i using the bed's key, known_hosts and timeouts."""
        return ["ssh", "-F", str(self.ssh_config_path), f"root@{self.host(i).address}", *command]

    # ------------------------------------------------------------------ lifecycle
    def up(self, n: int) -> list[BedHost]:
        """Create (or repair) hosts hb1..hbN; idempotent. Also thaws/heals/restarts daemons/boots
        crashed hosts left by earlier faults, and stops hosts beyond N."""
        self._bed("up", str(n), timeout=90 + 15 * n)
        self.hosts = [self.host(i) for i in range(1, n + 1)]
        return list(self.hosts)

    def down(self) -> None:
        """Stop every host and delete all bed state (engines, keys, shared and private dirs)."""
        self._bed("down", timeout=300)
        self.hosts = []

    def status(self) -> str:
        return self._bed("status", timeout=60).stdout

    # ------------------------------------------------------------------ per host
    def private_dir(self, i: int) -> Path:
        """Root-namespace path of host i's ``/srv/bed-private`` (exists after up())."""
        return self.base / "hosts" / f"h{i}" / "private"

    def run(self, i: int, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run argv inside host i (its namespaces and cgroups), no ssh involved. Does not raise
        on a non-zero exit; raises subprocess.TimeoutExpired on timeout."""
        return _run(["/bin/bash", str(BED_SH), "exec", str(i), *argv], timeout=timeout, env=self._env)

    def docker(self, i: int, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """docker CLI against host i's engine (its docker.sock via /proc/<pid>/root), no ssh.
        Does not raise on a non-zero exit; raises subprocess.TimeoutExpired on timeout."""
        return _run(["/bin/bash", str(BED_SH), "docker", str(i), *argv], timeout=timeout, env=self._env)

    def fault(self, kind: str, i: int) -> None:
        """Inject or undo a fault on host i; kind is one of FAULTS. Raises RuntimeError on failure."""
        try:
            spec = FAULTS[kind]
        except KeyError:
            raise ValueError(f"unknown fault {kind!r}; one of {sorted(FAULTS)}") from None
        self._bed(*(a.format(i=i) for a in spec), timeout=120)

    def seed(self, *images: str, hosts: Iterable[int] | None = None) -> None:
        """Copy images from the root dockerd into every running host (or only ``hosts``), in
        parallel; hosts that already hold the same image IDs are skipped."""
        if not images:
            raise ValueError("seed() needs at least one image")
        env = dict(self._env)
        if hosts is not None:
            env["BED_SEED_HOSTS"] = " ".join(str(h) for h in hosts)
        argv = ["/bin/bash", str(BED_SH), "seed", *images]
        try:
            cp = _run(argv, timeout=900, env=env)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"bed.sh seed {' '.join(images)} timed out") from None
        if cp.returncode != 0:
            raise RuntimeError(f"bed.sh seed failed (rc={cp.returncode}):\n{_tail(cp.stderr)}")


def ensure_root_dockerd() -> None:
    """Make sure the root-namespace dockerd answers (starts it if needed, waits <= 30 s)."""
    env = dict(os.environ)
    env.setdefault("BED_BASE", str(DEFAULT_BASE))
    try:
        cp = _run(["/bin/bash", str(BED_SH), "rootd"], timeout=60, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError("bed.sh rootd timed out") from None
    if cp.returncode != 0:
        raise RuntimeError(f"bed.sh rootd failed:\n{_tail(cp.stderr)}")


def ensure_base_image(tag: str = BASE_IMAGE) -> str:
    """Build (debootstrap, ~1 min cold) or re-import (cached rootfs, seconds) the base image into
    the root dockerd unless it is already there, with the package's own builder
    (orchestrate.images.base). Returns the tag."""
    import sys

    import docker

    from orchestrate.images.base import ensure_local_base

    ensure_root_dockerd()
    cache = Path(os.environ.get("ORCH_CACHE", "/var/cache/orchestrate"))
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=600)  # the root dockerd
    try:
        ensure_local_base(client, cache, lambda line: print(f"[base_image] {line}", file=sys.stderr), tag=tag)
    finally:
        client.close()
    return tag
