"""Package an export into a TorchServe .mar with our handler, using torch-model-archiver.

The archive holds: the chosen model file, model_meta.json, the handler package (and the shared
modelspec package it imports), and a model-config YAML with TorchServe's batching and worker
settings plus our handler's own `handler:` section. `ArchiveSpec` is every choice in one typed
value, built once by the CLI, the demo, the benchmarks or a test and handed to `build_archive`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gameart.paths import MODEL_STORE, REPO_ROOT, venv_program
from handler.config import HandlerConfig
from modelspec.aoti import read_info
from modelspec.meta import BACKENDS, META_FILENAME, PRECISIONS, ModelMeta

HANDLER_ENTRY = REPO_ROOT / "handler" / "game_image_handler.py"
PACKAGES = ("handler", "modelspec")  # copied into the archive; the handler imports both
DEVICES = ("cpu", "gpu")
ARCHIVE_FORMATS = ("default", "zip-store")


class BuildError(RuntimeError):
    """The archive cannot be built; the message says why and what to do."""


@dataclass(frozen=True)
class ArchiveSpec:
    """How one model is archived and served: the one place each default is written.

    Batching is on by default (8 images or 5 ms, whichever comes first): on 2 cores it is
    where throughput and p99 both improved (docs/experiments/serving-config-cpu)."""

    export_dir: Path
    name: str | None = None  # model name in URLs; default: the export's name
    model_store: Path = MODEL_STORE
    version: str = "1.0"
    backend: str = "torchscript"
    precision: str = "fp32"
    device: str = "cpu"  # TorchServe's deviceType: gpu workers get a GPU id from TorchServe
    batch_size: int = 8
    max_batch_delay_ms: int = 5
    min_workers: int = 1
    max_workers: int = 1
    response_timeout_s: int = 60
    startup_timeout_s: int = 120
    job_queue_size: int | None = None  # None: config.properties' job_queue_size
    top_k: int = 3
    handler_settings: Mapping[str, Any] = field(default_factory=dict)  # HandlerConfig keys
    archive_format: str = "default"  # zip-store skips compression (weights barely compress)

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.backend, BACKENDS, "backend"),
            (self.precision, PRECISIONS, "precision"),
            (self.device, DEVICES, "device"),
            (self.archive_format, ARCHIVE_FORMATS, "archive format"),
        ):
            if value not in allowed:
                raise BuildError(f"{what} {value!r} is not one of {', '.join(allowed)}")
        if min(self.batch_size, self.min_workers, self.max_workers) < 1:
            raise BuildError("batch size and worker counts must be at least 1")
        if self.max_batch_delay_ms < 0:
            raise BuildError("the batch delay cannot be negative")

    def replace(self, **changes: Any) -> ArchiveSpec:
        return dataclasses.replace(self, **changes)

    def with_workers(self, workers: int) -> ArchiveSpec:
        return self.replace(min_workers=workers, max_workers=workers)

    def with_handler(self, **settings: Any) -> ArchiveSpec:
        return self.replace(handler_settings={**self.handler_settings, **settings})

    def frontend_config(self) -> dict[str, Any]:
        """TorchServe's own model-config keys (batching, workers, timeouts, device)."""
        return {
            "minWorkers": self.min_workers,
            "maxWorkers": max(self.max_workers, self.min_workers),
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": self.response_timeout_s,
            "startupTimeout": self.startup_timeout_s,
            **({"jobQueueSize": self.job_queue_size} if self.job_queue_size else {}),
            "deviceType": self.device,
        }

    def model_config(self) -> dict[str, Any]:
        """The model-config YAML: the frontend's keys plus our `handler:` section, checked here
        so a bad setting fails at archive time, not inside a worker."""
        settings = {
            "backend": self.backend,
            "precision": self.precision,
            "top_k": self.top_k,
            **self.handler_settings,
        }
        HandlerConfig.from_yaml(settings)
        return {**self.frontend_config(), "handler": settings}


def check_aoti_device(model_file: Path, device: str) -> None:
    """A .pt2 runs on the device type it was compiled for: say so here, not in a worker's log."""
    compiled_for = "gpu" if read_info(model_file).device == "cuda" else "cpu"
    if compiled_for != device:
        raise BuildError(
            f"{model_file.name} was compiled for {compiled_for} workers: use --device "
            f"{compiled_for}, or re-export with --aot --aot-device {device.replace('gpu', 'cuda')}"
        )


