"""The layering, enforced from the source (issue 12): which package may import what, no import
circles, and library exceptions caught only at the boundary that owns the library.

    core/ render/    pure: plan in, plain data out (pydantic and yaml only)
    agents/          runs on hosts and in containers: the standard library only
    host/            the only importers of docker / fabric / paramiko (images/ builds images locally)
    ops/             verbs over a session: no click, no rich, no SSH or Docker library
    loadgen/         the load generator as a library: no click, no rich, no orchestrate.cli
    cli/             click + rich; the only package that may import all the others

Every import counts, the ones inside functions too (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ROOT

PKG = ROOT / "orchestrate"

SSH_DOCKER = {"docker", "fabric", "paramiko", "invoke", "requests", "urllib3"}
PRESENTATION = {"click", "rich"}
NETWORK = SSH_DOCKER | {"httpx", "aiohttp"}

# package -> (third-party tops it must not import, orchestrate packages it must not import)
FORBIDDEN: dict[str, tuple[set[str], set[str]]] = {
    "core": (NETWORK | PRESENTATION, {"host", "ops", "cli", "loadgen", "render", "images"}),
    "render": (NETWORK | PRESENTATION, {"host", "ops", "cli", "loadgen", "images"}),
    "host": (PRESENTATION | {"httpx"}, {"ops", "cli", "loadgen", "render", "images"}),
    "ops": (SSH_DOCKER | PRESENTATION, {"cli", "loadgen", "images"}),
    "loadgen": (SSH_DOCKER | PRESENTATION, {"cli", "ops", "host", "render", "images"}),
    "images": (PRESENTATION, {"cli", "ops", "host", "loadgen"}),
    "errors": (NETWORK | PRESENTATION, {"core", "host", "ops", "cli", "loadgen", "render", "images"}),
    "events": (NETWORK | PRESENTATION, {"core", "host", "ops", "cli", "loadgen", "render", "images"}),
    "waits": (NETWORK | PRESENTATION, {"core", "host", "ops", "cli", "loadgen", "render", "images"}),
}
# where catching a library's own exceptions is the job (the error mapping happens there)
BOUNDARY = {
    "docker": ("host", "images"),
    "paramiko": ("host",),
    "invoke": ("host",),
    "requests": ("host",),
    "urllib3": ("host",),
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def imports(name: str, path: Path) -> Iterator[str]:
    """Every module `name` imports (absolute names), at any depth of the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES]
            # `from orchestrate.ops import apply` depends on the module apply, not on ops/__init__
            yield from subs if len(subs) == len(node.names) else [module, *subs]


def internal_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = {m for m in imports(name, path) if m in MODULES and m != name}
        deps.discard("orchestrate")  # the package's __init__ holds the public API (lazy)
        graph[name] = deps
    return graph


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_only_what_its_layer_may(name: str) -> None:
    layer = _layer(name)
    if layer == "agents":
        stdlib = sys.stdlib_module_names
        bad = {
            m
            for m in imports(name, MODULES[name])
            if m.split(".")[0] not in stdlib and not m.startswith("orchestrate.agents") and m != "__future__"
        }
        bad = {m for m in bad if m.split(".")[0] not in ("ray", "torch")}  # the image holds these
        assert not bad, f"{name} runs in containers and may import the standard library only: {bad}"
        return
    if layer not in FORBIDDEN:
        return
    libs, packages = FORBIDDEN[layer]
    found = set(imports(name, MODULES[name]))
    bad_libs = {m for m in found if m.split(".")[0] in libs}
    bad_pkgs = {m for m in found if m.startswith("orchestrate.") and _layer(m) in packages}
    assert not bad_libs, f"{name} ({layer}/) must not import {sorted(bad_libs)}"
    assert not bad_pkgs, f"{name} ({layer}/) must not import {sorted(bad_pkgs)}"


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_there_are_no_import_circles() -> None:
    graph = internal_graph()
    assert "orchestrate.host.session" in graph["orchestrate.ops.apply"]  # the graph is read
    assert not circles(graph), f"import circles: {circles(graph)}"


def test_the_checks_can_fail() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    lazy = "def f():\n    from orchestrate.host import engine\n    import docker.errors\n"
    probe = PKG / "core" / "_probe_for_test.py"
    assert not probe.exists()
    probe.write_text(lazy, encoding="utf-8")
    try:
        found = set(imports("orchestrate.core._probe_for_test", probe))
    finally:
        probe.unlink()
    assert {"orchestrate.host.engine", "docker.errors"} <= found


