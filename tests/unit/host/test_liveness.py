"""The liveness probe beside each SSH connection (remote.Liveness): a host that crashes between
answering the probe's channel-open and its close makes paramiko raise from `Channel.close()`
(EOFError from the packetizer's write, CI of stop 22). That is the host's fault, named, not a
traceback from the probe's thread."""

from __future__ import annotations

import pytest

from orchestrate.core.plan import SSHTarget
from orchestrate.host.remote import Liveness
from tests.support.net import free_port


class _Channel:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def close(self) -> None:
        raise self.error


class _Transport:
    """The two calls the probe makes, as paramiko's Transport answers them for a host that dies
    (or stops answering) right after it opened the probe's channel."""

    def __init__(self, error: BaseException, still_active: bool) -> None:
        self.error, self.still_active = error, still_active
        self.active, self.closed = True, False

    def is_active(self) -> bool:
        return self.active

    def open_session(self, timeout: float) -> _Channel:
        self.active = self.still_active
        return _Channel(self.error)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    "error,still_active,cause",
    [
        (EOFError(), False, "the SSH connection dropped"),
        (OSError("Socket is closed"), True, "the host stopped answering over SSH (no reply within 2s)"),
    ],
)
def test_a_host_lost_while_the_probe_closes_its_channel_is_a_named_fault(
    error: BaseException, still_active: bool, cause: str
) -> None:
    target = SSHTarget(False, "127.0.0.1", free_port(), "root", None, "/dev/null", "strict", 2, 5)
    transport = _Transport(error, still_active)
    live = Liveness("hb2", target, transport)  # type: ignore[arg-type]
    try:
        fault = live.probe()
    finally:
        live.stop()
    assert fault is not None and fault.host == "hb2"
    assert fault.detail.startswith(f"{cause}; "), fault.detail
    assert "refused" in fault.detail  # what a fresh TCP connection says (nothing listens there)
    assert transport.closed  # every call blocked on the connection fails at once
    assert live.probe() is fault  # recorded once, not probed again
