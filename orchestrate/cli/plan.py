"""Commands that touch no host: validate, schema, plan, render, firewall, completion (they import
neither paramiko, docker nor httpx)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from orchestrate.cli.console import emit_json, emit_text
from orchestrate.cli.options import (
    Options,
    fleet_of,
    inventory_arg,
    load_fleet,
    load_plan,
    plan_of,
    resolve_inventory,
)
from orchestrate.errors import OrchestrateError, UsageError
from orchestrate.render import fleet_data, fleet_text, plan_data, plan_text, rendered, rendered_fleet

if TYPE_CHECKING:
    from orchestrate.core.fleet import Fleet
    from orchestrate.core.plan import Plan


@click.command()
@inventory_arg
@click.pass_obj
def validate(opts: Options, inventory_file: str | None) -> None:
    """Check an inventory; one line per problem, exit 2 when invalid."""
    path = resolve_inventory(inventory_file, opts.inventory)
    if (loaded := load_fleet(path)) is not None:
        fleet = loaded[0]
        one = fleet.replicas[0]
        if opts.output == "json":
            emit_json(
                {
                    "inventory": path,
                    "valid": True,
                    "world_size": one.world_size,
                    "replicas": len(fleet.replicas),
                }
            )
        else:
            emit_text(
                f"{path}: ok ({len(fleet.replicas)} replicas of TP={one.tensor_parallel} x "
                f"PP={one.pipeline_parallel}, {sum(p.total_gpus for p in fleet.replicas)} GPUs, "
                f"router on {fleet.router.head.host}:{fleet.router_port}, {one.backend})"
            )
        return
    plan = load_plan(path)
    if opts.output == "json":
        emit_json({"inventory": path, "valid": True, "world_size": plan.world_size})
    else:
        emit_text(
            f"{path}: ok ({len(plan.nodes)} hosts, {plan.total_gpus} GPUs, "
            f"TP={plan.tensor_parallel} x PP={plan.pipeline_parallel}, {plan.backend})"
        )


@click.command()
def schema() -> None:
    """Print the inventory's JSON Schema."""
    from orchestrate.core.inventory import json_schema

    emit_json(json_schema())


@click.command("plan")
@inventory_arg
@click.option(
    "--model-config",
    type=click.Path(exists=True, dir_okay=False),
    help="The model's config.json here: add fit planning (weights, KV cache, TP/PP).",
)
@click.option(
    "--compare",
    is_flag=True,
    help="With --model-config: the ways of using all the hosts' GPUs side by side (TP x PP, "
    "replicas x TP, DP x TP for MoE models) with their fit numbers.",
)
@click.pass_obj
def plan_cmd(opts: Options, inventory_file: str | None, model_config: str | None, compare: bool) -> None:
    """Print what would run on each host (secrets are shown as ${VAR} references)."""
    if compare and not model_config:
        raise UsageError("--compare needs --model-config config.json (the model to lay out)")
    fleet = fleet_of(opts, inventory_file)
    if fleet is not None and not model_config:
        if opts.output == "json":
            emit_json(fleet_data(fleet))
        elif opts.target == "docker":
            emit_text(fleet_text(fleet))
        else:
            _render_fleet_to(opts, fleet, None, "deployment")
        return
    plan = fleet.replicas[0] if fleet is not None else plan_of(opts, inventory_file)
    if model_config and compare:
        hosts = len({n.host for p in fleet.replicas for n in p.nodes}) if fleet else len(plan.nodes)
        _print_compare(opts, plan, model_config, hosts, replicated=fleet is not None)
        return
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

    from orchestrate.core import fit
    from orchestrate.ops import preflight

    if not plan.gpu_memory_gib:
        raise OrchestrateError("fit planning needs gpu_memory_gib in the inventory")
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        report = preflight.fit_report(plan, config, plan.gpu_memory_gib)
        shape = fit.ModelShape.from_config(config, name=plan.served_name)
        best = fit.suggest(
            shape, plan.head.gpus, plan.gpu_memory_gib, len(plan.nodes), plan.max_model_len or 4096
        )
    except (ValueError, OSError) as exc:
        raise OrchestrateError(f"{config_path}: {exc}") from None
    if opts.output == "json":
        emit_json({"fit": report.as_dict(), "suggested": {"tp": best.tp, "pp": best.pp}})
        return
    emit_text("\n".join([*report.lines(), f"suggested: TP {best.tp} x PP {best.pp}"]))


