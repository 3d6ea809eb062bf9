"""Run nginx in front of TorchServe: per-client rate limits, a body cap, inference only.

  python scripts/nginx_front.py start --listen 127.0.0.1:8443 --rate 10 --burst 20
  python scripts/nginx_front.py start --add-key   # + the playground page at /playground/
  python scripts/nginx_front.py stop

--upstream defaults to the running server's inference address; give several, comma-separated,
to balance over several TorchServe instances. With --add-key nginx adds the server's inference
key itself (kept current as keys renew), so the page and clients need none: the front's rate
limits and body cap are then the guard, so keep it on loopback or behind your own auth.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gameart.cli.common import comma_list, command_parser, run_dir_parent
from gameart.ops.client import TorchServeClient, TorchServeError
from gameart.ops.explain_pool import is_pool
from gameart.ops.nginx import (
    DEFAULT_PREFIX,
    FrontError,
    FrontSpec,
    start_front,
    start_key_watcher,
    stop_front,
    watch_key,
)

DEFAULTS = FrontSpec(upstreams=())


def start(args: argparse.Namespace) -> int:
    upstreams = tuple(args.upstream or ())
    if not upstreams:
        upstreams = (TorchServeClient.from_run_dir(args.run_dir).endpoints.inference_host_port,)
    served: list[str] = []
    try:  # what the playground offers; a front for other instances may not see this one
        served = TorchServeClient.from_run_dir(args.run_dir, timeout=5).models()
    except (TorchServeError, OSError) as exc:
        print(f"(the playground will ask for the model's name: {exc})")
    models = tuple(model for model in served if not is_pool(model))
    if args.add_key and len(upstreams) > 1:
        raise FrontError(
            "--add-key adds one server's key: it cannot front several instances (their keys "
            "differ; run them without token authorisation behind your own, as deploy/k8s does)"
        )
    spec = FrontSpec(
        upstreams,
        listen=args.listen,
        rate_per_s=args.rate,
        burst=args.burst,
        prefix=args.prefix,
        explain_rate_per_s=args.explain_rate,
        explain_burst=args.explain_burst,
        key_run_dir=args.run_dir if args.add_key else None,
        models=models,
        explain_pools=any(is_pool(model) for model in served),  # serve.py start --explain-pool
    )
    pid = start_front(spec)
    if args.add_key:
        start_key_watcher(spec)
    print(
        f"nginx pid {pid}: http://{spec.listen} -> {', '.join(upstreams)} "
        f"(rate {spec.rate_per_s:g}/s, burst {spec.burst}"
        f"{', adds the inference key' if args.add_key else ''}"
        f"{', explanations to the -explain pools' if spec.explain_pools else ''})\n"
        f"playground: http://{spec.listen}/playground/"
    )
    return 0


def watch(args: argparse.Namespace) -> int:
    spec = FrontSpec(upstreams=(), prefix=args.prefix, key_run_dir=args.run_dir)
    print(f"watching {args.run_dir} for new keys, for the nginx in {args.prefix}", flush=True)
    print(f"nginx reloaded {watch_key(spec)} time(s) for a new key; nginx has stopped")
    return 0


def stop(args: argparse.Namespace) -> int:
    print("nginx stopped" if stop_front(args.prefix) else "nginx is not running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__)
    parser.add_argument(
        "--prefix",
        type=Path,
        default=DEFAULT_PREFIX,
        help="nginx's working dir: config, pid, logs (default %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", parents=[run_dir_parent()])
    start_cmd.add_argument("--listen", default=DEFAULTS.listen, help="address:port to serve")
    start_cmd.add_argument(
        "--upstream",
        type=comma_list(),
        help="TorchServe inference host:port, comma-separated for several (default: the "
        "running server's)",
    )
    start_cmd.add_argument(
        "--rate", type=float, default=DEFAULTS.rate_per_s, help="requests/s per client"
    )
    start_cmd.add_argument(
        "--burst", type=int, default=DEFAULTS.burst, help="extra requests allowed at once"
    )
    start_cmd.add_argument(
        "--explain-rate",
        type=float,
        default=DEFAULTS.explain_rate_per_s,
        help="explanations/s per client",
    )
    start_cmd.add_argument(
        "--explain-burst",
        type=int,
        default=DEFAULTS.explain_burst,
        help="extra explanations allowed at once",
    )
    start_cmd.add_argument(
        "--add-key",
        action="store_true",
        help="nginx adds the server's inference key (the playground page needs it)",
    )
    start_cmd.set_defaults(func=start)
    commands.add_parser("stop").set_defaults(func=stop)
    commands.add_parser(
        "watch-key", parents=[run_dir_parent()], help="(started by start --add-key)"
    ).set_defaults(func=watch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FrontError, TorchServeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # the key watcher runs as python -m gameart.cli.nginx_front
    raise SystemExit(main())
