"""Inspect and scale a model's workers through TorchServe's management API.

  python scripts/scale.py show                             # every model: workers and queue
  python scripts/scale.py set gameart --min 2 --max 2      # PUT /models/gameart?min_worker=2...
  python scripts/scale.py watch gameart --min 1 --max 2    # scale from queue depth and p99
  python scripts/scale.py register model_store/x.mar       # needs enable_model_api=true
  python scripts/scale.py unregister x | set-default x 2.0

Scaling works with model registration disabled (the shipped config). `watch` is a single-host
controller; beyond one host, use an orchestrator (Kubernetes HPA/KEDA on the same signals).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from gameart.cli.common import command_parser, run_dir_parent
from gameart.ops.client import ModelStatus, TorchServeClient, TorchServeError
from gameart.ops.scaling import Policy, watch, worker_memory_mib


def print_model(status: ModelStatus) -> None:
    print(status.summary())
    for worker in status.workers:
        print(
            f"  worker {worker.id:>5s}  pid {worker.pid!s:>7s}  {worker.status:9s} "
            f"gpu={worker.gpu!s:5s} mem {worker_memory_mib(worker):6d} MiB"
        )


def show(client: TorchServeClient, args: argparse.Namespace) -> int:
    for name in [args.model] if args.model else client.models():
        print_model(client.status(name))
    return 0


def set_workers(client: TorchServeClient, args: argparse.Namespace) -> int:
    started = time.monotonic()
    response = client.scale(args.model, args.min, args.max, synchronous=True, timeout=args.timeout)
    if response.status_code != 200:
        print(f"error: HTTP {response.status_code}: {response.text.strip()}", file=sys.stderr)
        return 1
    print(
        f"scaled {args.model} to min {args.min} max {args.max or args.min} in "
        f"{time.monotonic() - started:.1f}s"
    )
    print_model(client.status(args.model))
    return 0


def register(client: TorchServeClient, args: argparse.Namespace) -> int:
    url = args.url if "://" in args.url else Path(args.url).name  # store-relative .mar name
    print(client.register(url, args.initial_workers))
    return 0


def unregister(client: TorchServeClient, args: argparse.Namespace) -> int:
    print(client.unregister(args.model, args.version))
    return 0


def set_default(client: TorchServeClient, args: argparse.Namespace) -> int:
    print(client.set_default(args.model, args.version))
    return 0


def watch_model(client: TorchServeClient, args: argparse.Namespace) -> int:
    policy = Policy(
        args.min,
        args.max,
        args.queue_high,
        args.queue_low,
        args.p99_high_ms,
        args.p99_low_ms,
        args.up_after,
        args.down_after,
        args.cooldown,
    )
    access_log = args.run_dir / "logs" / "access_log.log"
    watch(client, args.model, policy, access_log, args.interval, args.duration)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, run_dir_parent())
    parser.add_argument("--token", help="management token instead of the run dir's key file")
    commands = parser.add_subparsers(dest="command", required=True)
    show_cmd = commands.add_parser("show", help="workers (id, pid, status, GPU, memory), queue")
    show_cmd.add_argument("model", nargs="?")
    show_cmd.set_defaults(func=show)
    set_cmd = commands.add_parser("set", help="set min/max workers (synchronous)")
    set_cmd.add_argument("model")
    set_cmd.add_argument("--min", type=int, required=True)
    set_cmd.add_argument("--max", type=int)
    set_cmd.add_argument("--timeout", type=float, default=300.0)
    set_cmd.set_defaults(func=set_workers)
    register_cmd = commands.add_parser("register", help="register a .mar (model API must be on)")
    register_cmd.add_argument("url", help="a .mar name in the model store (or an allowed URL)")
    register_cmd.add_argument("--initial-workers", type=int, default=1)
    register_cmd.set_defaults(func=register)
    unregister_cmd = commands.add_parser("unregister", help="unregister a model version")
    unregister_cmd.add_argument("model")
    unregister_cmd.add_argument("version", nargs="?")
    unregister_cmd.set_defaults(func=unregister)
    default_cmd = commands.add_parser("set-default", help="make a version the default")
    default_cmd.add_argument("model")
    default_cmd.add_argument("version")
    default_cmd.set_defaults(func=set_default)
    watch_cmd = commands.add_parser("watch", help="scale between bounds from queue depth and p99")
    watch_cmd.add_argument("model")
    watch_cmd.add_argument("--min", type=int, required=True)
    watch_cmd.add_argument("--max", type=int, required=True)
    defaults = Policy(1, 1)
    watch_cmd.add_argument("--queue-high", type=int, default=defaults.queue_high)
    watch_cmd.add_argument("--queue-low", type=int, default=defaults.queue_low)
    watch_cmd.add_argument("--p99-high-ms", type=float, default=defaults.p99_high_ms)
    watch_cmd.add_argument("--p99-low-ms", type=float, default=defaults.p99_low_ms)
    watch_cmd.add_argument("--up-after", type=int, default=defaults.up_after)
    watch_cmd.add_argument("--down-after", type=int, default=defaults.down_after)
    watch_cmd.add_argument("--cooldown", type=float, default=defaults.cooldown_s)
    watch_cmd.add_argument("--interval", type=float, default=5.0, help="seconds")
    watch_cmd.add_argument("--duration", type=float, default=600.0, help="stop after (s)")
    watch_cmd.set_defaults(func=watch_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    low, high = getattr(args, "min", None), getattr(args, "max", None)
    if low is not None and high is not None and high < low:
        print("error: --max must be at least --min", file=sys.stderr)
        return 2
    try:
        client = TorchServeClient.from_run_dir(args.run_dir)
        if args.token:
            client.set_token("management", args.token)
        return args.func(client, args)
    except TorchServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
