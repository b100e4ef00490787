"""The client side of one request: the HTTP client, a streamed request and its SSE, the model list."""

from __future__ import annotations

import asyncio
import codecs
import json
import time
from collections.abc import AsyncIterable, Callable
from typing import Any

import httpx

from orchestrate.errors import OrchestrateError, UsageError
from orchestrate.loadgen.config import BenchConfig
from orchestrate.loadgen.metrics import RequestResult
from orchestrate.loadgen.transport import ARRIVAL, StreamTransport


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


async def read_stream(resp: httpx.Response, rec: RequestResult, chat: bool) -> None:
    """Read a streamed completion into rec, each chunk timed when it came off the socket where
    the transport notes that (StreamTransport), else when httpx hands it over."""
    body = resp.extensions.get(ARRIVAL)  # StreamTransport's: when each read came off the socket
    await read_sse(resp.aiter_bytes(), rec, chat, (lambda: body.arrived) if body else time.perf_counter)


async def read_sse(
    reads: AsyncIterable[bytes],
    rec: RequestResult,
    chat: bool,
    arrived: Callable[[], float] = time.perf_counter,
) -> None:
    """Time a response body of vLLM's server-sent events into `rec`, a network read at a time.

    `arrived()` right after each read: when its bytes came off the socket (every event in it had
    arrived by then). Reads on after [DONE], so that a connection can go back to its pool.
    """
    t0 = last = rec.start
    done = False
    decode = codecs.getincrementaldecoder("utf-8")().decode
    rest = ""
    async for data in reads:
        if done:
            continue  # read the body out so the connection goes back to the pool
        now = arrived()
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
                    await read_stream(resp, rec, chat)
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


def make_client(cfg: BenchConfig, connections: int) -> httpx.AsyncClient:
    """The client for a run: keep-alive connections to cfg.base_url, read by StreamTransport."""
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
