"""The command line: each command parses, calls one core function, and renders its result.

Exit codes: 0 ok; 1 a host, phase or gate failed; 2 bad inventory or usage; 3 the serving checks
failed; 4 another orchestrate run holds the deployment lock; 70 an internal error (a bug);
130 interrupted.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orchestrate.console import emit_json, emit_table, emit_text
from orchestrate.errors import EXIT_INTERRUPTED, OrchestrateError, UsageError
from orchestrate.progress import BuildLog

if TYPE_CHECKING:
    from orchestrate.console import Console
    from orchestrate.plan import Plan
    from orchestrate.preflight import Replan

# Start-up time is part of the interface (issue 15): this module imports only click and the
# package's light modules. Each command imports what it needs (pydantic for inventories, rich
# on a terminal, docker/fabric/httpx for hosts and the load generator) in its body; `bench`
# lives in orchestrate/bench.py and is loaded only when it runs (see LAZY_COMMANDS).

DEFAULT_INVENTORY = "inventory/l20.yaml"
LAST_USED = Path(".orchestrate") / "last-inventory"
EXIT_INTERNAL = 70


class Options:
    """The global options, wherever they were typed: before the subcommand or after it."""

    def __init__(self, target: str = "docker", inventory: str | None = None, verbose: int = 0,
                 output: str = "text") -> None:
        self.target, self.inventory, self.verbose, self.output = target, inventory, verbose, output
        self._console: Console | None = None

    def console(self) -> Console:
        """The command's console (one per command): live view on a terminal, calm lines in a
        pipe, and the full output, details included, in a log file under the cache."""
        if self._console is None:
            from orchestrate.console import Console

            ctx = click.get_current_context(silent=True)
            self._console = Console(self.verbose, log_path=_run_log(ctx.info_name if ctx else None))
        return self._console


def resolve_inventory(explicit: str | None, option: str | None) -> str:
    """Positional argument, then -i, then $ORCHESTRATE_INVENTORY, then the last one used here."""
    for candidate in (explicit, option, os.environ.get("ORCHESTRATE_INVENTORY")):
        if candidate:
            return candidate
    try:
        remembered = LAST_USED.read_text(encoding="utf-8").strip()
    except OSError:
        remembered = ""
    return remembered if remembered and Path(remembered).exists() else DEFAULT_INVENTORY


def _remember(path: str) -> None:
    try:
        LAST_USED.parent.mkdir(exist_ok=True)
        LAST_USED.write_text(path + "\n", encoding="utf-8")
    except OSError:
        pass  # a read-only checkout is fine; this is only a convenience


def _load_plan(path: str) -> Plan:
    """Inventory file -> Plan (pydantic is imported here, not when the CLI starts)."""
    from orchestrate.inventory import load
    from orchestrate.plan import build_plan

    return build_plan(load(path))


def _plan(opts: Options, explicit: str | None) -> Plan:
    return _load_plan(resolve_inventory(explicit, opts.inventory))


def _load_for_hosts(path: str) -> tuple[Plan, Replan]:
    """The plan, and how to plan again for the vLLM version and Ray that the image turns out
    to hold (`up` and `status` read them; a vllm_version in the inventory stays as written)."""
    from orchestrate.inventory import load
    from orchestrate.plan import build_plan

    inv = load(path)

    def replan(version: str | None, has_ray: bool) -> Plan:
        return build_plan(inv, vllm_version=inv.vllm_version or version, image_has_ray=has_ray)

    return build_plan(inv), replan


inventory_arg = click.argument("inventory_file", metavar="[INVENTORY]", required=False)

TARGETS = ("docker", "compose", "k8s")
OUTPUTS = ("text", "json")
TARGET_HELP = "What render/plan produce: docker runs, compose or k8s."
INVENTORY_HELP = ("Inventory file (default: $ORCHESTRATE_INVENTORY, the last one used here, "
                  f"else {DEFAULT_INVENTORY}).")  # fmt: skip
VERBOSE_HELP = "More detail (-v: debug events and the full pip/docker output)."

# Commands that touch no host: they import neither paramiko, docker nor httpx (tests/test_cli.py)
PURE_COMMANDS = frozenset({"validate", "schema", "plan", "render", "completion", "firewall"})
# Commands that live in other modules, imported only when they run: name -> (module:attr, help).
LAZY_COMMANDS = {
    "bench": ("orchestrate.bench:bench_command",
              "Load the serving endpoint and report TTFT, TPOT, ITL, E2E latency and throughput."),
}  # fmt: skip


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option typed after the subcommand: same meaning as before it."""
    if value is not None and param.name:
        setattr(ctx.ensure_object(Options), param.name, value)


