"""Entrypoint scripts that run inside the containers.

They are constant text: every value reaches them through environment variables (ORCH_*) or as
positional arguments ("$@"), never by string formatting, so no inventory value can inject shell.
The same text is used by `up`, the compose files and the Kubernetes manifests.
"""

from __future__ import annotations

from importlib import resources


def _agent(name: str) -> str:
    """A program of this package (agents/NAME.py, linted and type-checked like the rest), as text."""
    return (resources.files("orchestrate.agents") / f"{name}.py").read_text(encoding="utf-8")


# What both Ray entrypoints begin with: strict mode, a log helper, and the pinned ports.
_RAY_PREAMBLE = r"""set -eu
log() { echo "orchestrate: $*" >&2; }
# every port Ray would otherwise pick at random (firewalls: orchestrate firewall); numbers only
pinned_ports() {
  echo "--node-manager-port=$ORCH_NODE_MANAGER_PORT --runtime-env-agent-port=$ORCH_RUNTIME_ENV_AGENT_PORT" \
    "--dashboard-agent-grpc-port=$ORCH_DASHBOARD_AGENT_GRPC_PORT" \
    "--dashboard-agent-listen-port=$ORCH_DASHBOARD_AGENT_LISTEN_PORT" \
    "--metrics-export-port=$ORCH_METRICS_EXPORT_PORT" \
    "--min-worker-port=$ORCH_MIN_WORKER_PORT --max-worker-port=$ORCH_MAX_WORKER_PORT"
}
"""

# Ray head: start the GCS, then hold `vllm serve` until Ray has every expected node and GPU
# (vLLM #13909, production-stack wait_for_ray.py), then exec it so vLLM's output is the
# container's output and outlives the orchestrator.
RAY_HEAD = (
    _RAY_PREAMBLE
    + r"""command -v ray >/dev/null 2>&1 || {
  log "ray is not installed in this image; current vllm/vllm-openai images no longer ship Ray."
  log "Use backend: mp in the inventory, or an image that contains ray."
  exit 127
}
extra=""
if [ -n "${ORCH_OBJECT_STORE_MEMORY:-}" ]; then extra="--object-store-memory=$ORCH_OBJECT_STORE_MEMORY"; fi
# bash is pid 1 here: without a trap it would ignore `docker stop`'s SIGTERM while it waits
child=""
trap 'kill -TERM "$child" 2>/dev/null; exit 143' TERM INT
start_head() {
  ray start --head --disable-usage-stats \
    --node-ip-address="$VLLM_HOST_IP" --port="$ORCH_RAY_PORT" \
    --object-manager-port="$ORCH_OBJECT_MANAGER_PORT" $(pinned_ports) \
    --dashboard-host=0.0.0.0 --dashboard-port="$ORCH_DASHBOARD_PORT" \
    --num-gpus="$ORCH_GPUS" $extra "$@"
}
if [ "$#" -eq 0 ]; then  # serve.start: false -- the cluster only, as the post's first step
  log "ray cluster only (serve.start is false)"
  start_head --block & child=$!
  wait "$child"
  exit $?
fi
start_head
log "ray head started; waiting for $ORCH_EXPECTED_NODES nodes and $ORCH_EXPECTED_GPUS GPUs"
python3 - <<'PY' &
"""
    + _agent("ray_gate")
    + r"""PY
child=$!
wait "$child"
log "starting: $*"
exec "$@"
"""
)

# Ray worker: wait for the head's GCS port (dynamo #14108, KubeRay wait-gcs-ready), then join.
RAY_WORKER = (
    _RAY_PREAMBLE
    + r"""
command -v ray >/dev/null 2>&1 || { log "ray is not installed in this image; use backend: mp"; exit 127; }
deadline=$(( $(date +%s) + ${ORCH_JOIN_TIMEOUT%.*} ))
until (exec 3<>"/dev/tcp/$ORCH_HEAD_ADDR/$ORCH_RAY_PORT") 2>/dev/null; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    log "head GCS $ORCH_HEAD_ADDR:$ORCH_RAY_PORT not reachable after ${ORCH_JOIN_TIMEOUT}s"; exit 1
  fi
  sleep 1
done
extra=""
if [ -n "${ORCH_OBJECT_STORE_MEMORY:-}" ]; then extra="--object-store-memory=$ORCH_OBJECT_STORE_MEMORY"; fi
exec ray start --block --disable-usage-stats \
  --address="$ORCH_HEAD_ADDR:$ORCH_RAY_PORT" --node-ip-address="$VLLM_HOST_IP" \
  --object-manager-port="$ORCH_OBJECT_MANAGER_PORT" $(pinned_ports) --num-gpus="$ORCH_GPUS" $extra
"""[1:]
)  # the body starts on the line after the quotes

# Used by a Kubernetes init container: the same TCP wait, without joining.
WAIT_FOR_HEAD = r"""deadline=$(( $(date +%s) + ${ORCH_JOIN_TIMEOUT%.*} ))
until (exec 3<>"/dev/tcp/$ORCH_HEAD_ADDR/$ORCH_RAY_PORT") 2>/dev/null; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "orchestrate: head GCS not reachable" >&2; exit 1; }
  sleep 2
done
"""

# Python run inside the head container by `up` and `status` to read Ray's view as JSON
# (agents/ray_nodes.py).
RAY_NODES_PY = _agent("ray_nodes")

# The deployment lock on the head host (apply.head_lock): two operators on two machines cannot
# both hold it. A directory made with mkdir (atomic) holding the holder's token and description;
# the holder touches it while it works, and one untouched for longer than $5 seconds is stale:
# it is renamed away (atomic: of two breakers, one wins) and taken. Exit 3: busy.
HEAD_LOCK = r"""set -u
op=$1 dir=$2 name=$3 token=$4 stale=$5 holder=${6:-}
lock="$dir/$name.lock"
mine() { [ "$(head -n 1 "$lock/holder" 2>/dev/null)" = "$token" ]; }
case "$op" in
acquire)
  mkdir -p "$dir" && chmod 0777 "$dir" 2>/dev/null
  for _ in 1 2 3; do
    if mkdir "$lock" 2>/dev/null; then
      printf '%s\n%s\n' "$token" "$holder" > "$lock/holder"; echo ACQUIRED; exit 0
    fi
    now=$(date +%s)
    then=$(stat -c %Y "$lock/holder" 2>/dev/null || stat -c %Y "$lock" 2>/dev/null || echo "$now")
    age=$(( now - then ))
    if [ "$age" -gt "$stale" ]; then
      echo "STALE $age $(tail -n +2 "$lock/holder" 2>/dev/null)"
      mv "$lock" "$lock.broken.$$" 2>/dev/null && rm -rf "$lock.broken.$$"
      continue
    fi
    echo "BUSY $age $(tail -n +2 "$lock/holder" 2>/dev/null)"; exit 3
  done
  echo "BUSY ? (the lock kept changing hands)"; exit 3 ;;
refresh) mine && touch "$lock/holder" ;;
break)  # the holder ($4 is its description here) is known to be dead: its own machine said so
  if [ "$(sed -n 2p "$lock/holder" 2>/dev/null)" = "$token" ]; then
    mv "$lock" "$lock.broken.$$" 2>/dev/null && rm -rf "$lock.broken.$$"
  fi ;;
release) if mine; then rm -rf "$lock"; fi ;;
*) echo "unknown op $op" >&2; exit 2 ;;
esac
"""
