"""A fast, dependency-free stand-in for vLLM's OpenAI-compatible server (tests and benchmark P4).

Raw asyncio streams and a handwritten HTTP/1.1 handler (keep-alive, Content-Length request bodies,
chunked responses), speaking vLLM 0.32's exact wire format, captured from a real `vllm serve`:

    POST /v1/chat/completions   streamed: a role chunk, one content chunk per token (the last one
                                carries finish_reason "length"), a usage chunk when
                                stream_options.include_usage, then `data: [DONE]`; or one JSON body
    POST /v1/completions        the same without the role chunk
    GET  /v1/models, /health, /metrics (vllm:prompt_tokens_total, vllm:generation_tokens_total)

Generation always runs to max_tokens (as with `ignore_eos: true`); a prompt token is a
whitespace-separated word. Timing: the first token is written `ttft` seconds after the request was
read (the last ~1.5 ms of that wait spins, so the delay is exact to tens of microseconds), then one
token every `token_delay` seconds on a drift-free schedule; `token_delay=0` writes as fast as the
socket takes it. Failure injection: every `fail_every`-th request gets HTTP 500; a prompt containing
`[[fail]]` gets HTTP 500; one containing `[[cut]]` has its connection dropped after the first token.

    python bench/stub_server.py --port 8000 --ttft-ms 50 --token-delay-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

_WORD_LIST = """
the of and to in is was for on that with as by it at from his an were are which this be or
has had not but first one their its new after who they two her she been other when there all
during into school time may years more most only over city some world would where later up
such used many can state about national out known university united then made
"""
WORDS = tuple(_WORD_LIST.split())
SPIN_S = 0.0015  # the last part of the TTFT wait is spun, not slept: epoll sleeps in whole ms
BATCH = 256  # tokens per write when streaming as fast as possible
FINGERPRINT = "vllm-0.32.0-stub"


@dataclass
class StubConfig:
    model: str = "tiny"
    ttft: float = 0.0  # seconds from request read to the first token
    token_delay: float = 0.0  # seconds between tokens; 0 = as fast as the socket takes them
    fail_every: int = 0  # every Nth request gets HTTP 500 (0 = never)
    api_key: str | None = None  # when set, /v1/* wants `Authorization: Bearer KEY` (else 401)
    default_max_tokens: int = 16


@dataclass
class StubStats:
    requests: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    running: int = 0
    max_running: int = 0
    ttft_sum: float = 0.0  # seconds from request read to first token written, all requests
    ttft_count: int = 0


class _Cut(Exception):
    """The `[[cut]]` marker: drop the connection mid-stream."""


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return _words(value.get("content") if "content" in value else value.get("text"))
    return 0


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return _text(value.get("content") if "content" in value else value.get("text"))
    return ""


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _error_body(message: str, kind: str, code: int) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}, separators=(",", ":")
    ).encode()


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
}


class StubServer:
    def __init__(
        self,
        config: StubConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.config = config or StubConfig()
        self.host = host
        self.port = port
        self.stats = StubStats()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._date = (0, b"")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    # ------------------------------------------------------------ HTTP/1.1

    def _date_header(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True).encode())
        return self._date[1]

    def _head(self, status: int, content_type: bytes, length: int | None) -> bytes:
        size = b"transfer-encoding: chunked" if length is None else b"content-length: %d" % length
        return b"HTTP/1.1 %d %s\r\ndate: %s\r\nserver: uvicorn\r\ncontent-type: %s\r\n%s\r\n\r\n" % (
            status,
            _REASONS.get(status, "Unknown").encode(),
            self._date_header(),
            content_type,
            size,
        )

    def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
    ) -> None:
        writer.write(self._head(status, content_type, len(body)) + body)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, _Cut):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should close."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        request_line, _, header_block = head.partition(b"\r\n")
        parts = request_line.split()
        if len(parts) != 3:
            return False
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        headers: dict[bytes, bytes] = {}
        for line in header_block.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        keep_alive = headers.get(b"connection", b"").lower() != b"close"
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            self._respond(writer, 411, b'{"detail":"chunked request bodies are not supported"}')
            return False
        length_field = headers.get(b"content-length", b"0")
        if not length_field.isdigit():
            self._respond(writer, 400, b'{"detail":"bad content-length"}')
            return False
        length = int(length_field)
        if length > 64 * 1024 * 1024:
            self._respond(writer, 413, b'{"detail":"body too large"}')
            return False
        body = await reader.readexactly(length) if length else b""
        t_read = time.perf_counter()
        if (
            self.config.api_key
            and target.startswith(b"/v1/")
            and (headers.get(b"authorization") != b"Bearer " + self.config.api_key.encode())
        ):
            self._respond(writer, 401, b'{"error":"Unauthorized"}')
        else:
            await self._route(method, target, body, writer, t_read)
        await writer.drain()
        return keep_alive

    async def _route(
        self, method: bytes, target: bytes, body: bytes, writer: asyncio.StreamWriter, t_read: float
    ) -> None:
        gets = {b"/health": self._health, b"/v1/models": self._models, b"/metrics": self._metrics}
        posts = {b"/v1/chat/completions": True, b"/v1/completions": False}
        if target in gets:
            if method != b"GET":
                self._respond(writer, 405, b'{"detail":"Method Not Allowed"}')
                return
            gets[target](writer)
        elif target in posts:
            if method != b"POST":
                self._respond(writer, 405, b'{"detail":"Method Not Allowed"}')
                return
            await self._generate(posts[target], body, writer, t_read)
        else:
            self._respond(writer, 404, b'{"detail":"Not Found"}')

    # ------------------------------------------------------------ simple endpoints

    def _health(self, writer: asyncio.StreamWriter) -> None:
        self._respond(writer, 200, b"")

    def _models(self, writer: asyncio.StreamWriter) -> None:
        model = {
            "id": self.config.model,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": self.config.model,
            "parent": None,
            "max_model_len": 1 << 20,
        }
        self._respond(writer, 200, json.dumps({"object": "list", "data": [model]}).encode())

    def _metrics(self, writer: asyncio.StreamWriter) -> None:
        labels = f'{{engine="0",model_name="{self.config.model}"}}'
        s = self.stats
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{labels} {float(s.running)}\n"
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
            "# TYPE vllm:prompt_tokens_total counter\n"
            f"vllm:prompt_tokens_total{labels} {float(s.prompt_tokens_total)}\n"
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total{labels} {float(s.generation_tokens_total)}\n"
            "# HELP stub:time_to_first_token_seconds Request read to first token written (server side).\n"
            "# TYPE stub:time_to_first_token_seconds summary\n"
            f"stub:time_to_first_token_seconds_sum{labels} {s.ttft_sum!r}\n"
            f"stub:time_to_first_token_seconds_count{labels} {float(s.ttft_count)}\n"
        )
        self._respond(writer, 200, text.encode(), b"text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------ generation

    async def _generate(self, chat: bool, body: bytes, writer: asyncio.StreamWriter, t_read: float) -> None:
        self.stats.requests += 1
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("the body must be a JSON object")
            prompt = req["messages"] if chat else req["prompt"]
        except (ValueError, KeyError) as exc:
            self._respond(writer, 400, _error_body(f"invalid request: {exc}", "BadRequestError", 400))
            return
        if req.get("model") != self.config.model:
            self._respond(
                writer,
                404,
                _error_body(
                    f"The model `{req.get('model')}` does not exist. Valid aliases: {self.config.model}.",
                    "NotFoundError",
                    404,
                ),
            )
            return
        text = _text(prompt)
        every = self.config.fail_every
        if "[[fail]]" in text or (every and self.stats.requests % every == 0):
            self._respond(writer, 500, _error_body("injected failure", "InternalServerError", 500))
            return
        max_tokens = int(
            req.get("max_completion_tokens") or req.get("max_tokens") or self.config.default_max_tokens
        )
        prompt_tokens = _words(prompt)
        self.stats.prompt_tokens_total += prompt_tokens
        self.stats.running += 1
        self.stats.max_running = max(self.stats.max_running, self.stats.running)
        try:
            if req.get("stream"):
                include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
                await self._stream(
                    chat, writer, t_read, max_tokens, prompt_tokens, include_usage, cut="[[cut]]" in text
                )
            else:
                await self._complete(chat, writer, t_read, max_tokens, prompt_tokens)
        finally:
            self.stats.running -= 1

    async def _wait_first(self, t_read: float) -> None:
        deadline = t_read + self.config.ttft
        while (remaining := deadline - time.perf_counter()) > 0:
            await asyncio.sleep(remaining - SPIN_S if remaining > 2 * SPIN_S else 0)
        self.stats.ttft_sum += time.perf_counter() - t_read
        self.stats.ttft_count += 1

    async def _stream(
        self,
        chat: bool,
        writer: asyncio.StreamWriter,
        t_read: float,
        max_tokens: int,
        prompt_tokens: int,
        include_usage: bool,
        cut: bool,
    ) -> None:
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(8)
        obj = "chat.completion.chunk" if chat else "text_completion"
        common = (
            f'data: {{"id":"{rid}","object":"{obj}","created":{int(time.time())},'
            f'"model":"{self.config.model}","choices":['
        ).encode()
        if chat:
            prefix = common + b'{"index":0,"delta":{"content":"'
            middle = b'"},"logprobs":null,"finish_reason":'
            tail = b',"token_ids":null}]}\n\n'
        else:
            prefix = common + b'{"index":0,"text":"'
            middle = b'","logprobs":null,"finish_reason":'
            tail = b',"prompt_token_ids":null,"token_ids":null}]}\n\n'

        def token(i: int) -> bytes:
            word = WORDS[i % len(WORDS)].encode()
            if i == max_tokens - 1:
                finish = b'"length","stop_reason":null'
            else:
                finish = b"null" if chat else b'null,"stop_reason":null'
            return _chunk(prefix + b" " + word + middle + finish + tail)

        await self._wait_first(t_read)
        out = [self._head(200, b"text/event-stream; charset=utf-8", None)]
        if chat:
            out.append(
                _chunk(
                    common + b'{"index":0,"delta":{"role":"assistant","content":""},'
                    b'"logprobs":null,"finish_reason":null}],'
                    b'"prompt_token_ids":null,"prompt_text":null}\n\n'
                )
            )
        delay = self.config.token_delay
        start = time.perf_counter()
        i = 0
        while i < max_tokens:
            if delay > 0 and i > 0:
                await asyncio.sleep(max(0.0, start + i * delay - time.perf_counter()))
            n = 1 if delay > 0 or (i == 0 and cut) else min(BATCH, max_tokens - i)
            out.extend(token(j) for j in range(i, i + n))
            writer.write(b"".join(out))
            out.clear()
            self.stats.generation_tokens_total += n
            i += n
            if cut:
                await writer.drain()
                raise _Cut
            await writer.drain()
        if include_usage:
            usage = (
                f'"usage":{{"prompt_tokens":{prompt_tokens},'
                f'"total_tokens":{prompt_tokens + max_tokens},'
                f'"completion_tokens":{max_tokens}}},"system_fingerprint":"{FINGERPRINT}"}}\n\n'
            )
            out.append(_chunk(common + b"]," + usage.encode()))
        out.append(_chunk(b"data: [DONE]\n\n"))
        out.append(b"0\r\n\r\n")
        writer.write(b"".join(out))

    async def _complete(
        self, chat: bool, writer: asyncio.StreamWriter, t_read: float, max_tokens: int, prompt_tokens: int
    ) -> None:
        await self._wait_first(t_read)
        if max_tokens > 1 and self.config.token_delay > 0:
            await asyncio.sleep(self.config.token_delay * (max_tokens - 1))
        self.stats.generation_tokens_total += max_tokens
        text = "".join(" " + WORDS[i % len(WORDS)] for i in range(max_tokens))
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": "length",
                "stop_reason": None,
            }
        body = {
            "id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(8),
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": self.config.model,
            "choices": [choice],
            "system_fingerprint": FINGERPRINT,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "total_tokens": prompt_tokens + max_tokens,
                "completion_tokens": max_tokens,
            },
        }
        self._respond(writer, 200, json.dumps(body, separators=(",", ":")).encode())


@contextlib.contextmanager
def running(config: StubConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> Iterator[StubServer]:
    """The stub on its own event loop in a daemon thread, for tests; stopped on exit."""
    server = StubServer(config, host, port)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="stub-server", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the stub server did not start within 10 s")
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--model", default="tiny")
    p.add_argument("--ttft-ms", type=float, default=0.0)
    p.add_argument("--token-delay-ms", type=float, default=0.0)
    p.add_argument("--fail-every", type=int, default=0)
    p.add_argument("--api-key", default=None)
    args = p.parse_args(argv)
    config = StubConfig(
        model=args.model,
        ttft=args.ttft_ms / 1000,
        token_delay=args.token_delay_ms / 1000,
        fail_every=args.fail_every,
        api_key=args.api_key,
    )

    async def serve() -> None:
        server = StubServer(config, args.host, args.port)
        await server.start()
        sys.stdout.write(f"listening on {server.url} pid {os.getpid()}\n")
        sys.stdout.flush()
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
