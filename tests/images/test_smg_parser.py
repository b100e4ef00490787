"""The router's argv (core/fleet.py) through SMG 1.13.0's own parser, inside the router image
(orchestrate/smg:1.13.0, built by the smg_image fixture): issue 14's check that every flag means
to SMG what orchestrate means by it. Needs this machine's Docker Engine."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from typing import Any

import pytest
import yaml

from orchestrate.core import inventory
from orchestrate.core.fleet import Fleet, build_fleet
from tests import ROOT

REPLICAS = ROOT / "inventory" / "l20-replicas.yaml"


def _data() -> dict[str, Any]:
    return yaml.safe_load(REPLICAS.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _fleet(data: dict[str, Any]) -> Fleet:
    return build_fleet(inventory.parse(data, "inv.yaml"))


# The router's argv through SMG 1.13.0's own parser (smg.launch_router.parse_router_args, the
# function `smg launch` calls), in the image, behind the same `sh -c` entry the container runs:
# the values land in the fields SMG reads, and the API key arrives from the environment.
PARSE = """
import dataclasses, json, sys
from smg.launch_router import parse_router_args
assert sys.argv[1] == "launch", sys.argv
print(json.dumps(dataclasses.asdict(parse_router_args(sys.argv[2:])), default=str))
"""


def _parsed(image: str, fleet: Fleet, key: str | None) -> dict[str, Any]:
    from orchestrate.core.fleet import ROUTER_ENTRY

    spec = fleet.router.head.container
    entry = ROUTER_ENTRY.replace("python3 -m smg", 'python3 -c "$PARSE"')
    argv = ["docker", "run", "--rm", "--network", "none", "-e", "PARSE", "--entrypoint", "sh"]
    if key is not None:
        argv += ["-e", "VLLM_API_KEY"]
    res = subprocess.run(
        [*argv, image, "-c", entry, *spec.command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PARSE": PARSE, **({"VLLM_API_KEY": key} if key is not None else {})},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["cache_aware", "round_robin"])
def test_the_real_smg_parser_reads_the_router_argv_as_meant(smg_image: str, policy: str) -> None:
    data = _data()
    data["replicas"]["router"] |= {"policy": policy, "health_interval": 2, "retries": 0}
    data["serve"]["api_key"] = "${VLLM_KEY}"
    fleet = _fleet(data)
    got = _parsed(smg_image, fleet, key="k3y with $pace's")
    assert got["worker_urls"] == [p.endpoint for p in fleet.replicas]
    assert got["policy"] == policy
    assert (got["host"], got["port"]) == ("0.0.0.0", 30000)
    assert (got["prometheus_host"], got["prometheus_port"]) == ("0.0.0.0", 29000)
    assert got["health_check_interval_secs"] == 2 and got["health_check_endpoint"] == "/health"
    assert (got["health_failure_threshold"], got["health_success_threshold"]) == (3, 2)
    assert got["disable_retries"] is True
    assert got["remove_unhealthy_workers"] is None  # SMG's default for a static list: never removed
    assert got["worker_startup_timeout_secs"] == 1800 and got["request_timeout_secs"] == 600
    assert got["api_key"] == "k3y with $pace's"  # one word, as set, from the secret's variable


@pytest.mark.slow
def test_without_a_key_the_router_gets_no_api_key_flag(smg_image: str) -> None:
    got = _parsed(smg_image, _fleet(_data()), key=None)
    assert got["api_key"] is None and got["retry_max_retries"] == 3


@pytest.mark.slow
def test_the_parser_check_fails_on_a_flag_smg_does_not_have(smg_image: str) -> None:
    fleet = _fleet(_data())
    spec = fleet.router.head.container
    bad = dataclasses.replace(spec, command=(*spec.command, "--remove-dead-workers"))
    bad_fleet = dataclasses.replace(
        fleet,
        router=dataclasses.replace(
            fleet.router, nodes=(dataclasses.replace(fleet.router.head, container=bad),)
        ),
    )
    with pytest.raises(AssertionError, match="unrecognized arguments: --remove-dead-workers"):
        _parsed(smg_image, bad_fleet, key=None)
