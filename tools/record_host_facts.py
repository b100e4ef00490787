"""Record what preflight's commands print on this host, as parser fixtures (issue 12).

    python3 tools/record_host_facts.py OUT --tag debian12 --source "this machine: a Debian 12 VM"
        [--netns] [--docker-image IMAGE ...]

Writes OUT/<check>/<tag>-<case>.json in pyinfra's facts-fixture shape: command (preflight's own
argv, shlex-joined), stdout, stderr, exit, source, recorded (the date); `via` where the command ran
in a namespace or a container (`ip netns exec NS`, `docker exec NAME`, or `docker run ...
--entrypoint WORD IMAGE` with WORD the command's first word), `setup` what was done first. The
cases: the NIC that
owns the host's address, lo and a NIC that does not exist; routes to a subnet peer, to the host's
own address and to TEST-NET-3 (kernel lookups, nothing is sent); hostname and getent; listening
ports; the reach probe against the host's own address (one listener, one free port); /dev/shm;
the GPUs' memory where nvidia-smi is; the model's config.json present and missing.

--netns (root) adds a throwaway network namespace: only loopback, a NIC with no address, no
route anywhere, and a firewall (iptables DROP and an icmp-host-prohibited REJECT) in front of the
probe. --docker-image adds the image facts probe, /dev/shm in a container run with --shm-size 64m
and 10g, and hostname/getent in a container on Docker's bridge (its name maps to its own address:
the shape of a host whose /etc/hosts is right); the local dockerd, and the orchestrate package.

Runs with python3 alone: where the package cannot be imported (a bare GPU host) the argv constants
are read from orchestrate/ops/preflight.py's source; tests/unit/ops/test_preflight_parsers.py asserts that
each fixture's command is the argv preflight runs. Nothing is masked: do not record where the
outputs would hold secrets. Copy the cases you keep into tests/fixtures/hosts/<check>/. A command
the host lacks (a GPU VM without iproute2 has no `ip`, no `ss`) is reported, not recorded. Every
case is also in OUT/<tag>.json, one file to bring back from a host where few files come back.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import ipaddress
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEST_NET = "203.0.113.1"  # TEST-NET-3 (RFC 5737): routed like any far address, owned by nobody


def load_preflight() -> Any:
    """orchestrate.ops.preflight, or its literal constants and the same argv recipes."""
    sys.path.insert(0, str(ROOT))
    try:
        from orchestrate.ops import preflight

        return preflight
    except Exception:  # its dependencies are not here, or an older python: read the source
        pass
    tree = ast.parse((ROOT / "orchestrate" / "ops" / "preflight.py").read_text(encoding="utf-8"))
    consts: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                consts[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    ns = SimpleNamespace(**consts)
    ns.nic_argv = lambda nic: [*ns.NIC_ARGV, nic]
    ns.route_argv = lambda address: [*ns.ROUTE_ARGV, address]
    ns.getent_argv = lambda name: [*ns.GETENT_ARGV, name]
    ns.probe_argv = lambda address, ports: ["bash", "-c", ns.PROBE_SCRIPT, address, *map(str, ports)]
    ns.model_argv = lambda path: ["test", "-f", f"{path}/config.json"]
    ns.config_argv = lambda path: ["cat", f"{path}/config.json"]
    return ns


class Recorder:
    def __init__(self, out: Path, tag: str, source: str) -> None:
        self.out, self.tag, self.source = out, tag, source
        self.recorded = datetime.date.today().isoformat()
        self.written: list[str] = []
        self.cases: dict[str, dict[str, Any]] = {}

    def run(
        self, check: str, case: str, argv: list[str], via: list[str] | None = None, **extra: str
    ) -> subprocess.CompletedProcess[str] | None:
        """Run argv (after `via`: ip netns exec, docker exec) and write it as one case."""
        full = [*(via or []), *argv]
        if via and via[-3:-2] == ["--entrypoint"]:  # docker run --entrypoint argv[0] IMAGE argv[1:]
            full = [*via, *argv[1:]]
        try:
            res = subprocess.run(full, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            print(f"  {check}/{case}: not recorded: {exc}", file=sys.stderr)
            return None
        data: dict[str, Any] = {
            "command": shlex.join(argv),
            "stdout": res.stdout,
            "stderr": res.stderr,
            "exit": res.returncode,
        }
        if via:
            data["via"] = shlex.join(via)
        data |= {**extra, "source": self.source, "recorded": self.recorded}
        path = self.out / check / f"{self.tag}-{case}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        self.written.append(f"{check}/{path.name} (exit {res.returncode})")
        self.cases[f"{check}/{path.name}"] = data
        bundle = json.dumps(self.cases, indent=2, ensure_ascii=False) + "\n"
        (self.out / f"{self.tag}.json").write_text(bundle, encoding="utf-8")
        return res


def sh(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def primary() -> tuple[str, ipaddress.IPv4Interface] | None:
    """(NIC, its address/prefix): the one the default route leaves through, else the first NIC
    with a global IPv4 address."""
    dev = re.search(r"\bdev (\S+)", sh("ip", "-o", "route", "get", TEST_NET))
    lines = re.findall(r"^\d+: (\S+)\s+inet (\S+) .*scope global", sh("ip", "-o", "-4", "addr"), re.M)
    for name, cidr in lines:
        if dev is None or name == dev.group(1):
            return name, ipaddress.IPv4Interface(cidr)
    return None


def listener(address: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.listen()
    return sock


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
    return port


def record_host(rec: Recorder, pf: Any) -> None:
    found = primary()
    if found is not None:
        nic, iface = found
        own = str(iface.ip)
        rec.run("nic", "primary", pf.nic_argv(nic))
        peer = next(str(h) for h in iface.network.hosts() if h != iface.ip)
        rec.run("route", "subnet-peer", pf.route_argv(peer))
        rec.run("route", "own-address", pf.route_argv(own))
        with listener("0.0.0.0") as sock:
            rec.run("reach", "probe-own-address", pf.probe_argv(own, [sock.getsockname()[1], free_port(own)]))
    rec.run("nic", "lo", pf.nic_argv("lo"))
    rec.run("nic", "nosuch0", pf.nic_argv("nosuch0"))
    rec.run("route", "testnet", pf.route_argv(TEST_NET))
    res = rec.run("hostname", "hostname", list(pf.HOSTNAME_ARGV))
    if res is not None and res.stdout.strip():
        rec.run("hostname", "getent", pf.getent_argv(res.stdout.strip()))
    rec.run("hostname", "getent-unknown", pf.getent_argv("nosuch-host.invalid"))
    rec.run("ports", "ss", list(pf.SS_ARGV))
    rec.run("shm", "host-dev-shm", list(pf.SHM_DF_ARGV))
    if shutil.which("nvidia-smi"):
        rec.run("fit", "gpu-memory", list(pf.GPU_MEMORY_ARGV))
        rec.run("gpus", "nvidia-smi", list(pf.NVIDIA_SMI_ARGV))
    with tempfile.TemporaryDirectory(prefix="record-model-") as model:
        Path(model, "config.json").write_text("{}\n", encoding="utf-8")
        rec.run("model", "present", pf.model_argv(model))
        rec.run("model", "missing", pf.model_argv(f"{model}/nosuch-model"))
        rec.run("fit", "config-missing", pf.config_argv(f"{model}/nosuch-model"))


NETNS_LISTENER = (
    "import socket, time\ns = socket.socket()\ns.bind(('127.0.0.1', 8000))\ns.listen()\ntime.sleep(60)"
)


def record_netns(rec: Recorder, pf: Any) -> None:
    """A throwaway namespace: loopback only, a NIC (veth) without address, a firewalled lo."""
    ns = f"record{os.getpid()}"
    inside = ["ip", "netns", "exec", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    child = None
    try:
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True, timeout=30)
        rec.run("nic", "netns-lo", pf.nic_argv("lo"), inside)
        veth = ["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"]
        subprocess.run([*inside, *veth], check=True, timeout=30)
        rec.run("nic", "netns-no-address", pf.nic_argv("eth1"), inside, setup=shlex.join(veth))
        rec.run("route", "netns-unreachable", pf.route_argv(TEST_NET), inside)
        rec.run("reach", "netns-unreachable", pf.probe_argv(TEST_NET, [6379]), inside)
        child = subprocess.Popen([*inside, sys.executable, "-c", NETNS_LISTENER])
        time.sleep(1.0)
        rules = [
            ["-p", "tcp", "--dport", "6379", "-j", "DROP"],
            ["-p", "tcp", "--dport", "6380", "-j", "REJECT", "--reject-with", "icmp-host-prohibited"],
        ]
        for rule in rules:
            subprocess.run([*inside, "iptables", "-A", "INPUT", *rule], check=True, timeout=30)
        setup = "; ".join(shlex.join(["iptables", "-A", "INPUT", *r]) for r in rules)
        rec.run("ports", "netns-ss", list(pf.SS_ARGV), inside)
        rec.run(
            "reach",
            "netns-firewalled",
            pf.probe_argv("127.0.0.1", [8000, 8001, 6379, 6380]),
            inside,
            setup=f"a listener on 127.0.0.1:8000, none on 8001; {setup}",
        )
    finally:
        if child is not None:
            child.kill()
            child.wait()
        subprocess.run(["ip", "netns", "del", ns], timeout=30)


def record_docker(rec: Recorder, pf: Any, images: list[str]) -> None:
    fmt = '{"ServerVersion":{{json .ServerVersion}},"NCPU":{{json .NCPU}}}'
    rec.run("docker", "info", ["docker", "info", "--format", fmt])
    for image in images:
        name = re.sub(r"[^a-z0-9]+", "-", image.rsplit("/", 1)[-1].lower()).strip("-")
        argv = list(pf.IMAGE_FACTS_ARGV)
        image_id = sh("docker", "image", "inspect", "--format", "{{.Id}}", image).strip()
        rec.run(
            "image",
            name,
            argv,
            ["docker", "run", "--rm", "--network", "none", "--entrypoint", argv[0], image],
            image_id=image_id,
        )
    image = images[0]
    container = f"record-host-{os.getpid()}"
    start = ["docker", "run", "-d", "--rm", "--name", container, "--entrypoint", "sleep", image, "60"]
    subprocess.run(start, check=True, capture_output=True, timeout=60)
    try:
        via = ["docker", "exec", container]
        res = rec.run(
            "hostname", "bridge-container-hostname", list(pf.HOSTNAME_ARGV), via, setup=shlex.join(start)
        )
        if res is not None and res.stdout.strip():
            rec.run(
                "hostname",
                "bridge-container-getent",
                pf.getent_argv(res.stdout.strip()),
                via,
                setup=shlex.join(start),
            )
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)
    for size in ("64m", "10g"):
        container = f"record-shm-{os.getpid()}-{size}"
        start = [
            "docker",
            "run",
            "-d",
            "--rm",
            "--name",
            container,
            "--network",
            "none",
            "--shm-size",
            size,
            "--entrypoint",
            "sleep",
            image,
            "60",
        ]
        subprocess.run(start, check=True, capture_output=True, timeout=60)
        try:
            rec.run(
                "shm",
                f"container-{size}",
                list(pf.SHM_DF_ARGV),
                ["docker", "exec", container],
                setup=shlex.join(start),
            )
        finally:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60)


def describe() -> str:
    os_name = re.search(r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M)
    ip = sh("ip", "-V").strip().split(", ")[1:2] or ["no iproute2"]
    return f"{os_name.group(1) if os_name else '?'}, kernel {platform.release()}, {ip[0]}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tag", required=True, help="the case names' prefix: debian12, h200")
    ap.add_argument("--source", required=True, help="where: 'lent NVIDIA H200 host'")
    ap.add_argument("--netns", action="store_true", help="also a throwaway network namespace (root)")
    ap.add_argument("--docker-image", action="append", default=[], help="also image facts, shm in it")
    args = ap.parse_args(argv)
    pf = load_preflight()
    rec = Recorder(args.out, args.tag, f"{args.source} ({describe()})")
    record_host(rec, pf)
    if args.netns:
        record_netns(rec, pf)
    if args.docker_image:
        record_docker(rec, pf, args.docker_image)
    print("\n".join(rec.written))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
