"""`orchestrate bench` against the stub server (bench/stub_server.py), started in-process.

The stub's delays are known, so the metrics have known true values; bounds are generous
(a loaded CI machine) but one-sided where the physics allows: a 30 ms TTFT is never measured
below 30 ms. Token counts must match the server's to the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import statistics
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from bench.stub_server import StubConfig, StubServer, running
from orchestrate.cli import bench as bench_cli
from orchestrate.errors import OrchestrateError, UsageError
from orchestrate.loadgen import (
    DEFAULT_SWEEP,
    PATHS,
    BenchConfig,
    BenchInterrupted,
    BenchResult,
    Level,
    Prompt,
    RequestResult,
    Stats,
    StreamTransport,
    load_prompts,
    make_client,
    make_levels,
    parse_concurrency,
    parse_goodput,
    parse_rate,
    percentile,
    random_prompts,
    request_body,
    run,
    send_one,
    served_models,
    summarize,
)
from orchestrate.loadgen.client import read_stream
from orchestrate.loadgen.transport import Body, Connection, TimedReader
from orchestrate.ops.observe import parse_metrics
from tests import ROOT

Stub = Callable[..., StubServer]


@pytest.fixture
def stub() -> Iterator[Stub]:
    """stub(ttft=..., token_delay=..., ...) starts a stub server; all are stopped at the end."""
    with contextlib.ExitStack() as stack:
        yield lambda **kw: stack.enter_context(running(StubConfig(**kw)))


def config(server: StubServer, **kw: Any) -> BenchConfig:
    input_len = kw.pop("input_len", 5)
    prompts = kw.pop("prompts", None) or random_prompts(kw.get("num_prompts", 8), input_len, 0)
    return BenchConfig(
        base_url=server.url,
        model="tiny",
        prompts=prompts,
        levels=kw.pop("levels", (Level(2),)),
        **{"output_len": 10, "num_prompts": 8, "timeout": 30.0, **kw},
    )


def counters(server: StubServer) -> dict[str, float]:
    return parse_metrics(httpx.get(f"{server.url}/metrics", timeout=10).text)


def run_one(cfg: BenchConfig) -> BenchResult:
    report = run(cfg, "test")
    assert not report.interrupted and len(report.levels) == len(cfg.levels)
    return report.levels[0]


# ---------------------------------------------------------------- metrics against known delays


def test_ttft_tpot_and_tokens_match_the_stub(stub: Stub) -> None:
    server = stub(ttft=0.030, token_delay=0.002)
    before = counters(server)
    r = run_one(config(server, output_len=10, num_prompts=8, input_len=7))
    after = counters(server)

    assert (r.completed, r.failed, r.failures) == (8, 0, {})
    assert r.ttft_ms.p50 is not None and r.ttft_ms.p99 is not None and r.tpot_ms.mean is not None
    assert r.e2el_ms.p50 is not None
    assert 30 <= r.ttft_ms.p50 < 30 + 100
    assert 30 + 9 * 2 <= r.e2el_ms.p50 < 30 + 9 * 2 + 200
    assert 2 * 0.9 <= r.tpot_ms.mean < 2 + 20  # the stub's schedule is drift-free: mean >= delay
    # token counts are the server's, and equal what the server says it generated
    assert r.usage_reported == 8
    assert r.output_tokens == 8 * 10 == after["generation_tokens_total"] - before["generation_tokens_total"]
    assert r.input_tokens == 8 * 7 == after["prompt_tokens_total"] - before["prompt_tokens_total"]
    assert r.output_throughput == pytest.approx(r.output_tokens / r.duration_s)
    assert r.request_throughput == pytest.approx(8 / r.duration_s)
    assert r.total_token_throughput == pytest.approx((8 * 17) / r.duration_s)


def test_completions_endpoint_and_itl_count(stub: Stub) -> None:
    server = stub(ttft=0.005, token_delay=0.001)
    cfg = config(server, endpoint="completions", output_len=6, num_prompts=3, levels=(Level(1),))
    report = run(cfg, "test")
    r = report.levels[0]
    assert (r.completed, r.output_tokens) == (3, 18)
    assert r.itl_ms.p50 is not None and r.itl_ms.p50 >= 0
    # ITL: one gap per content chunk after the first, every request
    results = [_one_request(server, "completions", 6) for _ in range(2)]
    assert all(len(x.itl) == 5 and x.chunks == 6 and x.output_tokens == 6 for x in results)


def _one_request(server: StubServer, endpoint: str, output_len: int) -> RequestResult:
    cfg = config(server, endpoint=endpoint, output_len=output_len, num_prompts=1)

    async def go() -> RequestResult:
        async with make_client(cfg, 1) as client:
            body = request_body(cfg, cfg.prompts[0])
            return await send_one(client, PATHS[endpoint], body, endpoint == "chat", 10)

    return asyncio.run(go())


def test_ttft_is_first_content_not_the_role_chunk(stub: Stub) -> None:
    server = stub(ttft=0.020, token_delay=0.0)
    rec = _one_request(server, "chat", 4)
    assert rec.ok and rec.ttft is not None and rec.ttft >= 0.020
    assert rec.chunks == 4 and len(rec.itl) == 3 and rec.e2el >= rec.ttft


@given(st.lists(st.floats(-1e6, 1e6), min_size=2, max_size=50), st.integers(1, 99))
def test_percentile_is_numpys_linear(values: list[float], p: int) -> None:
    ordered = sorted(values)
    expected = statistics.quantiles(ordered, n=100, method="inclusive")[p - 1]
    assert percentile(ordered, p) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_stats_of_nothing_is_none() -> None:
    assert Stats.of([]) == Stats(None, None, None, None)
    assert Stats.of([0.001, 0.003]) == Stats(2.0, 2.0, pytest.approx(2.8), pytest.approx(2.98))


# ---------------------------------------------------------------- goodput


def _rec(ttft_ms: float, e2el_ms: float, tokens: int) -> RequestResult:
    return RequestResult(
        ok=True, ttft=ttft_ms / 1000, e2el=e2el_ms / 1000, output_tokens=tokens, chunks=tokens
    )


def test_goodput_counts_requests_meeting_every_slo() -> None:
    results = [
        _rec(10, 110, 11),  # tpot 10 ms
        _rec(50, 550, 11),  # tpot 50 ms
        _rec(100, 200, 11),  # tpot 10 ms, slow first token
        _rec(5, 5, 1),  # one token: tpot counts as 0 for goodput
        RequestResult(ok=False, error="HTTP 500: boom"),
    ]
    prompts = random_prompts(1, 3, 0)
    level = Level(4)

    def good(slo: dict[str, float]) -> tuple[int | None, float | None]:
        r = summarize(level, results, 2.0, prompts, slo)
        return r.good_requests, r.goodput

    assert good({}) == (None, None)
    assert good({"ttft": 60}) == (3, 1.5)
    assert good({"tpot": 20}) == (3, 1.5)
    assert good({"ttft": 60, "tpot": 20}) == (2, 1.0)
    assert good({"e2el": 200}) == (3, 1.5)  # <= is good
    assert good({"ttft": 1}) == (0, 0.0)
    r = summarize(level, results, 2.0, prompts, {})
    assert (r.completed, r.failed, r.failures) == (4, 1, {"HTTP 500: boom": 1})
    assert r.tpot_ms.p50 == pytest.approx(10)  # the 1-token request has no TPOT
    assert r.input_tokens == 4 * 3  # no usage from a server here: the prompts' lengths


def test_goodput_live(stub: Stub) -> None:
    server = stub(ttft=0.030)
    assert run_one(config(server, goodput={"ttft": 5000})).good_requests == 8
    assert run_one(config(server, goodput={"ttft": 1})).good_requests == 0  # 30 ms > 1 ms, always


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        (["ttft:500 tpot:50"], {"ttft": 500, "tpot": 50}),
        (["ttft:500", "e2el:2000"], {"ttft": 500, "e2el": 2000}),
        (["ttft:1.5,tpot:20"], {"ttft": 1.5, "tpot": 20}),
        ([], {}),
    ],
)
def test_parse_goodput(specs: list[str], expected: dict[str, float]) -> None:
    assert parse_goodput(specs) == expected


@pytest.mark.parametrize("bad", ["ttft", "itl:5", "ttft:-1", "ttft:x"])
def test_parse_goodput_rejects(bad: str) -> None:
    with pytest.raises(UsageError, match="KEY:MS"):
        parse_goodput([bad])


def test_parse_levels() -> None:
    assert parse_concurrency("1, 4,16") == (1, 4, 16)
    assert make_levels(None, None) == tuple(Level(c) for c in DEFAULT_SWEEP)
    assert make_levels((2,), math.inf) == (Level(2, math.inf),)
    assert make_levels(None, 5.0)[0].label == "rate=5/s"
    assert parse_rate("inf") == math.inf
    for bad in ("0", "x", "-3"):
        with pytest.raises(UsageError):
            parse_rate(bad)
    for bad in ("", "1,x", "0"):
        with pytest.raises(UsageError):
            parse_concurrency(bad)


# ---------------------------------------------------------------- prompts


def test_jsonl_prompts(stub: Stub, tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    lines = [
        {"prompt": "one two three"},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "four five"}]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n", encoding="utf-8")
    prompts = load_prompts(path)
    assert [p.approx_tokens for p in prompts] == [3, 4]
    server = stub()
    r = run_one(config(server, prompts=prompts, num_prompts=5, output_len=3))
    assert r.completed == 5
    assert r.input_tokens == 3 + 4 + 3 + 4 + 3  # cycled; the stub counts words, as the server truth


def test_jsonl_problems_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"nope": 1}\n', encoding="utf-8")
    with pytest.raises(UsageError, match=r"bad.jsonl:2: expected"):
        load_prompts(path)
    path.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"bad.jsonl:1: not JSON"):
        load_prompts(path)
    with pytest.raises(UsageError, match="cannot read"):
        load_prompts(tmp_path / "missing.jsonl")
    chat_only = Prompt(messages=({"role": "user", "content": "hi"},))
    cfg = BenchConfig("http://x", "m", (Level(1),), (chat_only,), endpoint="completions")
    with pytest.raises(UsageError, match="not messages"):
        request_body(cfg, chat_only)


def test_random_prompts_are_seeded_and_sized() -> None:
    a, b = random_prompts(3, 12, 7), random_prompts(3, 12, 7)
    assert a == b and a != random_prompts(3, 12, 8)
    assert all(len((p.prompt or "").split()) == 12 for p in a) and len(set(a)) == 3
    body = json.loads(request_body(config_for_body(), a[0]))
    assert body["max_tokens"] == 9 and body["ignore_eos"] is True and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": a[0].prompt}]


def config_for_body() -> BenchConfig:
    return BenchConfig("http://x", "m", (Level(1),), random_prompts(1, 1, 0), output_len=9)


# ---------------------------------------------------------------- load shapes


def test_request_rate_respects_the_cap(stub: Stub) -> None:
    server = stub(ttft=0.050)
    r = run_one(config(server, num_prompts=10, levels=(Level(2, 200.0),)))
    assert (r.completed, r.label, r.as_dict()["request_rate"]) == (10, "rate=200/s c<=2", 200.0)
    assert server.stats.max_running <= 2


def test_request_rate_inf_sends_all_at_once(stub: Stub) -> None:
    server = stub(ttft=0.300)
    r = run_one(config(server, num_prompts=10, levels=(Level(None, math.inf),)))
    assert r.completed == 10 and r.as_dict()["request_rate"] == "inf" and r.label == "rate=inf"
    assert server.stats.max_running == 10


def test_concurrency_sweep_runs_each_level(stub: Stub) -> None:
    server = stub(ttft=0.040)
    report = run(config(server, num_prompts=6, levels=(Level(1), Level(3))), "test")
    assert [(r.label, r.completed) for r in report.levels] == [("c=1", 6), ("c=3", 6)]
    assert server.stats.max_running == 3


# ---------------------------------------------------------------- failures


def test_failures_are_counted_with_reasons(stub: Stub, tmp_path: Path) -> None:
    server = stub(fail_every=3)
    r = run_one(config(server, num_prompts=9, levels=(Level(1),)))
    assert (r.completed, r.failed) == (6, 3)
    assert r.failures == {"HTTP 500: injected failure": 3}
    assert r.output_tokens == 6 * 10  # failed requests count no tokens


def test_a_cut_stream_and_a_timeout_are_failures(stub: Stub) -> None:
    server = stub()
    prompts = (Prompt(prompt="fine"), Prompt(prompt="please [[cut]]"))
    r = run_one(config(server, prompts=prompts, num_prompts=4, levels=(Level(1),)))
    assert (r.completed, r.failures) == (2, {"server closed the connection mid-response": 2})
    slow = stub(ttft=5.0)
    r = run_one(config(slow, num_prompts=2, timeout=0.2))
    assert r.failures == {"timed out after 0.2 s": 2}
    assert r.ttft_ms.p50 is None


def test_unreachable_server_is_one_clear_error() -> None:
    with pytest.raises(
        OrchestrateError, match=r"cannot reach http://127\.0\.0\.1:9: cannot connect \(Connection refused\)"
    ):
        asyncio.run(served_models("http://127.0.0.1:9", None, timeout=5))


# ---------------------------------------------------------------- Ctrl-C


class _InterruptAt:
    """Progress that sends this process SIGINT when the second level starts (as Ctrl-C does)."""

    def __init__(self) -> None:
        self.levels = 0

    def start(self, label: str, total: int) -> None:
        self.levels += 1
        if self.levels == 2:
            signal.raise_signal(signal.SIGINT)

    def advance(self, ok: bool) -> None:
        pass

    def finish(self) -> None:
        pass


@pytest.fixture
def sigint_default() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt in this process for the test, even when the suite was
    started with SIGINT ignored (a background job of a non-interactive shell)."""
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, saved)