def archiver_command() -> str:
    found = venv_program("torch-model-archiver")
    if not found:
        raise BuildError("torch-model-archiver is missing: run `make install`")
    return found


def package(
    *,
    name: str,
    handler: str | Path,
    config: Mapping[str, Any],
    model_store: Path,
    serialized_file: Path | None = None,
    model_file: Path | None = None,
    extra_files: Sequence[Path] = (),
    version: str = "1.0",
    archive_format: str = "default",
) -> Path:
    """Run torch-model-archiver once: every .mar of the project (ours, the stock handler's and
    the no-op one the benchmarks compare against) is made here."""
    model_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="archive_") as tmp:
        staging = Path(tmp)
        config_path = staging / "model-config.yaml"
        config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        command = [archiver_command(), "--model-name", name, "--version", version]
        command += ["--handler", str(handler), "--config-file", str(config_path)]
        if serialized_file is not None:
            command += ["--serialized-file", str(serialized_file)]
        if model_file is not None:
            command += ["--model-file", str(model_file)]
        if extra_files:
            command += ["--extra-files", ",".join(str(p) for p in extra_files)]
        command += ["--export-path", str(model_store), "--archive-format", archive_format]
        # The archiver stages files in $TMPDIR/<model name> and deletes that folder first:
        # point it at our private temp dir so it can never remove a user's folder in /tmp.
        (staging / "archiver-tmp").mkdir()
        env = {**os.environ, "TMPDIR": str(staging / "archiver-tmp")}
        result = subprocess.run([*command, "--force"], capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise BuildError(f"torch-model-archiver failed:\n{result.stderr or result.stdout}")
    return model_store / f"{name}.mar"


def _stage_code(staging: Path) -> Path:
    code = staging / "code"
    for name in PACKAGES:
        shutil.copytree(
            REPO_ROOT / name, code / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    return code


def build_archive(spec: ArchiveSpec) -> Path:
    """The .mar for `spec`; raises BuildError (or MetaError for a failed/missing export)."""
    meta = ModelMeta.load(spec.export_dir)  # absent when the export's parity check failed
    model_file = spec.export_dir / meta.model_file(spec.backend, spec.precision)
    if not model_file.is_file():
        raise BuildError(f"{model_file} is listed in {META_FILENAME} but missing")
    if spec.backend == "aoti":
        check_aoti_device(model_file, spec.device)
    config = spec.model_config()
    with tempfile.TemporaryDirectory(prefix="archive_code_") as tmp:
        return package(
            name=spec.name or meta.name,
            handler=HANDLER_ENTRY,
            config=config,
            model_store=spec.model_store,
            serialized_file=model_file,
            extra_files=(_stage_code(Path(tmp)), spec.export_dir / META_FILENAME),
            version=spec.version,
            archive_format=spec.archive_format,
        )


def fingerprint(spec: ArchiveSpec) -> str:
    """sha256 of everything an archive of `spec` is made from: its settings, the export's
    metadata and model file, and every file of handler/ and modelspec/ that goes into it.
    Equal fingerprints mean an existing .mar is current; editing handler/ changes it."""
    meta = ModelMeta.load(spec.export_dir)
    settings = {
        "config": spec.model_config(),
        "name": spec.name or meta.name,
        "version": spec.version,
        "format": spec.archive_format,
    }
    digest = hashlib.sha256(yaml.safe_dump(settings, sort_keys=True).encode())
    model_file = spec.export_dir / meta.model_file(spec.backend, spec.precision)
    inputs = [("meta", spec.export_dir / META_FILENAME), ("model", model_file)]
    for package_name in PACKAGES:
        root = REPO_ROOT / package_name
        inputs += [
            (str(path.relative_to(REPO_ROOT)), path)
            for path in sorted(root.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
        ]
    for label, path in inputs:  # the same files _stage_code copies, plus the model's
        digest.update(label.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def describe(mar: Path, spec: ArchiveSpec) -> str:
    """What `build_archive` made, for the command line."""
    meta = ModelMeta.load(spec.export_dir)
    config = yaml.safe_dump(spec.model_config(), sort_keys=False).strip()
    return (
        f"wrote {mar} ({mar.stat().st_size / 2**20:.1f} MiB): {meta.architecture}, "
        f"{meta.num_classes} classes, {spec.backend}/{spec.precision}\n"
        "model-config.yaml:\n  " + config.replace("\n", "\n  ")
    )
