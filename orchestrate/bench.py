"""`orchestrate bench`: load an OpenAI-compatible endpoint and report vLLM's serving metrics.

Requests stream (`stream_options.include_usage`, `ignore_eos`, `max_tokens` = the output length),
so every number below is the one `vllm bench serve` reports, computed the same way:

    TTFT   request sent -> first chunk with non-empty content (or reasoning) text (vLLM's client
           times the role chunk before it, which a vLLM server sends in the same write)
    ITL    gaps between successive chunks from the first content on (every request; as in vLLM,
           a chunk with empty text counts: it is a token whose character is not complete yet)
    E2E    request sent -> the last chunk that carries choices
    TPOT   (E2E - TTFT) / (output tokens - 1), per request with more than one output token
    goodput  completed requests meeting every given SLO (TPOT of a 1-token request is 0), per second

Token counts are the server's `usage` when it sends one, else the client's count of chunks from
the first content on (prompt: the requested approximate length). Throughputs divide by the level's wall time,
from its first request sent to its last one finished. Timestamps are `time.perf_counter()`: a
request's clock starts right before it is handed to the connection, and a chunk is timed when its
bytes came off the socket (the transport notes it), so the client's own parsing adds nothing.

A level is either a closed loop (`--concurrency C`: C requests always in flight, N in all) or an
open one (`--request-rate R`: Poisson arrivals, seeded, `inf` = all at once; `--concurrency` then
caps the requests in flight and a request's clock starts when it gets a slot, as in vLLM's).
Every request has a deadline; a level sends exactly `--num-prompts` requests; Ctrl-C stops after
the levels already finished, which are still reported.
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.util
import json
import math
import os
import random
import socket
import ssl
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, SupportsIndex

import click
import httpx

from orchestrate.console import emit_json, emit_table, emit_text
from orchestrate.errors import EXIT_INTERRUPTED, OrchestrateError, UsageError
from orchestrate.secrets import masker

Endpoint = Literal["chat", "completions"]
PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
SLO_KEYS = ("ttft", "tpot", "e2el")
DEFAULT_SWEEP = (1, 4, 16)
# A fixed, seeded vocabulary: one common English word is about one token for most tokenizers.
_WORD_LIST = """
time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government
number night point home water room mother area money story fact month lot right study book
eye job word business issue side kind head house service friend father power hour game line
end member law car city community name president team minute idea kid body information back
parent face others level office door health person art war history party result change
morning reason research girl guy moment air teacher force education
"""
WORDS = tuple(_WORD_LIST.split())


class BenchInterrupted(OrchestrateError):
    exit_code = EXIT_INTERRUPTED


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Level:
    concurrency: int | None  # closed loop: in flight; open loop: the cap (None = no cap)
    request_rate: float | None = None  # None: closed loop; math.inf: all at once

    @property
    def label(self) -> str:
        if self.request_rate is None:
            return f"c={self.concurrency}"
        rate = "inf" if math.isinf(self.request_rate) else f"{self.request_rate:g}/s"
        return f"rate={rate}" + (f" c<={self.concurrency}" if self.concurrency else "")


@dataclass(frozen=True)
class Prompt:
    prompt: str | None = None  # /v1/completions, or one user message for chat
    messages: tuple[dict[str, Any], ...] | None = None
    approx_tokens: int = 0


@dataclass(frozen=True)
class BenchConfig:
    base_url: str
    model: str
    levels: tuple[Level, ...]
    prompts: tuple[Prompt, ...]  # cycled through, request i sends prompts[i % len]
    endpoint: Endpoint = "chat"
    output_len: int = 128
    num_prompts: int = 100
    api_key: str | None = None
    goodput: dict[str, float] = field(default_factory=dict)  # SLO name -> milliseconds
    seed: int = 0
    timeout: float = 300.0  # seconds, per request


def parse_concurrency(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise UsageError(f"--concurrency {text!r}: expected positive integers, e.g. 1,4,16")
    return values


def parse_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = -1.0
    if not rate > 0:
        raise UsageError(f"--request-rate {text!r}: expected requests per second > 0, or inf")
    return rate


def parse_goodput(specs: Sequence[str]) -> dict[str, float]:
    """`ttft:500 tpot:50`, `ttft:500,tpot:50` or repeated options -> {name: ms}."""
    out: dict[str, float] = {}
    for item in " ".join(specs).replace(",", " ").split():
        key, _, value = item.partition(":")
        try:
            ms = float(value)
        except ValueError:
            ms = -1.0
        if key not in SLO_KEYS or not ms > 0:
            raise UsageError(
                f"--goodput {item!r}: expected KEY:MS with KEY one of "
                f"{', '.join(SLO_KEYS)} and MS > 0, e.g. ttft:500 tpot:50"
            )
        out[key] = ms
    return out


def make_levels(concurrency: Sequence[int] | None, request_rate: float | None) -> tuple[Level, ...]:
    if request_rate is None:
        return tuple(Level(c) for c in (concurrency or DEFAULT_SWEEP))
    return tuple(Level(c, request_rate) for c in concurrency) if concurrency else (Level(None, request_rate),)


def random_prompts(count: int, input_len: int, seed: int) -> tuple[Prompt, ...]:
    """`count` distinct prompts of `input_len` words drawn from a fixed list (seeded)."""
    rng = random.Random(seed)
    return tuple(
        Prompt(prompt=" ".join(rng.choices(WORDS, k=input_len)), approx_tokens=input_len)
        for _ in range(count)
    )


def load_prompts(path: str | Path) -> tuple[Prompt, ...]:
    """One JSON object per line: {"prompt": "..."} or {"messages": [...]}; blank lines skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--prompts {path}: cannot read: {exc}") from None
    out: list[Prompt] = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            out.append(_prompt_line(f"{path}:{number}", line))
    if not out:
        raise UsageError(f"--prompts {path}: no prompts in the file")
    return tuple(out)