def _add_verbose(ctx: click.Context, param: click.Parameter, value: int) -> None:
    ctx.ensure_object(Options).verbose += value or 0


def _global_params() -> list[click.Parameter]:
    """The group's options again, for every leaf command (`status inv.yaml --output json`)."""
    return [
        click.Option(["--target"], type=click.Choice(TARGETS), expose_value=False,
                     callback=_set_global, help=TARGET_HELP),
        click.Option(["-i", "--inventory", "inventory"], metavar="FILE", expose_value=False,
                     callback=_set_global, help=INVENTORY_HELP),
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_add_verbose,
                     help=VERBOSE_HELP),
        click.Option(["--output"], type=click.Choice(OUTPUTS), expose_value=False,
                     callback=_set_global, help="text or json."),
    ]  # fmt: skip


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

    def resolve_command(self, ctx: click.Context,
                        args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if name not in PURE_COMMANDS:
            _route_library_logs()  # paramiko and docker log; the pure commands import neither
        if isinstance(cmd, _LazyCommand):
            cmd = self.commands[cmd.name or ""] = cmd.load()
        if cmd is not None and not isinstance(cmd, click.Group) \
                and not getattr(cmd, "_orchestrate_globals", False):
            cmd.params.extend(_global_params())
            cmd._orchestrate_globals = True  # type: ignore[attr-defined]
        return name, cmd, rest


@click.group(cls=OrchestrateGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--target", type=click.Choice(TARGETS), default="docker", show_default=True,
              help=TARGET_HELP)
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


# ---------------------------------------------------------------- pure commands


@cli.command()
@inventory_arg
@click.pass_obj
def validate(opts: Options, inventory_file: str | None) -> None:
    """Check an inventory; one line per problem, exit 2 when invalid."""
    path = resolve_inventory(inventory_file, opts.inventory)
    plan = _load_plan(path)
    if opts.output == "json":
        emit_json({"inventory": path, "valid": True, "world_size": plan.world_size})
    else:
        emit_text(f"{path}: ok ({len(plan.nodes)} hosts, {plan.total_gpus} GPUs, "
                  f"TP={plan.tensor_parallel} x PP={plan.pipeline_parallel}, {plan.backend})")


@cli.command()
def schema() -> None:
    """Print the inventory's JSON Schema."""
    from orchestrate.inventory import json_schema

    emit_json(json_schema())


def plan_data(plan: Plan) -> dict[str, Any]:
    import dataclasses

    data = dataclasses.asdict(plan)
    data["endpoint"] = plan.endpoint
    data["world_size"] = plan.world_size
    return data


def plan_text(plan: Plan) -> str:
    import shlex

    from orchestrate.render import docker as docker_r

    lines = [f"deployment {plan.name}: {plan.backend} backend, TP={plan.tensor_parallel} x "
             f"PP={plan.pipeline_parallel} = {plan.world_size} GPUs on {len(plan.nodes)} hosts",
             f"backend {plan.backend}: {plan.backend_reason}",
             f"endpoint {plan.endpoint}  model {plan.model_host_path} as {plan.served_name}", ""]
    for node in plan.nodes:
        where = "this machine" if node.ssh.local else \
            f"{node.ssh.user}@{node.ssh.host}:{node.ssh.port}"
        lines.append(f"# {node.alias} on {node.host} ({where}), {node.gpus} GPUs, nic {node.nic}")
        lines.append(shlex.join(docker_r.describe(node.container)))
        lines.append("")
    if plan.backend == "ray":
        lines.append("# the head runs, once Ray has every node and GPU:")
        lines.append(shlex.join(plan.serve_argv))
    return "\n".join(lines)


@cli.command("plan")
@inventory_arg
@click.option("--model-config", type=click.Path(exists=True, dir_okay=False),
              help="The model's config.json here: add fit planning (weights, KV cache, TP/PP).")
@click.pass_obj
def plan_cmd(opts: Options, inventory_file: str | None, model_config: str | None) -> None:
    """Print what would run on each host (secrets are shown as ${VAR} references)."""
    plan = _plan(opts, inventory_file)
    if model_config:
        _print_fit(opts, plan, model_config)
        return
    if opts.output == "json":
        emit_json(plan_data(plan))
    elif opts.target == "docker":
        emit_text(plan_text(plan))
    else:
        _render_to(opts, plan, None, "deployment")


def _print_fit(opts: Options, plan: Plan, config_path: str) -> None:
    import json

    from orchestrate import fit, preflight

    if not plan.gpu_memory_gib:
        raise OrchestrateError("fit planning needs gpu_memory_gib in the inventory")
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        report = preflight.fit_report(plan, config, plan.gpu_memory_gib)
        shape = fit.ModelShape.from_config(config, name=plan.served_name)
        best = fit.suggest(shape, plan.head.gpus, plan.gpu_memory_gib, len(plan.nodes),
                           plan.max_model_len or 4096)  # fmt: skip
    except (ValueError, OSError) as exc:
        raise OrchestrateError(f"{config_path}: {exc}") from None
    if opts.output == "json":
        emit_json({"fit": report.as_dict(), "suggested": {"tp": best.tp, "pp": best.pp}})
        return
    emit_text("\n".join([*report.lines(), f"suggested: TP {best.tp} x PP {best.pp}"]))


def rendered(target: str, plan: Plan, flavor: str) -> dict[str, str]:
    """{file name: text} for a target."""
    from orchestrate.render import compose as compose_r
    from orchestrate.render import k8s as k8s_r
    from orchestrate.render.yamlio import dump, dump_all

    header = f"# Rendered by orchestrate from deployment {plan.name!r}. Do not edit by hand.\n"
    if target == "k8s":
        docs = k8s_r.render(plan, "lws" if flavor == "lws" else "deployment")
        suffix = "-lws" if flavor == "lws" else ""
        files = {f"{plan.name}{suffix}.yaml": dump_all(docs, header)}
        secret = k8s_r.render_secret(plan)
        if secret is not None:
            note = (f"# A TEMPLATE: replace every {k8s_r.SECRET_PLACEHOLDER} with the real value "
                    "before applying (or create the Secret with kubectl, as its annotation says).\n"
                    "# The pods do not start until this Secret exists.\n")
            files[f"{plan.name}-secret.yaml"] = dump_all([secret], header + note)
        return files
    if target == "compose":
        files = {f"{host}.yaml": dump(doc, header + f"# docker compose -f {host}.yaml up -d  "
                                      f"(on host {host})\n")
                 for host, doc in compose_r.render(plan).items()}  # fmt: skip
        if any(n.container.supervisor for n in plan.nodes):
            from orchestrate.agents import bundle

            files[compose_r.SUPERVISOR_FILE] = bundle("supervisor")
        return files
    return {f"{plan.name}.sh": "#!/bin/sh\n" + plan_text(plan) + "\n"}


def _render_to(opts: Options, plan: Plan, out_dir: str | None, flavor: str) -> None:
    files = rendered(opts.target, plan, flavor)
    if opts.target == "k8s":
        from orchestrate.render import k8s as k8s_r

        for line in k8s_r.node_warnings(plan):
            click.echo(f"warning: {line}", err=True)
    if out_dir is None:
        emit_text("---\n".join(files.values()) if opts.target == "k8s" else
                  "\n".join(f"# ---- {name}\n{text}" for name, text in files.items()))
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (Path(out_dir) / name).write_text(text, encoding="utf-8")
        click.echo(f"wrote {Path(out_dir) / name}", err=True)


@cli.command()
@inventory_arg
@click.option("-o", "--out", "out_dir", metavar="DIR", help="Write files here instead of stdout.")
@click.option("--flavor", type=click.Choice(["deployment", "lws"]), default="deployment",
              show_default=True, help="k8s only: plain Deployments or a LeaderWorkerSet.")
@click.pass_obj
def render(opts: Options, inventory_file: str | None, out_dir: str | None, flavor: str) -> None:
    """Render the plan for --target (k8s manifests, compose files, docker commands)."""
    _render_to(opts, _plan(opts, inventory_file), out_dir, flavor)


# ---------------------------------------------------------------- commands that touch hosts


@cli.command()
@inventory_arg
@click.option("--dry-run", is_flag=True, help="Print what would run on each host; touch nothing.")
@click.option("--no-checks", is_flag=True, help="Skip the chat/stream checks at the end.")
@click.option("--skip-check", "skip_checks", multiple=True, metavar="CHECK",
              help="Skip one preflight check (model, model-hash, shm, nic, ports, gpus, "
                   "reach-head, reach-peers); repeatable.")
@click.pass_obj
def up(opts: Options, inventory_file: str | None, dry_run: bool, no_checks: bool,
       skip_checks: tuple[str, ...]) -> None:
    """Preflight, start head and workers, wait for Ray and vLLM, prove it serves."""
    path = resolve_inventory(inventory_file, opts.inventory)
    plan, replan = _load_for_hosts(path)
    if dry_run:
        emit_json(plan_data(plan)) if opts.output == "json" else emit_text(plan_text(plan))
        return
    from orchestrate import apply

    _remember(path)
    report = apply.up(plan, opts.console(), run_checks=not no_checks, skip_checks=skip_checks,
                      replan=replan)  # fmt: skip
    if opts.output == "json":
        emit_json(report.as_dict())
        return
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in report.phases.items())
    emit_text(f"ready: {report.endpoint}  model {plan.served_name}  {report.nodes} nodes, "
              f"{report.gpus} GPUs, backend {report.backend}\nphases: {phases}")