@pytest.mark.usefixtures("sigint_default")
def test_ctrl_c_keeps_finished_levels(stub: Stub) -> None:
    server = stub(ttft=0.2)
    cfg = config(server, num_prompts=4, levels=(Level(4), Level(4), Level(4)))
    report = run(cfg, "test", _InterruptAt())
    assert report.interrupted and [r.completed for r in report.levels] == [4]
    with pytest.raises(BenchInterrupted, match="1 of 3 load level"):
        bench_cli.exit_status(report)


# ---------------------------------------------------------------- the command


def invoke(*args: str, output: str = "text", env: dict[str, str] | None = None) -> Any:
    obj = types.SimpleNamespace(inventory=None, output=output, verbose=0)
    return CliRunner().invoke(bench_cli.bench_command, list(args), obj=obj, env=env)


def test_cli_json(stub: Stub) -> None:
    server = stub(ttft=0.010)
    res = invoke(
        "--url",
        server.url + "/v1/",
        "--num-prompts",
        "4",
        "--concurrency",
        "1,2",
        "--output-len",
        "5",
        "--input-len",
        "3",
        "--goodput",
        "ttft:5000",
        output="json",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["url"] == server.url and data["model"] == "tiny"
    assert data["endpoint"] == "/v1/chat/completions" and data["goodput_slo_ms"] == {"ttft": 5000}
    assert [lv["label"] for lv in data["levels"]] == ["c=1", "c=2"]
    level = data["levels"][1]
    assert level["completed"] == 4 and level["output_tokens"] == 20 and level["good_requests"] == 4
    assert set(level["ttft_ms"]) == {"mean", "p50", "p90", "p99"} and level["ttft_ms"]["p50"] >= 10
    assert "bench c=2: 4/4 requests" in res.stderr  # plain progress lines off a terminal


def test_cli_text_and_plot(stub: Stub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = stub()
    png = tmp_path / "bench.png"
    args = (
        "--url",
        server.url,
        "--num-prompts",
        "3",
        "--concurrency",
        "1,2",
        "--output-len",
        "4",
        "--plot",
        str(png),
    )
    if bench_cli.matplotlib_available():
        res = invoke(*args)
        assert res.exit_code == 0, res.output
        assert png.read_bytes().startswith(b"\x89PNG") and f"wrote {png}" in res.stderr
        assert "TTFT p50" in res.stdout and "c=2" in res.stdout
        png.unlink()
    monkeypatch.setattr(bench_cli, "matplotlib_available", lambda: False)
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert "--plot skipped: matplotlib is not installed" in res.stderr and not png.exists()


def test_cli_takes_model_and_key_from_the_inventory(stub: Stub) -> None:
    server = stub(api_key="s3cret-key")
    inventory = str(ROOT / "inventory" / "local-cpu.yaml")  # serves "tiny", as the stub does
    env = {"BENCH_TEST_KEY": "s3cret-key"}
    res = invoke(
        inventory,
        "--url",
        server.url,
        "--api-key-env",
        "BENCH_TEST_KEY",
        "--num-prompts",
        "2",
        "--concurrency",
        "1",
        "--output-len",
        "3",
        output="json",
        env=env,
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["levels"][0]["completed"] == 2
    res = invoke("--url", server.url, "--api-key-env", "BENCH_TEST_KEY", env={"BENCH_TEST_KEY": "wrong"})
    assert isinstance(res.exception, UsageError) and "refused the API key" in res.exception.message


def test_target_from_the_inventory() -> None:
    inventory = str(ROOT / "inventory" / "local-cpu.yaml")
    ctx = types.SimpleNamespace(obj=types.SimpleNamespace(inventory=inventory))
    assert bench_cli.resolve_target(ctx, None, None) == ("http://172.30.99.11:8009", "tiny", None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--concurrency", "0"), "--concurrency"),
        (("--request-rate", "fast"), "--request-rate"),
        (("--goodput", "ttft"), "--goodput"),
        (("--model", "other"), "does not serve 'other'; it serves: tiny"),
        (("--api-key-env", "BENCH_TEST_UNSET_VAR"), "BENCH_TEST_UNSET_VAR is not set"),
    ],
)
def test_cli_usage_errors(stub: Stub, args: tuple[str, ...], message: str) -> None:
    server = stub()
    res = invoke("--url", server.url, *args)
    assert isinstance(res.exception, UsageError), res.output
    assert message in res.exception.message


def test_cli_every_request_failing_is_an_error(stub: Stub) -> None:
    server = stub(fail_every=1)
    res = invoke("--url", server.url, "--num-prompts", "2", "--concurrency", "1")
    assert isinstance(res.exception, OrchestrateError)
    assert res.exception.message == "every request failed: HTTP 500: injected failure (2)"
    assert "c=1: 2 failed: HTTP 500: injected failure" in res.stdout


# ---------------------------------------------------------------- the transport and the SSE parser


class _Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def _parse(wire: bytes, cuts: list[int], chat: bool = True) -> RequestResult:
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True) if b > a]
    rec = RequestResult(start=0.0)
    asyncio.run(read_stream(httpx.Response(200, stream=_Pieces(pieces)), rec, chat))
    return rec


