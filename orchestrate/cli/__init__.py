"""The command line (click + rich): `orchestrate.cli.main` is the group and its entry point; one
module per family of commands (plan, deploy, build, bench) and what they share (options, group,
console)."""

from orchestrate.cli.main import cli, main

__all__ = ["cli", "main"]
