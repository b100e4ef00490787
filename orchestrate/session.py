"""Per-command connections to every host, and the parallel fan-out that never drops a failure."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from orchestrate.console import Events, quiet
from orchestrate.engine import Engine, client_over, local_client
from orchestrate.errors import HostError, OrchestrateError, PhaseError
from orchestrate.plan import NodePlan, Plan
from orchestrate.remote import Runner, SSHRunner, runner_for

T = TypeVar("T")
MAX_PARALLEL = 32


def fan_out(
    phase: str, nodes: Sequence[NodePlan], fn: Callable[[NodePlan], T], events: Events = quiet
) -> list[T]:
    """Run `fn` for every node in parallel; collect every failure and raise them together."""
    if not nodes:
        return []
    results: dict[str, T] = {}
    failures: list[OrchestrateError] = []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(nodes))) as pool:
        futures = {node.host: pool.submit(fn, node) for node in nodes}
        for host, future in futures.items():
            try:
                results[host] = future.result()
            except HostError as exc:
                failures.append(exc)
            except OrchestrateError as exc:
                failures.append(HostError(host, exc.message, hint=exc.hint, tail=exc.tail))
    if failures:
        for failure in failures:
            events(phase, None, f"FAILED {failure.message}")
        raise PhaseError(phase, failures)
    return [results[n.host] for n in nodes]


class Session:
    """Lazily opened SSH + Docker links to the plan's hosts; close() releases them all."""

    def __init__(self, plan: Plan, events: Events = quiet) -> None:
        self.plan = plan
        self.events = events
        self._runners: dict[str, Runner] = {}
        self._engines: dict[str, Engine] = {}

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
            self._engines[node.host] = Engine(node.host, client)
        return self._engines[node.host]

    def connect(self, nodes: Iterable[NodePlan] | None = None) -> None:
        """Open SSH and check the Docker Engine on every host, in parallel."""
        targets = list(nodes or self.plan.nodes)

        def one(node: NodePlan) -> None:
            self.runner(node)
            info = self.engine(node).info()
            self.events("connect", node.host, f"docker {info.get('ServerVersion', '?')} ok")

        fan_out("connect", targets, one, self.events)

    def drop(self, node: NodePlan) -> None:
        """Forget a host's links after a failure: a stale transport can stall for minutes."""
        engine = self._engines.pop(node.host, None)
        if engine is not None:
            engine.client.api.close()
        runner = self._runners.pop(node.host, None)
        if runner is not None:
            runner.close()

    def close(self) -> None:
        for engine in self._engines.values():
            with contextlib.suppress(OSError):
                engine.client.api.close()
        for runner in self._runners.values():
            runner.close()
        self._engines.clear()
        self._runners.clear()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
