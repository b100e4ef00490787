"""HTTP/1.1 over asyncio streams for httpx, decoding a streamed body a network read at a time."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterable
from typing import SupportsIndex

import httpx

ARRIVAL = "orchestrate.arrival"  # response extension: an object whose .arrived is the last read's time


class StreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over asyncio streams for httpx.AsyncClient, decoding a body a network read at a time.

    httpx's default transport (httpcore + h11) turns every HTTP chunk into one event passed up
    through several async generators; a token stream is one chunk per token, so the client, not
    the server, set the pace (about 52k chunks/s on a 2-core VM, below `vllm bench serve`'s
    aiohttp client on the same machine: bench/README.md, P4). Here all complete chunks of
    a read come out as one piece, and the response's ARRIVAL extension tells when that read's last
    byte came off the socket. Keep-alive with one retry when a reused connection turns out closed;
    TLS; no proxies, no HTTP/2. Errors are httpx's.
    """

    def __init__(self, max_idle: int = 1024) -> None:
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._max_idle = max_idle
        self._ssl: ssl.SSLContext | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        body = request.content if isinstance(request.stream, httpx.ByteStream) else await request.aread()
        lines = [b"%s %s HTTP/1.1" % (request.method.encode(), url.raw_path)]
        lines += [b"%s: %s" % (name, value) for name, value in request.headers.raw]
        data = b"\r\n".join(lines) + b"\r\n\r\n" + body
        for attempt in (0, 1):
            conn, reused = await self._connection(key, request, timeouts.get("connect"))
            try:
                conn.writer.write(data)
                async with asyncio.timeout(timeouts.get("write")):
                    await conn.writer.drain()
                status, reason, headers = await conn.read_head(timeouts.get("read"))
                break
            except TimeoutError:
                conn.close()
                raise httpx.ReadTimeout("no response in time", request=request) from None
            except (OSError, asyncio.IncompleteReadError) as exc:
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: retry on a new one
                raise httpx.RemoteProtocolError(f"server disconnected: {exc!r}", request=request) from None
            except (asyncio.LimitOverrunError, ValueError) as exc:
                conn.close()
                raise httpx.RemoteProtocolError(f"bad response head: {exc}", request=request) from None
            except BaseException:  # cancelled (a deadline, Ctrl-C): the connection is mid-request
                conn.close()
                raise
        stream = Body(
            self,
            conn,
            key,
            headers,
            request,
            timeouts.get("read"),
            no_body=request.method == "HEAD" or status in (204, 304),
        )
        return httpx.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason, ARRIVAL: stream},
        )

    async def _connection(
        self, key: tuple[str, str, int], request: httpx.Request, timeout: float | None
    ) -> tuple[Connection, bool]:
        idle = self._idle.get(key, [])
        while idle:
            conn = idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn, True
            conn.close()
        scheme, host, port = key
        if scheme == "https" and self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        loop = asyncio.get_running_loop()
        reader = TimedReader(limit=1 << 20)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            async with asyncio.timeout(timeout):
                transport, _ = await loop.create_connection(
                    lambda: protocol, host, port, ssl=self._ssl if scheme == "https" else None
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(_os_error(exc), request=request) from None
        return Connection(reader, asyncio.StreamWriter(transport, protocol, reader, loop)), False

    def release(self, key: tuple[str, str, int], conn: Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self._max_idle and not conn.writer.is_closing():
            idle.append(conn)
        else:
            conn.close()

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _os_error(exc: OSError) -> str:
    """'Connection refused', 'Name or service not known': without asyncio's addresses and errnos."""
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return exc.strerror or str(exc)
    return os.strerror(exc.errno)


class TimedReader(asyncio.StreamReader):
    """Notes when bytes came off the socket: latency is measured to arrival, not to our parsing."""

    arrived = 0.0

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.arrived = time.perf_counter()
        super().feed_data(data)


class Connection:
    """One kept-alive HTTP/1.1 connection: the reader that timestamps arrivals, and its writer."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: TimedReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()

    async def read_head(self, timeout: float | None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        async with asyncio.timeout(timeout):
            while True:
                head = await self.reader.readuntil(b"\r\n\r\n")
                status_line, *header_lines = head[:-4].split(b"\r\n")
                version, status, *reason = status_line.split(b" ", 2)
                if not version.startswith(b"HTTP/1."):
                    raise ValueError(f"not HTTP/1.x: {status_line[:40]!r}")
                code = int(status)
                if not 100 <= code < 200:
                    break
        headers = []
        for line in header_lines:
            name, sep, value = line.partition(b":")
            if sep:
                headers.append((name.strip(), value.strip()))
        return code, reason[0] if reason else b"", headers


class Body(httpx.AsyncByteStream):
    """A response body: chunked, Content-Length or until close; the connection is reused when read out."""

    def __init__(
        self,
        transport: StreamTransport,
        conn: Connection,
        key: tuple[str, str, int],
        headers: list[tuple[bytes, bytes]],
        request: httpx.Request,
        timeout: float | None,
        no_body: bool,
    ) -> None:
        self._transport, self._conn, self._key = transport, conn, key
        self._request, self._timeout = request, timeout
        fields = {name.lower(): value.lower() for name, value in headers}
        self._chunked = b"chunked" in fields.get(b"transfer-encoding", b"")
        self._length = (
            0 if no_body else int(fields[b"content-length"]) if b"content-length" in fields else None
        )
        self._keep_alive = fields.get(b"connection") != b"close"
        self._done = self._closed = False
        self.arrived = 0.0  # perf_counter when the last byte yielded so far came off the socket

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                data = await self._conn.reader.read(1 << 18)
                self.arrived = self._conn.reader.arrived
                return data
        except TimeoutError:
            raise httpx.ReadTimeout("no data in time", request=self._request) from None
        except OSError as exc:
            raise httpx.ReadError(f"read failed: {exc!r}", request=self._request) from None

    def _cut(self) -> httpx.RemoteProtocolError:
        return httpx.RemoteProtocolError(
            "peer closed connection without sending complete message body", request=self._request
        )

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunked:
            async for piece in self._dechunk():
                yield piece
        elif self._length is not None:
            left = self._length
            while left > 0:
                data = await self._read()
                if not data:
                    raise self._cut()
                left -= len(data)
                yield data
        else:
            self._keep_alive = False
            while data := await self._read():
                yield data
        self._done = True

    async def _dechunk(self) -> AsyncIterator[bytes]:
        buf = bytearray()
        while True:
            data = await self._read()
            if not data:
                raise self._cut()
            buf += data
            pieces: list[bytearray] = []
            pos, end = 0, False
            while (nl := buf.find(b"\r\n", pos)) >= 0:
                try:
                    size = int(buf[pos:nl].split(b";", 1)[0], 16)
                except ValueError:
                    raise httpx.RemoteProtocolError("bad chunk size", request=self._request) from None
                if size == 0:
                    end = buf.find(b"\r\n\r\n", nl) >= 0  # the last chunk, then (no) trailers
                    break
                if nl + 4 + size > len(buf):
                    break
                pieces.append(buf[nl + 2 : nl + 2 + size])
                pos = nl + 4 + size
            del buf[:pos]
            if pieces:
                yield b"".join(pieces)
            if end:
                return
            if len(buf) > 1 << 26:
                raise httpx.RemoteProtocolError("chunk too large", request=self._request)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._done and self._keep_alive:
            self._transport.release(self._key, self._conn)
        else:
            self._conn.close()
