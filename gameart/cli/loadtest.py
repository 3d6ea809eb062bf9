"""Load-test a running TorchServe model: closed-loop concurrency sweep and open-loop rates.

  python scripts/loadtest.py --model gameart                          # closed loop 1,4,16,64
  python scripts/loadtest.py --model gameart --rate 5,10,20 --duration 20   # open loop
  python scripts/loadtest.py --model gameart --bad-share 0.2          # 20 % malformed uploads

Every step is bounded by --duration and --max-requests and stops by itself. Traffic goes to
loopback only unless --allow-remote. Output: JSON, CSV and a PNG plot in --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gameart.cli.common import comma_list, command_parser, run_dir_parent, token_parent
from gameart.measure.loadgen import LoadError
from gameart.measure.loadtest import LoadTestSpec, run
from gameart.ops.client import Endpoints, TorchServeClient, TorchServeError

DEFAULTS = LoadTestSpec(model="")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__, run_dir_parent(), token_parent())
    parser.add_argument("--model", required=True, help="model name in /predictions/<model>")
    parser.add_argument("--url", help="inference base URL instead of the run dir's")
    parser.add_argument(
        "--concurrency",
        type=comma_list(int),
        default=list(DEFAULTS.concurrency),
        help="closed-loop steps, comma-separated (default: 1,4,16,64; empty: none)",
    )
    parser.add_argument(
        "--rate", type=comma_list(float), default=[], help="open-loop steps in requests/s"
    )
    parser.add_argument(
        "--duration", type=float, default=DEFAULTS.duration_s, help="seconds per step"
    )
    parser.add_argument(
        "--max-requests", type=int, default=DEFAULTS.max_requests, help="cap per step"
    )
    parser.add_argument(
        "--warmup", type=float, default=DEFAULTS.warmup_s, help="seconds before each step"
    )
    parser.add_argument(
        "--images",
        type=Path,
        help="folder of images to send (default: a "
        "built-in mix of cover JPEG, 1080p JPEG/PNG, RGBA PNG)",
    )
    parser.add_argument("--multipart", action="store_true", help="send multipart, not raw body")
    parser.add_argument(
        "--bad-share", type=float, default=DEFAULTS.bad_share, help="share of malformed uploads"
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULTS.timeout_s, help="per request, seconds"
    )
    parser.add_argument(
        "--skip-ceiling", action="store_true", help="skip measuring the client's own ceiling"
    )
    parser.add_argument(
        "--cross-check-ab",
        type=int,
        metavar="REQUESTS",
        help="also run Apache Bench at the first concurrency, this many requests",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback URL (off by default: load stays local)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULTS.out, help="default: %(default)s")
    return parser


def spec_from_args(args: argparse.Namespace) -> LoadTestSpec:
    return LoadTestSpec(
        model=args.model,
        concurrency=tuple(args.concurrency),
        rates=tuple(args.rate),
        duration_s=args.duration,
        max_requests=args.max_requests,
        warmup_s=args.warmup,
        images=args.images,
        multipart=args.multipart,
        bad_share=args.bad_share,
        timeout_s=args.timeout,
        measure_ceiling=not args.skip_ceiling,
        cross_check_ab=args.cross_check_ab,
        allow_remote=args.allow_remote,
        out=args.out,
    )


def make_client(args: argparse.Namespace) -> TorchServeClient:
    if args.url:
        client = TorchServeClient(Endpoints(args.url.rstrip("/"), "", ""))
    else:
        client = TorchServeClient.from_run_dir(args.run_dir)
    if args.token:
        client.set_token("inference", args.token)
    return client


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        client = make_client(args)
        key_file = None if args.token else client.key_file  # a key given by hand stays
        run(spec_from_args(args), client, key_file)
    except (LoadError, TorchServeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
