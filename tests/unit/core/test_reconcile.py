"""core/reconcile.py: desired vs observed containers, pure (what `up` does on a second run)."""

from __future__ import annotations

from orchestrate.core.inventory import load
from orchestrate.core.plan import LABEL_HASH, Plan, build_plan
from orchestrate.core.reconcile import Observed, reconcile
from tests import ROOT


def _plan() -> Plan:
    return build_plan(load(ROOT / "inventory" / "l20.yaml"))


def _running(plan: Plan, **override: str) -> dict[str, list[Observed]]:
    out = {}
    for node in plan.nodes:
        want = node.container.labels_dict()[LABEL_HASH]
        out[node.host] = [Observed(node.host, node.container.name, want, override.get(node.host, "running"))]
    return out


def test_an_unchanged_healthy_group_is_left_alone() -> None:
    plan = _plan()
    changes = reconcile(plan, _running(plan))
    assert changes.noop and set(changes.actions.values()) == {"keep"} and not changes.remove


def test_nothing_there_creates_every_member() -> None:
    plan = _plan()
    changes = reconcile(plan, {})
    assert changes.actions == {n.host: "create" for n in plan.nodes}
    assert set(changes.reasons.values()) == {"missing"}


def test_one_dead_member_restarts_the_whole_group() -> None:
    # a vLLM group cannot lose a member: the healthy ones are re-created with it
    plan = _plan()
    worker = plan.workers[0].host
    changes = reconcile(plan, _running(plan, **{worker: "exited"}))
    assert set(changes.actions.values()) == {"recreate"}
    assert changes.reasons[worker] == "container exited"
    assert changes.reasons[plan.head.host] == "group restart"


def test_a_changed_spec_a_parked_member_and_leftovers() -> None:
    plan = _plan()
    observed = _running(plan)
    head = plan.head.host
    old = observed[head][0]
    observed[head] = [
        Observed(head, old.name, "0ld", "running"),
        Observed(head, "qwen32b-old", "x", "exited"),
    ]
    changes = reconcile(plan, observed)
    assert changes.reasons[head] == "spec changed"
    assert [o.name for o in changes.remove] == ["qwen32b-old"]
    worker = plan.workers[0].host
    observed = _running(plan)
    w = observed[worker][0]
    observed[worker] = [Observed(worker, w.name, w.spec_hash, "running", parked="5 lives in a row")]
    assert reconcile(plan, observed).reasons[worker] == "parked: 5 lives in a row"


def test_fan_out_names_the_host_and_keeps_the_exit_code() -> None:
    # a usage problem found on every host is still exit 2, not a plain host failure (1)
    from orchestrate.errors import EXIT_FAILED, EXIT_USAGE, HostError, PhaseError, UsageError
    from orchestrate.host.session import fan_out

    plan = _plan()

    def refuse(node: object) -> None:
        raise UsageError("secret environment variable(s) not set: HF_TOKEN")

    try:
        fan_out("start", plan.nodes, refuse)
    except PhaseError as exc:
        assert exc.exit_code == EXIT_USAGE
        assert [f.host for f in exc.failures if isinstance(f, HostError)] == [n.host for n in plan.nodes]
        assert exc.lines()[0] == f"{plan.head.host}: secret environment variable(s) not set: HF_TOKEN"
    else:
        raise AssertionError("fan_out did not raise")

    def mixed(node: object) -> None:
        if node is plan.head:
            raise UsageError("bad")
        raise HostError(plan.workers[0].host, "unreachable")

    try:
        fan_out("start", plan.nodes, mixed)
    except PhaseError as exc:
        assert exc.exit_code == EXIT_FAILED
    else:
        raise AssertionError("fan_out did not raise")