@cli.command("preflight")
@inventory_arg
@click.option("--skip", "skip", multiple=True, metavar="CHECK",
              help="Skip a check (repeatable): " + ", ".join(
                  ["docker", "gpus", "nic", "route", "hostname", "ports", "reach-head", "reach-peers",
                   "model", "shm", "image", "fit", "model-hash"]))
@click.option("--collective", is_flag=True,
              help="Also run an all-reduce across all hosts in the image (Gloo on CPU, NCCL on "
                   "GPUs) and report the bus bandwidth.")
@click.pass_obj
def preflight_cmd(opts: Options, inventory_file: str | None, skip: tuple[str, ...],
                  collective: bool) -> None:
    """Check every host before anything starts: one table, the fix for each failure."""
    from orchestrate import preflight
    from orchestrate.session import Session

    plan, replan = _load_for_hosts(resolve_inventory(inventory_file, opts.inventory))
    with Session(plan, opts.console() if opts.verbose else _quiet) as s:
        s.plan = preflight.plan_for_image(s, replan)  # as `up` will plan it for this image
        rows = preflight.run(s, skip=skip)
        if collective and not preflight.failures(rows):
            from orchestrate import collective as coll

            rows += coll.run(s)
    if opts.output == "json":
        emit_json(preflight.table_dict(rows))
    else:
        emit_table(f"preflight {plan.name}", ["host", "check", "status", "message", "fix"],
                   [(r.host, r.check, r.status, r.message, r.fix) for r in rows])
    if preflight.failures(rows):
        sys.exit(1)


