"""nginx (Debian's package) in front of TorchServe, from deploy/nginx.conf.

TorchServe has no rate limiting; nginx adds per-client limits, a body cap and proxies only the
inference API.
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
    upstream: str  # TorchServe's inference host:port
    listen: str = "127.0.0.1:8443"
    rate_per_s: float = 10.0  # requests/s per client
    burst: int = 20  # extra requests allowed at once
    prefix: Path = DEFAULT_PREFIX  # nginx's working dir: config, pid, logs


def render(spec: FrontSpec, prefix: Path) -> str:
    text = TEMPLATE.read_text()
    for key, value in {
        "LISTEN": spec.listen,
        "UPSTREAM": spec.upstream,
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
