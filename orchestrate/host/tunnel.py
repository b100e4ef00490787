"""A TCP port on one host's loopback that leads to a port on another host's loopback, relayed
through orchestrate's own SSH connections to both (no SSH between the hosts, no daemon config).

Why: a Docker Engine pulls from `127.0.0.1:PORT` over plain HTTP without any `insecure-registries`
entry (moby treats 127.0.0.0/8 as insecure by default), so a registry on the head reached through
this tunnel needs nothing configured on the workers.

The listener is the worker sshd's remote forward (`tcpip-forward`, what `ssh -R` asks for); each
connection it accepts is paired with a `direct-tcpip` channel to the target (what `ssh -L` opens)
and pumped by one thread. The boundary for paramiko errors here: mapped to ConnectError.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import paramiko

from orchestrate.errors import ConnectError

Dial = Callable[[], Any]  # a connected paramiko Channel or socket
_BUF = 256 * 1024
_IO_TIMEOUT_S = 120.0  # one blocked send to a peer that stopped reading


def ssh_dial(transport: paramiko.Transport, port: int, name: str, timeout: float = 15) -> Dial:
    """Connections to 127.0.0.1:port as seen from the host at the other end of `transport`."""

    def dial() -> paramiko.Channel:
        try:
            return transport.open_channel(
                "direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0), timeout=timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(
                name,
                f"SSH forward to 127.0.0.1:{port} failed: {exc}",
                hint="allow TCP forwarding in its sshd (AllowTcpForwarding yes)",
            ) from None

    return dial


def local_dial(port: int, timeout: float = 15) -> Dial:
    """Connections to 127.0.0.1:port on this machine (the head is `connection: local`)."""
    return lambda: socket.create_connection(("127.0.0.1", port), timeout=timeout)


class Forward:
    """127.0.0.1:<port> on the host behind `listen` -> whatever `dial` connects to."""

    def __init__(self, name: str, listen: paramiko.Transport, dial: Dial) -> None:
        self.name = name
        self._listen = listen
        self._dial = dial
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._open: set[Any] = set()
        self._closed = False
        self.port = 0

    def __enter__(self) -> Forward:
        try:
            self.port = int(self._listen.request_port_forward("127.0.0.1", 0, handler=self._accept))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(
                self.name,
                f"its sshd refused a port forward to its 127.0.0.1: {exc or type(exc).__name__}",
                hint="allow TCP forwarding in its sshd (AllowTcpForwarding yes or "
                "remote), or use images.head_registry.pull: direct",
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self, chan: paramiko.Channel, origin: Any, server: Any) -> None:
        # runs in paramiko's transport thread: never block it
        t = threading.Thread(target=self._relay, args=(chan,), name=f"forward-{self.name}", daemon=True)
        with self._lock:
            if self._closed:
                chan.close()
                return
            self._threads.append(t)
            self._open.add(chan)
        t.start()

    def _relay(self, chan: paramiko.Channel) -> None:
        try:
            upstream = self._dial()
        except (ConnectError, OSError):
            chan.close()
            return
        with self._lock:
            self._open.add(upstream)
        try:
            _pump(chan, upstream)
        finally:
            for end in (chan, upstream):
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    end.close()
                with self._lock:
                    self._open.discard(end)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ends, threads = list(self._open), list(self._threads)
        if self.port:
            with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                self._listen.cancel_port_forward("127.0.0.1", self.port)
        for end in ends:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                end.close()
        for t in threads:
            t.join(timeout=10)


def _pump(a: Any, b: Any) -> None:
    """Copy bytes both ways until both sides are done (half-close passed on) or one fails."""
    for end in (a, b):
        end.settimeout(_IO_TIMEOUT_S)
    peer = {id(a): b, id(b): a}
    live = [a, b]
    while live:
        ready, _, _ = select.select(live, [], [], 5.0)
        for src in ready:
            try:
                data = src.recv(_BUF)
                if data:
                    peer[id(src)].sendall(data)
                    continue
                live.remove(src)
                _shutdown_write(peer[id(src)])
            except (OSError, EOFError, paramiko.SSHException):
                return
        if any(getattr(e, "closed", False) for e in (a, b)):
            return


def _shutdown_write(end: Any) -> None:
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        if isinstance(end, paramiko.Channel):
            end.shutdown_write()
        else:
            end.shutdown(socket.SHUT_WR)
