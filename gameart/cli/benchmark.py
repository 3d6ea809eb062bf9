"""Benchmark: model latency per device x backend x batch, preprocessing cost per image, and
end-to-end HTTP throughput through TorchServe against the stock image_classifier handler.

  python scripts/benchmark.py                  # ResNet-50 at 224, full run (~10 min on 2 cores)
  python scripts/benchmark.py --quick          # minute-scale (tests use it)
  python scripts/benchmark.py --export-dir artifacts/export/gameart   # any exported model
  python scripts/benchmark.py --report-only results/benchmark   # redo results.md and plots

Writes results.json (with machine info), results.md and PNG plots to --out. GPU rows appear
when CUDA is available and are marked absent otherwise. Weights are random: latency does not
depend on their values, only on the architecture.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gameart.cli.build_mar import add_batching_options
from gameart.cli.common import choices_list, comma_list, command_parser
from gameart.measure.benchmark.spec import (
    DEFAULT_OUT,
    DEVICES,
    FULL,
    QUICK,
    SECTIONS,
    SERVED_BACKENDS,
    BenchmarkSpec,
    Serving,
)
from gameart.ops.server import ServeError
from gameart.pipeline.archive import BuildError
from modelspec.meta import MetaError


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__)
    parser.add_argument(
        "--model",
        default=BenchmarkSpec.model,
        help="torchvision architecture to benchmark (default: %(default)s)",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=BenchmarkSpec.num_classes,
        help="for --model (default: %(default)s)",
    )
    parser.add_argument("--export-dir", type=Path, help="benchmark this export instead")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    parser.add_argument("--quick", action="store_true", help="minute-scale run: fewer sizes")
    parser.add_argument(
        "--devices",
        type=choices_list(DEVICES),
        help="cpu, cuda or cpu,cuda (default: every one this machine has)",
    )
    parser.add_argument(
        "--skip",
        type=choices_list(SECTIONS),
        default=[],
        help=f"sections not to measure, of {','.join(SECTIONS)} (e.g. --skip e2e,preprocess)",
    )
    parser.add_argument(
        "--served-backend",
        choices=SERVED_BACKENDS,
        default=BenchmarkSpec.served_backend,
        help="backend of our .mar in the end-to-end runs; auto picks the faster one at our "
        "default batch size on CPU",
    )
    parser.add_argument(
        "--rows",
        type=comma_list(),
        default=[],
        help="model rows to time, by backend (e.g. aotinductor,torchscript,cuda-graph); "
        "default: all",
    )
    parser.add_argument(
        "--cell-seconds",
        type=float,
        help=f"timed seconds per model cell (default: {FULL.min_time:g}; "
        f"quick: {QUICK.min_time:g})",
    )
    serving = parser.add_argument_group("end to end")
    serving.add_argument(
        "--workers",
        type=int,
        default=Serving.workers,
        help="workers per model (default: %(default)s)",
    )
    add_batching_options(serving)  # --batch-size, --max-batch-delay: our archives' defaults
    serving.add_argument(
        "--concurrency",
        type=comma_list(int),
        help=f"client counts (default: {_listed(FULL.concurrencies)}; "
        f"quick: {_listed(QUICK.concurrencies)})",
    )
    serving.add_argument(
        "--e2e-seconds",
        type=float,
        help=f"timed seconds per step (default: {FULL.e2e_seconds:g})",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        help="an earlier results.json of the same subject: sections skipped now are taken from "
        "it (to measure model and end-to-end in separate runs, e.g. on a GPU lease)",
    )
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="DIR",
        help="measure nothing: redo DIR/results.md and the plots from DIR/results.json",
    )
    return parser


def _listed(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def spec_from_args(args: argparse.Namespace) -> BenchmarkSpec:
    plan = QUICK if args.quick else FULL
    if args.concurrency:
        plan = plan.replace(concurrencies=tuple(args.concurrency))
    if args.cell_seconds:
        plan = plan.replace(min_time=args.cell_seconds)
    if args.e2e_seconds:
        plan = plan.replace(e2e_seconds=args.e2e_seconds)
    return BenchmarkSpec(
        out=args.out,
        model=args.model,
        num_classes=args.num_classes,
        export_dir=args.export_dir,
        quick=args.quick,
        plan=plan,
        devices=tuple(args.devices) if args.devices else None,
        skip=frozenset(args.skip),
        served_backend=args.served_backend,
        rows=tuple(args.rows),
        serving=Serving(args.workers, args.batch_size, args.max_batch_delay),
        reuse=args.reuse,
    )


def report_only(directory: Path) -> int:
    """Redo results.md and the plots from a saved results.json: measures nothing."""
    from gameart.measure.benchmark.report import write_report

    path = directory / "results.json"
    if not path.is_file():
        print(f"error: no {path}", file=sys.stderr)
        return 1
    write_report(json.loads(path.read_text()), directory)
    print(f"wrote {directory / 'results.md'} and plots from {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report_only:
        return report_only(args.report_only)
    from gameart.measure.benchmark.runner import run  # torch and friends: only to measure

    try:
        run(spec_from_args(args))
    except (BuildError, MetaError, ServeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
