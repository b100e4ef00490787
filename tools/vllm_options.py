"""Extract the `vllm serve` options of real vLLM wheels into small JSON tables, one per version.

Old wheels cannot run here (CUDA builds, old torch), so this reads them: it interprets, over the
wheel's own AST, the code that builds the `vllm serve` parser (`ServeSubcommand.subparser_init`,
or `vllm/scripts.py:main` before the `vllm.entrypoints.cli` package existed), following every call
into the wheel (`make_arg_parser`, `FrontendArgs.add_cli_args`, `EngineArgs.add_cli_args`, ...).
Flags that newer versions derive from config dataclass fields (`get_kwargs(ModelConfig)`) are derived
the way that version's `get_kwargs` does: bool fields become `BooleanOptionalAction` (`--x/--no-x`),
`Literal` fields give choices, and so on; the rules are switched by the text of the wheel's own
`get_kwargs`. Anything that could add options and cannot be followed is an error, never a silent
omission. `tests/unit/core/test_vllm_versions.py` compares the 0.32.0 table with the real parser built
inside orchestrate/vllm-cpu:0.32.0.

    python tools/vllm_options.py                 # download (cached) and regenerate every table
    python tools/vllm_options.py --check         # compare the tables with the wheels in the cache
    python tools/vllm_options.py --version 0.8.5 # one version

Wheels are cached in $ORCH_VLLM_WHEELS or /var/cache/orchestrate/vllm-wheels.
"""

from __future__ import annotations

import argparse
import ast
import copy
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TABLES = ROOT / "orchestrate" / "core" / "vllm_flags"
VERSIONS = ("0.6.4.post1", "0.8.5", "0.11.0", "0.11.1", "0.17.1", "0.18.1", "0.19.1", "0.32.0", "0.33.0")
SMALLEST = "0.6.4.post1"  # ~190 MiB: the wheel a test downloads when the cache is empty


def cache_dir() -> Path:
    return Path(os.environ.get("ORCH_VLLM_WHEELS", "/var/cache/orchestrate/vllm-wheels"))


# ---------------------------------------------------------------- values of the interpreter


class ExtractError(Exception):
    """The wheel does something that could add options and that this reader cannot follow."""


class _Unknown:
    def __repr__(self) -> str:
        return "<?>"


UNKNOWN: Any = _Unknown()


@dataclass(frozen=True)
class Token:
    """A value from outside the wheel (argparse.BooleanOptionalAction, json.loads, ...)."""

    name: str


@dataclass
class Action:
    flags: list[str]
    value: str  # "required", "optional" or "none"
    choices: list[Any] | None


@dataclass
class Parser:
    name: str
    actions: list[Action] = field(default_factory=list)
    positionals: list[str] = field(default_factory=list)


@dataclass
class Subparsers:
    parsers: dict[str, Parser] = field(default_factory=dict)


