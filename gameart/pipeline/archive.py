#!/usr/bin/env python3
"""Package an export into a TorchServe .mar with our handler, using torch-model-archiver.

  python scripts/build_mar.py --export-dir artifacts/cover_genre --backend onnx

The archive holds: the chosen model file, model_meta.json, the handler package (and the shared
modelspec package it imports), and a model-config YAML with TorchServe's batching and worker
settings plus our handler's own `handler:` section.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from gameart.paths import REPO_ROOT
from handler.config import HandlerConfig
from modelspec.aoti import read_info
from modelspec.meta import BACKENDS, META_FILENAME, PRECISIONS, MetaError, ModelMeta

HANDLER_ENTRY = REPO_ROOT / "handler" / "game_image_handler.py"
PACKAGES = ("handler", "modelspec")  # copied into the archive; the handler imports both


class BuildError(RuntimeError):
    pass


def model_config(args: argparse.Namespace) -> dict[str, Any]:
    """The model-config YAML: TorchServe's frontend keys plus our `handler:` section."""
    handler_settings = {"backend": args.backend, "precision": args.precision, "top_k": args.top_k}
    for pair in args.handler_set:
        key, _, value = pair.partition("=")
        handler_settings[key] = yaml.safe_load(value)
    HandlerConfig.from_yaml(handler_settings)  # fail here, not inside a worker
    return {
        "minWorkers": args.min_workers,
        "maxWorkers": max(args.max_workers, args.min_workers),
        "batchSize": args.batch_size,
        "maxBatchDelay": args.max_batch_delay,
        "responseTimeout": args.response_timeout,
        "startupTimeout": args.startup_timeout,
        **({"jobQueueSize": args.job_queue_size} if args.job_queue_size else {}),
        "deviceType": args.device,
        "handler": handler_settings,
    }


def check_aoti_device(model_file: Path, device: str) -> None:
    """A .pt2 runs on the device type it was compiled for: say so here, not in a worker's log."""
    compiled_for = "gpu" if read_info(model_file).device == "cuda" else "cpu"
    if compiled_for != device:
        raise BuildError(
            f"{model_file.name} was compiled for {compiled_for} workers: use --device "
            f"{compiled_for}, or re-export with --aot --aot-device {device.replace('gpu', 'cuda')}"
        )


def stage_code(staging: Path) -> Path:
    code = staging / "code"
    for package in PACKAGES:
        shutil.copytree(
            REPO_ROOT / package,
            code / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
    return code


def archiver_command() -> str:
    candidate = Path(sys.executable).parent / "torch-model-archiver"
    found = str(candidate) if candidate.exists() else shutil.which("torch-model-archiver")
    if not found:
        raise BuildError("torch-model-archiver is missing: run `make install`")
    return found


def build(args: argparse.Namespace) -> Path:
    export_dir: Path = args.export_dir
    meta = ModelMeta.load(export_dir)  # absent when the export's parity check failed
    model_file = export_dir / meta.model_file(args.backend, args.precision)
    if not model_file.is_file():
        raise BuildError(f"{model_file} is listed in {META_FILENAME} but missing")
    if args.backend == "aoti":
        check_aoti_device(model_file, args.device)
    name = args.name or meta.name
    args.model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build_mar_") as tmp:
        staging = Path(tmp)
        config_path = staging / "model-config.yaml"
        config_path.write_text(yaml.safe_dump(model_config(args), sort_keys=False))
        code = stage_code(staging)
        command = [
            archiver_command(),
            "--model-name",
            name,
            "--version",
            args.version,
            "--serialized-file",
            str(model_file),
            "--handler",
            str(HANDLER_ENTRY),
            "--extra-files",
            f"{code},{export_dir / META_FILENAME}",
            "--config-file",
            str(config_path),
            "--export-path",
            str(args.model_store),
            "--archive-format",
            args.archive_format,
            "--force",
        ]
        # The archiver stages files in $TMPDIR/<model name> and deletes that folder first:
        # point it at our private temp dir so it can never remove a user's folder in /tmp.
        env = {**os.environ, "TMPDIR": str(staging / "archiver-tmp")}
        (staging / "archiver-tmp").mkdir()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise BuildError(f"torch-model-archiver failed:\n{result.stderr or result.stdout}")
        config_text = config_path.read_text()
    mar = args.model_store / f"{name}.mar"
    print(
        f"wrote {mar} ({mar.stat().st_size / 2**20:.1f} MiB): {meta.architecture}, "
        f"{meta.num_classes} classes, {args.backend}/{args.precision}"
    )
    print("model-config.yaml:\n  " + config_text.strip().replace("\n", "\n  "))
    return mar


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--export-dir",
        type=Path,
        required=True,
        help="output of `python -m export` (has model_meta.json)",
    )
    parser.add_argument("--name", help="model name in URLs (default: the export's name)")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--backend", choices=BACKENDS, default="torchscript")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp16 (GPU workers) needs an export made with --fp16 (aoti: --aot on cuda); int8 "
        "(CPU, onnx backend) one made with --int8",
    )
    parser.add_argument("--model-store", type=Path, default=REPO_ROOT / "model_store")
    parser.add_argument(
        "--device",
        choices=["cpu", "gpu"],
        default="cpu",
        help="deviceType: gpu workers get a GPU id from TorchServe",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batch-delay", type=int, default=5, help="milliseconds")
    parser.add_argument("--min-workers", type=int, default=1)
    parser.add_argument("--max-workers", type=int, default=1)
    parser.add_argument("--response-timeout", type=int, default=60, help="seconds")
    parser.add_argument("--startup-timeout", type=int, default=120, help="seconds")
    parser.add_argument(
        "--job-queue-size",
        type=int,
        help="this model's queue (default: job_queue_size in config.properties); when full, "
        "requests get an immediate 503",
    )
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument(
        "--handler-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another handler setting, e.g. max_image_pixels=20000000",
    )
    parser.add_argument(
        "--archive-format",
        choices=["default", "zip-store"],
        default="default",
        help="zip-store skips compression (weights barely compress)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        build(args)
    except (BuildError, MetaError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