def _quiet(phase: str, host: str | None, message: str) -> None:
    pass


@cli.command()
@inventory_arg
@click.pass_obj
def down(opts: Options, inventory_file: str | None) -> None:
    """Stop and remove the deployment's containers (workers, then head). Idempotent."""
    from orchestrate import apply

    removed = apply.down(_plan(opts, inventory_file), opts.console())
    if opts.output == "json":
        emit_json({"removed": removed})
    else:
        emit_text(f"down: removed {sum(removed.values())} container(s)")


@cli.command()
@inventory_arg
@click.pass_obj
def status(opts: Options, inventory_file: str | None) -> None:
    """Per host: container state; Ray nodes and GPUs; vLLM health and key metrics."""
    from orchestrate import apply, observe

    plan, replan = _load_for_hosts(resolve_inventory(inventory_file, opts.inventory))
    api_key = apply.resolve_secrets(plan).get("VLLM_API_KEY") if plan.api_key_env else None
    data = observe.status(plan, opts.console(), api_key, replan=replan)
    if opts.output == "json":
        emit_json(data)
    else:
        _status_text(data)
    if not data["healthy"]:
        sys.exit(1)


def _status_text(data: dict[str, Any]) -> None:
    rows = [(h["role"], h["host"], h["address"], h["state"], h.get("spec", ""),
             str(h.get("restarts", "")), (h.get("supervisor") or {}).get("phase", ""), _note(h))
            for h in data["hosts"]]  # fmt: skip
    emit_table(f"deployment {data['deployment']}", ["node", "host", "address", "state", "spec",
                                                    "restarts", "watchdog", "note"], rows)  # fmt: skip
    for h in data["hosts"]:  # the last failure of each member, with its root-cause line
        last = (h.get("supervisor") or {}).get("last_failure")
        if last:
            cause = f": {last['cause']}" if last.get("cause") else ""
            emit_text(f"{h['role']}: last failure (exit {last.get('exit')}) {last.get('reason')}{cause}")
    ray = data.get("ray")
    if ray and "error" not in ray:
        missing = f"; no alive raylet on {', '.join(ray['missing'])}" if ray.get("missing") else ""
        emit_text(f"ray: {ray['nodes_alive']}/{ray['nodes_expected']} nodes alive, "
                  f"{ray['gpus']:g}/{ray['gpus_expected']} GPUs{missing}")
    v = data["vllm"]
    if not v.get("endpoint"):  # serve.start false: a Ray cluster only
        emit_text(f"deployment: {'healthy' if data['healthy'] else 'NOT healthy'} (Ray cluster only)")
        return
    line = f"vllm: {'healthy' if v['healthy'] else 'NOT healthy'} at {v['endpoint']}"
    if v.get("models"):
        line += f", models {', '.join(v['models'])}"
    if v.get("metrics"):
        m = v["metrics"]
        line += (f"; running {m.get('requests_running', 0):g}, waiting "
                 f"{m.get('requests_waiting', 0):g}, KV cache {100 * m.get('kv_cache_usage', 0):.1f}%")
    if v.get("reason"):
        line += f" ({v['reason']})"
    emit_text(line)


