"""Per-command connections to every host, and the parallel fan-out that never drops a failure."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from orchestrate.core.plan import NodePlan, Plan
from orchestrate.errors import HostError, OrchestrateError, PhaseError
from orchestrate.events import Events, quiet
from orchestrate.host.engine import Engine, client_over, local_client
from orchestrate.host.remote import Runner, SSHRunner, runner_for

T = TypeVar("T")
MAX_PARALLEL = 32
WAIT_SLICE_S = 0.2


def fan_out(
    phase: str, nodes: Sequence[NodePlan], fn: Callable[[NodePlan], T], events: Events = quiet
) -> list[T]:
    """Run `fn` for every node in parallel; collect every failure and raise them together.

    The threads are daemons and the caller waits in short slices, so Ctrl-C gets through at
    once and exits the process even while a thread is stuck on a dead host (a ThreadPoolExecutor
    would join it, on the way out of the `with` and again at interpreter exit)."""
    if not nodes:
        return []
    outcomes: dict[str, tuple[bool, Any]] = {}
    done = threading.Condition()
    slots = threading.BoundedSemaphore(MAX_PARALLEL)

    def one(node: NodePlan) -> None:
        with slots:
            outcome = _outcome(node, fn)
        with done:
            outcomes[node.host] = outcome
            done.notify()

    for node in nodes:
        threading.Thread(target=one, args=(node,), name=f"{phase}-{node.host}", daemon=True).start()
    with done:
        while len(outcomes) < len(nodes):
            done.wait(WAIT_SLICE_S)
    return _collect(phase, nodes, outcomes, events)


def _outcome(node: NodePlan, fn: Callable[[NodePlan], T]) -> tuple[bool, Any]:
    try:
        return True, fn(node)
    except HostError as exc:
        return False, exc
    except OrchestrateError as exc:  # named for its host, its exit code kept (usage 2, checks 3)
        err = HostError(node.host, exc.message, hint=exc.hint, tail=exc.tail)
        err.exit_code = exc.exit_code
        return False, err
    except Exception as exc:  # a bug: re-raised in the caller, as future.result() did
        return False, exc


def _collect(
    phase: str, nodes: Sequence[NodePlan], outcomes: dict[str, tuple[bool, Any]], events: Events
) -> list[Any]:
    failures: list[OrchestrateError] = []
    for node in nodes:
        ok, value = outcomes[node.host]
        if not ok and not isinstance(value, OrchestrateError):
            raise value
        if not ok:
            failures.append(value)
    if failures:
        for failure in failures:
            events(phase, None, f"FAILED {failure.message}")
        raise PhaseError(phase, failures)
    return [outcomes[n.host][1] for n in nodes]


class Session:
    """Lazily opened SSH + Docker links to the plan's hosts; close() releases them all."""

    def __init__(self, plan: Plan, events: Events = quiet) -> None:
        self.plan = plan
        self.events = events
        self._runners: dict[str, Runner] = {}
        self._engines: dict[str, Engine] = {}
        # hosts whose container this `up` created: a restart of one is a failure of this up
        self.restart_baseline: dict[str, int] = {}

    def runner(self, node: NodePlan) -> Runner:
        if node.host not in self._runners:
            self._runners[node.host] = runner_for(node.host, node.ssh)
        return self._runners[node.host].connect()

    def engine(self, node: NodePlan) -> Engine:
        if node.host not in self._engines:
            timeout = max(30.0, node.ssh.command_timeout)
            runner = self.runner(node)
            if isinstance(runner, SSHRunner):
                client = client_over(runner, timeout)
            else:
                client = local_client(node.host, timeout)
            link = runner if isinstance(runner, SSHRunner) else None
            self._engines[node.host] = Engine(node.host, client, link)
        return self._engines[node.host]

    def connect(self, nodes: Iterable[NodePlan] | None = None) -> None:
        """Open SSH and check the Docker Engine on every host, in parallel."""
        targets = list(nodes or self.plan.nodes)

        def one(node: NodePlan) -> None:
            self.runner(node)
            info = self.engine(node).info()
            self.events("connect", node.host, f"docker {info.get('ServerVersion', '?')} ok")

        fan_out("connect", targets, one, self.events)

    def raise_if_lost(self) -> None:
        """Raise what the liveness watch found on the first host it found dead (no probing)."""
        for runner in list(self._runners.values()):
            lost = runner.found_lost()
            if lost is not None:
                raise lost

    def while_alive(self, fn: Callable[[], T]) -> T:
        """fn() in a daemon thread while every host's liveness is watched: a host found dead
        fails the wait at once, naming it, even while fn runs for seconds on another host."""
        box: list[tuple[bool, Any]] = []
        finished = threading.Event()

        def run() -> None:
            try:
                box.append((True, fn()))
            except BaseException as exc:  # handed to the caller, which raises it
                box.append((False, exc))
            finished.set()

        threading.Thread(target=run, name="while-alive", daemon=True).start()
        while not finished.wait(WAIT_SLICE_S):
            self.raise_if_lost()
        ok, value = box[0]
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def drop(self, node: NodePlan) -> None:
        """Forget a host's links after a failure: a stale transport can stall for minutes."""
        runner = self._runners.pop(node.host, None)
        if runner is not None:
            runner.close()
        engine = self._engines.pop(node.host, None)
        if engine is not None:
            with contextlib.suppress(OSError):
                engine.client.api.close()

    def close(self) -> None:
        # transports first: closing one ends its channels at once, so closing the Docker
        # clients after it sends nothing to a host that may be dead (this runs on Ctrl-C too,
        # while fan-out threads may still be blocked on those links)
        for runner in list(self._runners.values()):
            runner.close()
        for engine in list(self._engines.values()):
            with contextlib.suppress(OSError):
                engine.client.api.close()
        self._engines.clear()
        self._runners.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
