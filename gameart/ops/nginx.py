"""nginx (Debian's package) in front of one TorchServe or several, from deploy/nginx.conf.

TorchServe has no rate limiting; nginx adds per-client limits, a body cap and proxies only the
inference API. With several instances it balances by least connections, leaves out an instance
that fails for `fail_timeout_s`, and sends a request an instance refused or cut off to another.

It also serves the playground page (deploy/playground/) on the same origin. The page holds no
secret: with `key_run_dir` set, nginx adds that server's inference key to what it proxies, and a
small watcher beside nginx (watch_key) rewrites the key and reloads nginx when the key file
changes (renewal, rotation).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from gameart.ops.client import KEY_FILE, TorchServeError, read_tokens
from gameart.ops.explain_pool import SUFFIX
from gameart.ops.processes import terminate_if_ours
from gameart.paths import REPO_ROOT

TEMPLATE = REPO_ROOT / "deploy" / "nginx.conf"
PLAYGROUND = REPO_ROOT / "deploy" / "playground"
KEY_INCLUDE = "inference_key.conf"  # in the prefix: the Authorization header nginx adds
WATCHER_PID = "key_watch.pid"  # in the prefix: the watcher started beside nginx
PLAYGROUND_RECORD = "playground.path"  # in the prefix: where the page's files were published
MODEL_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # TorchServe's rule for model names
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
    # the run dir of the server whose inference key nginx adds (None: clients send their own)
    key_run_dir: Path | None = None
    models: tuple[str, ...] = ()  # offered by the playground page
    explain_pools: bool = False  # send /explanations/<m> to <m>-explain (gameart/ops/explain_pool)
    # explanations cost 3-30x a prediction: a limit of their own (and 2 at once for everyone)
    explain_rate_per_s: float = 1.0
    explain_burst: int = 5


def nginx_rate(per_s: float) -> str:
    """limit_req's rate: whole requests per second, or per minute below one a second."""
    if per_s >= 1:
        return f"{round(per_s)}r/s"
    return f"{max(1, round(per_s * 60))}r/m"


def render(spec: FrontSpec, prefix: Path) -> str:
    if not spec.upstreams:
        raise FrontError("no upstream: give at least one TorchServe inference host:port")
    if bad := [m for m in spec.models if not MODEL_NAME.fullmatch(m)]:
        raise FrontError(f"model names must match {MODEL_NAME.pattern}: {bad}")
    text = TEMPLATE.read_text()
    servers = "\n".join(
        f"        server {upstream} max_fails=1 fail_timeout={spec.fail_timeout_s}s;"
        for upstream in spec.upstreams
    )
    for key, value in {
        "LISTEN": spec.listen,
        "SERVERS": servers,
        "RATE": nginx_rate(spec.rate_per_s),
        "BURST": str(spec.burst),
        "EXPLAIN_RATE": nginx_rate(spec.explain_rate_per_s),
        "EXPLAIN_BURST": str(spec.explain_burst),
        "PREFIX": str(prefix),
        "PLAYGROUND": str(published_playground(prefix)),
        "EXPLAIN_POOL": (
            "rewrite ^/explanations/([A-Za-z0-9_.-]+)(/[A-Za-z0-9_.-]+)?$ "
            f"/explanations/$1{SUFFIX}$2 break;"
            if spec.explain_pools
            else "# explanations go to the model's own workers"
        ),
        # model names are checked above: safe inside nginx's quotes
        "PLAYGROUND_CONFIG": json.dumps({"models": list(spec.models)}),
    }.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def published_playground(prefix: Path) -> Path:
    """The page's files where nginx's workers can read them: started as root, nginx serves as
    `nobody`, which cannot enter a private checkout or run dir. A fresh directory of our own
    (mkdtemp: no other user can have prepared it), recorded in the prefix and reused by reloads,
    removed by stop_front. The page holds no secret."""
    record = prefix / PLAYGROUND_RECORD
    if record.is_file():
        target = Path(record.read_text().strip())
        if target.is_dir() and not target.is_symlink() and target.stat().st_uid == os.getuid():
            return target
    target = Path(tempfile.mkdtemp(prefix="gameart-playground-"))
    for source in PLAYGROUND.iterdir():
        if source.is_file():
            shutil.copyfile(source, target / source.name)
            (target / source.name).chmod(0o644)
    target.chmod(0o755)
    record.write_text(str(target))
    return target


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
    write_key_include(spec)
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


