"""The load generator behind `orchestrate bench`: load an OpenAI-compatible endpoint and report
vLLM's serving metrics. A library: no click, no rich (the command is orchestrate.cli.bench).

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

    config     BenchConfig, Level, Prompt: the load, the prompts, the request body, option parsing
    transport  StreamTransport: HTTP/1.1 for httpx that notes when each read came off the socket
    client     the HTTP client, one streamed request and its SSE, the model list
    metrics    RequestResult, Stats, BenchResult, summarize
    runner     the driver (closed and open loops), Progress, BenchReport, run
    report     for people: the table, its notes, the plot
"""

from orchestrate.loadgen.client import make_client, read_sse, send_one, served_models
from orchestrate.loadgen.config import (
    DEFAULT_SWEEP,
    PATHS,
    SLO_KEYS,
    BenchConfig,
    Endpoint,
    Level,
    Prompt,
    load_prompts,
    make_levels,
    parse_concurrency,
    parse_goodput,
    parse_rate,
    random_prompts,
    request_body,
)
from orchestrate.loadgen.metrics import BenchResult, RequestResult, Stats, percentile, summarize
from orchestrate.loadgen.report import matplotlib_available, notes, table_rows, write_plot
from orchestrate.loadgen.runner import (
    BenchInterrupted,
    BenchReport,
    NoProgress,
    Progress,
    run,
    run_level,
    run_levels,
)
from orchestrate.loadgen.transport import ARRIVAL, StreamTransport

__all__ = [
    "ARRIVAL",
    "DEFAULT_SWEEP",
    "PATHS",
    "SLO_KEYS",
    "BenchConfig",
    "BenchInterrupted",
    "BenchReport",
    "BenchResult",
    "Endpoint",
    "Level",
    "NoProgress",
    "Progress",
    "Prompt",
    "RequestResult",
    "Stats",
    "StreamTransport",
    "load_prompts",
    "make_client",
    "make_levels",
    "matplotlib_available",
    "notes",
    "parse_concurrency",
    "parse_goodput",
    "parse_rate",
    "percentile",
    "random_prompts",
    "read_sse",
    "request_body",
    "run",
    "run_level",
    "run_levels",
    "send_one",
    "served_models",
    "summarize",
    "table_rows",
    "write_plot",
]
