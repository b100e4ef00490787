"""The Docker Engine of a host, through the Docker SDK, riding on our own SSH connection.

docker-py's own ssh:// transport opens paramiko without any connect timeout (about 134 s on a
silent host) and waits up to an hour to open a channel; see the test bed notes. We connect with
timeouts ourselves (remote.SSHRunner) and give docker-py an adapter that opens each HTTP
connection as a `docker system dial-stdio` channel on that transport, with a deadline.

The API version is negotiated with each engine, never pinned: Docker Engine 29.0-29.2 refuses
every client below API 1.44, Debian 12's 20.10 serves at most 1.41 (see `negotiate`).

The boundary for docker/requests errors: mapped to EngineError here, once.
"""

from __future__ import annotations

import contextlib
import math
import time
import weakref
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import docker
import docker.constants
import paramiko
import requests
import urllib3
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.transport.sshconn import SSHConnection, SSHConnectionPool, SSHHTTPAdapter
from docker.utils.json_stream import json_stream

from orchestrate.errors import EngineError, HostError, LogStreamBroken
from orchestrate.host.remote import SSHRunner

#: the oldest API orchestrate speaks: Docker Engine 20.10 (Debian 12's docker.io; the post used 20.10.5)
MIN_API = "1.41"
#: the newest API the installed docker-py knows (7.1: 1.44); newer engines also speak it
CLIENT_MAX_API: str = docker.constants.DEFAULT_DOCKER_API_VERSION


@dataclass(frozen=True)
class EngineVersion:
    """What one engine said on GET /version, and the API version we speak with it."""

    engine: str  # "26.1.5+dfsg1"
    api: str  # negotiated: the highest both sides support
    min_api: str  # the engine's MinAPIVersion
    max_api: str  # the engine's ApiVersion

    def __str__(self) -> str:
        return f"Docker {self.engine} (API {self.api})"


def _api(text: str) -> tuple[int, int]:
    major, minor = text.strip().split(".")
    return int(major), int(minor)


def negotiate(host: str, version: Mapping[str, Any], client_max: str | None = None) -> EngineVersion:
    """Pick the API version for an engine from its unversioned GET /version answer (which every
    engine serves, whatever its minimum): the highest one both sides support, else one line
    saying which side is too old. MinAPIVersion is absent before API 1.25: 1.12 then."""
    client_max = client_max or CLIENT_MAX_API
    engine = str(version.get("Version") or "?")
    try:
        top, floor = str(version["ApiVersion"]), str(version.get("MinAPIVersion") or "1.12")
        api = min(top, client_max, key=_api)
        too_new, too_old = _api(api) < _api(MIN_API), _api(api) < _api(floor)
    except (KeyError, ValueError):
        raise EngineError(
            host,
            f"the Docker Engine answered GET /version without a usable API "
            f"version ({str(dict(version))[:200]})",
            hint="is this a Docker Engine?",
        ) from None
    if too_new:
        raise EngineError(
            host,
            f"Docker Engine {engine} speaks API at most {top}: the engine is "
            f"older than 20.10 (API {MIN_API}), the oldest orchestrate supports",
            hint="upgrade Docker Engine on this host to 20.10 or later",
        )
    if too_old:
        raise EngineError(
            host,
            f"Docker Engine {engine} accepts API {floor}-{top}, orchestrate's "
            f"Docker client (docker {docker.__version__}) speaks at most "
            f"{client_max}: upgrade the docker Python package",
            hint="pip install --upgrade docker",
        )
    return EngineVersion(engine=engine, api=api, min_api=floor, max_api=top)


_VERSIONS: weakref.WeakKeyDictionary[docker.DockerClient, EngineVersion] = weakref.WeakKeyDictionary()


def version_of(client: docker.DockerClient) -> EngineVersion | None:
    """The engine version and API negotiated when the client was made (None: made elsewhere)."""
    return _VERSIONS.get(client)


