"""The post's curl checks as code: /health, /v1/models, a chat completion, and a streamed one.

`/health` alone is not readiness: vLLM answers 200 while hung (vLLM #11996, #39863), so a real
completion, streamed and not, must come back. Every request has a timeout. httpx errors are mapped
here, once.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from orchestrate.core.plan import Plan


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    latency_ms: float
    detail: str
    ttft_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def why(exc: httpx.HTTPError) -> str:
    """One line for people: what an HTTP call ran into."""
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or unreachable"
    return f"{type(exc).__name__}: {exc}"


def health(base_url: str, timeout: float = 5) -> tuple[int | None, str]:
    """(status code or None, reason) of GET /health."""
    try:
        resp = httpx.get(f"{base_url}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return None, why(exc)
    return resp.status_code, resp.text[:200]


def _body(plan: Plan, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": plan.served_name,
        "messages": [{"role": "user", "content": plan.check_prompt}],
        "max_tokens": plan.check_max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def _timed(name: str, fn: Any) -> CheckResult:
    t0 = time.perf_counter()
    try:
        ok, detail, ttft = fn()
    except httpx.HTTPError as exc:
        ok, detail, ttft = False, why(exc), None
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        ok, detail, ttft = False, f"unexpected response: {exc}", None
    return CheckResult(name, ok, (time.perf_counter() - t0) * 1000, detail, ttft)


def run_checks(plan: Plan, base_url: str, api_key: str | None = None) -> list[CheckResult]:
    timeout = httpx.Timeout(plan.check_timeout, connect=10)
    with httpx.Client(base_url=base_url, timeout=timeout, headers=_headers(api_key)) as http:
        return [
            _timed("health", lambda: _check_health(http)),
            _timed("models", lambda: _check_models(http, plan)),
            _timed("chat", lambda: _check_chat(http, plan)),
            _timed("chat-stream", lambda: _check_stream(http, plan)),
        ]


def _check_health(http: httpx.Client) -> tuple[bool, str, None]:
    resp = http.get("/health")
    return resp.status_code == 200, f"HTTP {resp.status_code}", None


def _check_models(http: httpx.Client, plan: Plan) -> tuple[bool, str, None]:
    resp = http.get("/v1/models")
    if resp.status_code != 200:
        return False, f"HTTP {resp.status_code}: {resp.text[:200]}", None
    ids = [m["id"] for m in resp.json().get("data", [])]
    ok = plan.served_name in ids
    return ok, f"served: {', '.join(ids) or 'none'}", None


def _check_chat(http: httpx.Client, plan: Plan) -> tuple[bool, str, None]:
    resp = http.post("/v1/chat/completions", json=_body(plan, stream=False))
    if resp.status_code != 200:
        return False, f"HTTP {resp.status_code}: {resp.text[:300]}", None
    data = resp.json()
    text = data["choices"][0]["message"].get("content") or ""
    tokens = data.get("usage", {}).get("completion_tokens", 0)
    return tokens > 0, f"{tokens} tokens: {text[:60]!r}", None


def _check_stream(http: httpx.Client, plan: Plan) -> tuple[bool, str, float | None]:
    t0 = time.perf_counter()
    ttft: float | None = None
    chunks, done, pieces = 0, False, []
    with http.stream("POST", "/v1/chat/completions", json=_body(plan, stream=True)) as resp:
        if resp.status_code != 200:
            resp.read()
            return False, f"HTTP {resp.status_code}: {resp.text[:300]}", None
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                break
            event = json.loads(payload)
            for choice in event.get("choices", []):
                content = choice.get("delta", {}).get("content")
                if content:
                    if ttft is None:
                        ttft = (time.perf_counter() - t0) * 1000
                    pieces.append(content)
            chunks += 1
    ok = done and bool(pieces)
    detail = f"{chunks} chunks{' + [DONE]' if done else ', no [DONE]'}: {''.join(pieces)[:60]!r}"
    return ok, detail, ttft
