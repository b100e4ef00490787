"""The command line: each command parses, calls one core function, and renders its result.

Exit codes: 0 ok; 1 a host, phase or gate failed; 2 bad inventory or usage; 3 the serving checks
failed; 4 another orchestrate run holds the deployment lock; 70 an internal error (a bug);
130 interrupted.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from orchestrate.cli import build, deploy, plan
from orchestrate.cli.group import OrchestrateGroup
from orchestrate.cli.options import (
    INVENTORY_HELP,
    OUTPUTS,
    TARGET_HELP,
    TARGETS,
    VERBOSE_HELP,
    Options,
    debug_log,
)
from orchestrate.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, OrchestrateError
from orchestrate.waits import catch_sigint

if TYPE_CHECKING:
    from orchestrate.cli.console import Console


@click.group(cls=OrchestrateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--target", type=click.Choice(TARGETS), default="docker", show_default=True, help=TARGET_HELP)
@click.option("-i", "--inventory", "inventory", metavar="FILE", help=INVENTORY_HELP)
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP)
@click.option("--output", type=click.Choice(OUTPUTS), default="text", show_default=True)
@click.version_option(package_name="orchestrate")
@click.pass_context
def cli(ctx: click.Context, target: str, inventory: str | None, verbose: int, output: str) -> None:
    """Bring up multi-node vLLM on GPU hosts over SSH + Docker, or render it for k8s / compose.

    The global options (--target, -i, -v, --output) work before or after the subcommand.
    """
    ctx.obj = Options(target, inventory, verbose, output)


def main(argv: list[str] | None = None) -> None:
    from orchestrate.cli.console import Console, close_all

    console = Console()
    catch_sigint()  # a Ctrl-C that lands in a finalizer is raised again by the next wait
    try:
        _main(argv, console)
    finally:
        close_all()


def _main(argv: list[str] | None, console: Console) -> None:
    from orchestrate.cli.console import errors_to

    try:
        cli.main(args=argv, prog_name="orchestrate", standalone_mode=False)
    except OrchestrateError as exc:
        errors_to(console).error(exc.lines())
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):  # click turns Ctrl-C in a command into Abort
        errors_to(console).error(
            ["interrupted: `orchestrate up` finishes the job, `orchestrate down` cleans up"]
        )
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception:  # a bug: people get one line, the traceback goes to the debug log
        import traceback

        path = debug_log()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(traceback.format_exc(), encoding="utf-8")
        except OSError:
            pass
        errors_to(console).error(
            [
                f"internal error ({sys.exc_info()[0].__name__}); this is a bug in "  # type: ignore[union-attr]
                f"orchestrate. Details: {path}"
            ]
        )
        sys.exit(EXIT_INTERNAL)


for _module in (plan, deploy, build):
    for _command in _module.COMMANDS:
        cli.add_command(_command)
