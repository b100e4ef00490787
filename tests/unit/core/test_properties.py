"""Property tests over generated inventories: valid ones always plan to TP x PP GPUs; anything
else is refused with lines that name a field, never with a traceback."""

from __future__ import annotations

import copy
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrate.core import inventory
from orchestrate.core.plan import build_plan
from orchestrate.errors import InventoryError
from orchestrate.render import compose, k8s

# `gen.yaml: <field path>: <what is wrong>` on one line; paths are words, [index] or ['odd key']
LINE = re.compile(r"^gen\.yaml: (\(top level\)|[\w-]*(\.[\w-]+|\[\d+\]|\['.*?'\]|\[\".*?\"\])*): \S.*$")


@st.composite
def valid_inventories(draw: st.DrawFn) -> dict[str, Any]:
    per_host = draw(st.sampled_from([1, 2, 4, 8]))
    n_hosts = draw(st.integers(1, 6))
    total = per_host * n_hosts
    tp = draw(st.sampled_from([d for d in (1, 2, 4, 8) if per_host % d == 0 and total % d == 0]))
    backend = draw(st.sampled_from(["ray", "mp"]))
    head = draw(st.integers(0, n_hosts - 1))
    hosts = [
        {
            "name": f"h{i}",
            "address": f"10.1.{i // 250}.{i % 250 + 1}",
            "gpus": per_host,
            **({"role": "head"} if i == head else {}),
        }
        for i in range(n_hosts)
    ]
    return {
        "name": draw(st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)),
        "image": "vllm/vllm-openai:v0.6.4.post1",
        "backend": backend,
        "model": {"host_dir": "/models", "name": "m"},
        "serve": {
            "tensor_parallel_size": tp,
            "pipeline_parallel_size": total // tp,
            "port": draw(st.integers(1024, 6000)),
        },
        "hosts": hosts,
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_inventories())
def test_valid_inventories_plan_to_the_world_size(data: dict[str, Any]) -> None:
    plan = build_plan(inventory.parse(data, "gen.yaml"))
    assert plan.world_size == plan.total_gpus == sum(h["gpus"] for h in data["hosts"])
    assert plan.head.role == "head" and len(plan.nodes) == len(data["hosts"])
    for node in plan.nodes:
        assert node.container.env_dict()["VLLM_HOST_IP"] == node.address
    # Namespace, ConfigMap, API Service, head Deployment, one per worker, with workers the
    # headless peers Service they reach the not-yet-Ready head through, with the watchdog the
    # supervisor's ConfigMap
    docs = k8s.render(plan)
    watchdog = plan.head.container.supervisor is not None
    assert len(docs) == 4 + len(plan.workers) + (1 if plan.workers else 0) + watchdog
    assert any(d["metadata"]["name"].endswith("-head-peers") for d in docs) == bool(plan.workers)
    assert set(compose.render(plan)) == {h["name"] for h in data["hosts"]}


# Junk that exercises types, sizes, unicode and shell metacharacters.
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            "; touch /tmp/pwned",
            "$(reboot)",
            "`id`",
            "a\nb",
            "'\"",
            "${HOME}",
            "../../etc/passwd",
            "\x00",
            "ünïcødé",
            "-" * 5000,
            "10.0.0.1 && ls",
        ]
    ),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    data = copy.deepcopy(draw(valid_inventories()))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        target = data
        for part in path[:-1]:
            target = target[part]
        if draw(st.booleans()) and isinstance(target, dict):
            target[draw(st.sampled_from([path[-1], "extra_key", "ünï"]))] = draw(JUNK)
        elif isinstance(target, dict) and draw(st.booleans()):
            target.pop(path[-1])
        else:
            target[path[-1]] = draw(JUNK)
    return data


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_inventories_fail_cleanly_or_plan(data: dict[str, Any]) -> None:
    try:
        plan = build_plan(inventory.parse(data, "gen.yaml"))
    except InventoryError as exc:
        assert exc.problems
        for line in exc.problems:
            assert LINE.match(line), line
        return
    # the junk happened to be acceptable: then the plan must still be consistent
    assert plan.world_size == plan.total_gpus
    for node in plan.nodes:
        for arg in node.container.command:
            assert "\n" not in arg or node.container.entrypoint[0] == "bash"