def _negotiated(name: str, client: docker.DockerClient) -> docker.DockerClient:
    # unversioned: an engine answers it whatever API range it accepts
    raw = Engine(name, client).call("version", client.api.version, api_version=False)
    found = negotiate(name, raw)
    client.api._version = found.api  # type: ignore[attr-defined]  # docker-py has no public setter
    _VERSIONS[client] = found
    return client


class _Connection(SSHConnection):
    def connect(self) -> None:
        if self.ssh_transport is None:
            raise requests.exceptions.ConnectionError("SSH transport is closed")
        try:
            chan = self.ssh_transport.open_session(timeout=self.timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise requests.exceptions.ConnectionError(f"ssh channel: {exc}") from None
        chan.settimeout(self.timeout)
        chan.exec_command("docker system dial-stdio")
        self.sock = chan  # type: ignore[assignment]  # a channel is a socket, as in docker-py's own


class _Pool(SSHConnectionPool):
    def _new_conn(self) -> _Connection:  # type: ignore[override]  # urllib3's pool, any connection
        # docker-py's SSHConnectionPool keeps the plain number, not urllib3's Timeout
        return _Connection(self.ssh_transport, self.timeout, self.ssh_host)  # type: ignore[arg-type]


class _Adapter(SSHHTTPAdapter):
    def __init__(self, ssh: paramiko.SSHClient, timeout: float) -> None:
        self._ssh = ssh
        super().__init__("ssh://orchestrate", timeout=math.ceil(timeout), max_pool_size=8)

    def _create_paramiko_client(self, base_url: str) -> None:
        self.ssh_client = self._ssh
        self.ssh_params: dict[str, Any] = {}

    def _connect(self) -> None:
        transport = self.ssh_client.get_transport() if self.ssh_client else None
        if transport is None or not transport.is_active():
            raise requests.exceptions.ConnectionError("SSH transport is closed")

    def get_connection(self, url: str | bytes, proxies: Any = None) -> _Pool:
        pools: Any = self.pools  # a urllib3 RecentlyUsedContainer (the stubs say int)
        with pools.lock:
            pool = pools.get(url)
            if pool:
                return pool  # type: ignore[no-any-return]
            self._connect()
            pool = _Pool(
                ssh_client=self.ssh_client,
                timeout=self.timeout,
                maxsize=self.max_pool_size,
                host=self.ssh_host,
            )
            pools[url] = pool
        return pool


def client_over(runner: SSHRunner, timeout: float = 60) -> docker.DockerClient:
    """A client for the host's engine over `runner`'s SSH transport, API version negotiated."""
    # MIN_API only until negotiated: a version given here keeps docker-py from asking itself
    api = docker.APIClient(
        base_url="unix:///var/run/orchestrate-unused.sock", version=MIN_API, timeout=math.ceil(timeout)
    )
    adapter = _Adapter(runner.client, timeout)
    api.mount("http+docker://ssh", adapter)
    api._custom_adapter = adapter  # type: ignore[attr-defined]  # what docker-py's ssh:// sets too
    api.base_url = "http+docker://ssh"
    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = api
    return _negotiated(runner.name, client)


def local_client(name: str, timeout: float = 60) -> docker.DockerClient:
    """This machine's own engine (connection: local), from DOCKER_HOST or the default socket,
    API version negotiated."""
    try:
        client = docker.from_env(version=MIN_API, timeout=int(timeout))
    except DockerException as exc:
        raise EngineError(
            name,
            f"the local Docker Engine is unreachable: {exc}",
            hint="start Docker (dockerd) on this machine",
        ) from None
    return _negotiated(name, client)


# what reading a streamed response (logs -f) can raise; requests does not wrap these
STREAM_ERRORS = (
    requests.exceptions.RequestException,
    urllib3.exceptions.HTTPError,
    paramiko.SSHException,
    OSError,
)

_TRANSPORT_ERRORS = (
    DockerException,
    requests.exceptions.RequestException,
    paramiko.SSHException,
    OSError,
    EOFError,
)


def split_ref(ref: str) -> tuple[str, str]:
    """`repo[:tag]` -> (repo, tag), with docker's default tag; a registry port is not a tag."""
    if ":" in ref.split("/")[-1]:
        repo, _, tag = ref.rpartition(":")
        return repo, tag
    return ref, "latest"


def _read_until(raw: Any, deadline: float) -> bytes:
    """Everything an attached exec socket sends until EOF, or TimeoutError at the deadline."""
    chunks: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        raw.settimeout(left)
        chunk = raw.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _demux(raw: bytes) -> bytes:
    """The payloads of Docker's multiplexed stream (8-byte headers: stream, 0, 0, 0, size)."""
    out, i = [], 0
    while i + 8 <= len(raw):
        size = int.from_bytes(raw[i + 4 : i + 8], "big")
        out.append(raw[i + 8 : i + 8 + size])
        i += 8 + size
    return b"".join(out)


class Link(Protocol):
    """The connection an engine rides on, asked why a call failed before the call is blamed."""

    def lost(self) -> HostError | None: ...


class Engine:
    """Typed, error-mapped operations on one host's Docker Engine. With `link` (the SSH runner
    under it), a call that breaks on a dead host reports the host (frozen, unreachable,
    crashed), not the engine."""

    def __init__(self, name: str, client: docker.DockerClient, link: Link | None = None) -> None:
        self.name = name
        self.client = client
        self.link = link

    def _fail(self, what: str, exc: BaseException) -> EngineError:
        text = getattr(exc, "explanation", None) or str(exc) or type(exc).__name__
        if "dial-stdio" in text or "command not found" in text:
            return EngineError(
                self.name,
                "the docker CLI is missing on the host (the Docker "
                "link over SSH runs `docker system dial-stdio`)",
                hint="install the docker CLI on the host",
            )
        if any(
            s in text
            for s in (
                "Cannot connect to the Docker daemon",
                "Connection aborted",
                "RemoteDisconnected",
                "Connection refused",
            )
        ):
            return EngineError(
                self.name,
                f"the Docker Engine is not answering ({what}): is dockerd running?",
                hint="start it on the host: systemctl start docker",
            )
        if isinstance(exc, (requests.exceptions.Timeout, TimeoutError)):
            return EngineError(
                self.name, f"the Docker Engine did not answer {what} in time (host frozen or overloaded)"
            )
        return EngineError(self.name, f"Docker {what} failed: {text}".strip())

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (NotFound, ImageNotFound):
            raise
        except _TRANSPORT_ERRORS as exc:
            raise self._cause(what, exc) from None

    def _cause(self, what: str, exc: BaseException) -> HostError:
        # an HTTP answer proves the link works; anything else may be a dead host under the call
        lost = None if isinstance(exc, APIError) or self.link is None else self.link.lost()
        return lost or self._fail(what, exc)

    # ------------------------------------------------------------ engine
    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = self.call("info", self.client.info)
        return info

    def ping(self) -> None:
        self.call("ping", self.client.ping)

    # ------------------------------------------------------------ images
    def image_id(self, ref: str) -> str | None:
        try:
            image = self.call("image inspect", self.client.images.get, ref)
        except (NotFound, ImageNotFound):
            return None
        return str(image.id)

    def pull(self, ref: str, auth: dict[str, str] | None = None) -> str:
        """Pull `ref` (reading the engine's progress; use pull_progress to see it); its image ID."""
        for _ in self.pull_progress(ref, auth):
            pass
        image_id = self.image_id(ref)
        if image_id is None:
            raise EngineError(self.name, f"pull of {ref} finished but the image is missing")
        return image_id

    def pull_progress(self, ref: str, auth: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """`docker pull` with the engine's JSON progress messages, as they come; the read timeout
        applies to each message. An error message (also mid-stream) raises EngineError."""
        repo, tag = split_ref(ref)
        api = self.client.api
        try:
            stream = self.call("pull", api.pull, repo, tag=tag, stream=True, decode=True, auth_config=auth)
            yield from self._messages("pull", stream)
        except NotFound:
            raise EngineError(self.name, f"image {ref} not found in its registry") from None

    def push_progress(self, ref: str) -> Iterator[dict[str, Any]]:
        """`docker push` of `ref` with the engine's JSON progress messages, as they come."""
        repo, tag = split_ref(ref)
        api = self.client.api
        stream = self.call("push", api.push, repo, tag=tag, stream=True, decode=True)
        yield from self._messages("push", stream)

    def tag(self, image: str, ref: str) -> None:
        repo, tag = split_ref(ref)
        self.call("tag", self.client.api.tag, image, repo, tag=tag)

    def untag(self, ref: str) -> None:
        """Remove one name of an image (the image stays while other names or containers use it)."""
        with contextlib.suppress(NotFound, ImageNotFound):
            self.call("untag", self.client.api.remove_image, ref, noprune=True)

    def image_size(self, ref: str) -> int:
        """Bytes of the image's layers (about the size of its `docker save` tar)."""
        attrs = self.call("image inspect", self.client.api.inspect_image, ref)
        return int(attrs.get("Size") or 0)

    def save(self, ref: str, chunk_size: int = 4 * 2**20) -> Generator[bytes, None, None]:
        """The image as a `docker save` tar, chunk by chunk, each read under the client's timeout
        (docker-py's get_image turns the timeout off: a frozen source would stall forever). The
        HTTP response is closed however the iteration ends (close() the generator to abandon)."""
        api: Any = self.client.api  # its private request helpers: save/load with a per-read timeout
        try:
            res = self.call("image save", api._get, api._url("/images/{0}/get", ref), stream=True)
            self.call("image save", api._raise_for_status, res)
        except (NotFound, ImageNotFound):
            raise EngineError(self.name, f"image {ref} is not on this engine") from None
        try:
            while True:
                try:
                    data = res.raw.read(chunk_size)
                except _TRANSPORT_ERRORS + STREAM_ERRORS as exc:
                    raise self._fail("image save", exc) from None
                if not data:
                    return
                yield data
        finally:
            res.close()

    def load(self, chunks: Iterable[bytes]) -> Iterator[dict[str, Any]]:
        """`docker load` of a `docker save` tar with progress (POST /images/load?quiet=0): yields
        the engine's JSON messages as they come, so the read timeout applies to each message and
        not to the whole load. An error message or a lost engine raises EngineError at once."""
        api: Any = self.client.api  # its private request helpers (see save)
        res = self.call(
            "image load", api._post, api._url("/images/load"), data=chunks, params={"quiet": "0"}, stream=True
        )
        try:
            self.call("image load", api._raise_for_status, res)
            yield from self._messages("image load", json_stream(api._stream_helper(res)))
        finally:
            res.close()

    def _messages(self, what: str, stream: Iterable[Any]) -> Iterator[dict[str, Any]]:
        """Map a JSON message stream: transport errors while reading, and the engine's own error
        messages (it reports failures mid-stream with HTTP 200 already sent)."""
        it = iter(stream)
        while True:
            try:
                msg = next(it)
            except StopIteration:
                return
            except _TRANSPORT_ERRORS + STREAM_ERRORS as exc:
                raise self._fail(what, exc) from None
            if isinstance(msg, dict) and (msg.get("error") or msg.get("errorDetail")):
                detail = msg.get("errorDetail") or {}
                text = str(msg.get("error") or detail.get("message") or detail).strip()
                raise EngineError(self.name, f"Docker {what} failed: {text}")
            if isinstance(msg, dict):
                yield msg

    # ------------------------------------------------------------ containers
    def containers(self, deployment: str, host: str) -> list[ContainerInfo]:
        """This deployment's containers for inventory host `host` (several local nodes can share
        one engine)."""
        flt = {"label": [f"orchestrate.deployment={deployment}", f"orchestrate.host={host}"]}
        found = self.call("ps", self.client.containers.list, all=True, filters=flt, ignore_removed=True)
        return [ContainerInfo.of(c) for c in found]

    def container(self, name: str) -> ContainerInfo | None:
        try:
            return ContainerInfo.of(self.call("inspect", self.client.containers.get, name))
        except NotFound:
            return None

    def create_and_start(self, kwargs: Mapping[str, Any]) -> ContainerInfo:
        """Create and start a container from plain `docker run`-like kwargs (render/docker.py):
        the SDK's own types are made here, at the boundary."""
        kwargs = sdk_kwargs(kwargs)
        kwargs.pop("detach", None)
        try:
            container: Container = self.call("create", self.client.containers.create, **kwargs)
        except (NotFound, ImageNotFound):
            raise EngineError(
                self.name,
                f"image {kwargs['image']} is not on this host",
                hint="run `orchestrate up` again (it distributes the image) or pull it",
            ) from None
        self.call("start", container.start)
        return ContainerInfo.of(container)

    def run_once(self, image: str, argv: list[str], entrypoint: str) -> bytes:
        """The output of a throwaway container (no network, removed when it exits)."""
        try:
            out: bytes = self.call(
                "run",
                self.client.containers.run,
                image,
                argv,
                entrypoint=entrypoint,
                remove=True,
                network_mode="none",
            )
        except (NotFound, ImageNotFound):
            raise EngineError(self.name, f"image {image} is not on this host") from None
        return out

    def remove(self, container: ContainerInfo, stop_timeout: int) -> None:
        api = self.client.api
        try:
            if container.status in ("running", "restarting", "paused"):
                self.call("stop", api.stop, container.id, timeout=stop_timeout)
            self.call("remove", api.remove_container, container.id, force=True)
        except NotFound:
            pass

    def discard(self, container: ContainerInfo) -> None:
        """Remove a container now (no graceful stop) with its anonymous volumes."""
        with contextlib.suppress(NotFound):
            self.call("remove", self.client.api.remove_container, container.id, force=True, v=True)

    def exec(self, container: ContainerInfo, argv: list[str], timeout: float = 60) -> tuple[int, str]:
        """(exit code, stdout+stderr) of argv in the container, within `timeout` seconds.
        docker-py's exec_run cannot bound its read: it poll()s the socket with no timeout."""
        api = self.client.api
        try:
            exec_id = api.exec_create(container.id, argv)["Id"]
            sock = api.exec_start(exec_id, socket=True)
        except NotFound:
            return 127, "container is gone"
        except APIError as exc:
            if exc.status_code == 409:  # it stopped since it was read: the caller's gates say why
                return 126, "container is not running"
            raise self._cause("exec", exc) from None
        except _TRANSPORT_ERRORS as exc:
            raise self._cause("exec", exc) from None
        raw = getattr(sock, "_sock", sock)  # the local engine hands back a SocketIO over it
        try:
            out = _read_until(raw, time.monotonic() + timeout)
        except TimeoutError:
            lost = self.link.lost() if self.link else None
            raise lost or EngineError(
                self.name, f"`{argv[0]}` in {container.name} did not finish within {timeout:g}s"
            ) from None
        except _TRANSPORT_ERRORS as exc:
            raise self._cause("exec", exc) from None
        finally:
            for end in (sock, raw):
                with contextlib.suppress(*_TRANSPORT_ERRORS):
                    end.close()
        code = self.call("exec", api.exec_inspect, exec_id).get("ExitCode")
        return int(code or 0), _demux(out).decode("utf-8", "replace")

    def ensure_network(self, name: str, subnet: str, deployment: str) -> None:
        from docker.types import IPAMConfig, IPAMPool

        found = self.call("network ls", self.client.networks.list, names=[name])
        for net in found:
            if net.name != name:
                continue
            configs = net.attrs.get("IPAM", {}).get("Config") or []
            if subnet not in [c.get("Subnet") for c in configs]:
                raise EngineError(
                    self.name,
                    f"Docker network {name} exists with another subnet ({configs}); expected {subnet}",
                    hint=f"docker network rm {name}, or rename network.docker_network",
                )
            return
        ipam = IPAMConfig(pool_configs=[IPAMPool(subnet=subnet)])
        labels = {"orchestrate.deployment": deployment}
        try:
            self.call(
                "network create", self.client.networks.create, name, driver="bridge", ipam=ipam, labels=labels
            )
        except EngineError as exc:
            if "already exists" not in exc.message:
                raise

    def remove_network(self, name: str, deployment: str) -> bool:
        for net in self.call("network ls", self.client.networks.list, names=[name]):
            if net.name == name and net.attrs.get("Labels", {}).get("orchestrate.deployment") == deployment:
                net.reload()
                if not net.attrs.get("Containers"):
                    self.call("network rm", net.remove)
                    return True
        return False

    def logs(self, container: ContainerInfo, **kwargs: Any) -> bytes:
        """The container's log (docker logs), at most `tail` lines when given."""
        try:
            out: bytes = self.call("logs", self.client.api.logs, container.id, **kwargs)
        except NotFound:
            return b""
        return out

    def follow_logs(
        self, container: ContainerInfo, follow: bool, tail: int | str, since: int | None = None
    ) -> Iterator[bytes]:
        """The log as a stream of chunks. A read that breaks or times out (a quiet container, when
        following) raises LogStreamBroken; the caller decides whether to attach again."""
        kwargs: dict[str, Any] = {"stream": True, "follow": follow, "tail": tail}
        if since is not None:
            kwargs["since"] = since
        try:
            yield from self.call("logs", self.client.api.logs, container.id, **kwargs)
        except NotFound:
            return
        except STREAM_ERRORS as exc:
            raise LogStreamBroken(self.name, f"the log stream broke: {type(exc).__name__}") from None


def sdk_kwargs(plain: Mapping[str, Any]) -> dict[str, Any]:
    """docker-py's types for the plain data render/docker.py makes (the same JSON on the wire)."""
    from docker.types import DeviceRequest, EndpointConfig, Mount

    kwargs = dict(plain)
    if "mounts" in kwargs:
        kwargs["mounts"] = [
            Mount(
                target=m["target"],
                source=m["source"],
                type=m.get("type", "bind"),
                read_only=bool(m.get("read_only")),
            )
            for m in kwargs["mounts"]
        ]
    if "device_requests" in kwargs:
        kwargs["device_requests"] = [
            DeviceRequest(
                count=d.get("count"), device_ids=d.get("device_ids"), capabilities=d["capabilities"]
            )
            for d in kwargs["device_requests"]
        ]
    if "networking_config" in kwargs:
        kwargs["networking_config"] = {
            net: EndpointConfig(MIN_API, ipv4_address=cfg.get("ipv4_address"))
            for net, cfg in kwargs["networking_config"].items()
        }
    return kwargs


@dataclass(frozen=True)
class ContainerInfo:
    """A container as the operations see it: our own type, read once from `docker inspect`
    (docker-py's Container objects stay inside this module)."""

    id: str
    name: str
    status: str  # created, running, restarting, paused, exited, dead
    labels: Mapping[str, str]
    exit_code: int | None
    started_at: str | None
    restart_count: int  # how often Docker restarted it (its restart policy) since it was created

    @classmethod
    def of(cls, c: Container) -> ContainerInfo:
        attrs = c.attrs or {}
        state = attrs.get("State")
        state = state if isinstance(state, dict) else {}
        code = state.get("ExitCode")
        return cls(
            id=str(c.id or ""),
            name=str(c.name or ""),
            status=str(c.status),
            labels=dict(c.labels or {}),
            exit_code=int(code) if code is not None else None,
            started_at=state.get("StartedAt"),
            restart_count=int(attrs.get("RestartCount") or 0),
        )
