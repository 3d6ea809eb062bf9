"""Start, stop and inspect TorchServe with the project's config.properties.

python scripts/serve.py start            # serve every .mar in model_store/, wait until READY
python scripts/serve.py status           # models, workers, queue
python scripts/serve.py token inference  # print a token for curl
python scripts/serve.py stop
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gameart.cli.common import command_parser, key_values, run_dir_parent
from gameart.ops.client import KEY_FILE, TorchServeClient, TorchServeError, read_tokens
from gameart.ops.environment import EnvironmentProblem
from gameart.ops.server import (
    ServeError,
    ServerSpec,
    check_health,
    recorded_pid,
    start_server,
    stop_server,
)
from gameart.ops.supervisor import supervise

DEFAULTS = ServerSpec()


def start(args: argparse.Namespace) -> int:
    spec = ServerSpec(
        run_dir=args.run_dir,
        model_store=args.model_store,
        config=args.config,
        log_config=args.log_config,
        overrides=key_values(args.set),
        ready_timeout_s=args.timeout,
        explain_pools=args.explain_pool,
    )
    if args.foreground:
        return supervise(spec, grace_s=args.grace)
    print(start_server(spec).describe())
    return 0


def stop(args: argparse.Namespace) -> int:
    run_dir = args.run_dir.resolve()
    print("stopped" if stop_server(run_dir) else f"no server running from {run_dir}")
    return 0


def status(args: argparse.Namespace) -> int:
    run_dir = args.run_dir.resolve()
    if recorded_pid(run_dir) is None:
        print(f"no server running from {run_dir}")
        return 1
    for model in TorchServeClient.from_run_dir(run_dir).statuses():
        print(model.summary())
        for worker in model.workers:
            print(
                f"  worker {worker.id} pid {worker.pid} {worker.status} gpu={worker.gpu} "
                f"mem={worker.memory_bytes / 2**20:.0f} MiB"
            )
    return 0


def health(args: argparse.Namespace) -> int:
    """Exit 0 only when the server answers /ping and every model has a READY worker."""
    state = check_health(args.run_dir, live_only=args.live)
    if state.problem:
        print(f"unhealthy: {state.problem}")
        return 1
    print("alive" if args.live else f"healthy: READY workers per model {dict(state.ready)}")
    return 0


def rotate_token(args: argparse.Namespace) -> int:
    """Replace the inference or management key (TorchServe rewrites key_file.json)."""
    TorchServeClient.from_run_dir(args.run_dir.resolve()).renew_key(args.kind)
    print(f"new {args.kind} key written to {args.run_dir / KEY_FILE}")
    return 0


def token(args: argparse.Namespace) -> int:
    tokens = read_tokens(args.run_dir.resolve())
    if args.kind not in tokens:
        print(
            f"no {args.kind} token in {args.run_dir / KEY_FILE} (is the server running, "
            "with token authorisation on?)",
            file=sys.stderr,
        )
        return 1
    print(tokens[args.kind])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, run_dir_parent())
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", help="start and wait until workers are READY")
    start_cmd.add_argument("--config", type=Path, default=DEFAULTS.config)
    start_cmd.add_argument("--model-store", type=Path, default=DEFAULTS.model_store)
    start_cmd.add_argument(
        "--log-config",
        type=Path,
        default=DEFAULTS.log_config,
        help="log4j2 configuration (default: %(default)s)",
    )
    start_cmd.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config.properties key (repeatable)",
    )
    start_cmd.add_argument(
        "--timeout",
        type=float,
        default=DEFAULTS.ready_timeout_s,
        help="seconds to wait for READY workers",
    )
    start_cmd.add_argument(
        "--foreground",
        action="store_true",
        help="stay attached (a container's main process): on SIGTERM/SIGINT drain, then stop",
    )
    start_cmd.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="with --foreground: seconds from SIGTERM to stopped, draining included; keep the "
        "runtime's grace (docker --stop-timeout, terminationGracePeriodSeconds) at least this "
        "(default: %(default)s, Docker's default)",
    )
    start_cmd.add_argument(
        "--explain-pool",
        action="store_true",
        help="serve each model a second time as <model>-explain with one worker, for "
        "/explanations (the nginx front sends them there), so predictions never queue behind one",
    )
    start_cmd.set_defaults(func=start)
    commands.add_parser("stop", help="stop the server and its workers").set_defaults(func=stop)
    commands.add_parser("status", help="models, workers, queues").set_defaults(func=status)
    health_cmd = commands.add_parser(
        "health", help="exit 0 when /ping answers and every model has a READY worker"
    )
    health_cmd.add_argument(
        "--live",
        action="store_true",
        help="only whether the server answers /ping (a liveness probe: busy or draining is alive)",
    )
    health_cmd.set_defaults(func=health)
    rotate_cmd = commands.add_parser("rotate-token", help="replace a key (uses the API key)")
    rotate_cmd.add_argument("kind", choices=["inference", "management"])
    rotate_cmd.set_defaults(func=rotate_token)
    token_cmd = commands.add_parser("token", help="print an API token from the key file")
    token_cmd.add_argument("kind", choices=["inference", "management", "API"])
    token_cmd.set_defaults(func=token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ServeError, TorchServeError, EnvironmentProblem, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
