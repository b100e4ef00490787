"""Why a host went silent, from a fresh TCP connection to its sshd (remote.diagnose), against real
local sockets: a crash races the probe, so sshd may accept and then reset the connection."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from orchestrate.core.plan import SSHTarget
from orchestrate.host.remote import diagnose


def _target(port: int) -> SSHTarget:
    return SSHTarget(
        local=False,
        host="127.0.0.1",
        port=port,
        user="root",
        key=None,
        known_hosts="/dev/null",
        host_key_policy="strict",
        connect_timeout=2,
        command_timeout=5,
    )


@pytest.fixture
def resetting() -> Iterator[int]:
    """A listener that accepts every connection and resets it (SO_LINGER 0), as a dying sshd does."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)  # close() does not wake a blocked accept()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()
    thread.join(5)


def test_a_reset_connection_says_crashed_not_unreachable(resetting: int) -> None:
    why = diagnose(_target(resetting))
    assert "crashed" in why and "unreachable" not in why, why


def test_a_refused_connection_says_crashed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
    assert "crashed" in diagnose(_target(port))
