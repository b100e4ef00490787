"""One exception tree for orchestrate.

    OrchestrateError                 anything we expected could go wrong; the CLI prints it, no traceback
     +-- InventoryError              the inventory file is unreadable or invalid (exit 2)
     +-- UsageError                  a command line that cannot be acted on (exit 2)
     |    +-- MissingSecretError     a secret the inventory references is not in the environment
     +-- HostError                   one host failed: carries the host name and what to do
     |    +-- ConnectError           SSH could not connect / authenticate / verify the host key
     |    +-- EngineError            the Docker Engine on the host failed or is unreachable
 |    |    +-- LogStreamBroken    a streamed log (logs -f) broke or went quiet past the read timeout
     |    +-- RemoteCommandError     a command on the host exited non-zero or timed out
     +-- PhaseError                  a phase failed on one or more hosts (wraps HostErrors, fan-out)
     +-- GateError                   a readiness gate (Ray nodes, vLLM health) did not pass in time
     |    +-- ChecksError            the chat/stream checks failed (exit 3)
     +-- LockError                   another orchestrate run holds the deployment lock
     +-- ImageBuildError             an image, wheelhouse or model could not be made on this machine

Boundary modules (host/remote.py, host/engine.py, host/tunnel.py, host/files.py for paramiko and
docker; ops/checks.py, ops/observe.py and loadgen/ for httpx; images/ for the local image builds)
map library errors into this tree once; nothing above them catches library exceptions
(tests/unit/test_architecture.py enforces it).
"""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHECKS = 3
EXIT_LOCKED = 4
EXIT_INTERNAL = 70  # a bug: the traceback goes to the debug log
EXIT_INTERRUPTED = 130


class OrchestrateError(Exception):
    """An expected failure with a message written for people: one line, then the last lines of
    the output that shows why (`tail`, optional), then what to do (`hint`, optional)."""

    exit_code = EXIT_FAILED
    TAIL_LINES = 20

    def __init__(self, message: str, *, hint: str | None = None, tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.tail = tail

    def lines(self) -> list[str]:
        out = [self.message]
        out += [f"  | {line}" for line in self.tail.splitlines()[-self.TAIL_LINES :]]
        if self.hint:
            out.append(f"  Try: {self.hint}")
        return out


class InventoryError(OrchestrateError):
    """Carries one line per problem: `file: field.path: what is wrong`."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)

    def lines(self) -> list[str]:
        return list(self.problems)


class UsageError(OrchestrateError):
    exit_code = EXIT_USAGE


class MissingSecretError(UsageError):
    pass


class HostError(OrchestrateError):
    """`message` is `host: detail`; `host` and `detail` are kept apart for tables and re-wording."""

    def __init__(self, host: str, message: str, *, hint: str | None = None, tail: str = "") -> None:
        super().__init__(f"{host}: {message}", hint=hint, tail=tail)
        self.host = host
        self.detail = message


class ConnectError(HostError):
    pass


class EngineError(HostError):
    pass


class LogStreamBroken(EngineError):
    pass


class RemoteCommandError(HostError):
    TAIL_LINES = 15


class PhaseError(OrchestrateError):
    """A phase failed on some hosts; every failure is kept (fan-out never drops one)."""

    def __init__(self, phase: str, failures: Sequence[OrchestrateError]) -> None:
        names = ", ".join(getattr(f, "host", "?") for f in failures)
        super().__init__(f"{phase} failed on {len(failures)} host(s): {names}")
        self.phase = phase
        self.failures = list(failures)
        codes = {f.exit_code for f in self.failures}
        if len(codes) == 1:  # every host failed the same way (bad usage: 2, failed checks: 3)
            self.exit_code = codes.pop()

    def lines(self) -> list[str]:
        out: list[str] = []
        for failure in self.failures:
            out += failure.lines()
        return out


class GateError(OrchestrateError):
    pass


class ChecksError(GateError):
    """The post-deploy checks (health, models, chat, stream) did not all pass."""

    exit_code = EXIT_CHECKS


class LockError(OrchestrateError):
    exit_code = EXIT_LOCKED


class ImageBuildError(OrchestrateError):
    """An image, wheelhouse or model could not be made; the message says what failed and what to do."""