def _print_compare(opts: Options, plan: Plan, config_path: str, n_hosts: int, replicated: bool) -> None:
    """`plan --model-config --compare`: fit.compare over all the inventory's GPUs. The inventory's
    own layout is checked by preflight.fit_report, the function behind `plan --model-config` and the
    preflight fit check, and every other row with the same memory, utilization and max_model_len."""
    import json

    from orchestrate.core import fit, vllm_caps
    from orchestrate.ops import preflight

    if not plan.gpu_memory_gib:
        raise OrchestrateError("fit planning needs gpu_memory_gib in the inventory")
    ethernet = dict(plan.env).get("NCCL_IB_DISABLE") == "1"
    try:
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
        report = preflight.fit_report(plan, config, plan.gpu_memory_gib)
        rows = fit.compare(
            report.shape,
            n_hosts=n_hosts,
            gpus_per_host=plan.head.gpus,
            gpu_memory_gib=report.gpu_memory_gib,
            gpu_memory_utilization=report.gpu_memory_utilization,
            max_model_len=report.max_model_len,
            current=None if replicated else (report.tp, report.pp),
            interconnect="ethernet" if ethernet else "the network",
        )
        best = fit.suggest(
            report.shape,
            plan.head.gpus,
            plan.gpu_memory_gib,
            n_hosts,
            report.max_model_len,
            gpu_memory_utilization=report.gpu_memory_utilization,
        )
    except (ValueError, OSError) as exc:
        raise OrchestrateError(f"{config_path}: {exc}") from None
    if opts.output == "json":
        emit_json(
            {
                "model": report.shape.name,
                "hosts": n_hosts,
                "gpus_per_host": plan.head.gpus,
                "gpu_memory_gib": report.gpu_memory_gib,
                "gpu_memory_utilization": report.gpu_memory_utilization,
                "max_model_len": report.max_model_len,
                "layouts": [row.as_dict() for row in rows],
                "suggested": {"tp": best.tp, "pp": best.pp},
            }
        )
        return
    lines = fit.comparison_lines(rows)
    gpus = f"{best.gpus} GPU" + ("s" if best.gpus > 1 else "")
    lines.append(f"fewest GPUs that fit: TP {best.tp} x PP {best.pp} ({gpus})")
    if report.shape.is_moe:
        since = vllm_caps.versions_with("--data-parallel-size-local")
        lines.append(
            "DP x TP is vllm serve --data-parallel-size D --tensor-parallel-size T; across hosts it needs "
            f"--data-parallel-size-local (vLLM {since[0]} and later in orchestrate's flag tables)"
            if since
            else "DP x TP is vllm serve --data-parallel-size D --tensor-parallel-size T"
        )
    emit_text("\n".join(lines))


def _render_fleet_to(opts: Options, fleet: Fleet, out_dir: str | None, flavor: str) -> None:
    if opts.target == "k8s":
        from orchestrate.render import k8s as k8s_r

        for line in dict.fromkeys(x for p in fleet.replicas for x in k8s_r.node_warnings(p)):
            click.echo(f"warning: {line}", err=True)
    _write(opts, rendered_fleet(opts.target, fleet, flavor), out_dir)


def _render_to(opts: Options, plan: Plan, out_dir: str | None, flavor: str) -> None:
    files = rendered(opts.target, plan, flavor)
    if opts.target == "k8s":
        from orchestrate.render import k8s as k8s_r

        for line in k8s_r.node_warnings(plan):
            click.echo(f"warning: {line}", err=True)
    _write(opts, files, out_dir)


def _write(opts: Options, files: dict[str, str], out_dir: str | None) -> None:
    if out_dir is None:
        emit_text(
            "---\n".join(files.values())
            if opts.target == "k8s"
            else "\n".join(f"# ---- {name}\n{text}" for name, text in files.items())
        )
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (Path(out_dir) / name).write_text(text, encoding="utf-8")
        click.echo(f"wrote {Path(out_dir) / name}", err=True)


@click.command()
@inventory_arg
@click.option("-o", "--out", "out_dir", metavar="DIR", help="Write files here instead of stdout.")
@click.option(
    "--flavor",
    type=click.Choice(["deployment", "lws"]),
    default="deployment",
    show_default=True,
    help="k8s only: plain Deployments or a LeaderWorkerSet.",
)
@click.pass_obj
def render(opts: Options, inventory_file: str | None, out_dir: str | None, flavor: str) -> None:
    """Render the plan for --target (k8s manifests, compose files, docker commands)."""
    fleet = fleet_of(opts, inventory_file)
    if fleet is not None:
        _render_fleet_to(opts, fleet, out_dir, flavor)
        return
    _render_to(opts, plan_of(opts, inventory_file), out_dir, flavor)


@click.command()
@inventory_arg
@click.option(
    "--format",
    "formats",
    multiple=True,
    type=click.Choice(["firewalld", "iptables", "nftables", "ufw"]),
    help="Only these rule formats (repeatable; default: all four).",
)
@click.option("--host", "host", metavar="HOST", help="Only this host (name or head/worker-N).")
@click.pass_obj
def firewall(opts: Options, inventory_file: str | None, formats: tuple[str, ...], host: str | None) -> None:
    """Print, per host, the firewall rules the cluster needs between its hosts."""
    from orchestrate.core import ports

    chosen = tuple(f for f in ports.FORMATS if f in formats) or ports.FORMATS
    fleet = fleet_of(opts, inventory_file)
    if fleet is not None:
        every = {n.host for p in fleet.replicas for n in p.nodes}
        if host is not None and host not in every:
            raise UsageError(f"--host {host}: no such host in {fleet.name} ({', '.join(sorted(every))})")
        if opts.output == "json":
            emit_json(
                {
                    "deployment": fleet.name,
                    "replicas": [ports.rules_data(p) for p in fleet.replicas],
                    "router": [vars(n) | {"ports": n.ports} for n in ports.fleet_needs(fleet)],
                }
            )
            return
        emit_text(ports.fleet_rules_text(fleet, chosen, host).rstrip("\n"))
        return
    plan = plan_of(opts, inventory_file)
    if host is not None and not any(host in (n.host, n.alias) for n in plan.nodes):
        raise UsageError(
            f"--host {host}: no such host in {plan.name} ({', '.join(n.host for n in plan.nodes)})"
        )
    if opts.output == "json":
        emit_json(ports.rules_data(plan))
        return
    emit_text(ports.rules_text(plan, chosen, host).rstrip("\n"))


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(orchestrate completion bash)"."""
    from click.shell_completion import get_completion_class

    script_class = get_completion_class(shell)
    assert script_class is not None  # click ships all three
    root = click.get_current_context().find_root().command
    emit_text(script_class(root, {}, "orchestrate", "_ORCHESTRATE_COMPLETE").source())


COMMANDS = (validate, schema, plan_cmd, render, firewall, completion)