@cli.command()
@inventory_arg
@click.option("--interval", type=click.FloatRange(0.5, 3600), default=2.0, show_default=True,
              help="Seconds between samples.")
@click.option("--count", type=click.IntRange(0), default=0,
              help="Stop after this many samples (0: until Ctrl-C).")
@click.pass_obj
def watch(opts: Options, inventory_file: str | None, interval: float, count: int) -> None:
    """A live view: nodes, ranks, watchdogs, health, requests, tokens/s, restarts, and events as
    they happen (plain lines when not a terminal; --output json: one JSON event per line). It only
    observes: the deployment heals itself without it."""
    import itertools
    import time

    from orchestrate import apply, observe

    plan, _ = _load_for_hosts(resolve_inventory(inventory_file, opts.inventory))
    api_key = apply.resolve_secrets(plan).get("VLLM_API_KEY") if plan.api_key_env else None
    live = opts.output != "json" and sys.stdout.isatty()
    prev: dict[str, Any] | None = None
    samples = observe.watch(plan, api_key, interval)
    view = None
    if live:
        from rich.live import Live

        view = Live(refresh_per_second=2)
        view.start()
    try:
        for data in itertools.islice(samples, count or None):
            rate = observe.tokens_per_s(prev, data)
            stamp = time.strftime("%H:%M:%S", time.localtime(data["t"]))
            for line in observe.changes(prev, data):
                if opts.output == "json":
                    emit_json({"t": data["t"], "event": line})
                elif view is not None:
                    view.console.print(f"{stamp} {line}")
                else:
                    emit_text(f"{stamp} {line}")
            if opts.output == "json":
                emit_json({"t": data["t"], "event": "sample", "healthy": data["healthy"],
                           "tokens_per_s": rate, "status": data})  # fmt: skip
            elif view is not None:
                view.update(_watch_table(data, rate))
            prev = data
    except KeyboardInterrupt:
        pass
    finally:
        samples.close()
        if view is not None:
            view.stop()


def _watch_table(data: dict[str, Any], rate: float | None) -> Any:
    from rich.table import Table

    m = data["vllm"].get("metrics") or {}
    title = (f"{data['deployment']}: {'healthy' if data['healthy'] else 'NOT healthy'}; running "
             f"{m.get('requests_running', 0):g}, waiting {m.get('requests_waiting', 0):g}"
             + (f", {rate:.1f} tokens/s" if rate is not None else ""))  # fmt: skip
    table = Table(title=title)
    for col in ("node", "host", "state", "restarts", "watchdog", "note"):
        table.add_column(col)
    for h in data["hosts"]:
        table.add_row(h["role"], h["host"], h["state"], str(h.get("restarts", "")),
                      (h.get("supervisor") or {}).get("phase", ""), _note(h))  # fmt: skip
    return table


