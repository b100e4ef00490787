"""A small model of how rendered manifests come up under Kubernetes' rules, driven by the YAML itself.

It reads the documents the renderer writes (Namespace, ConfigMap, Secret, Service, Deployment,
LeaderWorkerSet) and plays, one simulated second at a time:

- scheduling: a pod stays Pending until a node matches its nodeSelector, required nodeAffinity
  (In/NotIn/Exists), required podAntiAffinity (per kubernetes.io/hostname) and has the GPUs free;
- images: a node pulls the image once (`pull_s`); a pull whose last pod is deleted is lost;
- kubelet: env from envFrom ConfigMaps, then `env` in order ($(VAR) expands only variables defined
  earlier; in command/args, any), fieldRef status.podIP, secretKeyRef (missing Secret or key: the
  container never starts); init containers first, in order, each must exit 0; failed containers
  restart with CrashLoopBackOff (10 s doubling to 300 s);
- probes: startup (kill after failureThreshold misses), readiness (Ready only after a pass),
  liveness; a probe misses when nothing listens or /health answers slower than timeoutSeconds;
- DNS and Services: hostNetwork pods resolve cluster names only with ClusterFirstWithHostNet; a
  ClusterIP Service routes to Ready endpoints, a headless one resolves to them, both include
  not-ready pods only with publishNotReadyAddresses; pod records `<hostname>.<subdomain>.<ns>`;
- LeaderWorkerSet: leader `<lws>-0`, workers `<lws>-0-<i>`, its own headless Service `<lws>`
  (publishNotReadyAddresses), LWS_LEADER_ADDRESS / LWS_GROUP_SIZE / LWS_WORKER_INDEX injected at the
  front of every container's env, startupPolicy LeaderCreated/LeaderReady, restartPolicy
  RecreateGroupOnPodRestart / RecreateGroupAfterStart / None.

The containers' behaviour comes from their own commands: the wait loop's `/dev/tcp/$HOST/$PORT`
target and `${TIMEOUT%.*}` deadline, `ray start --head` (GCS on --port, at --node-ip-address, which
must be the pod's IP) and its gate on ORCH_EXPECTED_* with its deadline variable, `ray start
--address=...` joining the GCS it reaches, and `vllm serve` with --nnodes/--node-rank/--master-addr
(rank 0 binds the master address, so it must be its own IP; headless ranks connect to it, 300 s of
retries) and --port (/health after `load_s`), and the supervisor (`python3
/opt/orchestrate/supervisor.py CMD...`, ORCH_SUP_*): the head's listens on the watchdog port and
serves /livez, workers start CMD once they reach it, either side exits 70 when its peer is gone
for peer_timeout (or came back as a new life), the head exits 71 when its engine has hung for
stall_after. A hung engine (Scenario.hang_at) still answers /health, and a group with one is not
serving: the run needs every pod Ready and no hung engine. A command it does not recognise fails
the run.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
LWS_NAME = "leaderworkerset.sigs.k8s.io/name"


@dataclass
class Node:
    name: str  # its kubernetes.io/hostname label
    ip: str
    gpus: int = 8
    pull_s: int = 0  # seconds to pull an image it does not have
    labels: dict[str, str] = field(default_factory=dict)
    cached: set[str] = field(default_factory=set)
    pulling: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = {"kubernetes.io/hostname": self.name, **self.labels}


@dataclass
class Scenario:
    load_s: int = 600  # vLLM loading weights and starting its engine
    health_latency_pp: float = 5.0  # /health answer time with PP > 1 (served by the engine process)
    health_latency: float = 0.1
    ray_start_s: int = 5
    mp_connect_s: int = 300  # a headless rank's retries to reach the master
    horizon_s: int = 4 * 3600
    stable_s: int = 900  # all Ready must hold this long
    hang_at: int | None = None  # from then on every engine started before it stops making progress


class Exit(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code, self.why = code, why


# ---------------------------------------------------------------- processes


class Proc:
    def __init__(self, sim: Sim, pod: Pod, env: dict[str, str], t: int) -> None:
        self.sim, self.pod, self.env, self.t0 = sim, pod, env, t
        self.listens: list[int] = []
        self.http_port: int | None = None
        self.pp = 1

    def step(self, t: int) -> None:  # raises Exit
        raise NotImplementedError

    def listen(self, ip: str, port: int) -> None:
        if ip != self.pod.ip:
            raise Exit(1, f"cannot bind {ip}:{port}: not an address of this pod ({self.pod.ip})")
        if (ip, port) in self.sim.listeners:
            raise Exit(1, f"{ip}:{port} already in use")
        self.sim.listeners[(ip, port)] = self
        self.listens.append(port)

    def stop(self) -> None:
        for port in self.listens:
            self.sim.listeners.pop((self.pod.ip, port), None)
        self.listens = []


def _shell_var(script: str, pattern: str) -> str:
    m = re.search(pattern, script)
    if not m:
        raise Exit(1, f"sim: {pattern!r} not in the script")
    return m.group(1)


class WaitTCP(Proc):
    """`until (exec 3<>/dev/tcp/$HOST/$PORT)`, with a deadline of `${TIMEOUT%.*}` seconds."""

    def __init__(self, sim: Sim, pod: Pod, env: dict[str, str], t: int, script: str) -> None:
        super().__init__(sim, pod, env, t)
        host_var, port_var = re.findall(r"/dev/tcp/\$(\w+)/\$(\w+)", script)[0]
        self.host, self.port = env.get(host_var, ""), int(env.get(port_var, "0"))
        timeout_var = _shell_var(script, r"\$\{(\w+)%\.\*\}")
        self.deadline = t + int(float(env[timeout_var]))

    def reached(self, t: int) -> Proc | None:
        target = self.sim.connect(self.pod, self.host, self.port)
        if target is None and t >= self.deadline:
            raise Exit(1, f"{self.host}:{self.port} not reachable before the deadline")
        return target

    def step(self, t: int) -> None:
        if self.reached(t) is not None:
            raise Exit(0, "reached")


class RayHead(Proc):
    def __init__(
        self, sim: Sim, pod: Pod, env: dict[str, str], t: int, script: str, serve: list[str]
    ) -> None:
        super().__init__(sim, pod, env, t)
        self.port = int(env[_shell_var(script, r'--port="\$(\w+)"')])
        self.ip = env[_shell_var(script, r'--node-ip-address="\$(\w+)"')]
        self.gate = "ORCH_EXPECTED_NODES" in script
        gate_deadline = r'deadline = time\.monotonic\(\) \+ float\(os\.environ\.get\("(\w+)"'
        timeout_var = _shell_var(script, gate_deadline) if self.gate else ""
        self.deadline = t + int(float(env.get(timeout_var, "300"))) if self.gate else 0
        self.serve = serve
        self.members: dict[Proc, str] = {}
        self.started = False
        self.child: Proc | None = None

    def step(self, t: int) -> None:
        if not self.started:
            if t - self.t0 < self.sim.scenario.ray_start_s:
                return
            self.listen(self.ip, self.port)
            self.started = True
            self.members[self] = self.ip
        if self.child is not None:
            self.child.step(t)
            return
        if not self.serve:
            return  # cluster only
        alive = {p: ip for p, ip in self.members.items() if p is self or p.pod.alive(p)}
        self.members = alive
        want_nodes = int(self.env["ORCH_EXPECTED_NODES"])
        want_ips = set(self.env.get("ORCH_EXPECTED_IPS", "").split(",")) - {""}
        if len(alive) >= want_nodes and want_ips <= set(alive.values()):
            self.child = Vllm(self.sim, self.pod, self.env, t, self.serve)
            self.child.listens = self.listens
            return
        if t >= self.deadline:
            raise Exit(3, f"ray gate timed out: {len(alive)}/{want_nodes} nodes")

    @property
    def http(self) -> int | None:
        return self.child.http_port if isinstance(self.child, Vllm) else None


class RayWorker(WaitTCP):
    def __init__(self, sim: Sim, pod: Pod, env: dict[str, str], t: int, script: str) -> None:
        super().__init__(sim, pod, env, t, script)
        host_var, port_var = re.findall(r'--address="\$(\w+):\$(\w+)"', script)[0]
        self.gcs_host, self.gcs_port = env[host_var], int(env[port_var])
        self.ip = env[_shell_var(script, r'--node-ip-address="\$(\w+)"')]
        self.head: RayHead | None = None

    def step(self, t: int) -> None:
        if self.head is None:
            if self.reached(t) is None:
                return
            target = self.sim.connect(self.pod, self.gcs_host, self.gcs_port)
            if not isinstance(target, RayHead):
                raise Exit(1, f"no GCS at {self.gcs_host}:{self.gcs_port}")
            if self.ip != self.pod.ip:
                raise Exit(1, f"--node-ip-address {self.ip} is not this pod's IP")
            self.head = target
            target.members[self] = self.ip
        elif not self.head.pod.alive(self.head):
            raise Exit(1, "lost the GCS")


class Vllm(Proc):
    def __init__(self, sim: Sim, pod: Pod, env: dict[str, str], t: int, argv: list[str]) -> None:
        super().__init__(sim, pod, env, t)
        flags = _flags(argv)
        self.pp = int(flags.get("--pipeline-parallel-size", "1"))
        self.nnodes = int(flags.get("--nnodes", "1"))
        self.rank = int(flags.get("--node-rank", "0"))  # "$(LWS_WORKER_INDEX)" unexpanded: ValueError
        self.master = (flags.get("--master-addr", ""), int(flags.get("--master-port", "0")))
        self.port = None if "--headless" in flags else int(flags.get("--port", "8000"))
        self.peers: dict[int, Vllm] = {}
        self.master_proc: Vllm | None = None
        self.loaded_at: int | None = None

    def step(self, t: int) -> None:
        s = self.sim.scenario
        if self.nnodes > 1 and self.rank == 0 and not self.listens:
            self.listen(self.master[0], self.master[1])
        if self.nnodes > 1 and self.rank > 0:
            if self.master_proc is None:
                target = self.sim.connect(self.pod, *self.master)
                if isinstance(target, Vllm) and target.rank == 0:
                    if self.rank in target.peers or not 0 < self.rank < self.nnodes:
                        raise Exit(1, f"node rank {self.rank} taken or out of range")
                    target.peers[self.rank] = self
                    self.master_proc = target
                elif t - self.t0 >= s.mp_connect_s:
                    raise Exit(1, f"master {self.master[0]}:{self.master[1]} not reachable")
            elif not self.master_proc.pod.alive(self.master_proc):
                raise Exit(1, "lost the master")
            return
        if self.nnodes > 1:
            self.peers = {r: p for r, p in self.peers.items() if p.pod.alive(p)}
            if len(self.peers) < self.nnodes - 1:
                return
        if self.loaded_at is None:
            self.loaded_at = t + s.load_s
        if t >= self.loaded_at and self.http_port is None and self.port is not None:
            self.listen(self.pod.ip, self.port)
            self.http_port = self.port

    def hung(self, t: int) -> bool:
        hang = self.sim.scenario.hang_at
        return hang is not None and self.t0 < hang <= t


class Supervisor(Proc):
    """orchestrate's PID 1 around CMD (orchestrate/agents/supervisor.py), as its env configures it."""

    def __init__(self, sim: Sim, pod: Pod, env: dict[str, str], t: int, argv: list[str]) -> None:
        super().__init__(sim, pod, env, t)
        self.argv = argv
        self.role, self.rank = env["ORCH_SUP_ROLE"], int(env["ORCH_SUP_RANK"])
        self.port, self.head_addr = int(env["ORCH_SUP_PORT"]), env["ORCH_SUP_HEAD"]
        self.api = int(env["ORCH_SUP_API"])
        self.peer_timeout = float(env["ORCH_SUP_PEER_TIMEOUT"])
        self.stall_after = float(env["ORCH_SUP_STALL_AFTER"])
        self.child: Proc | None = None
        self.members: dict[int, Supervisor] = {}
        self.head: Supervisor | None = None
        self.lost_since: dict[object, int] = {}
        self.hung_since: int | None = None
        self.broken = ""
        if self.role == "head":
            self.listen(pod.ip, self.port)  # binds 0.0.0.0
            self.http_port = self.port  # /livez
            self.child = make_proc(sim, pod, env, argv, t)

    def vllm(self) -> Vllm | None:
        proc = self.child.child if isinstance(self.child, RayHead) else self.child
        return proc if isinstance(proc, Vllm) else None

    def _gone(self, key: object, alive: bool, t: int, what: str) -> None:
        if alive:
            self.lost_since.pop(key, None)
        elif t - self.lost_since.setdefault(key, t) > self.peer_timeout:
            raise Exit(70, f"supervisor: {what} lost for {self.peer_timeout:g} s")

    def step(self, t: int) -> None:
        if self.role == "worker":
            target = self.sim.connect(self.pod, self.head_addr, self.port)
            if self.head is None:
                if not isinstance(target, Supervisor) or target.role != "head":
                    return  # waiting for admission
                if self.rank in target.members:  # a new life of a member: the group re-forms
                    target.broken = f"worker-{self.rank} restarted"
                    return  # not admitted; the next head will admit it
                self.head = target
                target.members[self.rank] = self
                self.child = make_proc(self.sim, self.pod, self.env, self.argv, t)
            elif isinstance(target, Supervisor) and target is not self.head:
                raise Exit(70, "supervisor: the head restarted")
            self._gone("head", self.head.pod.alive(self.head), t, "the head")
        else:
            if self.broken:
                raise Exit(70, f"supervisor: {self.broken}")
            for rank, m in list(self.members.items()):
                self._gone(rank, m.pod.alive(m), t, f"worker-{rank}")
            engine = self.vllm()
            if self.api and engine is not None and engine.http_port and engine.hung(t):
                self.hung_since = t if self.hung_since is None else self.hung_since
                if t - self.hung_since >= self.stall_after:
                    raise Exit(71, "supervisor: engine hang")
        if self.child is not None:
            self.child.step(t)

    def stop(self) -> None:
        if self.child is not None:
            if isinstance(self.child, RayHead) and self.child.child is not None:
                self.child.child.stop()
            self.child.stop()
        super().stop()

    @property
    def http(self) -> int | None:
        return self.http_port


