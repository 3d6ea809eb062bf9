#!/usr/bin/env python3
"""Run nginx (Debian's package) in front of TorchServe with deploy/nginx.conf.

  python scripts/nginx_front.py start --listen 127.0.0.1:8443 --rate 10 --burst 20
  python scripts/nginx_front.py stop

TorchServe has no rate limiting; nginx adds per-client limits, a body cap and proxies only the
inference API. --upstream defaults to the running server's inference address.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gameart.ops.client import DEFAULT_RUN_DIR, REPO_ROOT, TorchServeClient

TEMPLATE = REPO_ROOT / "deploy" / "nginx.conf"
DEFAULT_PREFIX = REPO_ROOT / ".run" / "nginx"


def render(listen: str, upstream: str, rate: float, burst: int, prefix: Path) -> str:
    text = TEMPLATE.read_text()
    for key, value in {
        "LISTEN": listen,
        "UPSTREAM": upstream,
        "RATE": f"{rate:g}",
        "BURST": str(burst),
        "PREFIX": str(prefix),
    }.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise SystemExit("nginx is not installed (Debian: apt-get install nginx-light or nginx)")
    return found


def start(args: argparse.Namespace) -> int:
    prefix = args.prefix.resolve()
    prefix.mkdir(parents=True, exist_ok=True)
    upstream = args.upstream
    if not upstream:
        upstream = TorchServeClient.from_run_dir(args.run_dir).endpoints.inference.split("//")[1]
    config = prefix / "nginx.conf"
    config.write_text(render(args.listen, upstream, args.rate, args.burst, prefix))
    binary = nginx_binary()
    check = subprocess.run(
        [binary, "-t", "-q", "-p", str(prefix), "-c", str(config)], capture_output=True, text=True
    )
    if check.returncode != 0:
        print(f"error: nginx rejected the config:\n{check.stderr}", file=sys.stderr)
        return 1
    subprocess.run([binary, "-p", str(prefix), "-c", str(config)], check=True)
    pid_file = prefix / "nginx.pid"
    for _ in range(50):
        if pid_file.is_file() and pid_file.read_text().strip():
            break
        time.sleep(0.1)
    print(
        f"nginx pid {pid_file.read_text().strip()}: http://{args.listen} -> {upstream} "
        f"(rate {args.rate:g}/s, burst {args.burst})"
    )
    return 0


def stop(args: argparse.Namespace) -> int:
    pid_file = args.prefix.resolve() / "nginx.pid"
    if not pid_file.is_file():
        print("nginx is not running")
        return 0
    pid = int(pid_file.read_text().strip())
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGQUIT)  # graceful: finish in-flight requests
    for _ in range(100):
        if not pid_file.exists():
            break
        time.sleep(0.1)
    print("nginx stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--prefix",
        type=Path,
        default=DEFAULT_PREFIX,
        help="nginx's working dir: config, pid, logs (default %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start")
    start_cmd.add_argument("--listen", default="127.0.0.1:8443", help="address:port to serve")
    start_cmd.add_argument(
        "--upstream", help="TorchServe inference host:port (default: the running server's)"
    )
    start_cmd.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    start_cmd.add_argument("--rate", type=float, default=10.0, help="requests/s per client")
    start_cmd.add_argument("--burst", type=int, default=20, help="extra requests allowed at once")
    start_cmd.set_defaults(func=start)
    commands.add_parser("stop").set_defaults(func=stop)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