def _prompt_line(where: str, line: str) -> Prompt:
    try:
        item = json.loads(line)
    except ValueError as exc:
        raise UsageError(f"{where}: not JSON: {exc}") from None
    if isinstance(item, dict) and isinstance(item.get("prompt"), str):
        return Prompt(prompt=item["prompt"], approx_tokens=len(item["prompt"].split()))
    messages = item.get("messages") if isinstance(item, dict) else None
    if isinstance(messages, list) and messages and all(isinstance(m, dict) and "role" in m for m in messages):
        words = sum(len(str(m.get("content", "")).split()) for m in messages)
        return Prompt(messages=tuple(messages), approx_tokens=words)
    raise UsageError(
        f'{where}: expected {{"prompt": "..."}} or {{"messages": [{{"role": ..., "content": ...}}]}}'
    )


def request_body(cfg: BenchConfig, prompt: Prompt) -> bytes:
    body: dict[str, Any] = {"model": cfg.model}
    if cfg.endpoint == "chat":
        body["messages"] = (
            list(prompt.messages)
            if prompt.messages is not None
            else [{"role": "user", "content": prompt.prompt}]
        )
    elif prompt.messages is not None:
        raise UsageError(
            '--endpoint completions takes {"prompt": ...} lines, not messages', hint="--endpoint chat"
        )
    else:
        body["prompt"] = prompt.prompt
    body.update(
        {
            "max_tokens": cfg.output_len,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    return json.dumps(body, separators=(",", ":")).encode()


# ---------------------------------------------------------------- the transport

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
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
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
        stream = _Body(
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
    ) -> tuple[_Connection, bool]:
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
        reader = _TimedReader(limit=1 << 20)
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
        return _Connection(reader, asyncio.StreamWriter(transport, protocol, reader, loop)), False

    def release(self, key: tuple[str, str, int], conn: _Connection) -> None:
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


class _TimedReader(asyncio.StreamReader):
    """Notes when bytes came off the socket: latency is measured to arrival, not to our parsing."""

    arrived = 0.0

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        self.arrived = time.perf_counter()
        super().feed_data(data)


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: _TimedReader, writer: asyncio.StreamWriter) -> None:
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


class _Body(httpx.AsyncByteStream):
    """A response body: chunked, Content-Length or until close; the connection is reused when read out."""

    def __init__(
        self,
        transport: StreamTransport,
        conn: _Connection,
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


# ---------------------------------------------------------------- one request


@dataclass(slots=True)
class RequestResult:
    start: float = 0.0  # perf_counter when sent
    ok: bool = False
    error: str | None = None
    ttft: float | None = None  # seconds
    e2el: float = 0.0
    itl: list[float] = field(default_factory=list)
    chunks: int = 0  # chunks from the first content on: the token count when there is no usage
    output_tokens: int | None = None  # server usage
    prompt_tokens: int | None = None  # server usage


def _why(exc: httpx.HTTPError) -> str:
    """A reason that aggregates: no request-specific detail."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({' '.join(str(exc).split())[:120] or 'unreachable'})"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "server closed the connection mid-response"
    return type(exc).__name__


def _http_error(resp: httpx.Response) -> str:
    message = resp.text
    try:
        data = resp.json()
        message = data["error"]["message"] if "error" in data else str(data.get("detail", data))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return f"HTTP {resp.status_code}: {' '.join(str(message).split())[:120]}"


_json = json.JSONDecoder().raw_decode  # json.loads without its two whitespace regexes per event


def _text(choice: dict[str, Any], chat: bool) -> Any:
    if not chat:
        return choice.get("text")
    delta = choice["delta"]
    return delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning")


async def _read_stream(resp: httpx.Response, rec: RequestResult, chat: bool) -> None:
    t0 = last = rec.start
    done = False
    decode = codecs.getincrementaldecoder("utf-8")().decode
    rest = ""
    body = resp.extensions.get(ARRIVAL)
    async for data in resp.aiter_bytes():
        if done:
            continue  # read the body out so the connection goes back to the pool
        now = body.arrived if body else time.perf_counter()  # every event in this read had arrived
        lines = (rest + decode(data)).split("\n")
        rest = lines.pop()
        for line in lines:
            if not line.startswith("data:"):
                continue  # blank separators, comments (pings), event: and id: fields
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                break
            event = _json(payload)[0]
            if choices := event.get("choices"):
                rec.e2el = now - t0
                if rec.ttft is not None:  # a token; its text may be empty (an incomplete character)
                    rec.itl.append(now - last)
                    rec.chunks += 1
                    last = now
                elif _text(choices[0], chat):
                    rec.ttft = now - t0
                    rec.chunks = 1
                    last = now
            if usage := event.get("usage"):
                rec.output_tokens = usage.get("completion_tokens")
                rec.prompt_tokens = usage.get("prompt_tokens")
            elif "error" in event:
                error = event["error"]
                message = error.get("message", error) if isinstance(error, dict) else error
                rec.error = f"stream error: {' '.join(str(message).split())[:120]}"
                return
    if not done:
        rec.error = "stream ended without [DONE]"
    elif rec.ttft is None:
        rec.error = "no content in the response"
    else:
        rec.ok = True


async def send_one(
    client: httpx.AsyncClient, path: str, body: bytes, chat: bool, timeout: float
) -> RequestResult:
    """One streamed request; its clock starts once the request is built, right before it is sent."""
    request = client.build_request("POST", path, content=body, headers={"content-type": "application/json"})
    rec = RequestResult(start=time.perf_counter())
    try:
        async with asyncio.timeout(timeout):
            resp = await client.send(request, stream=True)
            try:
                if resp.status_code != 200:
                    await resp.aread()
                    rec.error = _http_error(resp)
                else:
                    await _read_stream(resp, rec, chat)
            finally:
                await resp.aclose()
    except TimeoutError:
        rec.error = f"timed out after {timeout:g} s"
    except httpx.HTTPError as exc:
        rec.error = _why(exc)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        rec.error = f"unexpected response ({type(exc).__name__})"
    if rec.error:
        rec.ok = False
    return rec


# ---------------------------------------------------------------- metrics


def percentile(values: Sequence[float], p: float) -> float:
    """numpy's default (linear) percentile of sorted values."""
    rank = (len(values) - 1) * p / 100
    lo = math.floor(rank)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (rank - lo)


@dataclass(frozen=True)
class Stats:
    mean: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Stats:
        if not seconds:
            return cls()
        ms = sorted(v * 1000 for v in seconds)
        return cls(math.fsum(ms) / len(ms), percentile(ms, 50), percentile(ms, 90), percentile(ms, 99))


@dataclass(frozen=True)
class BenchResult:
    """One load level, in vLLM's terms (latencies in milliseconds)."""

    label: str
    concurrency: int | None
    request_rate: float | None
    requests: int
    completed: int
    failed: int
    failures: dict[str, int]
    duration_s: float
    input_tokens: int
    output_tokens: int
    usage_reported: int  # completed requests whose token counts are the server's
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    goodput: float | None  # good requests per second, when SLOs were given
    good_requests: int | None
    ttft_ms: Stats
    tpot_ms: Stats
    itl_ms: Stats
    e2el_ms: Stats

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.request_rate is not None and math.isinf(self.request_rate):
            data["request_rate"] = "inf"
        return data


def summarize(
    level: Level,
    results: Sequence[RequestResult],
    duration: float,
    prompts: Sequence[Prompt],
    slo_ms: dict[str, float],
) -> BenchResult:
    ttfts: list[float] = []
    tpots: list[float] = []
    all_tpots: list[float] = []
    itls: list[float] = []
    e2els: list[float] = []
    input_tokens = output_tokens = usage = 0
    for i, r in enumerate(results):
        if not r.ok or r.ttft is None:
            continue
        out = r.output_tokens if r.output_tokens is not None else r.chunks
        usage += r.output_tokens is not None
        input_tokens += (
            r.prompt_tokens if r.prompt_tokens is not None else prompts[i % len(prompts)].approx_tokens
        )
        output_tokens += out
        tpot = (r.e2el - r.ttft) / (out - 1) if out > 1 else 0.0
        if out > 1:
            tpots.append(tpot)
        all_tpots.append(tpot)
        ttfts.append(r.ttft)
        e2els.append(r.e2el)
        itls.extend(r.itl)
    completed = len(ttfts)
    good: int | None = None
    if slo_ms:
        per_request = {"ttft": ttfts, "tpot": all_tpots, "e2el": e2els}
        good = sum(all(per_request[k][j] * 1000 <= ms for k, ms in slo_ms.items()) for j in range(completed))
    dur = max(duration, 1e-9)
    failures = Counter(r.error or "failed" for r in results if not r.ok)
    return BenchResult(
        label=level.label,
        concurrency=level.concurrency,
        request_rate=level.request_rate,
        requests=len(results),
        completed=completed,
        failed=len(results) - completed,
        failures=dict(failures.most_common()),
        duration_s=duration,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        usage_reported=usage,
        request_throughput=completed / dur,
        output_throughput=output_tokens / dur,
        total_token_throughput=(input_tokens + output_tokens) / dur,
        goodput=None if good is None else good / dur,
        good_requests=good,
        ttft_ms=Stats.of(ttfts),
        tpot_ms=Stats.of(tpots),
        itl_ms=Stats.of(itls),
        e2el_ms=Stats.of(e2els),
    )


# ---------------------------------------------------------------- load levels


class Progress(Protocol):
    def start(self, label: str, total: int) -> None: ...

    def advance(self, ok: bool) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, ok: bool) -> None:
        pass

    def finish(self) -> None:
        pass


Send = Callable[[int], Awaitable[RequestResult]]


async def _closed_loop(send: Send, n: int, concurrency: int) -> list[RequestResult]:
    results: list[RequestResult] = [RequestResult()] * n
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < n:
            i = next_index
            next_index += 1
            results[i] = await send(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return results


async def _open_loop(
    send: Send, n: int, rate: float, cap: int | None, rng: random.Random
) -> list[RequestResult]:
    slots = asyncio.Semaphore(cap or n)

    async def one(i: int) -> RequestResult:
        async with slots:
            return await send(i)

    start = time.perf_counter()
    at = 0.0
    tasks: list[asyncio.Task[RequestResult]] = []
    try:
        for i in range(n):
            if i and not math.isinf(rate):
                at += rng.expovariate(rate)
                await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


async def run_level(
    client: httpx.AsyncClient, cfg: BenchConfig, bodies: Sequence[bytes], level: Level, progress: Progress
) -> BenchResult:
    path, chat = PATHS[cfg.endpoint], cfg.endpoint == "chat"

    async def send(i: int) -> RequestResult:
        rec = await send_one(client, path, bodies[i % len(bodies)], chat, cfg.timeout)
        progress.advance(rec.ok)
        return rec

    progress.start(level.label, cfg.num_prompts)
    t0 = time.perf_counter()
    try:
        if level.request_rate is None:
            results = await _closed_loop(send, cfg.num_prompts, level.concurrency or 1)
        else:
            rng = random.Random(cfg.seed)
            results = await _open_loop(send, cfg.num_prompts, level.request_rate, level.concurrency, rng)
    finally:
        progress.finish()
    return summarize(level, results, time.perf_counter() - t0, cfg.prompts, cfg.goodput)


def _client(cfg: BenchConfig, connections: int) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    return httpx.AsyncClient(
        base_url=cfg.base_url,
        headers=headers,
        transport=StreamTransport(max_idle=connections),
        timeout=httpx.Timeout(cfg.timeout, connect=min(cfg.timeout, 10.0)),
        trust_env=False,
    )


async def served_models(base_url: str, api_key: str | None, timeout: float = 10) -> list[str] | None:
    """Model ids from GET /v1/models; None when the server has no such route. Raises for people."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        transport = StreamTransport(max_idle=1)
        async with httpx.AsyncClient(timeout=timeout, headers=headers, transport=transport) as http:
            resp = await http.get(f"{base_url}/v1/models")
    except httpx.HTTPError as exc:
        raise OrchestrateError(
            f"cannot reach {base_url}: {_why(exc)}",
            hint="is the server up? `orchestrate status`, or check --url",
        ) from None
    if resp.status_code in (401, 403):
        raise UsageError(
            f"{base_url} refused the API key (HTTP {resp.status_code})",
            hint="--api-key-env VAR naming the variable that holds the key",
        )
    if resp.status_code != 200:
        return None
    try:
        return [str(m["id"]) for m in resp.json().get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@dataclass
class BenchReport:
    config: BenchConfig
    prompts_source: str
    levels: list[BenchResult] = field(default_factory=list)
    interrupted: bool = False

    def as_dict(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "url": cfg.base_url,
            "model": cfg.model,
            "endpoint": PATHS[cfg.endpoint],
            "prompts": self.prompts_source,
            "output_len": cfg.output_len,
            "num_prompts": cfg.num_prompts,
            "seed": cfg.seed,
            "timeout_s": cfg.timeout,
            "goodput_slo_ms": dict(cfg.goodput),
            "interrupted": self.interrupted,
            "levels": [level.as_dict() for level in self.levels],
        }


async def run_levels(cfg: BenchConfig, report: BenchReport, progress: Progress) -> None:
    """Run every level in turn, appending each finished one to `report.levels`."""
    bodies = [request_body(cfg, p) for p in cfg.prompts[: cfg.num_prompts]]
    connections = max((lv.concurrency or cfg.num_prompts) for lv in cfg.levels)
    async with _client(cfg, min(connections, cfg.num_prompts)) as client:
        for level in cfg.levels:
            report.levels.append(await run_level(client, cfg, bodies, level, progress))


def run(cfg: BenchConfig, prompts_source: str, progress: Progress | None = None) -> BenchReport:
    """Run the benchmark; Ctrl-C ends it with the finished levels kept (`interrupted` set)."""
    report = BenchReport(cfg, prompts_source)
    try:
        asyncio.run(run_levels(cfg, report, progress or NoProgress()))
    except KeyboardInterrupt:
        report.interrupted = True
    return report


# ---------------------------------------------------------------- rendering


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


LATENCIES = (("TTFT", "ttft_ms"), ("TPOT", "tpot_ms"), ("ITL", "itl_ms"), ("E2E", "e2el_ms"))


def table_rows(results: Sequence[BenchResult], detail: bool = False) -> tuple[list[str], list[list[str]]]:
    """One column per load level (narrow for any terminal), one row per metric; latencies in ms.

    p50 and p99 of each latency, plus mean and p90 with `detail`; goodput when SLOs were given.
    """
    rows = [
        ["completed / failed", *(f"{r.completed} / {r.failed}" for r in results)],
        ["requests/s", *(f"{r.request_throughput:.2f}" for r in results)],
        ["output tokens/s", *(f"{r.output_throughput:.1f}" for r in results)],
        ["total tokens/s", *(f"{r.total_token_throughput:.1f}" for r in results)],
    ]
    if any(r.goodput is not None for r in results):
        rows.append(
            ["goodput requests/s", *("-" if r.goodput is None else f"{r.goodput:.2f}" for r in results)]
        )
    for name, attr in LATENCIES:
        for p in ("mean", "p50", "p90", "p99") if detail else ("p50", "p99"):
            rows.append([f"{name} {p} (ms)", *(_ms(getattr(getattr(r, attr), p)) for r in results)])
    return ["metric", *(r.label for r in results)], rows


def notes(report: BenchReport) -> list[str]:
    lines = []
    for r in report.levels:
        for reason, count in r.failures.items():
            lines.append(f"{r.label}: {count} failed: {reason}")
        if r.completed and r.usage_reported < r.completed:
            lines.append(
                f"{r.label}: {r.completed - r.usage_reported} response(s) had no usage; "
                "their tokens are counted by the client"
            )
    if report.config.goodput:
        slo = ", ".join(f"{k} <= {v:g} ms" for k, v in report.config.goodput.items())
        lines.append(f"goodput: completed requests with {slo}")
    return lines


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def write_plot(results: Sequence[BenchResult], path: str | Path, title: str) -> None:
    """PNG: throughput, p50/p99 TTFT and p50/p99 TPOT per level. Needs matplotlib (Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = list(range(len(results)))
    labels = [r.label.removeprefix("c=") for r in results]
    closed = all(r.request_rate is None for r in results)
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    ax_tput, ax_ttft, ax_tpot = fig.subplots(1, 3)
    ax_tput.plot(x, [r.output_throughput for r in results], "o-", label="output tok/s")
    ax_tput.plot(x, [r.total_token_throughput for r in results], "s--", label="total tok/s")
    ax_tput.set_title("throughput (tokens/s)")
    for ax, attr, name in ((ax_ttft, "ttft_ms", "TTFT"), (ax_tpot, "tpot_ms", "TPOT")):
        ax.plot(x, [_nan(getattr(r, attr).p50) for r in results], "o-", label="p50")
        ax.plot(x, [_nan(getattr(r, attr).p99) for r in results], "s--", label="p99")
        ax.set_title(f"{name} (ms)")
    for ax in (ax_tput, ax_ttft, ax_tpot):
        ax.set_xticks(x, labels)
        ax.set_xlabel("concurrency" if closed else "load")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=100)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


# ---------------------------------------------------------------- progress on stderr


class RichProgress:
    """A rich progress bar per level (terminals)."""

    def __init__(self) -> None:
        from rich.console import Console as RichConsole
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=RichConsole(file=sys.stderr),
            transient=False,
            refresh_per_second=4,
        )
        self._task: Any = None
        self._failed = 0

    def start(self, label: str, total: int) -> None:
        self._failed = 0
        if self._task is None:
            self._bar.start()
        self._task = self._bar.add_task(f"bench {label}", total=total, failed=0)

    def advance(self, ok: bool) -> None:
        self._failed += not ok
        self._bar.update(self._task, advance=1, failed=self._failed)

    def finish(self) -> None:
        self._bar.refresh()

    def close(self) -> None:
        if self._task is not None:
            self._bar.stop()


class PlainProgress:
    """A line every `every` seconds and one per finished level (logs, pipes)."""

    def __init__(self, every: float = 5.0, stream: Any = None) -> None:
        self.every = every
        self.stream = stream or sys.stderr
        self._label, self._total, self._done, self._failed = "", 0, 0, 0
        self._t0 = self._last = 0.0

    def start(self, label: str, total: int) -> None:
        self._label, self._total, self._done, self._failed = label, total, 0, 0
        self._t0 = self._last = time.monotonic()

    def advance(self, ok: bool) -> None:
        self._done += 1
        self._failed += not ok
        now = time.monotonic()
        if now - self._last >= self.every and self._done < self._total:
            self._last = now
            self._line(now)

    def finish(self) -> None:
        self._line(time.monotonic())

    def close(self) -> None:
        pass

    def _line(self, now: float) -> None:
        self.stream.write(
            f"bench {self._label}: {self._done}/{self._total} requests, "
            f"{self._failed} failed, {now - self._t0:.1f}s\n"
        )
        self.stream.flush()


# ---------------------------------------------------------------- the command


def _target(
    ctx: click.Context, inventory_file: str | None, url: str | None
) -> tuple[str, str | None, str | None]:
    """(url, served name, API key variable) from the inventory when one is needed."""
    if url and not inventory_file:
        return url, None, None
    from orchestrate import inventory, plan
    from orchestrate.cli import resolve_inventory

    path = resolve_inventory(inventory_file, getattr(ctx.obj, "inventory", None))
    p = plan.build_plan(inventory.load(path))
    return url or p.endpoint, p.served_name, p.api_key_env


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url {url!r}: expected http://HOST:PORT")
    return url.removesuffix("/v1")


def _api_key(var: str | None) -> str | None:
    if not var:
        return None
    value = os.environ.get(var)
    if value is None:
        raise UsageError(f"the API key variable {var} is not set", hint=f"export {var}=...")
    masker.add(value)
    return value


def _pick_model(url: str, model: str | None, served: list[str] | None) -> str:
    if served is not None and model and model not in served:
        raise UsageError(
            f"{url} does not serve {model!r}; it serves: {', '.join(served) or 'nothing'}",
            hint="--model NAME",
        )
    if model:
        return model
    if not served:
        raise UsageError(f"{url} lists no models; name one", hint="--model NAME")
    return served[0]


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inventory_file", metavar="[INVENTORY]", required=False)
@click.option("--url", help="Base URL of an OpenAI-compatible server (default: the inventory's endpoint).")
@click.option(
    "--model",
    help="Model to ask for (default: the inventory's served name, else the first one the server lists).",
)
@click.option(
    "--api-key-env",
    metavar="VAR",
    help="Environment variable holding the API key (default: the inventory's).",
)
@click.option(
    "--endpoint",
    type=click.Choice(["chat", "completions"]),
    default="chat",
    show_default=True,
    help="/v1/chat/completions or /v1/completions.",
)
@click.option(
    "--input-len",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Random prompts: length in words (about one token each).",
)
@click.option(
    "--output-len",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Tokens per response (max_tokens, with ignore_eos).",
)
@click.option(
    "--num-prompts",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Requests per load level.",
)
@click.option(
    "--concurrency",
    metavar="LIST",
    help="Requests in flight, one level each, e.g. 1,4,16 (default 1,4,16). "
    "With --request-rate: caps on requests in flight (default: none).",
)
@click.option(
    "--request-rate", metavar="R", help="Requests per second, Poisson arrivals; inf sends them all at once."
)
@click.option(
    "--prompts",
    "prompts_file",
    metavar="FILE.jsonl",
    help='Prompts, one JSON object a line: {"prompt": ...} or {"messages": [...]} (default: random prompts).',
)
@click.option(
    "--goodput",
    multiple=True,
    metavar="KEY:MS",
    help="SLOs for goodput, e.g. 'ttft:500 tpot:50' (keys ttft, tpot, e2el; milliseconds; repeatable).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds prompts and arrivals.")
@click.option(
    "--plot",
    "plot_file",
    metavar="FILE.png",
    help="Write a PNG of throughput and p50/p99 TTFT/TPOT per level "
    "(needs matplotlib: pip install 'orchestrate[bench]').",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300.0,
    show_default=True,
    help="Seconds one request may take.",
)
@click.pass_context
def bench_command(
    ctx: click.Context,
    inventory_file: str | None,
    url: str | None,
    model: str | None,
    api_key_env: str | None,
    endpoint: Endpoint,
    input_len: int,
    output_len: int,
    num_prompts: int,
    concurrency: str | None,
    request_rate: str | None,
    prompts_file: str | None,
    goodput: tuple[str, ...],
    seed: int,
    plot_file: str | None,
    timeout: float,
) -> None:
    """Load the serving endpoint and report TTFT, TPOT, ITL, E2E latency and throughput.

    The same metrics as `vllm bench serve`, per load level: a concurrency sweep (each level
    sends --num-prompts requests) or Poisson arrivals at --request-rate.
    """
    output = getattr(ctx.obj, "output", "text")
    target_url, served_name, key_env = _target(ctx, inventory_file, url)
    base = _base_url(target_url)
    api_key = _api_key(api_key_env or key_env)
    levels = make_levels(
        parse_concurrency(concurrency) if concurrency else None,
        parse_rate(request_rate) if request_rate else None,
    )
    slo = parse_goodput(goodput)
    prompts = load_prompts(prompts_file) if prompts_file else random_prompts(num_prompts, input_len, seed)
    if plot_file and not matplotlib_available():
        click.echo(
            "note: --plot skipped: matplotlib is not installed (pip install 'orchestrate[bench]')", err=True
        )
        plot_file = None
    served = asyncio.run(served_models(base, api_key))
    cfg = BenchConfig(
        base_url=base,
        model=_pick_model(base, model or served_name, served),
        levels=levels,
        prompts=prompts,
        endpoint=endpoint,
        output_len=output_len,
        num_prompts=num_prompts,
        api_key=api_key,
        goodput=slo,
        seed=seed,
        timeout=timeout,
    )
    request_body(cfg, prompts[0])  # a completions endpoint with chat prompts fails here, not later
    progress = RichProgress() if sys.stderr.isatty() else PlainProgress()
    try:
        report = run(cfg, prompts_file or f"random, {input_len} words", progress)
    finally:
        progress.close()
    _emit(report, output, getattr(ctx.obj, "verbose", 0))
    if plot_file and report.levels:
        write_plot(report.levels, plot_file, f"{cfg.model} at {base}, {PATHS[endpoint]}")
        click.echo(f"wrote {plot_file}", err=True)
    _exit_status(report)


def _emit(report: BenchReport, output: str, verbose: int) -> None:
    if output == "json":
        emit_json(report.as_dict())
        return
    cfg = report.config
    columns, rows = table_rows(report.levels, detail=verbose > 0)
    emit_table(
        f"bench {cfg.model} at {cfg.base_url}{PATHS[cfg.endpoint]}: prompts {report.prompts_source}, "
        f"{cfg.output_len} output tokens, {cfg.num_prompts} requests a level",
        columns,
        rows,
    )
    extra = notes(report)
    if extra:
        emit_text("\n".join(extra))


def _exit_status(report: BenchReport) -> None:
    total = len(report.config.levels)
    if report.interrupted:
        raise BenchInterrupted(
            f"interrupted: {len(report.levels)} of {total} load level(s) finished (shown above)"
        )
    if report.levels and not any(r.completed for r in report.levels):
        reasons = Counter[str]()
        for r in report.levels:
            reasons.update(r.failures)
        top = ", ".join(f"{reason} ({n})" for reason, n in reasons.most_common(3))
        raise OrchestrateError(
            f"every request failed: {top}", hint="orchestrate check, or try the URL with curl"
        )