def _caught(path: Path) -> Iterator[tuple[int, str]]:
    """Dotted names in `except` clauses, and names imported from a library's errors module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    imported: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                imported[alias.asname or alias.name.split(".")[0]] = alias.name.split(".")[0]
    for node in ast.walk(tree):
        if not isinstance(node, ast.ExceptHandler) or node.type is None:
            continue
        kinds = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
        for kind in kinds:
            text = ast.unparse(kind)
            head, _, rest = text.partition(".")
            full = imported.get(head, head) + (f".{rest}" if rest else "")
            yield node.lineno, full


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _layer(n) not in ("host", "images")))
def test_library_exceptions_are_mapped_at_their_boundary(name: str) -> None:
    bad = [
        (line, full)
        for line, full in _caught(MODULES[name])
        if full.split(".")[0] in BOUNDARY and _layer(name) not in BOUNDARY[full.split(".")[0]]
    ]
    assert not bad, f"{name} catches library exceptions that host/ should have mapped: {bad}"


def test_the_public_api_resolves_and_importing_it_stays_light() -> None:
    import subprocess

    code = (
        "import sys, orchestrate\n"
        "heavy = [m for m in ('pydantic', 'docker', 'paramiko', 'httpx', 'rich') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "missing = [n for n in orchestrate.__all__ if getattr(orchestrate, n, None) is None]\n"
        "assert not missing, missing\n"
        "plan = orchestrate.build_plan(orchestrate.load('inventory/l20.yaml'))\n"
        "assert isinstance(plan, orchestrate.Plan) and plan.world_size == 8\n"
        "assert 'qwen32b.yaml' in orchestrate.rendered('k8s', plan, 'deployment')\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    import orchestrate

    with pytest.raises(AttributeError):
        _ = orchestrate.no_such_name


def test_all_lists_exactly_the_lazy_names() -> None:
    import orchestrate

    assert sorted(orchestrate.__all__) == sorted(orchestrate._PUBLIC)


TESTS = ROOT / "tests"


def _private_imports(path: Path) -> list[str]:
    """orchestrate names starting with _ that a test file reaches: imported by name (at any depth)
    or as an attribute of an orchestrate module it imported (`apply._x`), monkeypatch's string
    form included (`setattr(apply, "_x", ...)`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[str] = []
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("orchestrate"):
            private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
            found += [f"{node.module}.{name}" for name in private]
            modules |= {a.asname or a.name: f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {a.asname or a.name: a.name for a in node.names if a.name.startswith("orchestrate")}

    def note(owner: ast.expr, attr: str) -> None:
        head = ast.unparse(owner).split(".")[0]
        if head in modules and attr.startswith("_") and not attr.startswith("__"):
            found.append(f"{ast.unparse(owner)}.{attr}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            note(node.value, node.attr)
        elif (
            isinstance(node, ast.Call) and ast.unparse(node.func).endswith("setattr") and len(node.args) >= 2
        ):
            name = node.args[1]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                note(node.args[0], name.value)
    return sorted(set(found) - ALLOWED_PRIVATE)


# the package's own lazy-name table: test_all_lists_exactly_the_lazy_names compares __all__ to it
ALLOWED_PRIVATE = {"orchestrate._PUBLIC"}


def test_tests_use_no_private_names_of_the_package() -> None:
    """A test that needs a helper makes it public in its module: renaming a private name must
    never break a test."""
    bad = {
        str(path.relative_to(ROOT)): names
        for path in sorted(TESTS.rglob("*.py"))
        if (names := _private_imports(path))
    }
    assert not bad, f"tests import private names: {bad}"
    probe = (
        "from orchestrate.core.plan import _x, build_plan\nfrom orchestrate.ops import apply\n"
        "import orchestrate.host.engine as eng\ndef f(monkeypatch):\n    from orchestrate.ops import _y\n"
        "    apply._z(); eng.sdk._w; monkeypatch.setattr(apply, '_v', 1); apply.up; object()._u\n"
    )
    scratch = TESTS / "unit" / "_probe_private.py"
    assert not scratch.exists()
    scratch.write_text(probe, encoding="utf-8")
    try:
        assert _private_imports(scratch) == [
            "apply._v",
            "apply._z",
            "eng.sdk._w",
            "orchestrate.core.plan._x",
            "orchestrate.ops._y",
        ]
    finally:
        scratch.unlink()


def test_unit_tests_mirror_the_package() -> None:
    """tests/unit/<folder>/ exists only for a package of orchestrate/, so a reader finds a
    module's tests where the module is."""
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in (TESTS / "unit").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders, "tests/unit has no folders"
    assert folders <= packages, f"tests/unit folders that name no package: {sorted(folders - packages)}"


# the session fixtures that start real infrastructure (tests/conftest.py)
INFRASTRUCTURE = {"bed", "base_image", "ray_image", "smg_image", "cpu_image", "tiny_model", "ray_model"}


def _is_docker(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value == "docker"


def _infrastructure_used(path: Path) -> list[str]:
    """What in a test file needs an engine or the bed: those fixtures as parameters, the bed and
    slow marks, a Docker client, a `["docker", ...]` command line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [f"{node.name}({a.arg})" for a in node.args.args if a.arg in INFRASTRUCTURE]
        elif isinstance(node, ast.Attribute) and ast.unparse(node) in ("pytest.mark.bed", "pytest.mark.slow"):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("docker.from_env", "local_client"):
            found.append(ast.unparse(node.func))
        elif isinstance(node, ast.List) and node.elts and _is_docker(node.elts[0]):
            found.append("a docker command line")
    return found


def test_unit_tests_need_no_engine_and_no_bed() -> None:
    """tests/unit runs first and on any machine: what needs Docker lives in tests/images, what
    needs the bed in tests/bed."""
    bad = {
        str(path.relative_to(ROOT)): used
        for path in sorted((TESTS / "unit").rglob("test_*.py"))
        if (used := _infrastructure_used(path))
    }
    assert not bad, f"unit tests that need infrastructure: {bad}"
    assert _infrastructure_used(TESTS / "bed" / "test_replicas.py")  # the check sees them
    assert _infrastructure_used(TESTS / "images" / "test_smg_parser.py")
