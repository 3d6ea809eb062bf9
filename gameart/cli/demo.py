"""The main job, end to end (`make demo`): dataset, training, export, archive, serve, ask.

Each step is cached and redone only when its inputs changed; the server keeps running.
"""

from __future__ import annotations

import argparse
import sys

from export.cli import EXPORT_ERRORS
from gameart.demo import run_demo
from gameart.ops.server import ServeError
from gameart.pipeline.archive import BuildError
from gameart.pipeline.dataset import DatasetError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--train-budget",
        type=float,
        default=1200.0,
        help="seconds allowed for training (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_demo(args.train_budget)
    except (DatasetError, *EXPORT_ERRORS, BuildError, ServeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
