"""Tests for orchestrate.images.

The fast tests use fakes. The ``slow`` ones need a local Docker daemon, the base image
``orchestrate/debian-py:bookworm`` (``orchestrate image build base``) and, on the first
run, a few minutes and network access for ``pip download``; later runs hit the caches.
The cache directory is ``$ORCH_CACHE`` (default /var/cache/orchestrate).
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

import orchestrate.images as images
from orchestrate.images import build, recipes, wheels

docker = pytest.importorskip("docker")


# --------------------------------------------------------------------------------------------
# fast tests (no Docker)


@pytest.mark.parametrize("kind", ["vllm-cpu", "ray"])
def test_dockerfiles_ship_with_the_package(kind: str) -> None:
    text = recipes.dockerfile_text(kind)
    assert "ARG BASE=python:3.11-slim-bookworm" in text
    assert "--no-index" in text and "--break-system-packages" in text
    env = text[text.index("\nENV ") :]
    assert "RAY_USAGE_STATS_ENABLED=0" in env and "DO_NOT_TRACK=1" in env
    assert "VLLM_CPU_KVCACHE_SPACE" not in env  # an empty value crashes the workers
    if kind == "vllm-cpu":
        assert "HF_HUB_OFFLINE=1" in env and "VLLM_NO_USAGE_STATS=1" in env
        assert "vllm-0.32.0+cpu.dist-info" in text


def test_recipe_hash_depends_on_every_input() -> None:
    df = recipes.dockerfile_text("ray")
    h = images.recipe_hash("ray", df, "sha256:aaa")
    assert h == images.recipe_hash("ray", df, "sha256:aaa")
    assert h != images.recipe_hash("ray", df, "sha256:bbb")
    assert h != images.recipe_hash("ray", df + "\n", "sha256:aaa")
    assert h != images.recipe_hash("vllm-cpu", df, "sha256:aaa")


def test_unknown_kind_is_a_readable_error() -> None:
    with pytest.raises(images.ImageBuildError, match="Unknown image kind 'gpu'"):
        images.build_image("gpu", cache_dir=Path("/nonexistent"), docker_client=object())  # type: ignore


class _FakeImage:
    def __init__(self, image_id: str, labels: dict[str, str] | None = None) -> None:
        self.id = image_id
        self.short_id = image_id[:19]
        self.labels = labels or {}


class _FakeImages:
    def __init__(self, known: dict[str, _FakeImage]) -> None:
        self.known = known
        self.pulled: list[str] = []

    def get(self, ref: str) -> _FakeImage:
        if ref not in self.known:
            raise docker.errors.ImageNotFound(f"No such image: {ref}")
        return self.known[ref]

    def pull(self, ref: str, **_: Any) -> _FakeImage:
        self.pulled.append(ref)
        raise docker.errors.APIError("Get https://registry-1.docker.io/v2/: dial tcp: lookup failed")


class _FakeApi:
    def build(self, **_: Any) -> Iterator[dict[str, Any]]:
        raise AssertionError("must not build")


class _FakeClient:
    def __init__(self, known: dict[str, _FakeImage]) -> None:
        self.images = _FakeImages(known)
        self.api = _FakeApi()


def test_missing_base_says_what_to_do(tmp_path: Path) -> None:
    client: Any = _FakeClient({})
    with pytest.raises(images.ImageBuildError) as err:
        images.build_image("ray", base="python:3.11-slim-bookworm", cache_dir=tmp_path, docker_client=client)
    message = str(err.value)
    assert "'python:3.11-slim-bookworm' is not available locally and could not be pulled" in message
    assert "leave out --base" in message and "debootstrap" in message
    assert "Traceback" not in message
    assert client.images.pulled == ["python:3.11-slim-bookworm"]


def test_matching_label_skips_the_build(tmp_path: Path) -> None:
    base = _FakeImage("sha256:" + "b" * 64)
    wanted = images.recipe_hash("ray", recipes.dockerfile_text("ray"), base.id)
    built = _FakeImage("sha256:" + "c" * 64, {images.LABEL_RECIPE: wanted})
    client: Any = _FakeClient({"base:1": base, images.RAY_IMAGE: built})
    events: list[str] = []
    got = images.build_image(
        "ray", base="base:1", cache_dir=tmp_path, docker_client=client, on_event=events.append
    )
    assert got == built.id
    assert any("up to date" in e for e in events)
    assert not list(tmp_path.glob("wheels-*"))  # no wheelhouse needed for a cache hit


def test_wheelhouse_with_matching_stamp_does_not_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "wheels-ray"
    dest.mkdir()
    (dest / "requirements.lock").write_text("ray==2.60.0\n")
    (dest / ".stamp.json").write_text(json.dumps(recipes.wheelhouse_spec(recipes.RECIPES["ray"])))

    def no_pip(*_: Any, **__: Any) -> None:
        raise AssertionError("pip must not run")

    monkeypatch.setattr(wheels, "run_streaming", no_pip)
    assert images.wheelhouse("ray", tmp_path) == dest


def test_wheelhouse_is_served_on_loopback(tmp_path: Path) -> None:
    (tmp_path / "requirements.lock").write_text("ray==2.60.0\n")
    with build.serve_directory(tmp_path) as url:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        with urllib.request.urlopen(f"{url}/requirements.lock", timeout=10) as response:
            assert response.read() == b"ray==2.60.0\n"


def test_tiny_model_bpe_is_deterministic() -> None:
    from collections import Counter

    import orchestrate.images.tiny_model as tm

    symbols = tm.byte_symbols()
    assert len(set(symbols)) == 256
    words = Counter({"hello": 3, "help": 2, "world": 1})
    assert tm.learn_merges(words, 10) == tm.learn_merges(Counter(dict(reversed(list(words.items())))), 10)
    assert tm.learn_merges(words, 10)[:2] == [("e", "l"), ("h", "el")]


# --------------------------------------------------------------------------------------------
# slow tests (real Docker builds)

BASE = images.LOCAL_BASE


@pytest.fixture(scope="module")
def client(base_image: str) -> Iterator[Any]:
    """The root Docker Engine, with the local base image (tests/conftest.py builds it when a
    fresh machine has none, rather than skipping these tests)."""
    assert base_image == BASE
    c = docker.from_env(timeout=120)
    c.ping()
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _idle_connections_closed(request: pytest.FixtureRequest) -> Iterator[None]:
    """The module's client keeps a pool of keep-alive sockets; drop them after each test so the
    suite's fd check sees only what a test really leaked."""
    yield
    if "client" in request.fixturenames:
        request.getfixturevalue("client").api.close()


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    return Path(os.environ.get("ORCH_CACHE", "/var/cache/orchestrate"))


