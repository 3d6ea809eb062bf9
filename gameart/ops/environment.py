"""What the machine must have beside the venv: Python 3.10+, Java 17+ for TorchServe, and the
Debian programs the tests start for real (Redis, nginx, Apache Bench, dpkg-deb, ss, and podman
with buildah, runc and debootstrap for the container, chromium for the playground); installing
what is missing with apt-get. Standard library only: it runs before the venv exists
(scripts/check_env.py, gameart/cli/check_env.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

MIN_PYTHON = (3, 10)
MIN_JAVA = 17
JAVA_PACKAGE = "openjdk-17-jre-headless"
# command -> Debian package, for programs the tests run for real (tests/components.py)
TEST_TOOLS = {
    "ab": "apache2-utils",
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "nginx": "nginx-light",
    "dpkg-deb": "dpkg",
    "ss": "iproute2",  # the supervisor counts in-flight requests with it
    # the container test builds and runs the image without a Docker engine or a registry
    "podman": "podman",
    "buildah": "buildah",
    "runc": "runc",
    "debootstrap": "debootstrap",
    # the deployment manifests: rendered by kubectl's Kustomize; the autoscaler's query and the
    # alerts evaluated by a real Prometheus and checked by promtool
    "kubectl": "kubernetes-client",
    "prometheus": "prometheus",
    "promtool": "prometheus",
    # the playground page, driven in a real headless browser
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
}
# nginx installs to /usr/sbin, which a non-root PATH may not include
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


class EnvironmentProblem(RuntimeError):
    pass


def java_path() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    return shutil.which("java")


def java_major(java: str) -> int:
    output = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if not match:
        return 0
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" means 8


def find_java() -> str:
    """Path of a java that TorchServe 0.12 can run on, or an EnvironmentProblem saying why not."""
    java = java_path()
    if not java:
        raise EnvironmentProblem(
            f"TorchServe needs Java {MIN_JAVA}+ and none was found on PATH or in JAVA_HOME. "
            f"Install it (Debian/Ubuntu: sudo apt-get install {JAVA_PACKAGE}) or set JAVA_HOME."
        )
    major = java_major(java)
    if major < MIN_JAVA:
        raise EnvironmentProblem(
            f"TorchServe needs Java {MIN_JAVA}+, but {java} is Java {major or '(unknown)'}. "
            f"Install {JAVA_PACKAGE} or point JAVA_HOME at a newer JDK."
        )
    return java


def can_apt() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(packages: list[str]) -> None:
    print(f"installing {' '.join(packages)} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    subprocess.run(install, check=True, env=env)


def install_java() -> None:
    if not can_apt():
        raise EnvironmentProblem(
            f"cannot install Java here (needs root and apt-get); install {JAVA_PACKAGE} yourself"
        )
    apt_install([JAVA_PACKAGE])


def missing_test_tools() -> dict[str, str]:
    return {
        tool: package
        for tool, package in TEST_TOOLS.items()
        if not shutil.which(tool, path=_SEARCH_PATH)
    }


def record(path: Path, java: str) -> None:
    """Write what was verified; rewrite only on a change, so make's stamps stay put."""
    lines = [f"java {java_major(java)} {java}"]
    lines += [f"{tool} {shutil.which(tool, path=_SEARCH_PATH)}" for tool in sorted(TEST_TOOLS)]
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