def _flags(argv: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
            out[arg] = nxt
    return out


def make_proc(sim: Sim, pod: Pod, env: dict[str, str], argv: list[str], t: int) -> Proc:
    if argv[:2] == ["bash", "-c"]:
        script, positional = argv[2], argv[4:]
        if "ray start --head" in script:
            return RayHead(sim, pod, env, t, script, positional)
        if "ray start --block" in script:
            return RayWorker(sim, pod, env, t, script)
        if "/dev/tcp/" in script:
            return WaitTCP(sim, pod, env, t, script)
    if argv[:2] == ["vllm", "serve"]:
        return Vllm(sim, pod, env, t, argv)
    if argv[:2] == ["python3", "/opt/orchestrate/supervisor.py"]:
        return Supervisor(sim, pod, env, t, argv[2:])
    raise ValueError(f"sim: unrecognised command {argv[:3]}")


# ---------------------------------------------------------------- pods


@dataclass
class Ctr:
    spec: Obj
    init: bool
    proc: Proc | None = None
    restarts: int = 0
    next_start: int = 0
    started: bool = False  # startup probe passed (or none)
    ready: bool = False
    fails: dict[str, int] = field(default_factory=dict)
    done: bool = False  # init container exited 0
    last_probe: dict[str, int] = field(default_factory=dict)
    why: str = ""


class Pod:
    def __init__(
        self, name: str, ns: str, labels: dict[str, str], spec: Obj, group: str | None, created: int
    ) -> None:
        self.name, self.ns, self.labels, self.spec = name, ns, labels, copy.deepcopy(spec)
        self.group, self.created = group, created
        self.node: Node | None = None
        self.deleted = False
        self.init = [Ctr(c, True) for c in self.spec.get("initContainers", [])]
        self.main = [Ctr(c, False) for c in self.spec["containers"]]
        self.why = "Pending: not scheduled"

    @property
    def ip(self) -> str:
        assert self.node is not None
        return self.node.ip

    @property
    def phase(self) -> str:
        # a pod whose container crashed and waits in CrashLoopBackOff is still Running
        return "Running" if any(c.proc or c.restarts for c in self.main) else "Pending"

    @property
    def ready(self) -> bool:
        return self.node is not None and all(c.ready for c in self.main)

    def alive(self, proc: Proc) -> bool:
        return not self.deleted and any(c.proc is proc or _owns(c.proc, proc) for c in self.main)

    def restarts(self) -> int:
        return sum(c.restarts for c in [*self.init, *self.main])


def _owns(parent: Proc | None, proc: Proc) -> bool:
    if isinstance(parent, (RayHead, Supervisor)) and parent.child is not None:
        return parent.child is proc or _owns(parent.child, proc)
    return False


class Sim:
    def __init__(self, docs: list[Obj], nodes: list[Node], scenario: Scenario | None = None) -> None:
        self.docs = [d for d in docs if d]
        self.nodes = nodes
        self.scenario = scenario or Scenario()
        self.listeners: dict[tuple[str, int], Proc] = {}
        self.pods: list[Pod] = []
        self.services = [d for d in self.docs if d["kind"] == "Service"]
        self.log: list[str] = []
        self.lws = [d for d in self.docs if d["kind"] == "LeaderWorkerSet"]
        for lws in self.lws:  # the LWS controller's own headless Service
            self.services.append(
                {
                    "kind": "Service",
                    "metadata": {"name": lws["metadata"]["name"], "namespace": _ns(lws)},
                    "spec": {
                        "clusterIP": "None",
                        "publishNotReadyAddresses": True,
                        "selector": {LWS_NAME: lws["metadata"]["name"]},
                    },
                }
            )

    # -------------------------------------------------------- objects

    def _find(self, kind: str, ns: str, name: str) -> Obj | None:
        for d in self.docs:
            if d["kind"] == kind and d["metadata"]["name"] == name and _ns(d) == ns:
                return d
        return None

    def _create(self, t: int) -> None:
        if t == 0:
            for d in self.docs:
                if d["kind"] == "Deployment":
                    tpl = d["spec"]["template"]
                    for i in range(d["spec"].get("replicas", 1)):
                        self.pods.append(
                            Pod(
                                f"{d['metadata']['name']}-{i}",
                                _ns(d),
                                tpl["metadata"]["labels"],
                                tpl["spec"],
                                None,
                                t,
                            )
                        )
        for lws in self.lws:
            self._lws_reconcile(lws, t)

    def _lws_reconcile(self, lws: Obj, t: int) -> None:
        name = lws["metadata"]["name"]
        tpl = lws["spec"]["leaderWorkerTemplate"]
        size = tpl.get("size", 1)
        group = [p for p in self.pods if p.group == name and not p.deleted]
        leader = next((p for p in group if p.name == f"{name}-0"), None)
        if leader is None:
            leader = self._lws_pod(lws, tpl["leaderTemplate"], f"{name}-0", 0, size, t)
        policy = lws["spec"].get("startupPolicy", "LeaderCreated")
        if policy == "LeaderReady" and not leader.ready:
            return
        for i in range(1, size):
            if not any(p.name == f"{name}-0-{i}" for p in group):
                self._lws_pod(
                    lws, tpl.get("workerTemplate", tpl["leaderTemplate"]), f"{name}-0-{i}", i, size, t
                )

    def _lws_pod(self, lws: Obj, tpl: Obj, pod_name: str, index: int, size: int, t: int) -> Pod:
        name, ns = lws["metadata"]["name"], _ns(lws)
        labels = {
            **tpl.get("metadata", {}).get("labels", {}),
            LWS_NAME: name,
            "leaderworkerset.sigs.k8s.io/group-index": "0",
            "leaderworkerset.sigs.k8s.io/worker-index": str(index),
        }
        spec = copy.deepcopy(tpl["spec"]) | {"hostname": pod_name, "subdomain": name}
        inject = [
            {"name": "LWS_LEADER_ADDRESS", "value": f"{name}-0.{name}.{ns}"},
            {"name": "LWS_GROUP_SIZE", "value": str(size)},
            {"name": "LWS_WORKER_INDEX", "value": str(index)},
        ]
        for c in [*spec["containers"], *spec.get("initContainers", [])]:
            names = {e["name"] for e in inject}
            c["env"] = [*inject, *(e for e in c.get("env", []) if e["name"] not in names)]
        pod = Pod(pod_name, ns, labels, spec, name, t)
        self.pods.append(pod)
        return pod

    def _group_restart(self, pod: Pod, t: int) -> bool:
        """LWS: a container restart in a group recreates the group (per restartPolicy)."""
        if pod.group is None:
            return False
        lws = next(d for d in self.lws if d["metadata"]["name"] == pod.group)
        policy = lws["spec"]["leaderWorkerTemplate"].get("restartPolicy", "RecreateGroupOnPodRestart")
        group = [p for p in self.pods if p.group == pod.group and not p.deleted]
        if policy == "RecreateGroupOnPodRestart" or (
            policy == "RecreateGroupAfterStart" and all(p.phase != "Pending" for p in group)
        ):
            self.log.append(f"{t}: LWS recreates group {pod.group} ({pod.name} restarted)")
            for p in group:
                self._delete(p)
            return True
        return False

    def _delete(self, pod: Pod) -> None:
        for c in [*pod.init, *pod.main]:
            self._stop(c)
        pod.deleted = True

    def _stop(self, c: Ctr) -> None:
        if c.proc is not None:
            if isinstance(c.proc, RayHead) and c.proc.child is not None:
                c.proc.child.stop()
            c.proc.stop()  # a Supervisor stops its child too
        c.proc = None

    # -------------------------------------------------------- scheduling and images

    def _schedule(self, pod: Pod) -> None:
        for node in self.nodes:
            if self._fits(pod, node):
                pod.node = node
                self.log.append(f"{pod.name} -> {node.name}")
                return
        pod.why = "Pending: no node matches (nodeSelector/affinity/GPUs)"

    def _fits(self, pod: Pod, node: Node) -> bool:
        spec = pod.spec
        if any(node.labels.get(k) != v for k, v in spec.get("nodeSelector", {}).items()):
            return False
        aff = spec.get("affinity", {})
        terms = (
            aff.get("nodeAffinity", {})
            .get("requiredDuringSchedulingIgnoredDuringExecution", {})
            .get("nodeSelectorTerms")
        )
        if terms and not any(
            all(_expr(node.labels, e) for e in term.get("matchExpressions", [])) for term in terms
        ):
            return False
        others = [p for p in self.pods if p.node is not None and not p.deleted and p is not pod]
        for term in aff.get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", []):
            want = term["labelSelector"].get("matchLabels", {})
            key = term["topologyKey"]
            for p in others:
                assert p.node is not None
                if p.node.labels.get(key) == node.labels.get(key) and _match(p.labels, want):
                    return False
        used = sum(_gpus(p) for p in others if p.node is node)
        if used + _gpus(pod) > node.gpus:
            return False
        if spec.get("hostNetwork"):
            ports = _ports(pod)
            if any(p.spec.get("hostNetwork") and ports & _ports(p) for p in others if p.node is node):
                return False
        return True

    def _images_ready(self, pod: Pod) -> bool:
        node = pod.node
        assert node is not None
        ok = True
        for image in {c.spec["image"] for c in [*pod.init, *pod.main]}:
            if image in node.cached:
                continue
            node.pulling[image] = node.pulling.get(image, 0) + 1
            if node.pulling[image] >= node.pull_s:
                node.cached.add(image)
                node.pulling.pop(image)
            else:
                ok = False
        pod.why = "Pending: pulling image" if not ok else pod.why
        return ok

    def _drop_lost_pulls(self) -> None:
        for node in self.nodes:
            live = {
                c.spec["image"]
                for p in self.pods
                if p.node is node and not p.deleted
                for c in [*p.init, *p.main]
            }
            for image in list(node.pulling):
                if image not in live:
                    node.pulling.pop(image)

    # -------------------------------------------------------- env, DNS, Services

    def env(self, pod: Pod, c: Obj) -> dict[str, str]:
        out: dict[str, str] = {}
        for src in c.get("envFrom", []):
            ref = src["configMapRef"]["name"]
            cm = self._find("ConfigMap", pod.ns, ref)
            if cm is None:
                raise Exit(-1, f"ConfigMap {ref} not found")
            out |= {k: str(v) for k, v in cm.get("data", {}).items()}
        for e in c.get("env", []):
            if "value" in e:
                out[e["name"]] = _expand(str(e["value"]), out)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                path = vf["fieldRef"]["fieldPath"]
                out[e["name"]] = {
                    "status.podIP": pod.ip,
                    "metadata.name": pod.name,
                    "metadata.namespace": pod.ns,
                    "status.hostIP": pod.ip,
                }[path]
            elif "secretKeyRef" in vf:
                ref = vf["secretKeyRef"]
                sec = self._find("Secret", pod.ns, ref["name"])
                data = {**(sec or {}).get("data", {}), **(sec or {}).get("stringData", {})}
                if ref["key"] not in data:
                    raise Exit(-1, f"CreateContainerConfigError: secret {ref['name']}/{ref['key']}")
                out[e["name"]] = str(data[ref["key"]])
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                cm = self._find("ConfigMap", pod.ns, ref["name"]) or {}
                if ref["key"] not in cm.get("data", {}):
                    raise Exit(-1, f"CreateContainerConfigError: configmap {ref['name']}")
                out[e["name"]] = str(cm["data"][ref["key"]])
        return out

    def _endpoints(self, svc: Obj) -> list[Pod]:
        sel = svc["spec"].get("selector") or {}
        pnr = svc["spec"].get("publishNotReadyAddresses", False)
        return [
            p
            for p in self.pods
            if not p.deleted
            and p.node is not None
            and p.ns == _ns(svc)
            and sel
            and _match(p.labels, sel)
            and (p.ready or pnr)
        ]

    def connect(self, pod: Pod, host: str, port: int) -> Proc | None:
        """What a TCP connection from `pod` to host:port reaches, or None (refused/unresolved)."""
        for ip, p in self._route(pod, host, port):
            proc = self.listeners.get((ip, p))
            if proc is not None:
                return proc
        return None

    def _route(self, pod: Pod, host: str, port: int) -> list[tuple[str, int]]:
        try:
            ipaddress.ip_address(host)
            return [(host, port)]
        except ValueError:
            pass
        if pod.spec.get("hostNetwork") and pod.spec.get("dnsPolicy") != "ClusterFirstWithHostNet":
            return []  # the node's resolv.conf: no cluster names
        name = host.removesuffix(".svc.cluster.local").removesuffix(".svc")
        parts = name.split(".")
        if len(parts) in (1, 2):
            svc = next(
                (
                    s
                    for s in self.services
                    if s["metadata"]["name"] == parts[0]
                    and _ns(s) == (parts[1] if len(parts) == 2 else pod.ns)
                ),
                None,
            )
            if svc is None:
                return []
            eps = self._endpoints(svc)
            if svc["spec"].get("clusterIP") == "None":
                return [(p.ip, port) for p in eps]
            sp = next((x for x in svc["spec"].get("ports", []) if x["port"] == port), None)
            if sp is None:
                return []
            return [(p.ip, int(sp.get("targetPort", port))) for p in eps]
        if len(parts) == 3:
            hostname, sub, ns = parts
            svc = next(
                (
                    s
                    for s in self.services
                    if s["metadata"]["name"] == sub and _ns(s) == ns and s["spec"].get("clusterIP") == "None"
                ),
                None,
            )
            if svc is None:
                return []
            return [
                (p.ip, port)
                for p in self._endpoints(svc)
                if p.spec.get("hostname") == hostname and p.spec.get("subdomain") == sub
            ]
        return []

    # -------------------------------------------------------- kubelet

    def _start(self, pod: Pod, c: Ctr, t: int) -> bool:
        try:
            env = self.env(pod, c.spec)
        except Exit as e:
            c.why = e.why
            pod.why = e.why
            return False
        argv = [_expand(a, env) for a in [*c.spec.get("command", []), *c.spec.get("args", [])]]
        try:
            c.proc = make_proc(self, pod, env, argv, t)
        except (ValueError, KeyError, IndexError, Exit) as exc:
            c.why = f"exited at start: {exc}"
            self._crash(pod, c, t)
            return False
        c.started = "startupProbe" not in c.spec
        c.ready = False
        c.fails = {}
        c.last_probe = {}
        return True

    def _crash(self, pod: Pod, c: Ctr, t: int) -> None:
        self._stop(c)
        c.restarts += 1
        c.ready = False
        c.next_start = t + min(300, 10 * 2 ** (c.restarts - 1))
        self.log.append(f"{t}: {pod.name}/{c.spec['name']} restarts ({c.why})")
        pod.why = f"CrashLoopBackOff: {c.spec['name']}: {c.why}"
        self._group_restart(pod, t)

    def _probe(self, pod: Pod, c: Ctr, kind: str, t: int) -> str | None:
        """None: not probed now; "ok"; "miss"; "fail": misses reached failureThreshold."""
        probe = c.spec.get(kind)
        if probe is None:
            return None
        period = probe.get("periodSeconds", 10)
        if t - c.last_probe.get(kind, -(10**9)) < period:
            return None
        c.last_probe[kind] = t
        port = probe["httpGet"]["port"]
        proc = self.listeners.get((pod.ip, port))
        serving = proc.http if isinstance(proc, RayHead) else getattr(proc, "http_port", None)
        latency = (
            self.scenario.health_latency_pp
            if getattr(proc.child if isinstance(proc, RayHead) else proc, "pp", 1) > 1
            else self.scenario.health_latency
        )
        ok = serving == port and latency <= probe.get("timeoutSeconds", 1)
        c.fails[kind] = 0 if ok else c.fails.get(kind, 0) + 1
        if not ok and c.fails[kind] >= probe.get("failureThreshold", 3):
            c.why = f"{kind} failed {c.fails[kind]} times"
            return "fail"
        return "ok" if ok else "miss"

    def _kubelet(self, pod: Pod, t: int) -> None:
        for c in pod.init:
            if c.done:
                continue
            if c.proc is None and (t < c.next_start or not self._start(pod, c, t)):
                return
            assert c.proc is not None
            try:
                c.proc.step(t)
            except Exit as e:
                if e.code == 0:
                    self._stop(c)
                    c.done = True
                    continue
                c.why = e.why
                self._crash(pod, c, t)
            return
        for c in pod.main:
            if pod.deleted:
                return
            if c.proc is None and (t < c.next_start or not self._start(pod, c, t)):
                continue
            assert c.proc is not None
            try:
                c.proc.step(t)
            except Exit as e:
                c.why = e.why
                self._crash(pod, c, t)
                continue
            if not c.started:
                res = self._probe(pod, c, "startupProbe", t)
                if res == "fail":
                    self._crash(pod, c, t)
                elif res == "ok":
                    c.started = True
                continue
            if self._probe(pod, c, "livenessProbe", t) == "fail":
                self._crash(pod, c, t)
                continue
            res = self._probe(pod, c, "readinessProbe", t)
            if "readinessProbe" not in c.spec or res == "ok":
                c.ready = True
            elif res == "fail":
                c.ready = False

    # -------------------------------------------------------- run

    def hung(self, t: int) -> bool:
        """A live engine that stopped making progress: the group is not serving."""
        return any(isinstance(p, Vllm) and p.hung(t) and p.pod.alive(p) for p in set(self.listeners.values()))

    def run(self) -> Result:
        ready_since: int | None = None
        for t in range(self.scenario.horizon_s):
            self._create(t)
            self._drop_lost_pulls()
            for pod in [p for p in self.pods if not p.deleted]:
                if pod.node is None:
                    self._schedule(pod)
                    if pod.node is None:
                        continue
                if not self._images_ready(pod):
                    continue
                self._kubelet(pod, t)
            live = [p for p in self.pods if not p.deleted]
            if live and all(p.ready for p in live) and not self.hung(t):
                ready_since = t if ready_since is None else ready_since
                hang = self.scenario.hang_at
                if t - ready_since >= self.scenario.stable_s and (hang is None or ready_since > hang):
                    return Result(True, ready_since, live, self.log)
            else:
                ready_since = None
        return Result(False, None, [p for p in self.pods if not p.deleted], self.log)


@dataclass
class Result:
    all_ready: bool
    at: int | None
    pods: list[Pod]
    log: list[str]

    def why(self) -> str:
        return (
            "; ".join(
                f"{p.name}: {'Ready' if p.ready else p.why} (restarts {p.restarts()})" for p in self.pods
            )
            + " | "
            + " / ".join(self.log[-6:])
        )


def _ns(d: Obj) -> str:
    return str(d["metadata"].get("namespace", "default"))


def _match(labels: dict[str, str], want: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in want.items())


def _expr(labels: dict[str, str], e: Obj) -> bool:
    op, key = e["operator"], e["key"]
    if op == "In":
        return labels.get(key) in e["values"]
    if op == "NotIn":
        return labels.get(key) not in e["values"]
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    raise ValueError(op)


def _gpus(pod: Pod) -> int:
    return sum(
        int(c.spec.get("resources", {}).get("requests", {}).get("nvidia.com/gpu", 0)) for c in pod.main
    )


def _ports(pod: Pod) -> set[int]:
    return {p["containerPort"] for c in pod.main for p in c.spec.get("ports", [])}


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR): known variables expand, unknown ones stay as written, $$ escapes."""
    return re.sub(
        r"\$\$|\$\((\w+)\)", lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value
    )