def _run(client: Any, image: str, cmd: list[str], timeout: float = 300, **kwargs: Any) -> tuple[int, str]:
    container = client.containers.run(image, cmd, detach=True, **kwargs)
    try:
        status = container.wait(timeout=timeout)["StatusCode"]
        return status, container.logs().decode("utf-8", "replace")
    finally:
        container.remove(force=True)


@pytest.fixture(scope="module")
def ray_image(client: Any, cache_dir: Path) -> str:
    return images.build_image("ray", base=BASE, cache_dir=cache_dir, docker_client=client, timeout=1800)


@pytest.fixture(scope="module")
def cpu_image(client: Any, cache_dir: Path) -> str:
    return images.build_image("vllm-cpu", base=BASE, cache_dir=cache_dir, docker_client=client, timeout=2400)


@pytest.mark.slow
def test_ray_image_has_ray(client: Any, ray_image: str) -> None:
    code, out = _run(client, ray_image, ["ray", "--version"], network_mode="none")
    assert code == 0, out
    assert re.search(r"\b2\.60\.0\b", out), out
    assert client.images.get(images.RAY_IMAGE).id == ray_image


@pytest.mark.slow
def test_ray_image_runs_a_task(client: Any, ray_image: str) -> None:
    script = (
        "import ray; ray.init(num_cpus=1, include_dashboard=False); "
        "print('answer', ray.get(ray.remote(lambda: 6 * 7).remote()))"
    )
    code, out = _run(client, ray_image, ["python3", "-c", script], network_mode="none", shm_size="256m")
    assert code == 0, out
    assert "answer 42" in out


