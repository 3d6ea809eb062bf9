"""End to end on one host: 600x800 JPEG covers through TorchServe, our handler beside the stock
image_classifier and a no-op handler, all with the same workers and batching.

  python scripts/gpu_e2e.py --export-dir results/gpu/r50_export --checkpoint results/gpu/r50.pth
  python scripts/gpu_e2e.py --export-dir EXPORT --handlers noop,ours --protocols http,grpc
  python scripts/gpu_e2e.py --quick --export-dir EXPORT --out /tmp/e2e   # CPU smoke run (tests)

The rows are described in gameart/measure/gpu_e2e.py. Writes e2e.json, e2e.md and e2e.png to
--out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gameart.cli.common import choices_list, comma_list, command_parser
from gameart.measure.gpu_e2e import (
    DEFAULT_OUT,
    GPU_BATCH_SIZE,
    GPU_WORKERS,
    HANDLERS,
    PROTOCOLS,
    Setup,
    quick,
    run,
)
from gameart.ops.server import ServeError
from modelspec.meta import BACKENDS, PRECISIONS, MetaError

# The archive module (and so the batching options with its defaults) imports torch, and each
# spawned client process imports the command's modules again: it is imported in the functions.


def build_parser() -> argparse.ArgumentParser:
    from gameart.cli.build_mar import add_batching_options

    parser = command_parser(__doc__)
    parser.add_argument(
        "--export-dir", type=Path, required=True, help="an export (python -m export --fp16)"
    )
    parser.add_argument("--checkpoint", type=Path, help="its eager weights, for the stock row")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--backend", choices=BACKENDS, default="torchscript")
    parser.add_argument("--precision", choices=PRECISIONS, help="default: fp16 on a GPU, else fp32")
    parser.add_argument("--workers", type=int, default=GPU_WORKERS, help="per model")
    add_batching_options(parser)
    parser.set_defaults(batch_size=GPU_BATCH_SIZE)
    parser.add_argument(
        "--concurrency",
        type=comma_list(int),
        default=list(Setup.concurrencies),
        help=f"comma-separated client counts (default: {_listed(Setup.concurrencies)})",
    )
    parser.add_argument(
        "--handlers",
        type=choices_list(HANDLERS),
        default=list(HANDLERS),
        help=f"comma-separated, among {','.join(HANDLERS)} (default: all; stock needs "
        "--checkpoint)",
    )
    parser.add_argument("--seconds", type=float, default=Setup.seconds)
    parser.add_argument("--processes", type=int, default=Setup.processes, help="client processes")
    parser.add_argument(
        "--protocols",
        type=choices_list(PROTOCOLS),
        default=list(Setup.protocols),
        help="comma-separated: http, grpc or http,grpc",
    )
    parser.add_argument("--quick", action="store_true", help="a small CPU run (tests)")
    return parser


def _listed(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def setup_from_args(args: argparse.Namespace, gpu: bool) -> Setup:
    from gameart.pipeline.archive import ArchiveSpec

    served = ArchiveSpec(
        export_dir=args.export_dir,
        backend=args.backend,
        precision=args.precision or ("fp16" if gpu else "fp32"),
        device="gpu" if gpu else "cpu",
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
    ).with_workers(args.workers)
    setup = Setup(
        served=served,
        out=args.out,
        checkpoint=args.checkpoint,
        handlers=tuple(args.handlers),
        concurrencies=tuple(args.concurrency),
        seconds=args.seconds,
        processes=args.processes,
        protocols=tuple(args.protocols),
    )
    return quick(setup) if args.quick else setup


def main(argv: list[str] | None = None) -> int:
    import torch

    from gameart.pipeline.archive import BuildError

    args = build_parser().parse_args(argv)
    failures: tuple[type[Exception], ...] = (BuildError, MetaError, ServeError)
    try:
        setup = setup_from_args(args, gpu=torch.cuda.is_available())
        run(setup)
    except failures as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {setup.out / 'e2e.md'}")
    return 0
