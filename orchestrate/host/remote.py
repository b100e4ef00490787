"""SSH to the hosts (Fabric over paramiko), with a timeout on connect, banner, auth and every call.

The boundary for paramiko/invoke errors: they are mapped to ConnectError / RemoteCommandError here,
once. Commands are argv tuples, quoted with shlex.join in exactly one place (`_line`).

Every connection has a liveness watch beside whatever runs on it (`Liveness`): a slow call may be
slow, but a host that freezes, drops off the network or crashes is found within a probe deadline,
and its link is cut so that every call blocked on it fails at once, with that cause.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut, UnexpectedExit

from orchestrate.core.plan import SSHTarget
from orchestrate.core.secrets import masker
from orchestrate.errors import ConnectError, RemoteCommandError

LIVENESS_EVERY_S = 1.0  # a probe round trip this often; its deadline is ssh.connect_timeout
DIAGNOSE_S = 2.0  # the most a fresh TCP connection may take to say why a host went silent


@dataclass(frozen=True)
class Result:
    host: str
    argv: tuple[str, ...]
    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exited == 0

    def tail(self, n: int = 15) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return "\n".join(text[-n:])


def _line(argv: Sequence[str]) -> str:
    return shlex.join(argv)


def _trust_hint(target: SSHTarget) -> str:
    port = f"-p {target.port} " if target.port != 22 else ""
    return (
        f"verify the host's fingerprint, then `ssh-keyscan {port}{target.host} >> "
        f"{target.known_hosts}`; or set ssh.host_key_policy: accept-new to trust on first use"
    )


class _SaveNewKey(paramiko.MissingHostKeyPolicy):
    """accept-new: trust an unknown key once and record it; a changed key is still refused."""

    def __init__(self, path: str) -> None:
        self.path = path

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: Any) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="ascii") as f:
            f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def diagnose(target: SSHTarget, limit: float = DIAGNOSE_S) -> str:
    """Why a host stopped answering, from what a fresh TCP connection to its sshd sees: refused
    (crashed, rebooting, sshd gone), silent (off the network), or accepted with no banner (frozen:
    the kernel still completes the handshake while sshd cannot run)."""
    try:
        with socket.create_connection((target.host, target.port), timeout=limit) as sock:
            sock.settimeout(limit)
            try:
                banner = sock.recv(64)
            except TimeoutError:
                return "TCP still connects but sshd sends no banner: the host is frozen or overloaded"
    except ConnectionRefusedError:
        return "new connections are refused: the host crashed or is rebooting, or sshd died"
    except ConnectionResetError:  # accepted, then reset: sshd died under it (a crash in progress)
        return "new connections are reset: the host crashed or is rebooting, or sshd died"
    except TimeoutError:
        return "new connections time out too: the host is unreachable (network cut, or powered off)"
    except OSError as exc:
        return f"the host is unreachable: {exc.strerror or exc}"
    if banner.startswith(b"SSH-"):
        return "sshd still answers new connections: the link was cut (firewall, NAT) or overloaded"
    return "sshd closed a new connection at once: the host is shutting down or overloaded"


def _again(err: ConnectError) -> ConnectError:
    """A fresh copy to raise (one exception object raised from several threads tangles)."""
    return ConnectError(err.host, err.message.removeprefix(f"{err.host}: "), hint=err.hint)


class Liveness:
    """Watches one SSH transport beside whatever runs on it: a channel-open round trip every
    LIVENESS_EVERY_S with the connect deadline (sshd must answer, even with a refusal). paramiko's
    own keepalive wants no reply, so it never notices a frozen or cut-off host; a Docker call on
    such a host would wait for its read timeout (minutes). On the first failed probe the cause is
    recorded and the transport closed, which fails every call blocked on it at once."""

    def __init__(self, name: str, target: SSHTarget, transport: paramiko.Transport) -> None:
        self.name, self.target, self.transport = name, target, transport
        self.fault: ConnectError | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"liveness-{name}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopped.wait(LIVENESS_EVERY_S):
            if self.probe() is not None:
                return

    def probe(self) -> ConnectError | None:
        """None while the host answers; else the recorded cause (probing at most once at a time)."""
        with self._lock:
            if self.fault is None and not self._stopped.is_set():
                why = self._silence()
                if why is not None and not self._stopped.is_set():
                    t = self.target
                    self.fault = ConnectError(
                        self.name,
                        f"{why}; {diagnose(t)}",
                        hint="check the host's console, network and load; run the command again "
                        f"once `ssh -p {t.port} {t.user}@{t.host} true` answers",
                    )
                    self.transport.close()
            return self.fault

    def _silence(self) -> str | None:
        """What went wrong with one round trip, or None when sshd answered in time."""
        limit = self.target.connect_timeout
        if not self.transport.is_active():
            return "the SSH connection dropped"
        try:
            chan = self.transport.open_session(timeout=limit)
        except paramiko.ChannelException:
            return None  # a refusal (e.g. MaxSessions) is an answer
        except (paramiko.SSHException, EOFError, OSError):
            return self._lost(limit)
        try:
            chan.close()  # sends a message too: a host that crashed right after answering fails it
        except (paramiko.SSHException, EOFError, OSError):
            return self._lost(limit)
        return None

    def _lost(self, limit: float) -> str:
        if not self.transport.is_active():
            return "the SSH connection dropped"
        return f"the host stopped answering over SSH (no reply within {limit:g}s)"

    def stop(self) -> None:
        self._stopped.set()


class SSHRunner:
    """One SSH connection to one host; `run` executes an argv with a deadline."""

    def __init__(self, name: str, target: SSHTarget) -> None:
        self.name = name
        self.target = target
        self._conn: Connection | None = None
        self._liveness: Liveness | None = None
        self._lost: ConnectError | None = None  # sticky: a host found dead stays dead for us

    # ------------------------------------------------------------ connection
    def connect(self) -> SSHRunner:
        if self._conn is not None and self._alive():
            return self
        self.close()
        if self._lost is not None:
            raise _again(self._lost)
        t = self.target
        kwargs: dict[str, Any] = {
            "banner_timeout": t.connect_timeout,
            "auth_timeout": t.connect_timeout,
            "channel_timeout": t.connect_timeout,
            "allow_agent": False,
            "look_for_keys": t.key is None,
        }
        if t.key:
            kwargs["key_filename"] = [t.key]
        conn = Connection(
            t.host,
            user=t.user,
            port=t.port,
            connect_timeout=t.connect_timeout,
            connect_kwargs=kwargs,
            inline_ssh_env=True,
        )
        self._set_host_key_policy(conn.client)
        try:
            conn.open()
        except paramiko.BadHostKeyException:
            raise ConnectError(
                self.name,
                f"the SSH host key of {t.host} has CHANGED; refusing to connect (possible "
                "man-in-the-middle, or the host was reinstalled)",
                hint=f"if the change is expected: ssh-keygen -R {t.host} -f {t.known_hosts}, "
                "then verify and add the new key",
            ) from None
        except paramiko.SSHException as exc:
            raise self._map_ssh(exc) from None
        except TimeoutError:
            raise ConnectError(
                self.name,
                f"SSH to {t.host}:{t.port} timed out after {t.connect_timeout:g}s "
                "(host down, frozen or a firewall dropping packets)",
                hint=f"check that the host is up and reachable: ssh -p {t.port} {t.user}@{t.host} true",
            ) from None
        except OSError as exc:
            why = exc.strerror or str(exc)
            if "Unable to connect" in why:
                why = "connection refused (sshd not running, or the host is rebooting)"
            raise ConnectError(
                self.name,
                f"cannot reach SSH at {t.host}:{t.port}: {why}",
                hint="check that the host is up and sshd is running",
            ) from None
        transport = conn.client.get_transport()
        if transport is not None:
            self._liveness = Liveness(self.name, t, transport)
        self._conn = conn
        return self

    def found_lost(self) -> ConnectError | None:
        """What the liveness watch has found so far, without probing (cheap: for wait loops)."""
        live = self._liveness
        lost = self._lost or (live.fault if live is not None else None)
        return _again(lost) if lost is not None else None

    def lost(self) -> ConnectError | None:
        """Why this host is gone (frozen, unreachable, crashed), probing now if nothing is known
        yet; None while it answers. Callers ask this before blaming what failed on top of SSH."""
        live = self._liveness  # close() may drop it from another thread
        if self._lost is None and live is not None:
            self._lost = live.probe()
        return _again(self._lost) if self._lost is not None else None

    def _set_host_key_policy(self, client: paramiko.SSHClient) -> None:
        t = self.target
        if os.path.exists(t.known_hosts):
            try:
                client.load_host_keys(t.known_hosts)
            except (OSError, paramiko.SSHException) as exc:
                raise ConnectError(self.name, f"cannot read {t.known_hosts}: {exc}") from None
        elif t.host_key_policy == "strict":
            raise ConnectError(
                self.name,
                f"known_hosts file {t.known_hosts} does not exist, so the host key of "
                f"{t.host} cannot be verified",
                hint=_trust_hint(t),
            )
        if t.host_key_policy == "accept-new":
            client.set_missing_host_key_policy(_SaveNewKey(t.known_hosts))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())

    def _map_ssh(self, exc: paramiko.SSHException) -> ConnectError:
        t = self.target
        text = str(exc)
        if "not found in known_hosts" in text:
            return ConnectError(
                self.name,
                f"the SSH host key of {t.host} is unknown (not in {t.known_hosts}); refusing to connect",
                hint=_trust_hint(t),
            )
        if "banner" in text or "No existing session" in text:
            return ConnectError(
                self.name,
                f"SSH at {t.host}:{t.port} accepted the connection but did not answer within "
                f"{t.connect_timeout:g}s (host frozen, overloaded or swapping)",
                hint="check the host's console or load; raise ssh.connect_timeout if it is slow",
            )
        if isinstance(exc, paramiko.AuthenticationException):
            return ConnectError(
                self.name,
                f"SSH authentication as {t.user} failed on {t.host}",
                hint=f"check ssh.user and ssh.key ({t.key or 'default keys'})",
            )
        return ConnectError(
            self.name,
            f"SSH to {t.host}:{t.port} failed: {text or type(exc).__name__}",
            hint="check that sshd is running and answering on that port",
        )

    def _alive(self) -> bool:
        transport = self._conn.client.get_transport() if self._conn else None
        return bool(transport and transport.is_active())

    @property
    def client(self) -> paramiko.SSHClient:
        """The connected paramiko client (the Docker Engine link rides on it)."""
        client: paramiko.SSHClient = self.connect()._conn.client  # type: ignore[union-attr]
        return client

    def close(self) -> None:
        if self._liveness is not None:
            self._liveness.stop()
            self._lost = self._lost or self._liveness.fault
            self._liveness = None
        if self._conn is not None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                self._conn.close()
            self._conn = None

    # ------------------------------------------------------------ commands
    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True) -> Result:
        conn = self.connect()._conn
        assert conn is not None
        limit = timeout or self.target.command_timeout
        line = _line(argv)
        try:
            res = conn.run(line, hide=True, warn=True, timeout=limit, in_stream=False)
        except CommandTimedOut:
            lost = self.lost()
            self.close()
            raise lost or RemoteCommandError(
                self.name, f"`{masker(line)[:200]}` did not finish within {limit:g}s"
            ) from None
        except UnexpectedExit as exc:  # only with warn=False; kept for safety
            res = exc.result
        except (OSError, EOFError, paramiko.SSHException) as exc:
            lost = self.lost()
            self.close()
            raise lost or ConnectError(
                self.name, f"SSH connection lost: {exc or type(exc).__name__}"
            ) from None
        if res.exited == -1 and (lost := self.lost()) is not None:  # the channel died, no status
            raise lost
        result = Result(self.name, tuple(argv), res.exited, res.stdout, res.stderr)
        if check and not result.ok:
            raise RemoteCommandError(
                self.name,
                f"`{masker(line)[:200]}` exited with {result.exited}",
                tail=masker(result.tail()),
            )
        return result

    def put(self, local: str, remote: str) -> None:
        conn = self.connect()._conn
        assert conn is not None
        try:
            conn.put(local, remote)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectError(self.name, f"copy to {remote} failed: {exc}") from None


class LocalRunner:
    """The same interface as SSHRunner, for `connection: local` hosts (this machine)."""

    def __init__(self, name: str, target: SSHTarget) -> None:
        self.name = name
        self.target = target

    def connect(self) -> LocalRunner:
        return self

    def found_lost(self) -> ConnectError | None:
        return None  # this machine: if it is gone, so are we

    def close(self) -> None:
        pass

    def run(self, argv: Sequence[str], *, timeout: float | None = None, check: bool = True) -> Result:
        limit = timeout or self.target.command_timeout
        try:
            res = subprocess.run(
                list(argv),
                capture_output=True,
                text=True,
                timeout=limit,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise RemoteCommandError(
                self.name, f"`{masker(_line(argv))[:200]}` did not finish within {limit:g}s"
            ) from None
        except OSError as exc:
            res = subprocess.CompletedProcess(list(argv), 127, "", str(exc))
        result = Result(self.name, tuple(argv), res.returncode, res.stdout, res.stderr)
        if check and not result.ok:
            raise RemoteCommandError(
                self.name,
                f"`{masker(_line(argv))[:200]}` exited with {result.exited}",
                tail=masker(result.tail()),
            )
        return result

    def put(self, local: str, remote: str) -> None:
        shutil.copyfile(local, remote)


Runner = SSHRunner | LocalRunner


def runner_for(name: str, target: SSHTarget) -> Runner:
    return LocalRunner(name, target) if target.local else SSHRunner(name, target)
