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
import subprocess
import sys
from pathlib import Path

from gameart.ops.environment import (
    MIN_PYTHON,
    TEST_TOOLS,
    EnvironmentProblem,
    apt_install,
    can_apt,
    find_java,
    install_java,
    java_major,
    missing_test_tools,
    record,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--install", action="store_true", help="apt-get install what is missing (root only)"
    )
    parser.add_argument("--record", type=Path, help="write the verified components here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
