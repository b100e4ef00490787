"""Commands over the hosts of a deployment: up, preflight, down, status, watch, logs, check."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from orchestrate.cli.console import emit_json, emit_table, emit_text
from orchestrate.cli.options import (
    Options,
    fleet_of,
    inventory_arg,
    load_fleet,
    load_for_hosts,
    load_plan,
    plan_of,
    remember,
    resolve_inventory,
)
from orchestrate.errors import OrchestrateError, UsageError
from orchestrate.render import plan_data, plan_text

if TYPE_CHECKING:
    from orchestrate.core.fleet import Fleet
    from orchestrate.core.plan import Plan
    from orchestrate.ops.preflight import Replan


@click.command()
@inventory_arg
@click.option("--dry-run", is_flag=True, help="Print what would run on each host; touch nothing.")
@click.option("--no-checks", is_flag=True, help="Skip the chat/stream checks at the end.")
@click.option(
    "--skip-check",
    "skip_checks",
    multiple=True,
    metavar="CHECK",
    help="Skip one preflight check (model, model-hash, shm, nic, ports, gpus, "
    "reach-head, reach-peers); repeatable.",
)
@click.pass_obj
def up(
    opts: Options, inventory_file: str | None, dry_run: bool, no_checks: bool, skip_checks: tuple[str, ...]
) -> None:
    """Preflight, start head and workers, wait for Ray and vLLM, prove it serves."""
    path = resolve_inventory(inventory_file, opts.inventory)
    if (fleet := load_fleet(path)) is not None:
        _up_fleet(opts, path, fleet, dry_run, no_checks, skip_checks)
        return
    plan, replan = load_for_hosts(path)
    if dry_run:
        emit_json(plan_data(plan)) if opts.output == "json" else emit_text(plan_text(plan))
        return
    from orchestrate.ops import apply

    remember(path)
    report = apply.up(plan, opts.console(), run_checks=not no_checks, skip_checks=skip_checks, replan=replan)
    if opts.output == "json":
        emit_json(report.as_dict())
        return
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in report.phases.items())
    emit_text(
        f"ready: {report.endpoint}  model {plan.served_name}  {report.nodes} nodes, "
        f"{report.gpus} GPUs, backend {report.backend}\nphases: {phases}"
    )


def _up_fleet(
    opts: Options,
    path: str,
    loaded: tuple[Fleet, list[Replan]],
    dry_run: bool,
    no_checks: bool,
    skip_checks: tuple[str, ...],
) -> None:
    from orchestrate.ops import fleet as fleet_ops
    from orchestrate.render import fleet_data, fleet_text

    fleet, replans = loaded
    if dry_run:
        emit_json(fleet_data(fleet)) if opts.output == "json" else emit_text(fleet_text(fleet))
        return
    remember(path)
    report = fleet_ops.up(
        fleet, opts.console(), run_checks=not no_checks, skip_checks=skip_checks, replans=replans
    )
    if opts.output == "json":
        emit_json(report.as_dict())
        return
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in report.phases.items())
    emit_text(
        f"ready: {report.endpoint}  model {fleet.replicas[0].served_name}  {len(fleet.replicas)} "
        f"replicas behind the router ({fleet.policy}), {report.nodes} nodes, {report.gpus} GPUs\n"
        f"phases: {phases}"
    )


@click.command("preflight")
@inventory_arg
@click.option(
    "--skip",
    "skip",
    multiple=True,
    metavar="CHECK",
    help="Skip a check (repeatable): "
    + ", ".join(
        [
            "docker",
            "gpus",
            "nic",
            "route",
            "hostname",
            "ports",
            "reach-head",
            "reach-peers",
            "model",
            "shm",
            "image",
            "fit",
            "model-hash",
        ]
    ),
)
@click.option(
    "--collective",
    is_flag=True,
    help="Also run an all-reduce across all hosts in the image (Gloo on CPU, NCCL on "
    "GPUs) and report the bus bandwidth.",
)
@click.pass_obj
def preflight_cmd(opts: Options, inventory_file: str | None, skip: tuple[str, ...], collective: bool) -> None:
    """Check every host before anything starts: one table, the fix for each failure."""
    from orchestrate.host.session import Session
    from orchestrate.ops import preflight

    path = resolve_inventory(inventory_file, opts.inventory)
    loaded = load_fleet(path)
    targets = list(zip(loaded[0].replicas, loaded[1], strict=True)) if loaded else [load_for_hosts(path)]
    rows = []
    for plan, replan in targets:  # replicas one after another: one table
        with Session(plan, opts.console() if opts.verbose else _quiet) as s:
            s.plan = preflight.plan_for_image(s, replan)  # as `up` will plan it for this image
            got = preflight.run(s, skip=skip)
            if collective and not preflight.failures(got):
                from orchestrate.ops import collective as coll

                got += coll.run(s)
        rows += [r if not loaded else preflight.tagged(r, plan.name) for r in got]
    if opts.output == "json":
        emit_json(preflight.table_dict(rows))
    else:
        emit_table(
            f"preflight {loaded[0].name if loaded else targets[0][0].name}",
            ["host", "check", "status", "message", "fix"],
            [(r.host, r.check, r.status, r.message, r.fix) for r in rows],
        )
    if preflight.failures(rows):
        sys.exit(1)


def _quiet(phase: str, host: str | None, message: str) -> None:
    pass


@click.command()
@inventory_arg
@click.pass_obj
def down(opts: Options, inventory_file: str | None) -> None:
    """Stop and remove the deployment's containers (workers, then head). Idempotent."""
    from orchestrate.ops import apply
    from orchestrate.ops import fleet as fleet_ops

    fleet = fleet_of(opts, inventory_file)
    if fleet is not None:
        removed = fleet_ops.down(fleet, opts.console())
    else:
        removed = apply.down(plan_of(opts, inventory_file), opts.console())
    if opts.output == "json":
        emit_json({"removed": removed})
    else:
        emit_text(f"down: removed {sum(removed.values())} container(s)")