def write_key_include(spec: FrontSpec) -> bool:
    """Write the header nginx adds (the key of spec.key_run_dir's server; nothing without one),
    mode 0600; True if it changed."""
    include = spec.prefix.resolve() / KEY_INCLUDE
    key = read_tokens(spec.key_run_dir).get("inference") if spec.key_run_dir else None
    text = f'proxy_set_header Authorization "Bearer {key}";\n' if key else "# no key added\n"
    if include.is_file() and include.read_text() == text:
        return False
    fresh = include.with_suffix(".new")
    fresh.touch(mode=0o600)
    fresh.chmod(0o600)
    fresh.write_text(text)
    fresh.replace(include)
    return True


def watch_key(spec: FrontSpec, poll_s: float = 1.0) -> int:
    """Until the nginx running now stops: when the server's key file changes, rewrite the header
    and reload nginx (renewal happens at half the key's lifetime, so there is ample time).
    Reloads made."""
    pid_file = spec.prefix.resolve() / "nginx.pid"
    key_file = Path(spec.key_run_dir or ".") / KEY_FILE
    nginx_pid = _read_pid(pid_file)
    seen, reloads = None, 0
    # ends with that nginx: a later one (a new start) has its own watcher
    while (
        nginx_pid is not None and _read_pid(pid_file) == nginx_pid and psutil.pid_exists(nginx_pid)
    ):
        stamp = key_file.stat().st_mtime_ns if key_file.is_file() else None
        if stamp != seen:
            seen = stamp
            try:
                if write_key_include(spec):
                    os.kill(nginx_pid, signal.SIGHUP)
                    reloads += 1
            except (OSError, ValueError, TorchServeError) as exc:  # read again at the next poll
                print(f"could not refresh the key yet: {exc}", flush=True)
                seen = None
        time.sleep(poll_s)
    return reloads


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def start_key_watcher(spec: FrontSpec) -> int:
    """watch_key in a process of its own, beside nginx (it ends when nginx stops); its pid."""
    prefix = spec.prefix.resolve()
    command = [
        sys.executable,
        "-m",
        "gameart.cli.nginx_front",
        "--prefix",
        str(prefix),
        "watch-key",
        "--run-dir",
        str(Path(spec.key_run_dir).resolve()),
    ]
    with open(prefix / "key_watch.log", "a") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (prefix / WATCHER_PID).write_text(str(process.pid))
    return process.pid


def stop_front(prefix: Path = DEFAULT_PREFIX) -> bool:
    """Stop nginx gracefully (in-flight requests finish), its key watcher, and remove the
    page's published copy. True if nginx was running."""
    prefix = prefix.resolve()
    _stop_watcher(prefix / WATCHER_PID)
    pid_file = prefix / "nginx.pid"
    if not pid_file.is_file():
        return False
    pid = _read_pid(pid_file)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
    for _ in range(100):
        if not pid_file.exists():
            break
        time.sleep(0.1)
    record = prefix / PLAYGROUND_RECORD
    if record.is_file():
        published = Path(record.read_text().strip())
        if published.name.startswith("gameart-playground-") and not published.is_symlink():
            shutil.rmtree(published, ignore_errors=True)
        record.unlink()
    return True


def _stop_watcher(pid_file: Path) -> None:
    terminate_if_ours(_read_pid(pid_file), "watch-key")
    pid_file.unlink(missing_ok=True)
