"""nginx (Debian's package) in front of one TorchServe or several, from deploy/nginx.conf.

TorchServe has no rate limiting; nginx adds per-client limits, a body cap and proxies only the
inference API. With several instances it balances by least connections, leaves out an instance
that fails for `fail_timeout_s`, and sends a request an instance refused or cut off to another.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gameart.paths import REPO_ROOT

TEMPLATE = REPO_ROOT / "deploy" / "nginx.conf"
DEFAULT_PREFIX = REPO_ROOT / ".run" / "nginx"


class FrontError(RuntimeError):
    """nginx is missing, refused the config, or did not start."""


@dataclass(frozen=True)
class FrontSpec:
    upstreams: tuple[str, ...]  # each TorchServe's inference host:port
    listen: str = "127.0.0.1:8443"
    rate_per_s: float = 10.0  # requests/s per client
    burst: int = 20  # extra requests allowed at once
    prefix: Path = DEFAULT_PREFIX  # nginx's working dir: config, pid, logs
    fail_timeout_s: int = 5  # how long an instance that failed is left out


def render(spec: FrontSpec, prefix: Path) -> str:
    if not spec.upstreams:
        raise FrontError("no upstream: give at least one TorchServe inference host:port")
    text = TEMPLATE.read_text()
    servers = "\n".join(
        f"        server {upstream} max_fails=1 fail_timeout={spec.fail_timeout_s}s;"
        for upstream in spec.upstreams
    )
    for key, value in {
        "LISTEN": spec.listen,
        "SERVERS": servers,
        "RATE": f"{spec.rate_per_s:g}",
        "BURST": str(spec.burst),
        "PREFIX": str(prefix),
    }.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise FrontError("nginx is not installed (Debian: apt-get install nginx-light or nginx)")
    return found


def start_front(spec: FrontSpec) -> int:
    """Start nginx for `spec`; its pid."""
    prefix = spec.prefix.resolve()
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    config.write_text(render(spec, prefix))
    binary = nginx_binary()
    check = subprocess.run(
        [binary, "-t", "-q", "-p", str(prefix), "-c", str(config)], capture_output=True, text=True
    )
    if check.returncode != 0:
        raise FrontError(f"nginx rejected the config:\n{check.stderr}")
    subprocess.run([binary, "-p", str(prefix), "-c", str(config)], check=True)
    pid_file = prefix / "nginx.pid"
    for _ in range(50):
        if pid_file.is_file() and pid_file.read_text().strip():
            return int(pid_file.read_text().strip())
        time.sleep(0.1)
    raise FrontError(f"nginx wrote no pid file in {prefix}; see {prefix / 'logs'}")


def reload_front(spec: FrontSpec) -> None:
    """Apply a changed spec (e.g. an instance taken out of the upstreams before it is stopped,
    as an orchestrator removes a pod's endpoint): nginx re-reads its config on SIGHUP, and its
    old workers finish the requests they hold."""
    prefix = spec.prefix.resolve()
    candidate = prefix / "nginx.conf.new"
    candidate.write_text(render(spec, prefix))
    check = subprocess.run(
        [nginx_binary(), "-t", "-q", "-p", str(prefix), "-c", str(candidate)],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        candidate.unlink()
        raise FrontError(f"nginx rejected the new config (the running one stays):\n{check.stderr}")
    candidate.replace(prefix / "nginx.conf")  # only a config nginx accepted replaces the live one
    os.kill(int((prefix / "nginx.pid").read_text().strip()), signal.SIGHUP)


def stop_front(prefix: Path = DEFAULT_PREFIX) -> bool:
    """Stop nginx gracefully (in-flight requests finish). True if one was running."""
    pid_file = prefix.resolve() / "nginx.pid"
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text().strip())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)
    for _ in range(100):
        if not pid_file.exists():
            break
        time.sleep(0.1)
    return True
