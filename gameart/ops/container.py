"""Build and run the project's image with podman, where there is no Docker engine and no registry.

Rootful podman/buildah from Debian's packages build OCI images from a base made locally with
debootstrap. Every piece of podman state (images, containers, its config) lives in one folder,
so nothing is left in the host's default stores and `rm -rf` of that folder undoes it all. The
flags these hosts need (explicit ulimits, runc with cgroupfs, a file events logger) are written
into that folder's containers.conf; HEALTHCHECK survives only in the docker image format.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from gameart.paths import REPO_ROOT

STATE_DIR = REPO_ROOT / ".run" / "containers"
BASE_IMAGE = "localhost/debian:bookworm"
IMAGE = "localhost/gameart-serve:cpu"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

CONTAINERS_CONF = """\
[containers]
# podman's defaults for root exceed the hard limits of these hosts
default_ulimits = ["nofile=16384:16384", "nproc=16384:16384"]
[engine]
# hybrid cgroups v1+v2: crun refuses them, runc with cgroupfs works; no systemd, no journald
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


class ContainerError(RuntimeError):
    """podman, buildah or debootstrap failed; the message carries their output."""


@dataclass(frozen=True)
class Engine:
    """Rootful podman with all of its state under `state_dir`."""

    state_dir: Path = STATE_DIR

    def env(self) -> dict[str, str]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        conf = self.state_dir / "containers.conf"
        storage = self.state_dir / "storage.conf"
        if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
            conf.write_text(CONTAINERS_CONF)
        storage_text = (
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.state_dir / "storage"}"\n'
            f'runroot = "{self.state_dir / "run"}"\n'
        )
        if not storage.exists() or storage.read_text() != storage_text:
            storage.write_text(storage_text)
        return {
            **os.environ,
            "CONTAINERS_CONF": str(conf),
            "CONTAINERS_STORAGE_CONF": str(storage),
        }

    def podman(
        self, *args: str, check: bool = True, timeout: float | None = None, input: bytes = b""
    ) -> subprocess.CompletedProcess[str]:
        """Run `podman args...`; ContainerError with its output when it fails and `check`."""
        result = subprocess.run(
            ["podman", *args],
            env=self.env(),
            capture_output=True,
            timeout=timeout,
            input=input or None,
        )
        completed = subprocess.CompletedProcess(
            result.args,
            result.returncode,
            result.stdout.decode(errors="replace"),
            result.stderr.decode(errors="replace"),
        )
        if check and completed.returncode != 0:
            raise ContainerError(
                f"podman {' '.join(args[:3])} ... exited {completed.returncode}:\n"
                f"{completed.stdout[-3000:]}{completed.stderr[-3000:]}"
            )
        return completed

    def has_image(self, name: str) -> bool:
        return self.podman("image", "exists", name, check=False).returncode == 0

    def image_size(self, name: str) -> int:
        return int(self.podman("image", "inspect", "--format", "{{.Size}}", name).stdout.strip())


def apt_mirror() -> str:
    """The Debian mirror this host's apt already uses (no other may be reachable)."""
    for source in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if source.is_file():
            text = source.read_text()
            match = re.search(r"^URIs:\s*(\S+)", text, re.M) or re.search(
                r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+\S+", text, re.M
            )
            if match:
                return match.group(1)
    return DEFAULT_MIRROR


def build_base_image(engine: Engine, name: str = BASE_IMAGE, mirror: str | None = None) -> float:
    """A minimal Debian image made with debootstrap and imported; seconds taken. It carries the
    host's CA certificates: where HTTPS to the package registries is re-signed by a local CA,
    pip inside the build needs them, and an image built on this base trusts that CA too. Build
    images you ship from a registry's base (the Dockerfile's default, or debian:bookworm)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=engine.state_dir) as tmp:
        rootfs = Path(tmp) / "rootfs"
        command = ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror or apt_mirror()]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ContainerError(f"debootstrap failed:\n{result.stdout[-2000:]}{result.stderr}")
        shutil.rmtree(rootfs / "var" / "lib" / "apt" / "lists", ignore_errors=True)
        for deb in (rootfs / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        ca_dir = rootfs / HOST_CA_DIR.relative_to("/")
        ca_dir.mkdir(parents=True, exist_ok=True)
        for certificate in HOST_CA_DIR.glob("*.crt"):
            shutil.copy2(certificate, ca_dir)
        if HOST_CA_BUNDLE.is_file():
            bundle = rootfs / HOST_CA_BUNDLE.relative_to("/")
            bundle.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(HOST_CA_BUNDLE, bundle)
        tar = subprocess.run(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
            capture_output=True,
            check=True,
        )
        engine.podman("import", "--change", 'CMD ["/bin/bash"]', "-", name, input=tar.stdout)
    return time.monotonic() - started


@dataclass(frozen=True)
class ImageSpec:
    """What `podman build` makes: the Dockerfile's BASE_IMAGE build arg and the tag."""

    tag: str = IMAGE
    base_image: str = BASE_IMAGE
    context: Path = REPO_ROOT
    build_args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    seconds: float  # the build alone (a cached rebuild takes seconds)
    size_bytes: int
    base_seconds: float = 0.0  # debootstrap + import, when the base had to be made

    def describe(self) -> str:
        lines = [f"image      {self.tag}  {self.size_bytes / 1e9:.2f} GB"]
        if self.base_seconds:
            lines.append(f"base       made in {self.base_seconds:.0f}s (debootstrap + import)")
        lines.append(f"build      {self.seconds:.0f}s")
        return "\n".join(lines)


def build_image(engine: Engine, spec: ImageSpec, log: Path | None = None) -> BuiltImage:
    """The base (made locally when it is a localhost/ image that is missing), then the image,
    in the docker format so HEALTHCHECK is kept. The build's output goes to `log`."""
    base_seconds = 0.0
    if spec.base_image.startswith("localhost/") and not engine.has_image(spec.base_image):
        base_seconds = build_base_image(engine, spec.base_image)
    args = {"BASE_IMAGE": spec.base_image, **spec.build_args}
    command = ["podman", "build", "--format", "docker", "--network", "host", "-t", spec.tag]
    for key, value in args.items():
        command += ["--build-arg", f"{key}={value}"]
    started = time.monotonic()
    with open(log or os.devnull, "w") as out:
        result = subprocess.run(
            [*command, str(spec.context)], env=engine.env(), stdout=out, stderr=subprocess.STDOUT
        )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        tail = log.read_text()[-3000:] if log else ""
        raise ContainerError(f"podman build exited {result.returncode}:\n{tail}")
    return BuiltImage(spec.tag, seconds, engine.image_size(spec.tag), base_seconds)
