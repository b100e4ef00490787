"""The command group: global options accepted before or after the subcommand, commands loaded
only when they run, and library logs kept off the screen."""

from __future__ import annotations

from typing import Any

import click

from orchestrate.cli.options import (
    INVENTORY_HELP,
    OUTPUTS,
    TARGET_HELP,
    TARGETS,
    VERBOSE_HELP,
    Options,
    debug_log,
)

# Commands that touch no host: they import neither paramiko, docker nor httpx (tests/unit/cli/test_cli.py)
PURE_COMMANDS = frozenset({"validate", "schema", "plan", "render", "completion", "firewall"})


# Commands that live in other modules, imported only when they run: name -> (module:attr, help).
LAZY_COMMANDS = {
    "bench": (
        "orchestrate.cli.bench:bench_command",
        "Load the serving endpoint and report TTFT, TPOT, ITL, E2E latency and throughput.",
    ),
}


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option typed after the subcommand: same meaning as before it."""
    if value is not None and param.name:
        setattr(ctx.ensure_object(Options), param.name, value)


def _add_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    ctx.ensure_object(Options).verbose += value or 0


def _global_params() -> list[click.Parameter]:
    """The group's options again, for every leaf command (`status inv.yaml --output json`)."""
    return [
        click.Option(
            ["--target"],
            type=click.Choice(TARGETS),
            expose_value=False,
            callback=_set_global,
            help=TARGET_HELP,
        ),
        click.Option(
            ["-i", "--inventory", "inventory"],
            metavar="FILE",
            expose_value=False,
            callback=_set_global,
            help=INVENTORY_HELP,
        ),
        click.Option(
            ["-v", "--verbose"], count=True, expose_value=False, callback=_add_verbose, help=VERBOSE_HELP
        ),
        click.Option(
            ["--output"],
            type=click.Choice(OUTPUTS),
            expose_value=False,
            callback=_set_global,
            help="text or json.",
        ),
    ]


class _LazyCommand(click.Command):
    """Stands in for a command of another module in `--help` and completion lists."""

    def __init__(self, name: str, target: str, short_help: str) -> None:
        super().__init__(name, help=short_help)
        self.target = target

    def load(self) -> click.Command:
        import importlib

        module, attr = self.target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


class OrchestrateGroup(click.Group):
    """Lazy commands, and the global options accepted after the subcommand too."""

    group_class = type  # subgroups (image, model) are OrchestrateGroups as well

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.name == "cli":
            for name, (target, short_help) in LAZY_COMMANDS.items():
                self.add_command(_LazyCommand(name, target, short_help))

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if name not in PURE_COMMANDS:
            _route_library_logs()  # paramiko and docker log; the pure commands import neither
        if isinstance(cmd, _LazyCommand):
            cmd = self.commands[cmd.name or ""] = cmd.load()
        if (
            cmd is not None
            and not isinstance(cmd, click.Group)
            and not getattr(cmd, "_orchestrate_globals", False)
        ):
            cmd.params.extend(_global_params())
            cmd._orchestrate_globals = True  # type: ignore[attr-defined]
        return name, cmd, rest


def _route_library_logs() -> None:
    """Libraries log to stderr through logging's last resort handler: paramiko prints a whole
    traceback when a frozen host never sends its SSH banner. People get our one-line errors;
    library records go to a log file (or nowhere when it cannot be written)."""
    import logging

    root = logging.getLogger()
    if root.handlers:
        return
    path = debug_log().with_name("orchestrate.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    except OSError:
        handler = logging.NullHandler()
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)