class _Return(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


class _Abort(Exception):
    """A `raise` in the wheel's code: this path ends."""


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


# ---------------------------------------------------------------- the wheel's modules


class Module:
    def __init__(self, wheel: Wheel, name: str, path: str) -> None:
        self.wheel, self.name, self.path = wheel, name, path
        self.is_package = path.endswith("__init__.py")
        self.tree = ast.parse(wheel.source(path), path)
        self.defs: dict[str, ast.stmt] = {}
        for stmt in _top_level(self.tree.body):
            for target in _defined_names(stmt):
                self.defs.setdefault(target, stmt)
        self.values: dict[str, Any] = {}

    def lookup(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        self.values[name] = UNKNOWN  # cycles resolve to unknown
        self.values[name] = value = self._resolve(name)
        return value

    def _resolve(self, name: str) -> Any:
        stmt = self.defs.get(name)
        if stmt is None:
            sub = self.wheel.module(f"{self.name}.{name}") if self.is_package else None
            return sub if sub is not None else UNKNOWN
        if isinstance(stmt, ast.ClassDef):
            return ClassRef(self, stmt)
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            return FuncRef(self, stmt)
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if (alias.asname or alias.name.split(".")[0]) == name:
                    full = alias.name if alias.asname else alias.name.split(".")[0]
                    return self.wheel.module(full) or Token(full)
        if isinstance(stmt, ast.ImportFrom):
            base = self._import_base(stmt)
            for alias in stmt.names:
                if (alias.asname or alias.name) == name:
                    return self.wheel.import_from(base, alias.name)
        if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            return Interp(self.wheel).eval(stmt.value, Env(self))
        return UNKNOWN

    def _import_base(self, stmt: ast.ImportFrom) -> str:
        if not stmt.level:
            return stmt.module or ""
        parts = self.name.split(".")
        parts = parts if self.is_package else parts[:-1]
        parts = parts[: len(parts) - stmt.level + 1]
        return ".".join([*parts, *([stmt.module] if stmt.module else [])])


def _top_level(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    for stmt in body:
        if isinstance(stmt, ast.If):
            yield from _top_level(stmt.body)
            yield from _top_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            yield from _top_level(stmt.body)
            for handler in stmt.handlers:
                yield from _top_level(handler.body)
        else:
            yield stmt


def _defined_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        return [stmt.name]
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        return [a.asname or a.name.split(".")[0] for a in stmt.names]
    if isinstance(stmt, ast.Assign):
        return [t.id for t in stmt.targets if isinstance(t, ast.Name)]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    return []


class Wheel:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self.names = set(self.zip.namelist())
        self.modules: dict[str, Module | None] = {}

    def source(self, path: str) -> str:
        return self.zip.read(path).decode("utf-8")

    def module(self, name: str) -> Module | None:
        if not name.startswith("vllm"):
            return None
        if name not in self.modules:
            base = name.replace(".", "/")
            path = next((p for p in (f"{base}.py", f"{base}/__init__.py") if p in self.names), None)
            self.modules[name] = Module(self, name, path) if path else None
        return self.modules[name]

    def import_from(self, base: str, name: str) -> Any:
        mod = self.module(base)
        if mod is None:
            return Token(f"{base}.{name}")
        if name in mod.defs:
            return mod.lookup(name)
        sub = self.module(f"{base}.{name}")
        return sub if sub is not None else UNKNOWN


@dataclass(eq=False)
class ClassRef:
    module: Module
    node: ast.ClassDef

    @property
    def name(self) -> str:
        return self.node.name

    def bases(self) -> list[Any]:
        return [Interp(self.module.wheel).eval(b, Env(self.module)) for b in self.node.bases]

    def mro(self) -> list[ClassRef]:
        out: list[ClassRef] = [self]
        for base in self.bases():
            if isinstance(base, ClassRef):
                out += [c for c in base.mro() if c not in out]
        return out

    def own(self, name: str) -> ast.stmt | None:
        for stmt in self.node.body:
            if name in _defined_names(stmt):
                return stmt
        return None

    def attr(self, name: str, start_after: ClassRef | None = None) -> tuple[ClassRef, ast.stmt] | None:
        mro = self.mro()
        if start_after is not None:
            mro = mro[mro.index(start_after) + 1 :] if start_after in mro else []
        for cls in mro:
            stmt = cls.own(name)
            if stmt is not None:
                return cls, stmt
        return None

    def decorators(self) -> set[str]:
        names = set()
        for d in self.node.decorator_list:
            d = d.func if isinstance(d, ast.Call) else d
            names.add(d.attr if isinstance(d, ast.Attribute) else getattr(d, "id", ""))
        return names

    def is_dataclass(self) -> bool:
        return any("dataclass" in d or d == "config" for d in self.decorators())


@dataclass(eq=False)
class Instance:
    cls: ClassRef
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class FuncRef:
    module: Module
    node: ast.FunctionDef | ast.AsyncFunctionDef
    bound: tuple[Any, ...] = ()
    owner: ClassRef | None = None
    closure: Env | None = None

    def kind(self) -> str:
        names = {getattr(d, "id", None) for d in self.node.decorator_list}
        return "static" if "staticmethod" in names else "class" if "classmethod" in names else ""


@dataclass(eq=False)
class Method:
    """A method of a concrete Python value (str.replace, dict.items, ...)."""

    obj: Any
    name: str


@dataclass(eq=False)
class Super:
    owner: ClassRef
    obj: Any


class Env:
    def __init__(self, module: Module, parent: Env | None = None, func: FuncRef | None = None) -> None:
        self.module, self.parent, self.func = module, parent, func
        self.vars: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        env: Env | None = self
        while env is not None:
            if name in env.vars:
                return env.vars[name]
            env = env.parent
        if name in self.module.defs:
            return self.module.lookup(name)
        return _BUILTINS.get(name, UNKNOWN)


_BUILTINS: dict[str, Any] = {
    n: Token(n)
    for n in (
        "list",
        "dict",
        "tuple",
        "set",
        "sorted",
        "len",
        "str",
        "int",
        "float",
        "bool",
        "isinstance",
        "getattr",
        "hasattr",
        "print",
        "enumerate",
        "zip",
        "range",
        "reversed",
        "any",
        "all",
        "min",
        "max",
        "super",
        "type",
        "staticmethod",
        "classmethod",
        "repr",
        "object",
        "frozenset",
    )
} | {"None": None, "True": True, "False": False}
_PURE = {
    "list": list,
    "dict": dict,
    "tuple": tuple,
    "set": set,
    "sorted": sorted,
    "len": len,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "enumerate": enumerate,
    "zip": zip,
    "range": range,
    "reversed": reversed,
    "any": any,
    "all": all,
    "min": min,
    "max": max,
    "repr": repr,
    "frozenset": frozenset,
}
_METHODS = {
    "replace",
    "items",
    "keys",
    "values",
    "get",
    "pop",
    "append",
    "extend",
    "update",
    "setdefault",
    "copy",
    "join",
    "split",
    "strip",
    "lower",
    "upper",
    "startswith",
    "endswith",
    "format",
    "insert",
    "remove",
    "add",
    "removeprefix",
    "removesuffix",
    "index",
    "count",
}
# Calls that receive the parser but only change other state (plugins, platform hooks that add
# nothing on CUDA or CPU builds); anything else unresolved that receives a parser is an error.
_IGNORED_PARSER_CALLS = {
    "pre_register_and_update",
    "set_defaults",
    "load_general_plugins",
    "_apply_argparse_hook",
}


def _has_unknown(value: Any) -> bool:
    if value is UNKNOWN:
        return True
    if isinstance(value, list | tuple | set | frozenset):
        return any(_has_unknown(v) for v in value)
    if isinstance(value, dict):
        return any(_has_unknown(k) or _has_unknown(v) for k, v in value.items())
    return not isinstance(value, str | int | float | bool | type(None))


def _adds_arguments(nodes: list[ast.stmt]) -> bool:
    return any(
        isinstance(n, ast.Attribute) and n.attr == "add_argument" for stmt in nodes for n in ast.walk(stmt)
    )


# ---------------------------------------------------------------- the interpreter


class Interp:
    def __init__(self, wheel: Wheel, subparsers: Subparsers | None = None, depth: int = 0) -> None:
        self.wheel, self.subparsers, self.depth = wheel, subparsers, depth

    # statements
    def run(self, body: list[ast.stmt], env: Env) -> None:
        for stmt in body:
            self.stmt(stmt, env)

    def stmt(self, s: ast.stmt, env: Env) -> None:
        if isinstance(s, ast.Expr):
            self.eval(s.value, env)
        elif isinstance(s, ast.Assign):
            value = self.eval(s.value, env)
            for target in s.targets:
                self.assign(target, value, env)
        elif isinstance(s, ast.AnnAssign):
            if s.value is not None:
                self.assign(s.target, self.eval(s.value, env), env)
        elif isinstance(s, ast.AugAssign):
            self.assign(s.target, self.binop(s.op, self.eval(s.target, env), self.eval(s.value, env)), env)
        elif isinstance(s, ast.Return):
            raise _Return(self.eval(s.value, env) if s.value else None)
        elif isinstance(s, ast.If):
            self.branch(s, env)
        elif isinstance(s, ast.For):
            self.loop(s, env)
        elif isinstance(s, ast.With):
            self.run(s.body, env)
        elif isinstance(s, ast.Try):
            self.run(s.body, env)
            self.run(s.orelse, env)
            self.run(s.finalbody, env)
        elif isinstance(s, ast.Raise):
            raise _Abort()
        elif isinstance(s, ast.Break):
            raise _Break()
        elif isinstance(s, ast.Continue):
            raise _Continue()
        elif isinstance(s, ast.Delete):
            for target in s.targets:
                if isinstance(target, ast.Subscript):
                    obj, key = self.eval(target.value, env), self.eval(target.slice, env)
                    if isinstance(obj, dict):
                        obj.pop(key, None)
        elif isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef):
            env.vars[s.name] = FuncRef(env.module, s, closure=env)
        elif isinstance(s, ast.ClassDef):
            env.vars[s.name] = ClassRef(env.module, s)
        elif isinstance(s, ast.Import | ast.ImportFrom):
            self.local_import(s, env)
        elif isinstance(s, ast.While) and _adds_arguments(s.body):
            raise ExtractError(f"{env.module.path}:{s.lineno}: a while loop adds arguments")

    def local_import(self, s: ast.Import | ast.ImportFrom, env: Env) -> None:
        if isinstance(s, ast.ImportFrom):
            base = env.module._import_base(s)
            for alias in s.names:
                env.vars[alias.asname or alias.name] = self.wheel.import_from(base, alias.name)
        else:
            for alias in s.names:
                top = alias.name if alias.asname else alias.name.split(".")[0]
                env.vars[alias.asname or top] = self.wheel.module(top) or Token(top)

    def branch(self, s: ast.If, env: Env) -> None:
        test = self.eval(s.test, env)
        arms = [s.body, s.orelse] if _has_unknown(test) else [s.body if test else s.orelse]
        for arm in arms:
            try:
                self.run(arm, env)
            except _Abort:
                if len(arms) == 1:
                    raise

    def loop(self, s: ast.For, env: Env) -> None:
        items = self.eval(s.iter, env)
        if isinstance(items, dict):
            items = list(items)
        if not isinstance(items, list | tuple | set | frozenset | str) and not hasattr(items, "__next__"):
            if _adds_arguments(s.body):
                raise ExtractError(
                    f"{env.module.path}:{s.lineno}: arguments added in a loop over "
                    f"something this reader cannot evaluate"
                )
            return
        for item in list(items):
            self.assign(s.target, item, env)
            try:
                self.run(s.body, env)
            except _Continue:
                continue
            except _Break:
                break

    def assign(self, target: ast.expr, value: Any, env: Env) -> None:
        if isinstance(target, ast.Name):
            env.vars[target.id] = value
        elif isinstance(target, ast.Tuple | ast.List):
            values = list(value) if isinstance(value, list | tuple) else [UNKNOWN] * len(target.elts)
            if len(values) != len(target.elts):
                values = [UNKNOWN] * len(target.elts)
            for t, v in zip(target.elts, values, strict=True):
                self.assign(t, v, env)
        elif isinstance(target, ast.Subscript):
            obj, key = self.eval(target.value, env), self.eval(target.slice, env)
            if isinstance(obj, dict) and not _has_unknown(key):
                obj[key] = value
        elif isinstance(target, ast.Attribute):
            obj = self.eval(target.value, env)
            if isinstance(obj, Instance):
                obj.attrs[target.attr] = value

    # expressions
    def eval(self, e: ast.expr | None, env: Env) -> Any:
        if e is None:
            return None
        if isinstance(e, ast.Constant):
            return e.value
        if isinstance(e, ast.Name):
            return env.get(e.id)
        if isinstance(e, ast.JoinedStr):
            parts = [self.eval(v, env) for v in e.values]
            return "".join(map(str, parts)) if not any(p is UNKNOWN for p in parts) else UNKNOWN
        if isinstance(e, ast.FormattedValue):
            value = self.eval(e.value, env)
            return UNKNOWN if _has_unknown(value) else value
        if isinstance(e, ast.List | ast.Tuple | ast.Set):
            out: list[Any] = []
            for elt in e.elts:
                if isinstance(elt, ast.Starred):
                    inner = self.eval(elt.value, env)
                    if not isinstance(inner, list | tuple | set):
                        return UNKNOWN
                    out += list(inner)
                else:
                    out.append(self.eval(elt, env))
            return tuple(out) if isinstance(e, ast.Tuple) else out
        if isinstance(e, ast.Dict):
            d: dict[Any, Any] = {}
            for k, v in zip(e.keys, e.values, strict=True):
                if k is None:
                    inner = self.eval(v, env)
                    if isinstance(inner, dict):
                        d.update(inner)
                else:
                    key = self.eval(k, env)
                    if not _has_unknown(key):
                        d[key] = self.eval(v, env)
            return d
        if isinstance(e, ast.Attribute):
            return self.attribute(self.eval(e.value, env), e.attr)
        if isinstance(e, ast.Subscript):
            obj, key = self.eval(e.value, env), self.eval(e.slice, env)
            try:
                return obj[key] if isinstance(obj, dict | list | tuple | str) else UNKNOWN
            except (KeyError, IndexError, TypeError):
                return UNKNOWN
        if isinstance(e, ast.Call):
            return self.call(e, env)
        if isinstance(e, ast.BinOp):
            return self.binop(e.op, self.eval(e.left, env), self.eval(e.right, env))
        if isinstance(e, ast.BoolOp):
            values = [self.eval(v, env) for v in e.values]
            if any(_has_unknown(v) for v in values):
                return UNKNOWN
            return all(values) if isinstance(e.op, ast.And) else any(values)
        if isinstance(e, ast.UnaryOp):
            v = self.eval(e.operand, env)
            if _has_unknown(v):
                return UNKNOWN
            return not v if isinstance(e.op, ast.Not) else -v if isinstance(e.op, ast.USub) else UNKNOWN
        if isinstance(e, ast.Compare):
            return self.compare(e, env)
        if isinstance(e, ast.IfExp):
            test = self.eval(e.test, env)
            return UNKNOWN if _has_unknown(test) else self.eval(e.body if test else e.orelse, env)
        if isinstance(e, ast.ListComp):
            return self.listcomp(e, env)
        return UNKNOWN

    def listcomp(self, e: ast.ListComp, env: Env) -> Any:
        if len(e.generators) != 1:
            return UNKNOWN
        gen = e.generators[0]
        items = self.eval(gen.iter, env)
        if not isinstance(items, list | tuple | dict | set):
            return UNKNOWN
        inner = Env(env.module, env)
        out = []
        for item in list(items):
            self.assign(gen.target, item, inner)
            conds = [self.eval(c, inner) for c in gen.ifs]
            if any(_has_unknown(c) for c in conds):
                return UNKNOWN
            if all(conds):
                out.append(self.eval(e.elt, inner))
        return out

    def compare(self, e: ast.Compare, env: Env) -> Any:
        left = self.eval(e.left, env)
        for op, right_e in zip(e.ops, e.comparators, strict=True):
            right = self.eval(right_e, env)
            if _has_unknown(left) or _has_unknown(right):
                return UNKNOWN
            ops = {
                ast.Eq: lambda a, b: a == b,
                ast.NotEq: lambda a, b: a != b,
                ast.In: lambda a, b: a in b,
                ast.NotIn: lambda a, b: a not in b,
                ast.Is: lambda a, b: a is b,
                ast.IsNot: lambda a, b: a is not b,
                ast.Lt: lambda a, b: a < b,
                ast.Gt: lambda a, b: a > b,
                ast.LtE: lambda a, b: a <= b,
                ast.GtE: lambda a, b: a >= b,
            }
            try:
                if not ops[type(op)](left, right):
                    return False
            except (TypeError, KeyError):
                return UNKNOWN
            left = right
        return True

    def binop(self, op: ast.operator, a: Any, b: Any) -> Any:
        if _has_unknown(a) or _has_unknown(b):
            return UNKNOWN
        try:
            if isinstance(op, ast.Add):
                return a + b
            if isinstance(op, ast.Mod):
                return a % b
            if isinstance(op, ast.BitOr):
                return a | b
        except TypeError:
            pass
        return UNKNOWN

    def attribute(self, obj: Any, name: str) -> Any:
        if isinstance(obj, Module):
            return obj.lookup(name)
        if isinstance(obj, Token):
            return Token(f"{obj.name}.{name}")
        if isinstance(obj, Parser | Subparsers):
            return Method(obj, name)
        if isinstance(obj, Super):
            cls = obj.obj.cls if isinstance(obj.obj, Instance) else obj.obj
            found = cls.attr(name, start_after=obj.owner) if isinstance(cls, ClassRef) else None
            return self.member(obj.obj, found) if found else UNKNOWN
        if isinstance(obj, Instance):
            if name in obj.attrs:
                return obj.attrs[name]
            found = obj.cls.attr(name)
            return self.member(obj, found) if found else UNKNOWN
        if isinstance(obj, ClassRef):
            if name == "__name__":
                return obj.name
            found = obj.attr(name)
            return self.member(obj, found) if found else UNKNOWN
        if isinstance(obj, str | list | dict | tuple | set) and name in _METHODS:
            return Method(obj, name)
        return UNKNOWN

    def member(self, obj: Any, found: tuple[ClassRef, ast.stmt]) -> Any:
        owner, stmt = found
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            fn = FuncRef(owner.module, stmt, owner=owner)
            kind = fn.kind()
            if kind == "class":
                fn.bound = (obj.cls if isinstance(obj, Instance) else obj,)
            elif kind == "" and isinstance(obj, Instance):
                fn.bound = (obj,)
            return fn
        if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            return self.eval(stmt.value, Env(owner.module))
        if isinstance(stmt, ast.ClassDef):
            return ClassRef(owner.module, stmt)
        return UNKNOWN

    def call(self, e: ast.Call, env: Env) -> Any:
        fn = self.eval(e.func, env)
        args: list[Any] = []
        for a in e.args:
            if isinstance(a, ast.Starred):
                inner = self.eval(a.value, env)
                if not isinstance(inner, list | tuple):
                    return self.unresolved(e, env, fn, [UNKNOWN], {})
                args += list(inner)
            else:
                args.append(self.eval(a, env))
        kwargs: dict[str, Any] = {}
        for kw in e.keywords:
            value = self.eval(kw.value, env)
            if kw.arg is not None:
                kwargs[kw.arg] = value
            elif isinstance(value, dict) and not _has_unknown(list(value)):
                kwargs.update(value)
            else:
                return self.unresolved(e, env, fn, args, {"**": value})
        if isinstance(fn, Token) and fn.name == "super":
            return (
                Super(env.func.owner, env.vars.get(env.func.node.args.args[0].arg))
                if env.func and env.func.owner
                else UNKNOWN
            )
        return self.apply(fn, args, kwargs, e, env)

    def apply(self, fn: Any, args: list[Any], kwargs: dict[str, Any], e: ast.Call, env: Env) -> Any:
        if isinstance(fn, Method):
            return self.method(fn, args, kwargs, e, env)
        if isinstance(fn, FuncRef):
            if (
                fn.node.name in ("get_kwargs", "_compute_kwargs")
                and fn.module.name == "vllm.engine.arg_utils"
            ):
                return (
                    dataclass_kwargs(fn.module, args[0])
                    if args and isinstance(args[0], ClassRef)
                    else UNKNOWN
                )
            return self.invoke(fn, args, kwargs)
        if isinstance(fn, ClassRef):
            if fn.name.endswith("ArgumentParser"):
                return Parser(kwargs.get("prog") or "?")
            return Instance(fn)
        if isinstance(fn, Token):
            if fn.name in ("copy.deepcopy", "copy.copy"):
                return copy.deepcopy(args[0]) if args else UNKNOWN
            if fn.name.endswith("ArgumentParser"):
                return Parser("?")
            if fn.name in _PURE and not any(_has_unknown(a) for a in args) and not kwargs:
                try:
                    return _PURE[fn.name](*args)
                except (TypeError, ValueError):
                    return UNKNOWN
        return self.unresolved(e, env, fn, args, kwargs)

    def unresolved(self, e: ast.Call, env: Env, fn: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
        name = e.func.attr if isinstance(e.func, ast.Attribute) else getattr(e.func, "id", "?")
        if (
            any(isinstance(a, Parser | Subparsers) for a in [*args, *kwargs.values()])
            and name not in _IGNORED_PARSER_CALLS
        ):
            raise ExtractError(
                f"{env.module.path}:{e.lineno}: the parser is passed to {name}(), "
                "which this reader cannot follow"
            )
        return UNKNOWN

    def invoke(self, fn: FuncRef, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if self.depth > 40:
            raise ExtractError(f"{fn.module.path}: calls nest too deep at {fn.node.name}")
        env = Env(fn.module, fn.closure, fn)
        params = fn.node.args
        positional = [a.arg for a in [*params.posonlyargs, *params.args]]
        given = [*fn.bound, *args]
        defaults = [None] * (len(positional) - len(params.defaults)) + list(params.defaults)
        for i, pname in enumerate(positional):
            if i < len(given):
                env.vars[pname] = given[i]
            elif pname in kwargs:
                env.vars[pname] = kwargs.pop(pname)
            else:
                env.vars[pname] = self.eval(defaults[i], Env(fn.module))
        for a, d in zip(params.kwonlyargs, params.kw_defaults, strict=True):
            env.vars[a.arg] = kwargs.pop(a.arg) if a.arg in kwargs else self.eval(d, Env(fn.module))
        if params.vararg:
            env.vars[params.vararg.arg] = tuple(given[len(positional) :])
        if params.kwarg:
            env.vars[params.kwarg.arg] = kwargs
        try:
            Interp(self.wheel, self.subparsers, self.depth + 1).run(fn.node.body, env)
        except _Return as r:
            return r.value
        except _Abort:
            return UNKNOWN
        return None

    def method(self, m: Method, args: list[Any], kwargs: dict[str, Any], e: ast.Call, env: Env) -> Any:
        obj = m.obj
        if isinstance(obj, Parser):
            if m.name == "add_argument":
                add_argument(obj, args, kwargs, f"{env.module.path}:{e.lineno}")
                return UNKNOWN
            if m.name in ("add_argument_group", "add_mutually_exclusive_group"):
                return obj
            if m.name == "add_subparsers":
                self.subparsers = self.subparsers or Subparsers()
                return self.subparsers
            return UNKNOWN
        if isinstance(obj, Subparsers):
            if m.name == "add_parser" and args and isinstance(args[0], str):
                parser = obj.parsers[args[0]] = Parser(args[0])
                if kwargs.get("add_help", True):
                    parser.actions.append(Action(["-h", "--help"], "none", None))
                return parser
            return UNKNOWN
        if m.name in ("pop", "get") and isinstance(obj, dict) and args and not _has_unknown(args[0]):
            return getattr(obj, m.name)(*args[:2])
        if any(_has_unknown(a) for a in [*args, *kwargs.values()]) and m.name not in ("append", "update"):
            return UNKNOWN
        try:
            result = getattr(obj, m.name)(*args, **kwargs)
        except (TypeError, ValueError, KeyError, AttributeError):
            return UNKNOWN
        return list(result) if m.name in ("items", "keys", "values") else result


# ---------------------------------------------------------------- argparse, as argparse does it

_NO_VALUE = {
    "store_true",
    "store_false",
    "store_const",
    "count",
    "help",
    "version",
    "argparse.BooleanOptionalAction",
    "BooleanOptionalAction",
    "append_const",
}


def _action_name(action: Any) -> str:
    if isinstance(action, Token):
        return action.name.removeprefix("argparse.")
    if isinstance(action, ClassRef):
        names = {c.name for c in action.mro()}
        bases = {getattr(b, "name", "") for c in action.mro() for b in c.bases()}
        return "BooleanOptionalAction" if "BooleanOptionalAction" in names | bases else "custom"
    return action if isinstance(action, str) else "custom" if action is not None else "store"


def add_argument(parser: Parser, args: list[Any], kwargs: dict[str, Any], where: str) -> None:
    if any(not isinstance(a, str) for a in args) or not args:
        raise ExtractError(f"{where}: add_argument with names this reader cannot evaluate: {args}")
    if not args[0].startswith("-"):
        parser.positionals.append(args[0])
        return
    action, nargs = _action_name(kwargs.get("action")), kwargs.get("nargs")
    flags = list(args)
    if action == "BooleanOptionalAction":
        flags += [f"--no-{f[2:]}" for f in args if f.startswith("--")]
    if action in _NO_VALUE or nargs == 0:
        value = "none"
    elif nargs in ("?", "*"):
        value = "optional"
    else:
        value = "required"
    choices = kwargs.get("choices")
    if choices is not None:
        known = isinstance(choices, list | tuple | set) and not _has_unknown(list(choices))
        choices = sorted({str(c) for c in choices}) if known else None
    parser.actions.append(Action(flags, value, choices))


# ---------------------------------------------------------------- get_kwargs over dataclass fields


def _fields(cls: ClassRef) -> list[tuple[str, ast.expr, ClassRef]]:
    out: dict[str, tuple[str, ast.expr, ClassRef]] = {}
    for c in reversed(cls.mro()):
        if not c.is_dataclass() and c is not cls:
            continue
        for stmt in c.node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                ann = stmt.annotation
                if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
                    ann = ast.parse(ann.value, mode="eval").body
                head = ann.value if isinstance(ann, ast.Subscript) else ann
                if getattr(head, "id", getattr(head, "attr", "")) in ("ClassVar", "InitVar"):
                    continue
                out[stmt.target.id] = (stmt.target.id, ann, c)
    return list(out.values())


def _hints(ann: ast.expr, module: Module, depth: int = 0) -> list[Any]:
    """The flattened type hints of an annotation, as get_kwargs sees them: 'bool', 'str', 'int',
    'float', 'none', 'dict', 'list', 'tuple', 'set', 'dataclass', 'other' or ('literal', values)."""
    if depth > 12:
        return ["other"]
    if isinstance(ann, ast.Constant):
        if ann.value is None:
            return ["none"]
        if isinstance(ann.value, str):
            return _hints(ast.parse(ann.value, mode="eval").body, module, depth + 1)
        return ["other"]
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
        return _hints(ann.left, module, depth + 1) + _hints(ann.right, module, depth + 1)
    if isinstance(ann, ast.Subscript):
        head = _name_of(ann.value)
        items = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        if head in ("Optional",):
            return [*_hints(items[0], module, depth + 1), "none"]
        if head == "Union":
            return [h for i in items for h in _hints(i, module, depth + 1)]
        if head == "Annotated":
            return _hints(items[0], module, depth + 1)
        if head == "Literal":
            return [("literal", tuple(_literal_values(items, module)))]
        low = head.lower()
        if low in ("list", "tuple", "set"):
            elems = _hints(items[0], module, depth + 1)
            return [("coll", low, elems[0][1]) if len(elems) == 1 and elems[0][0] == "literal" else low]
        if low == "dict":
            return [low]
        if low in ("sequence", "mapping"):
            return ["other"]
        return ["other"]
    if isinstance(ann, ast.Name | ast.Attribute):
        name = _name_of(ann)
        if name in ("bool", "str", "int", "float", "dict", "list", "tuple", "set"):
            return [name]
        if name == "None":
            return ["none"]
        if isinstance(ann, ast.Attribute):
            return ["other"]
        return _resolve_hint(name, module, depth)
    return ["other"]


def _resolve_hint(name: str, module: Module, depth: int) -> list[Any]:
    value = module.lookup(name)
    if isinstance(value, ClassRef):
        if value.is_dataclass():
            return ["dataclass"]
        if any(_name_of(b) == "dict" for c in value.mro() for b in c.node.bases):
            return ["dict"]
        return ["other"]
    stmt, where = _alias_stmt(name, module)
    if stmt is not None and stmt.value is not None and where is not None:
        return _hints(stmt.value, where, depth + 1)
    return ["other"]


def _alias_stmt(name: str, module: Module) -> tuple[ast.Assign | ast.AnnAssign | None, Module | None]:
    stmt = module.defs.get(name)
    if isinstance(stmt, ast.Assign | ast.AnnAssign):
        return stmt, module
    if isinstance(stmt, ast.ImportFrom):
        base = module._import_base(stmt)
        for alias in stmt.names:
            if (alias.asname or alias.name) == name:
                mod = module.wheel.module(base)
                return _alias_stmt(alias.name, mod) if mod else (None, None)
    return None, None


def _literal_values(items: list[ast.expr], module: Module) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if isinstance(item, ast.Constant):
            out.append(item.value)
        else:  # Literal[OtherLiteral, "x"] flattens
            for h in _hints(item, module):
                out += list(h[1]) if isinstance(h, tuple) and h[0] == "literal" else [UNKNOWN]
    return out


def _name_of(node: ast.expr) -> str:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""


@dataclass(frozen=True)
class Rules:
    """How this version's get_kwargs turns type hints into argparse kwargs (read from its text)."""

    optional_bool_str: bool  # {bool, str, None} -> nargs="?"
    metavar_if_str: bool  # Literal together with str -> metavar, not choices
    none_choice: Any  # what Optional[Literal] appends to choices (None or "None")
    collections: tuple[str, ...]  # the order of tuple/list/set checks
    literal_elements: bool  # list[Literal[...]] -> choices


def _rules(module: Module) -> Rules:
    src = "".join(
        ast.get_source_segment(module.wheel.source(module.path), module.defs[name]) or ""
        for name in ("get_kwargs", "_compute_kwargs", "literal_to_kwargs")
        if name in module.defs
    )
    return Rules(
        optional_bool_str="{bool, str, type(None)}" in src,
        metavar_if_str='"metavar" if contains_type' in src or "'metavar' if contains_type" in src,
        none_choice="None" if 'append("None")' in src else None,
        collections=("tuple", "list", "set")
        if "contains_type(type_hints, set)" in src
        else ("tuple", "list"),
        literal_elements='.get("type")) is Literal' in src,
    )


def dataclass_kwargs(module: Module, cls: ClassRef) -> dict[str, dict[str, Any]]:
    rules = _rules(module)
    out = {}
    for name, ann, owner in _fields(cls):
        out[name] = _field_kwargs(_hints(ann, owner.module), rules)
    return out


def _field_kwargs(hints: list[Any], rules: Rules) -> dict[str, Any]:
    kinds = {h if isinstance(h, str) else h[0] if h[0] == "literal" else h[1] for h in hints}
    kw: dict[str, Any] = {"default": UNKNOWN, "help": UNKNOWN}
    literal = next((h for h in hints if isinstance(h, tuple) and h[0] == "literal"), None)
    elements = next((h[2] for h in hints if isinstance(h, tuple) and h[0] == "coll"), None)
    if "dataclass" in kinds:
        kw["type"] = Token("dataclass")
    elif rules.optional_bool_str and kinds == {"bool", "str", "none"}:
        kw |= {"type": Token("str"), "nargs": "?", "const": True}
    elif "bool" in kinds:
        kw["action"] = Token("argparse.BooleanOptionalAction")
    elif literal is not None:
        key = "metavar" if rules.metavar_if_str and "str" in kinds else "choices"
        kw |= {"type": Token("literal"), key: sorted(literal[1], key=str)}
    elif any(c in kinds for c in rules.collections):
        kw |= {"type": Token("elem"), "nargs": "+"}
        if rules.literal_elements and elements is not None:
            kw["choices"] = sorted(elements, key=str)
    else:
        kw["type"] = Token("scalar")
    if "none" in kinds and "bool" not in kinds and kw.get("choices"):
        kw["choices"] = [*kw["choices"], rules.none_choice]
    return kw


# ---------------------------------------------------------------- entry points and tables


def serve_parser(wheel: Wheel) -> Parser:
    interp = Interp(wheel, Subparsers())
    serve = wheel.module("vllm.entrypoints.cli.serve")
    if serve is not None:
        cls = serve.lookup("ServeSubcommand")
        interp.invoke(interp.attribute(Instance(cls), "subparser_init"), [interp.subparsers], {})
    else:
        scripts = wheel.module("vllm.scripts")
        if scripts is None:
            raise ExtractError(
                f"{wheel.path.name}: neither vllm/entrypoints/cli/serve.py nor vllm/scripts.py"
            )
        interp.invoke(scripts.lookup("main"), [], {})
    assert interp.subparsers is not None
    parser = interp.subparsers.parsers.get("serve")
    if parser is None:
        raise ExtractError(f"{wheel.path.name}: no `serve` subparser was created")
    return parser


def table(wheel_path: Path) -> dict[str, Any]:
    wheel = Wheel(wheel_path)
    parser = serve_parser(wheel)
    seen: dict[str, int] = {}
    actions = []
    for a in parser.actions:
        for f in a.flags:
            if f in seen:
                raise ExtractError(f"{wheel_path.name}: {f} is added twice (argparse would refuse it)")
            seen[f] = 1
        actions.append({"flags": a.flags, "value": a.value, "choices": a.choices})
    actions.sort(key=lambda a: a["flags"][0].lstrip("-"))
    return {
        "version": wheel_version(wheel_path),
        "wheel": wheel_path.name,
        "sha256": _sha256(wheel_path),
        "positionals": parser.positionals,
        "options": actions,
    }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def wheel_version(path: Path) -> str:
    return path.name.split("-")[1]


def find_wheel(version: str) -> Path | None:
    found = sorted(cache_dir().glob(f"vllm-{version}-*.whl"))
    return found[0] if found else None


def download(version: str) -> Path:
    cache_dir().mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary",
            ":all:",
            f"vllm=={version}",
            "-d",
            str(cache_dir()),
        ],
        check=True,
    )
    path = find_wheel(version)
    if path is None:
        raise ExtractError(f"pip download vllm=={version} left no wheel in {cache_dir()}")
    return path


def table_path(version: str) -> Path:
    return TABLES / f"{version}.json"


def dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", action="append", help="only these versions (default: all)")
    ap.add_argument(
        "--check", action="store_true", help="compare tables with cached wheels; download nothing"
    )
    opts = ap.parse_args(argv)
    bad = 0
    for version in opts.version or VERSIONS:
        wheel = find_wheel(version)
        if wheel is None and opts.check:
            print(f"{version}: no wheel in {cache_dir()}, skipped")
            continue
        text = dump(table(wheel or download(version)))
        path = table_path(version)
        if opts.check:
            same = path.exists() and path.read_text(encoding="utf-8") == text
            bad += not same
            print(f"{version}: {'ok' if same else 'DIFFERS from ' + wheel.name if wheel else ''}")
        else:
            TABLES.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"{version}: {len(json.loads(text)['options'])} options -> {path.relative_to(ROOT)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
