"""Renderers: a Plan in, data out (Kubernetes objects, compose files, Docker SDK kwargs, the plan
as text), and `rendered`, the files of one target."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrate.core.fleet import Fleet
    from orchestrate.core.plan import Plan

__all__ = ["fleet_data", "fleet_text", "plan_data", "plan_text", "rendered", "rendered_fleet"]


def plan_data(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-able data (`orchestrate plan --output json`)."""
    import dataclasses

    data = dataclasses.asdict(plan)
    data["endpoint"] = plan.endpoint
    data["world_size"] = plan.world_size
    return data


def plan_text(plan: Plan) -> str:
    """The plan for people: per host, the `docker run` it amounts to (`orchestrate plan`)."""
    import shlex

    from orchestrate.render import docker as docker_r

    lines = [
        f"deployment {plan.name}: {plan.backend} backend, TP={plan.tensor_parallel} x "
        f"PP={plan.pipeline_parallel} = {plan.world_size} GPUs on {len(plan.nodes)} hosts",
        f"backend {plan.backend}: {plan.backend_reason}",
        f"endpoint {plan.endpoint}  model {plan.model_host_path} as {plan.served_name}",
        "",
    ]
    for node in plan.nodes:
        where = "this machine" if node.ssh.local else f"{node.ssh.user}@{node.ssh.host}:{node.ssh.port}"
        lines.append(f"# {node.alias} on {node.host} ({where}), {node.gpus} GPUs, nic {node.nic}")
        lines.append(shlex.join(docker_r.describe(node.container)))
        lines.append("")
    if plan.backend == "ray":
        lines.append("# the head runs, once Ray has every node and GPU:")
        lines.append(shlex.join(plan.serve_argv))
    return "\n".join(lines)


def rendered(target: str, plan: Plan, flavor: str) -> dict[str, str]:
    """{file name: text} for a target: k8s manifests, compose files, or a shell script of
    `docker run` lines (docker)."""
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
            note = (
                f"# A TEMPLATE: replace every {k8s_r.SECRET_PLACEHOLDER} with the real value "
                "before applying (or create the Secret with kubectl, as its annotation says).\n"
                "# The pods do not start until this Secret exists.\n"
            )
            files[f"{plan.name}-secret.yaml"] = dump_all([secret], header + note)
        return files
    if target == "compose":
        files = {
            f"{host}.yaml": dump(doc, header + f"# docker compose -f {host}.yaml up -d  (on host {host})\n")
            for host, doc in compose_r.render(plan).items()
        }
        if any(n.container.supervisor for n in plan.nodes):
            from orchestrate.agents import bundle

            files[compose_r.SUPERVISOR_FILE] = bundle("supervisor")
        return files
    return {f"{plan.name}.sh": "#!/bin/sh\n" + plan_text(plan) + "\n"}


def fleet_data(fleet: Fleet) -> dict[str, Any]:
    """Replicas and router as JSON-able data (`orchestrate plan --output json` with replicas)."""
    from orchestrate.render import fleet as fleet_r

    return fleet_r.data(fleet, plan_data)


def fleet_text(fleet: Fleet) -> str:
    from orchestrate.render import fleet as fleet_r

    return fleet_r.text(fleet, plan_text)


def rendered_fleet(target: str, fleet: Fleet, flavor: str) -> dict[str, str]:
    """`rendered` for replicas behind a router: one k8s file (every replica and the router),
    one compose file per host (the router in its host's file), or the plan text as a script."""
    from orchestrate.render import compose as compose_r
    from orchestrate.render import fleet as fleet_r
    from orchestrate.render.yamlio import dump, dump_all

    header = f"# Rendered by orchestrate from deployment {fleet.name!r}. Do not edit by hand.\n"
    if target == "k8s":
        suffix = "-lws" if flavor == "lws" else ""
        docs = fleet_r.k8s(fleet, "lws" if flavor == "lws" else "deployment")
        files = {f"{fleet.name}{suffix}.yaml": dump_all(docs, header)}
        secrets = fleet_r.k8s_secrets(fleet)
        if secrets:
            files[f"{fleet.name}-secrets.yaml"] = dump_all(
                secrets, header + "# TEMPLATES: replace every placeholder before applying.\n"
            )
        return files
    if target == "compose":
        files = {
            f"{host}.yaml": dump(doc, header + f"# docker compose -f {host}.yaml up -d  (on host {host})\n")
            for host, doc in fleet_r.compose(fleet).items()
        }
        if any(n.container.supervisor for p in fleet.replicas for n in p.nodes):
            from orchestrate.agents import bundle

            files[compose_r.SUPERVISOR_FILE] = bundle("supervisor")
        return files
    return {f"{fleet.name}.sh": "#!/bin/sh\n" + fleet_text(fleet) + "\n"}