def _note(h: dict[str, Any]) -> str:
    from orchestrate.observe import STATE_STALE_S

    if h.get("error"):
        return str(h["error"])
    if h.get("exit_code") is not None:
        return f"exit {h['exit_code']}"
    sup = h.get("supervisor") or {}
    if sup.get("phase") in ("parked", "backoff", "waiting", "hung", "exiting"):
        return str(sup.get("detail", ""))
    if h.get("lost"):
        return f"lost: {h['lost']}"
    if (sup.get("state_age_s") or 0) > STATE_STALE_S:
        return f"its supervisor has not written its state for {sup['state_age_s']:g} s (frozen?)"
    return ""


def _complete_node(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """`orchestrate logs <TAB>`: head, worker-N and host names of the inventory (-i, the
    environment, else the last one `up` used here)."""
    from click.shell_completion import CompletionItem

    opts = ctx.find_object(Options)
    option = (opts.inventory if opts else None) or ctx.find_root().params.get("inventory")
    try:
        plan = _load_plan(resolve_inventory(ctx.params.get("inventory_file"), option))
    except OrchestrateError:
        return []
    items = [CompletionItem(name, help=f"{node.alias} on {node.host} ({node.address})")
             for node in plan.nodes for name in dict.fromkeys((node.alias, node.host))]  # fmt: skip
    return [item for item in items if item.value.startswith(incomplete)]


@cli.command()
@inventory_arg
@click.option("--format", "formats", multiple=True,
              type=click.Choice(["firewalld", "iptables", "nftables", "ufw"]),
              help="Only these rule formats (repeatable; default: all four).")
@click.option("--host", "host", metavar="HOST", help="Only this host (name or head/worker-N).")
@click.pass_obj
def firewall(opts: Options, inventory_file: str | None, formats: tuple[str, ...],
             host: str | None) -> None:
    """Print, per host, the firewall rules the cluster needs between its hosts."""
    from orchestrate import ports

    plan = _plan(opts, inventory_file)
    if host is not None and not any(host in (n.host, n.alias) for n in plan.nodes):
        raise UsageError(f"--host {host}: no such host in {plan.name} "
                         f"({', '.join(n.host for n in plan.nodes)})")
    if opts.output == "json":
        emit_json(ports.rules_data(plan))
        return
    chosen = tuple(f for f in ports.FORMATS if f in formats) or ports.FORMATS
    emit_text(ports.rules_text(plan, chosen, host).rstrip("\n"))


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(orchestrate completion bash)"."""
    from click.shell_completion import get_completion_class

    script_class = get_completion_class(shell)
    assert script_class is not None  # click ships all three
    emit_text(script_class(cli, {}, "orchestrate", "_ORCHESTRATE_COMPLETE").source())


@cli.command()
@click.argument("node", shell_complete=_complete_node)
@inventory_arg
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.option("--tail", type=click.IntRange(min=0), help="Only the last N lines.")
@click.option("--since", metavar="DURATION", help="Only output newer than this (90s, 10m, 2h).")
@click.pass_obj
def logs(opts: Options, node: str, inventory_file: str | None, follow: bool, tail: int | None,
         since: str | None) -> None:
    """Container output of NODE (head, worker-N or an inventory host name): Ray and vLLM."""
    from orchestrate import observe

    observe.logs(_plan(opts, inventory_file), node, follow=follow, tail=tail, since=since)


@cli.command()
@inventory_arg
@click.pass_obj
def check(opts: Options, inventory_file: str | None) -> None:
    """Run the post's curl checks: /health, /v1/models, a chat completion and a streamed one."""
    from orchestrate import apply

    results = apply.check(_plan(opts, inventory_file), opts.console())
    if opts.output == "json":
        emit_json([r.as_dict() for r in results])


# ---------------------------------------------------------------- images, models, the demo

DEMO_INVENTORY = "inventory/local-cpu.yaml"


def _cache_dir() -> Path:
    return Path(os.environ.get("ORCH_CACHE") or Path.home() / ".cache" / "orchestrate")


def _build_error(exc: Exception) -> OrchestrateError:
    return OrchestrateError(str(exc))


@cli.group()
def image() -> None:
    """Build the images orchestrate ships recipes for (offline, from a host wheelhouse)."""


@image.command("build")
@click.argument("kind", type=click.Choice(["vllm-cpu", "ray", "base"]), default="vllm-cpu")
@click.option("--base", help="Base image (default: orchestrate/debian-py:bookworm or "
              "python:3.11-slim-bookworm if present, else pulled, else made with debootstrap).")
@click.option("--tag", help="Image tag (default orchestrate/vllm-cpu:0.32.0 / orchestrate/ray:2.60.0 / "
              "orchestrate/debian-py:bookworm).")
@click.option("--rebuild-rootfs", is_flag=True, help="base only: debootstrap afresh instead of "
              "re-importing the cached rootfs tarball.")
@click.pass_obj
def image_build(opts: Options, kind: str, base: str | None, tag: str | None,
                rebuild_rootfs: bool) -> None:
    """Build the vLLM-on-CPU image (vllm-cpu + ray, with the packaging fixes), a Ray image, or
    the Debian base they build on (debootstrap, no registry needed; re-imported when present)."""
    from orchestrate import images

    console = opts.console()
    try:
        if kind == "base":
            image_id = _build_base(tag or images.LOCAL_BASE, rebuild_rootfs, console)
        else:
            image_id = images.build_image(kind, tag=tag, base=base,  # type: ignore[arg-type]
                                          cache_dir=_cache_dir(),
                                          on_event=BuildLog(console))
    except images.ImageBuildError as exc:
        raise _build_error(exc) from None
    default = {"vllm-cpu": images.CPU_IMAGE, "ray": images.RAY_IMAGE, "base": images.LOCAL_BASE}[kind]
    emit_text(f"{tag or default} {image_id}")


def _build_base(tag: str, rebuild_rootfs: bool, console: Console) -> str:
    import docker

    from orchestrate import images
    from orchestrate.images.base import ensure_local_base

    try:
        client = docker.from_env(timeout=600)
    except docker.errors.DockerException as exc:
        raise images.ImageBuildError(f"Cannot reach the Docker daemon: {exc}") from None
    try:
        return ensure_local_base(client, _cache_dir(), BuildLog(console),
                                 tag=tag, force=True, rebuild_rootfs=rebuild_rootfs)  # fmt: skip
    finally:
        client.close()


@cli.group()
def model() -> None:
    """Model helpers."""


@model.command("make-tiny")
@click.argument("out_dir", default="/var/tmp/orchestrate-demo/models/tiny")
@click.option("--image", "image_ref", default=None, help="Image with torch + transformers "
              "(default: the vllm-cpu image).")
def model_make_tiny(out_dir: str, image_ref: str | None) -> None:
    """Write a tiny random-weight Qwen2 model (real architecture, chat template) for demos."""
    from orchestrate import images

    try:
        path = images.make_tiny_model(Path(out_dir), image=image_ref or images.CPU_IMAGE)
    except images.ImageBuildError as exc:
        raise _build_error(exc) from None
    emit_text(str(path))


@model.command("verify")
@inventory_arg
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False),
              help="A local sha256sum manifest (default: model.manifest on the head, e.g. sum.txt).")