def _sse(*events: dict[str, Any] | str, newline: str = "\n") -> bytes:
    out = ""
    for e in events:
        out += f"data: {e if isinstance(e, str) else json.dumps(e, ensure_ascii=False)}{newline}{newline}"
    return out.encode()


def _delta(**delta: Any) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}


@given(st.data())
def test_sse_parser_any_split(data: st.DataObject) -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 5}}
    newline = data.draw(st.sampled_from(["\n", "\r\n"]))
    head = [_delta(role="assistant", content=""), _delta(content="h\u00e9"), _delta(content="")]
    tail = [_delta(reasoning_content="think"), _delta(content="\u2028 ok"), usage, "[DONE]"]
    wire = _sse(*head) + b": keep-alive\n\n" + _sse(*tail, newline=newline)  # raw UTF-8, cut anywhere
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    rec = _parse(wire, cuts)
    assert rec.ok and rec.error is None
    # TTFT at the first content, not the role chunk; after it every chunk is a token, empty or not
    assert rec.chunks == 4 and len(rec.itl) == 3
    assert (rec.output_tokens, rec.prompt_tokens) == (5, 4)


def test_sse_parser_failures() -> None:
    assert _parse(_sse(_delta(content="a")), []).error == "stream ended without [DONE]"
    assert _parse(_sse(_delta(role="assistant"), "[DONE]"), []).error == "no content in the response"
    err = _parse(_sse(_delta(content="a"), {"error": {"message": "engine  died"}}), [])
    assert err.error == "stream error: engine died" and not err.ok
    text = {"object": "text_completion", "choices": [{"index": 0, "text": " x"}]}
    assert _parse(_sse(text, text, "[DONE]"), [], chat=False).chunks == 2


