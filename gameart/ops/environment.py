#!/usr/bin/env python3
"""Check what `make install` cannot pip-install: Python 3.10+, Java 17+ for TorchServe, and the
Debian programs the tests start for real (Redis, nginx, Apache Bench, dpkg-deb).

Standard library only: it runs before the virtual environment exists. Exit 1, saying what is
missing and how to install it, unless everything is there.
  python3 scripts/check_env.py                  # check
  python3 scripts/check_env.py --install        # apt-get install what is missing (root only)
  python3 scripts/check_env.py --record FILE    # also write what was verified (paths, versions)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--install", action="store_true", help="apt-get install what is missing (root only)"
    )
    parser.add_argument("--record", type=Path, help="write the verified components here")
    args = parser.parse_args(argv)
    if sys.version_info < MIN_PYTHON:
        print(
            f"error: Python {'.'.join(map(str, MIN_PYTHON))}+ needed, this is "
            f"{sys.version.split()[0]}",
            file=sys.stderr,
        )
        return 1
    try:
        try:
            java = find_java()
        except EnvironmentProblem:
            if not args.install:
                raise
            install_java()
            java = find_java()
    except (EnvironmentProblem, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ok: Python {sys.version.split()[0]}, Java {java_major(java)} at {java}")
    missing = missing_test_tools()
    if missing and args.install and can_apt():
        try:
            apt_install(sorted(set(missing.values())))
        except subprocess.CalledProcessError as exc:
            print(f"error: apt-get failed: {exc}", file=sys.stderr)
        missing = missing_test_tools()
    if missing:
        packages = " ".join(sorted(set(missing.values())))
        print(
            f"error: the tests start {', '.join(sorted(missing))} for real and they are missing; "
            f"install them (Debian/Ubuntu: sudo apt-get install {packages}), or run "
            "`make install` as root",
            file=sys.stderr,
        )
        return 1
    print(f"ok: {', '.join(sorted(TEST_TOOLS))}")
    if args.record:
        record(args.record, java)
    return 0


if __name__ == "__main__":
    sys.exit(main())