@click.command()
@inventory_arg
@click.pass_obj
def status(opts: Options, inventory_file: str | None) -> None:
    """Per host: container state; Ray nodes and GPUs; vLLM health and key metrics."""
    from orchestrate.ops import apply, observe

    path = resolve_inventory(inventory_file, opts.inventory)
    if (loaded := load_fleet(path)) is not None:
        from orchestrate.ops import fleet as fleet_ops

        data = fleet_ops.status(loaded[0], opts.console(), replans=loaded[1])
        emit_json(data) if opts.output == "json" else _fleet_status_text(data)
    else:
        plan, replan = load_for_hosts(path)
        api_key = apply.resolve_secrets(plan).get("VLLM_API_KEY") if plan.api_key_env else None
        data = observe.status(plan, opts.console(), api_key, replan=replan)
        emit_json(data) if opts.output == "json" else _status_text(data)
    if not data["healthy"]:
        sys.exit(1)


def _fleet_status_text(data: dict[str, Any]) -> None:
    """Each replica as `status` shows one, then the router: its container and, per replica, the
    router's view (in routing or not, requests it sent there)."""
    for replica in data["replicas"]:
        _status_text(replica)
        emit_text("")
    r = data["router"]
    host = (r.get("hosts") or [{}])[0]
    rows = [
        (url, "in routing" if w.get("health") == 1 else "OUT of routing", f"{w.get('requests', 0):g}")
        for url, w in sorted((r.get("workers") or {}).items())
    ]
    emit_table(
        f"router {data['endpoint']} ({r['policy']}): container {host.get('state', '?')}, "
        f"{r.get('healthy_workers', 0)}/{len(data['replicas'])} replicas ready"
        + (f" ({r['reason']})" if r.get("reason") else ""),
        ["replica", "router says", "requests routed"],
        rows,
    )
    emit_text(f"deployment {data['deployment']}: {'healthy' if data['healthy'] else 'NOT healthy'}")


def _status_text(data: dict[str, Any]) -> None:
    rows = [
        (
            h["role"],
            h["host"],
            h["address"],
            h["state"],
            h.get("spec", ""),
            str(h.get("restarts", "")),
            (h.get("supervisor") or {}).get("phase", ""),
            _note(h),
        )
        for h in data["hosts"]
    ]
    emit_table(
        f"deployment {data['deployment']}",
        ["node", "host", "address", "state", "spec", "restarts", "watchdog", "note"],
        rows,
    )
    for h in data["hosts"]:  # the last failure of each member, with its root-cause line
        last = (h.get("supervisor") or {}).get("last_failure")
        if last:
            cause = f": {last['cause']}" if last.get("cause") else ""
            emit_text(f"{h['role']}: last failure (exit {last.get('exit')}) {last.get('reason')}{cause}")
    ray = data.get("ray")
    if ray and "error" not in ray:
        missing = f"; no alive raylet on {', '.join(ray['missing'])}" if ray.get("missing") else ""
        emit_text(
            f"ray: {ray['nodes_alive']}/{ray['nodes_expected']} nodes alive, "
            f"{ray['gpus']:g}/{ray['gpus_expected']} GPUs{missing}"
        )
    v = data["vllm"]
    if not v.get("endpoint"):  # serve.start false: a Ray cluster only
        emit_text(f"deployment: {'healthy' if data['healthy'] else 'NOT healthy'} (Ray cluster only)")
        return
    line = f"vllm: {'healthy' if v['healthy'] else 'NOT healthy'} at {v['endpoint']}"
    if v.get("models"):
        line += f", models {', '.join(v['models'])}"
    if v.get("metrics"):
        m = v["metrics"]
        line += (
            f"; running {m.get('requests_running', 0):g}, waiting "
            f"{m.get('requests_waiting', 0):g}, KV cache {100 * m.get('kv_cache_usage', 0):.1f}%"
        )
    if v.get("reason"):
        line += f" ({v['reason']})"
    emit_text(line)