@pytest.mark.slow
def test_vllm_cpu_image(client: Any, cpu_image: str) -> None:
    code, out = _run(client, cpu_image, ["vllm", "--version"], network_mode="none")
    assert code == 0, out
    assert "0.32.0+cpu" in out
    script = "import vllm, ray; print('ok', ray.__version__)"
    code, out = _run(client, cpu_image, ["python3", "-c", script], network_mode="none")
    assert code == 0, out
    assert "ok 2.60.0" in out
    config = client.images.get(cpu_image).attrs["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HF_HUB_OFFLINE"] == "1" and env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert "VLLM_CPU_KVCACHE_SPACE" not in env


@pytest.mark.slow
def test_tiny_model(client: Any, cpu_image: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    out = tmp_path_factory.mktemp("tiny")
    assert images.make_tiny_model(out, image=cpu_image, docker_client=client) == out.resolve()
    names = {p.name for p in out.iterdir()}
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}
    assert expected | {"tokenizer_config.json"} <= names
    assert not [n for n in names if n.startswith(".")]  # no staging leftovers
    for p in out.iterdir():
        assert p.stat().st_mode & 0o444 == 0o444, p
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    dims = (
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "num_hidden_layers",
        "intermediate_size",
    )
    assert [config[k] for k in dims] == [128, 4, 2, 4, 256]
    assert config["tie_word_embeddings"] is True
    assert config["hidden_size"] // config["num_attention_heads"] == 32
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tok_config["chat_template"] and tok_config["eos_token"] == "<|im_end|>"

    # idempotent: a second call leaves the files alone
    before = (out / "model.safetensors").stat().st_mtime_ns
    images.make_tiny_model(out, image=cpu_image, docker_client=client)
    assert (out / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_second_build_is_a_cache_hit(client: Any, cache_dir: Path, ray_image: str, cpu_image: str) -> None:
    kinds: list[tuple[Literal["ray", "vllm-cpu"], str]] = [("ray", ray_image), ("vllm-cpu", cpu_image)]
    for kind, first in kinds:
        events: list[str] = []
        again = images.build_image(
            kind, base=BASE, cache_dir=cache_dir, docker_client=client, on_event=events.append
        )
        assert again == first
        assert any("up to date" in e for e in events), events
        assert not any(e.startswith("Step ") for e in events), events


def test_a_registry_pull_that_fails_says_why_in_the_engines_words(client: Any) -> None:
    """The registry step of the base-image search asks the real engine. Here no registry answers,
    so the reason must be the engine's (not a client-side TypeError), and the client's timeout is
    restored afterwards."""
    from orchestrate.images.base import pull_base

    before = client.api.timeout
    why = pull_base(client, "orchestrate/no-such-image-anywhere:0")
    assert why is not None and "unexpected keyword" not in why and "TypeError" not in why, why
    assert client.api.timeout == before


@pytest.mark.slow
def test_exec_in_a_container_that_stopped_since_it_was_read_is_not_an_engine_failure(
    client: Any,
) -> None:
    """A container read as running and dead by the time of the exec (a rank that dies at once):
    the engine answers 409, which is the container's state, not a broken engine, so the caller
    (preflight's /dev/shm check, the gates) goes on to report the death with its cause."""
    from orchestrate.host.engine import Engine

    c = client.containers.run(BASE, ["true"], detach=True)
    try:
        engine = Engine("local", client)
        info = engine.container(c.name)  # read while it may still run, as the callers do
        assert info is not None
        c.wait(timeout=60)
        assert engine.exec(info, ["df", "/dev/shm"]) == (126, "container is not running")
    finally:
        c.remove(force=True)
