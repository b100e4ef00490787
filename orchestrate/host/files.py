"""Files on a host, for copying: SFTP over the host's SSH connection (each read, write and stat
bounded by the command timeout), or this machine's own files for a local node. The boundary for
SFTP (paramiko) and OS errors of those operations: they become HostErrors naming the host."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, Protocol

import paramiko

from orchestrate.errors import HostError
from orchestrate.host.remote import Runner, SSHRunner

__all__ = ["Files", "LocalFiles", "Reader", "SFTPFiles", "Writer", "files_for"]


class Reader(Protocol):
    def read(self, size: int) -> bytes: ...
    def close(self) -> None: ...


class Writer(Protocol):
    def write(self, data: bytes) -> Any: ...
    def close(self) -> None: ...


class Files(Protocol):
    host: str

    def size(self, path: str) -> int | None: ...
    def reader(self, path: str, offset: int, size: int) -> Reader: ...
    def writer(self, path: str, offset: int) -> Writer: ...
    def replace(self, src: str, dst: str) -> None: ...
    def remove(self, path: str) -> None: ...
    def close(self) -> None: ...


@contextmanager
def _io(host: str, what: str) -> Iterator[None]:
    """Map OS/SFTP/SSH errors of one file operation to a HostError naming the host."""
    try:
        yield
    except HostError:
        raise
    except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError) as exc:
        detail = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise HostError(host, f"{what}: {detail}") from None


class _Guarded:
    """A reader or writer whose every call maps OS/SFTP/SSH errors to a HostError."""

    def __init__(self, host: str, what: str, f: Any) -> None:
        self.host, self.what, self.f = host, what, f

    def read(self, size: int) -> bytes:
        with _io(self.host, self.what):
            data: bytes = self.f.read(size)
            return data

    def write(self, data: bytes) -> Any:
        with _io(self.host, self.what):
            return self.f.write(data)

    def close(self) -> None:
        with _io(self.host, self.what):  # pipelined SFTP writes report their errors here
            self.f.close()


class SFTPFiles:
    def __init__(self, host: str, runner: SSHRunner, timeout: float) -> None:
        self.host = host
        with _io(host, "cannot open an SFTP session"):
            self.sftp = runner.client.open_sftp()
            channel = self.sftp.get_channel()
            if channel is not None:
                channel.settimeout(timeout)  # every read/write/stat fails instead of hanging

    def size(self, path: str) -> int | None:
        try:
            with _io(self.host, f"stat {path}"):
                size = self.sftp.stat(path).st_size
                return None if size is None else int(size)
        except HostError:
            return None

    def reader(self, path: str, offset: int, size: int) -> Reader:
        with _io(self.host, f"cannot read {path}"):
            f = self.sftp.open(path, "rb")
            f.seek(offset)
            if size > offset:
                f.prefetch(size, max_concurrent_requests=64)  # ~2 MiB in flight, not the whole file
            return _Guarded(self.host, f"cannot read {path}", f)

    def writer(self, path: str, offset: int) -> Writer:
        with _io(self.host, f"cannot write {path}"):
            f = self.sftp.open(path, "r+b" if offset else "wb")
            f.seek(offset)
            f.set_pipelined(True)
            return _Guarded(self.host, f"cannot write {path}", f)

    def replace(self, src: str, dst: str) -> None:
        with _io(self.host, f"cannot rename {src} to {dst}"):
            self.sftp.posix_rename(src, dst)

    def remove(self, path: str) -> None:
        with _io(self.host, f"cannot remove {path}"):
            self.sftp.remove(path)

    def close(self) -> None:
        with suppress(OSError, EOFError, paramiko.SSHException, paramiko.SFTPError):
            self.sftp.close()


class LocalFiles:
    def __init__(self, host: str) -> None:
        self.host = host

    def size(self, path: str) -> int | None:
        try:
            return os.stat(path).st_size
        except OSError:
            return None

    def reader(self, path: str, offset: int, size: int) -> Reader:
        with _io(self.host, f"cannot read {path}"):
            f = open(path, "rb")  # noqa: SIM115 - closed by the copy loop
            f.seek(offset)
            return _Guarded(self.host, f"cannot read {path}", f)

    def writer(self, path: str, offset: int) -> Writer:
        with _io(self.host, f"cannot write {path}"):
            f = open(path, "r+b" if offset else "wb")  # noqa: SIM115
            f.seek(offset)
            return _Guarded(self.host, f"cannot write {path}", f)

    def replace(self, src: str, dst: str) -> None:
        with _io(self.host, f"cannot rename {src} to {dst}"):
            os.replace(src, dst)

    def remove(self, path: str) -> None:
        with _io(self.host, f"cannot remove {path}"):
            os.remove(path)

    def close(self) -> None:
        pass


def files_for(host: str, runner: Runner, timeout: float) -> Files:
    """The host's files: over SFTP on the runner's own SSH connection, or this machine's."""
    if isinstance(runner, SSHRunner):
        return SFTPFiles(host, runner, timeout)
    return LocalFiles(host)
