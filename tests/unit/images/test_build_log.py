"""The image build's stream, read as Docker Engine sends it (a recorded real build, cut at
arbitrary points): the log lines, the intermediate images a failed build must remove, and the
error a chunk carries."""

from __future__ import annotations

import pytest

from orchestrate.events import Detail
from orchestrate.images.build import BuildLog, chunk_error
from tests import FIXTURES

REAL = (FIXTURES / "image-build" / "docker-build-stream.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("size", [1, 7, 64, len(REAL)])
def test_the_recorded_stream_gives_every_line_and_the_build_own_layers(size: int) -> None:
    seen: list[object] = []
    log = BuildLog(seen.append)
    for i in range(0, len(REAL), size):  # the engine splits its stream wherever it likes
        log.feed(REAL[i : i + size])
    log.close()
    lines = [line for line in REAL.splitlines() if line.strip()]
    assert seen == [Detail(line) for line in lines]
    # the FROM step's "---> id" is the base image: never removed; "---> Running in" is no image
    assert log.layers == ["78e276861fae", "18d1de6de2e5", "31e4885299e1"]
    assert list(log.tail) == lines[-len(log.tail) :]


def test_a_last_line_without_newline_and_colour_codes_are_kept_clean() -> None:
    seen: list[object] = []
    log = BuildLog(seen.append)
    log.feed("\x1b[91mERROR: no wheel\x1b[0m\n\n   \nlast words")
    assert seen == [Detail("ERROR: no wheel")]
    log.close()
    log.close()  # idempotent: the error path and the finally both close
    assert seen == [Detail("ERROR: no wheel"), Detail("last words")]


def test_chunk_errors_in_one_line() -> None:
    # the legacy builder's failing RUN, as docker-py decodes it
    run = "The command '/bin/sh -c pip install --no-deps -r x.lock && false' returned a non-zero code: 3"
    assert chunk_error({"errorDetail": {"code": 3, "message": run}, "error": run}) == (
        "a RUN step exited with code 3"
    )
    assert chunk_error({"errorDetail": {"message": " no space left on device \n"}}) == (
        "no space left on device"
    )
    assert chunk_error({"stream": "Step 1/4 : FROM base\n"}) is None
    assert chunk_error({"aux": {"ID": "sha256:31e4885299e1"}}) is None
