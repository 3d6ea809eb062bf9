"""The real programs the tests start, asked for by name, recorded, and never silently missing.

A test (or fixture) calls `require("redis-server")` before it starts Redis. When the program is
missing, a developer's run skips that test and says why; a CI run (CI=true in the environment,
as `.ci/run` sets, or `pytest --strict-components`) fails it instead, so a green CI has really
run every test against the real component. At the end of the run the terminal summary lists
which components (and versions) each test module ran against.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict

import pytest

# component -> (version command, Debian package that `make install` installs it from)
COMPONENTS: dict[str, tuple[list[str], str]] = {
    "java": (["java", "-version"], "openjdk-17-jre-headless"),
    "redis-server": (["redis-server", "--version"], "redis-server"),
    "redis-cli": (["redis-cli", "--version"], "redis-tools"),
    "nginx": (["nginx", "-v"], "nginx-light"),
    "ab": (["ab", "-V"], "apache2-utils"),
    "dpkg-deb": (["dpkg-deb", "--version"], "dpkg"),
    "ss": (["ss", "-V"], "iproute2"),
    "podman": (["podman", "--version"], "podman"),
    "buildah": (["buildah", "--version"], "buildah"),
    "runc": (["runc", "--version"], "runc"),
    "debootstrap": (["debootstrap", "--version"], "debootstrap"),
    "kubectl": (["kubectl", "version", "--client"], "kubernetes-client"),
    "prometheus": (["prometheus", "--version"], "prometheus"),
    "promtool": (["promtool", "--version"], "prometheus"),
    "chromium": (["chromium", "--version"], "chromium"),
    "chromedriver": (["chromedriver", "--version"], "chromium-driver"),
}
_SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

strict = False  # set by conftest from CI / --strict-components
current_test = ""  # nodeid of the running test, set by conftest
used: dict[str, set[str]] = defaultdict(set)  # component -> test modules that ran against it
missing: dict[str, set[str]] = defaultdict(set)  # component -> test modules that wanted it


def find(name: str) -> str | None:
    """Path of the program (nginx lives in /usr/sbin, which a user's PATH may lack)."""
    return shutil.which(name, path=_SBIN)


def require(*names: str) -> dict[str, str]:
    """Paths of the named programs; skip (or, when strict, fail) the test if one is missing."""
    module = current_test.split("::")[0]
    paths = {}
    for name in names:
        path = find(name)
        if path is None:
            missing[name].add(module)
            package = COMPONENTS[name][1]
            reason = f"{name} is missing: `make install` installs Debian's {package}"
            if strict:
                pytest.fail(f"{reason} (strict: CI must run every component)", pytrace=False)
            pytest.skip(reason)
        used[name].add(module)
        paths[name] = path
    return paths


def record(name: str) -> None:
    """Note a component a test ran against that needs no lookup (TorchServe itself)."""
    used[name].add(current_test.split("::")[0])


def version(name: str) -> str:
    command = COMPONENTS.get(name, ([name, "--version"], ""))[0]
    path = find(command[0])
    if path is None:
        return "?"
    try:
        result = subprocess.run(
            [path, *command[1:]], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = result.stdout + result.stderr
    match = re.search(r"\d+\.\d+(?:\.\d+)?(?:[-.+~\w]*)?", text)
    return match.group(0) if match else "?"


def summary_lines() -> list[str]:
    lines = []
    for name in sorted(used):
        if name == "java" and "torchserve" in used:
            continue  # the TorchServe line names its Java
        if name == "torchserve":
            from importlib.metadata import version as package_version

            label = f"TorchServe {package_version('torchserve')} on Java {version('java')}"
        else:
            label = f"{name} {version(name)}"
        modules = ", ".join(sorted(m.removeprefix("tests/") for m in used[name]))
        lines.append(f"  ran against {label:42s} {modules}")
    for name in sorted(missing):
        modules = ", ".join(sorted(m.removeprefix("tests/") for m in missing[name]))
        lines.append(f"  MISSING     {name:42s} {modules}")
    return lines