@click.option("--rehash", is_flag=True, help="Ignore the per-host hash cache.")
@click.pass_obj
def model_verify(opts: Options, inventory_file: str | None, manifest: str | None,
                 rehash: bool) -> None:
    """Same files, sizes and sha256 on every host, in parallel; cached by path+size+mtime."""
    from orchestrate import modelcheck
    from orchestrate.session import Session

    plan = _plan(opts, inventory_file)
    with Session(plan, opts.console()) as s:
        report = modelcheck.verify(s, manifest=Path(manifest) if manifest else None,
                                   rehash=rehash, check=False)  # fmt: skip
    if opts.output == "json":
        emit_json(report.as_dict())
    else:
        emit_text("\n".join(report.lines()))
    if not report.ok:
        sys.exit(1)


@model.command("sync")
@inventory_arg
@click.option("--from", "source", type=click.Choice(["head", "local"]), default="head",
              show_default=True, help="Copy from the head host, or from a directory here.")
@click.option("--dir", "local_dir", type=click.Path(exists=True, file_okay=False),
              help="With --from local: the model directory on this machine.")
@click.pass_obj
def model_sync(opts: Options, inventory_file: str | None, source: str,
               local_dir: str | None) -> None:
    """Copy the model to hosts that lack it or differ (resumable), then verify again."""
    from orchestrate import modelcheck
    from orchestrate.session import Session

    if source == "local" and not local_dir:
        raise UsageError("--from local needs --dir DIR (the model directory on this machine)")
    plan = _plan(opts, inventory_file)
    with Session(plan, opts.console()) as s:
        report = modelcheck.sync(s, source,  # type: ignore[arg-type]
                                 Path(local_dir) if local_dir else None)  # fmt: skip
    if opts.output == "json":
        emit_json(report.as_dict())
    else:
        emit_text("\n".join(report.lines()))


