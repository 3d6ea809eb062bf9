"""The serving-configuration experiment: workers, batchSize/maxBatchDelay, a full queue.

  python scripts/experiment.py                       # the default model, ~15 min on 2 cores
  python scripts/experiment.py --quick --out /tmp/x  # a couple of minutes
  python scripts/experiment.py --sections batching,queue --batch-sizes 1,8 --delays 0,5

Each configuration is a .mar of the export served on loopback ports and driven by the load
generator (gameart/measure/experiment.py). Writes experiment.json, experiment.md and plots
to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from gameart.cli.build_mar import add_batching_options
from gameart.cli.common import choices_list, comma_list, command_parser
from gameart.measure.experiment import (
    DEFAULT_EXPORT,
    DEFAULT_OUT,
    FULL,
    QUICK,
    SECTIONS,
    ExperimentSpec,
    run,
    served_spec,
)
from gameart.ops.server import ServeError
from gameart.pipeline.archive import BuildError
from modelspec.meta import META_FILENAME, MetaError


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__)
    parser.add_argument(
        "--export-dir",
        type=Path,
        default=DEFAULT_EXPORT,
        help="the export to serve (default: the demo's model)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="a smaller plan: a few minutes")
    parser.add_argument(
        "--sections",
        type=choices_list(SECTIONS),
        default=list(SECTIONS),
        help=f"comma-separated, among {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--gpu", action="store_true", help="GPU workers, TorchScript (fp16 where exported)"
    )
    add_batching_options(parser)  # the workers section's batching (default: the archive's)
    parser.add_argument(
        "--workers",
        type=comma_list(int),
        help=f"comma-separated worker counts (default: {_listed(FULL.workers)})",
    )
    parser.add_argument(
        "--concurrency",
        type=comma_list(int),
        help="comma-separated client counts of the workers section "
        f"(default: {_listed(FULL.worker_concurrency)})",
    )
    parser.add_argument(
        "--batch-sizes",
        type=comma_list(int),
        help=f"comma-separated batchSize values (default: {_listed(FULL.batch_sizes)})",
    )
    parser.add_argument(
        "--delays",
        type=comma_list(int),
        help=f"comma-separated maxBatchDelay ms (default: {_listed(FULL.delays_ms)})",
    )
    parser.add_argument(
        "--seconds", type=float, help=f"timed seconds per step (default: {FULL.seconds:g})"
    )
    return parser


def _listed(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def spec_from_args(args: argparse.Namespace) -> ExperimentSpec:
    plan = QUICK if args.quick else FULL
    lists = {
        "workers": args.workers,
        "worker_concurrency": args.concurrency,
        "batch_sizes": args.batch_sizes,
        "delays_ms": args.delays,
    }
    plan = dataclasses.replace(plan, **{key: tuple(v) for key, v in lists.items() if v})
    if args.seconds:
        plan = dataclasses.replace(plan, seconds=args.seconds)
    served = served_spec(
        args.export_dir,
        gpu=args.gpu,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
    )
    return ExperimentSpec(served=served, out=args.out, plan=plan, sections=tuple(args.sections))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.export_dir / META_FILENAME).is_file():
        print(f"error: no export in {args.export_dir}; run `make demo` first", file=sys.stderr)
        return 1
    try:
        spec = spec_from_args(args)
        run(spec)
    except (BuildError, MetaError, ServeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {spec.out / 'experiment.md'}")
    return 0