@given(st.lists(st.binary(min_size=1, max_size=40), max_size=12), st.data())
def test_dechunk_any_split(payloads: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in payloads) + b"0\r\n\r\n"
    cuts = sorted(data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=10)))
    truncate = data.draw(st.booleans())
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True) if b > a]
    if truncate:
        pieces = pieces[:-1] if len(pieces) > 1 else [wire[:-1]]

    async def go() -> bytes:
        reader = TimedReader()
        conn = Connection(reader, types.SimpleNamespace(close=lambda: None))  # type: ignore[arg-type]
        request = httpx.Request("GET", "http://x/")
        headers = [(b"Transfer-Encoding", b"chunked")]
        body = Body(StreamTransport(), conn, ("http", "x", 80), headers, request, 5, False)

        async def feed() -> None:
            for piece in pieces:
                reader.feed_data(piece)
                await asyncio.sleep(0)
            reader.feed_eof()

        feeder = asyncio.create_task(feed())
        try:
            return b"".join([piece async for piece in body])
        finally:
            await feeder

    if truncate:
        with pytest.raises(httpx.RemoteProtocolError):
            asyncio.run(go())
    else:
        assert asyncio.run(go()) == b"".join(payloads)


def test_transport_reuses_connections_and_skips_closed_ones(stub: Stub) -> None:
    server = stub()

    async def go() -> list[int]:
        transport = StreamTransport()
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as client:
            codes = [(await client.get("/v1/models")).status_code for _ in range(3)]
            assert sum(len(idle) for idle in transport._idle.values()) == 1  # one connection, reused
            for idle in transport._idle.values():
                for conn in idle:
                    conn.close()  # as a server's keep-alive timeout would
            codes.append((await client.get("/health")).status_code)
            metrics = await client.get("/metrics")
            assert "vllm:generation_tokens_total" in metrics.text  # a Content-Length body
            return codes

    assert asyncio.run(go()) == [200, 200, 200, 200]


# ---------------------------------------------------------------- the stub speaks vLLM's format


def test_stub_stream_format(stub: Stub) -> None:
    server = stub()
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "a b c"}],
        "max_tokens": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=10) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:4]] == [" the", " of", " and"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[1:4]] == [None, None, "length"]
    assert chunks[4]["choices"] == [] and chunks[4]["usage"] == {
        "prompt_tokens": 3,
        "total_tokens": 6,
        "completion_tokens": 3,
    }
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    plain = httpx.post(f"{server.url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
    assert plain.json()["choices"][0]["text"] == " the of" and plain.json()["usage"]["completion_tokens"] == 2
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["id"] == "tiny"
