"""Package an export into a TorchServe .mar with our handler.

python scripts/build_mar.py --export-dir artifacts/export/gameart --backend onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gameart.cli.common import command_parser, key_values
from gameart.pipeline.archive import (
    ARCHIVE_FORMATS,
    DEVICES,
    ArchiveSpec,
    BuildError,
    build_archive,
    describe,
)
from modelspec.meta import BACKENDS, PRECISIONS, MetaError

DEFAULTS = ArchiveSpec(export_dir=Path("."))  # the defaults shown in --help come from the spec


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(__doc__)
    parser.add_argument(
        "--export-dir",
        type=Path,
        required=True,
        help="output of `python -m export` (has model_meta.json)",
    )
    parser.add_argument("--name", help="model name in URLs (default: the export's name)")
    parser.add_argument("--version", default=DEFAULTS.version)
    parser.add_argument("--backend", choices=BACKENDS, default=DEFAULTS.backend)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=DEFAULTS.precision,
        help="fp16 (GPU workers) needs an export made with --fp16 (aoti: --aot on cuda); int8 "
        "(CPU, onnx backend) one made with --int8",
    )
    parser.add_argument("--model-store", type=Path, default=DEFAULTS.model_store)
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=DEFAULTS.device,
        help="deviceType: gpu workers get a GPU id from TorchServe",
    )
    add_batching_options(parser)
    parser.add_argument("--min-workers", type=int, default=DEFAULTS.min_workers)
    parser.add_argument("--max-workers", type=int, default=DEFAULTS.max_workers)
    parser.add_argument(
        "--response-timeout", type=int, default=DEFAULTS.response_timeout_s, help="seconds"
    )
    parser.add_argument(
        "--startup-timeout", type=int, default=DEFAULTS.startup_timeout_s, help="seconds"
    )
    parser.add_argument(
        "--job-queue-size",
        type=int,
        help="this model's queue (default: job_queue_size in config.properties); when full, "
        "requests get an immediate 503",
    )
    parser.add_argument("--top-k", type=int, default=DEFAULTS.top_k)
    parser.add_argument(
        "--handler-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another handler setting, e.g. max_image_pixels=20000000",
    )
    parser.add_argument(
        "--archive-format",
        choices=ARCHIVE_FORMATS,
        default=DEFAULTS.archive_format,
        help="zip-store skips compression (weights barely compress)",
    )
    return parser


def add_batching_options(parser: argparse.ArgumentParser) -> None:
    """--batch-size and --max-batch-delay, with the spec's defaults (benchmarks share them)."""
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument(
        "--max-batch-delay", type=int, default=DEFAULTS.max_batch_delay_ms, help="milliseconds"
    )


def spec_from_args(args: argparse.Namespace) -> ArchiveSpec:

    return ArchiveSpec(
        export_dir=args.export_dir,
        name=args.name,
        model_store=args.model_store,
        version=args.version,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        batch_size=args.batch_size,
        max_batch_delay_ms=args.max_batch_delay,
        min_workers=args.min_workers,
        max_workers=args.max_workers,
        response_timeout_s=args.response_timeout,
        startup_timeout_s=args.startup_timeout,
        job_queue_size=args.job_queue_size,
        top_k=args.top_k,
        handler_settings=key_values(args.handler_set, parse_values=True),
        archive_format=args.archive_format,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = spec_from_args(args)
        print(describe(build_archive(spec), spec))
    except (BuildError, MetaError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