@click.command()
@inventory_arg
@click.option(
    "--interval",
    type=click.FloatRange(0.5, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between samples.",
)
@click.option(
    "--count", type=click.IntRange(0), default=0, help="Stop after this many samples (0: until Ctrl-C)."
)
@click.pass_obj
def watch(opts: Options, inventory_file: str | None, interval: float, count: int) -> None:
    """A live view: nodes, ranks, watchdogs, health, requests, tokens/s, restarts, and events as
    they happen (plain lines when not a terminal; --output json: one JSON event per line). It only
    observes: the deployment heals itself without it."""
    import itertools

    from orchestrate.ops import apply, observe

    path = resolve_inventory(inventory_file, opts.inventory)
    if load_fleet(path) is not None:
        raise UsageError(
            "watch follows one group of hosts; it does not follow replicas behind a router yet",
            hint="orchestrate status (every replica and the router); orchestrate logs router --follow",
        )
    plan, _ = load_for_hosts(path)
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
                emit_json(
                    {
                        "t": data["t"],
                        "event": "sample",
                        "healthy": data["healthy"],
                        "tokens_per_s": rate,
                        "status": data,
                    }
                )
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
    title = (
        f"{data['deployment']}: {'healthy' if data['healthy'] else 'NOT healthy'}; running "
        f"{m.get('requests_running', 0):g}, waiting {m.get('requests_waiting', 0):g}"
        + (f", {rate:.1f} tokens/s" if rate is not None else "")
    )
    table = Table(title=title)
    for col in ("node", "host", "state", "restarts", "watchdog", "note"):
        table.add_column(col)
    for h in data["hosts"]:
        table.add_row(
            h["role"],
            h["host"],
            h["state"],
            str(h.get("restarts", "")),
            (h.get("supervisor") or {}).get("phase", ""),
            _note(h),
        )
    return table


def _note(h: dict[str, Any]) -> str:
    from orchestrate.ops.observe import STATE_STALE_S

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
        plan = load_plan(resolve_inventory(ctx.params.get("inventory_file"), option))
    except OrchestrateError:
        return []
    items = [
        CompletionItem(name, help=f"{node.alias} on {node.host} ({node.address})")
        for node in plan.nodes
        for name in dict.fromkeys((node.alias, node.host))
    ]
    return [item for item in items if item.value.startswith(incomplete)]


@click.command()
@click.argument("node", shell_complete=_complete_node)
@inventory_arg
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.option("--tail", type=click.IntRange(min=0), help="Only the last N lines.")
@click.option("--since", metavar="DURATION", help="Only output newer than this (90s, 10m, 2h).")
@click.pass_obj
def logs(
    opts: Options, node: str, inventory_file: str | None, follow: bool, tail: int | None, since: str | None
) -> None:
    """Container output of NODE (head, worker-N or an inventory host name): Ray and vLLM."""
    from orchestrate.ops import observe

    fleet = fleet_of(opts, inventory_file)
    plan, node = _fleet_node(fleet, node) if fleet is not None else (plan_of(opts, inventory_file), node)
    observe.logs(plan, node, follow=follow, tail=tail, since=since)


def _fleet_node(fleet: Fleet, selector: str) -> tuple[Plan, str]:
    """`router`, `rK` (replica K's head) or `rK:NODE` (head, worker-N or a host name)."""
    if selector == "router":
        return fleet.router, "head"
    replica, _, node = selector.partition(":")
    try:
        return fleet.replica(replica), node or "head"
    except KeyError:
        last = len(fleet.replicas) - 1
        raise UsageError(
            f"no node {selector!r} in {fleet.name} (replicas behind a router)",
            hint=f"router; r0 .. r{last} for a replica's head; rK:NODE for its other nodes (rK:worker-1)",
        ) from None


@click.command()
@inventory_arg
@click.pass_obj
def check(opts: Options, inventory_file: str | None) -> None:
    """Run the post's curl checks: /health, /v1/models, a chat completion and a streamed one."""
    from orchestrate.ops import apply
    from orchestrate.ops import fleet as fleet_ops

    fleet = fleet_of(opts, inventory_file)
    if fleet is not None:
        results = fleet_ops.check(fleet, opts.console())
    else:
        results = apply.check(plan_of(opts, inventory_file), opts.console())
    if opts.output == "json":
        emit_json([r.as_dict() for r in results])


COMMANDS = (up, preflight_cmd, down, status, watch, logs, check)