@cli.command()
@inventory_arg
@click.option("--base", help="Base image for the vllm-cpu image build.")
@click.pass_obj
def demo(opts: Options, inventory_file: str | None, base: str | None) -> None:
    """No GPUs? Serve a tiny model with real vLLM on this machine: two CPU nodes, PP=2.

    Builds the vllm-cpu image (cached), writes the tiny model to the inventory's model path,
    then runs `up` on inventory/local-cpu.yaml (two containers with their own addresses on a
    Docker bridge, vLLM's mp backend) and its checks. `orchestrate down INVENTORY` cleans up.
    """
    from orchestrate import apply, images

    path = inventory_file or opts.inventory or DEMO_INVENTORY
    plan, replan = _load_for_hosts(path)
    console = opts.console()
    try:
        images.build_image("vllm-cpu", tag=plan.image, base=base,
                           cache_dir=_cache_dir(),
                           on_event=BuildLog(console))  # fmt: skip
        console("model", None, f"tiny model at {plan.model_host_path}")
        images.make_tiny_model(Path(plan.model_host_path), image=plan.image)
    except images.ImageBuildError as exc:
        raise _build_error(exc) from None
    _remember(path)
    report = apply.up(plan, console, replan=replan)
    emit_text(f"ready: {report.endpoint} serves {plan.served_name!r}; try:\n"
              f"  curl -s {report.endpoint}/v1/chat/completions -H 'Content-Type: application/json' "
              f"-d '{{\"model\":\"{plan.served_name}\",\"messages\":[{{\"role\":\"user\","
              f"\"content\":\"Say hello.\"}}]}}'\n"
              f"  orchestrate status {path}; orchestrate down {path}")


# ---------------------------------------------------------------- entry point


def _debug_log() -> Path:
    from orchestrate.paths import cache_dir

    return cache_dir() / "debug.log"


RUN_LOGS_KEPT = 30


def _run_log(command: str | None) -> Path:
    """A new log file for this command's whole output; the oldest beyond RUN_LOGS_KEPT go."""
    logs = _debug_log().with_name("logs")
    with contextlib.suppress(OSError):
        old = sorted(logs.glob("*.log"), key=lambda p: p.stat().st_mtime)
        for path in old[: max(0, len(old) - RUN_LOGS_KEPT + 1)]:
            path.unlink(missing_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return logs / f"{command or 'orchestrate'}-{stamp}-{os.getpid()}.log"


def _route_library_logs() -> None:
    """Libraries log to stderr through logging's last resort handler: paramiko prints a whole
    traceback when a frozen host never sends its SSH banner. People get our one-line errors;
    library records go to a log file (or nowhere when it cannot be written)."""
    import logging

    root = logging.getLogger()
    if root.handlers:
        return
    path = _debug_log().with_name("orchestrate.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    except OSError:
        handler = logging.NullHandler()
    handler.setLevel(logging.WARNING)
    root.addHandler(handler)


def main(argv: list[str] | None = None) -> None:
    from orchestrate.console import Console, close_all

    console = Console()
    try:
        _main(argv, console)
    finally:
        close_all()


def _main(argv: list[str] | None, console: Console) -> None:
    from orchestrate.console import errors_to

    try:
        cli.main(args=argv, prog_name="orchestrate", standalone_mode=False)
    except OrchestrateError as exc:
        errors_to(console).error(exc.lines())
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):  # click turns Ctrl-C in a command into Abort
        errors_to(console).error(["interrupted: `orchestrate up` finishes the job, `orchestrate down` "
                       "cleans up"])  # fmt: skip
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception:  # a bug: people get one line, the traceback goes to the debug log
        import traceback

        path = _debug_log()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(traceback.format_exc(), encoding="utf-8")
        except OSError:
            pass
        errors_to(console).error([f"internal error ({sys.exc_info()[0].__name__}); this is a bug in "  # type: ignore[union-attr]
                       f"orchestrate. Details: {path}"])
        sys.exit(EXIT_INTERNAL)
