"""What one benchmark run measures and how long: the typed spec the CLI builds.

Nothing here imports torch, so the report (a pure function of results.json) stays cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gameart.paths import REPO_ROOT
from gameart.pipeline.archive import ArchiveSpec

DEFAULT_OUT = REPO_ROOT / "results" / "benchmark"
SECTIONS = ("model", "preprocess", "e2e")
DEVICES = ("cpu", "cuda")
SERVED_BACKENDS = ("auto", "onnx", "torchscript")
_ARCHIVE_DEFAULTS = ArchiveSpec(export_dir=Path("."))  # batching defaults live in ArchiveSpec


@dataclass(frozen=True)
class Plan:
    cpu_batches: tuple[int, ...]
    gpu_batches: tuple[int, ...]
    min_time: float  # seconds of timed iterations per cell (more if min_iters needs it)
    min_iters: int
    max_cell_time: float  # a slow cell stops here even below min_iters (at least 3 iterations)
    preprocess_reps: int
    concurrencies: tuple[int, ...]
    e2e_seconds: float
    e2e_warmup: float

    def replace(self, **changes: Any) -> Plan:
        return dataclasses.replace(self, **changes)


FULL = Plan(
    (1, 2, 4, 8, 16, 32, 64),
    (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    2.0,
    20,
    12.0,
    30,
    (1, 8, 32, 128),
    15.0,
    3.0,
)
QUICK = Plan((1, 8), (1, 8, 64), 0.3, 5, 3.0, 5, (1, 8), 3.0, 1.0)


@dataclass(frozen=True)
class Serving:
    """TorchServe settings shared by our models and the stock one in the end-to-end runs
    (recorded in results.json as plan.serving, under these names)."""

    workers: int = 1
    batch_size: int = _ARCHIVE_DEFAULTS.batch_size  # batching on; off is batchSize 1
    max_batch_delay: int = _ARCHIVE_DEFAULTS.max_batch_delay_ms  # ms
    gpu: bool = False  # deviceType gpu for every model, ours and the stock one

    def archive_spec(self, export_dir: Path, model_store: Path, backend: str) -> ArchiveSpec:
        """Our model, batching on, as these settings say (fp32; .replace() for the others)."""
        return ArchiveSpec(
            export_dir=export_dir,
            model_store=model_store,
            backend=backend,
            device="gpu" if self.gpu else "cpu",
            batch_size=self.batch_size,
            max_batch_delay_ms=self.max_batch_delay,
        ).with_workers(self.workers)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Serving:
        """From results.json's plan.serving (absent in reports older than the field)."""
        return cls(**raw) if raw else cls()


@dataclass(frozen=True)
class BenchmarkSpec:
    """One run of scripts/benchmark.py, argv already turned into values."""

    out: Path = DEFAULT_OUT
    model: str = "resnet50"  # torchvision architecture exported with random weights
    num_classes: int = 5
    export_dir: Path | None = None  # benchmark this export instead of `model`
    quick: bool = False
    plan: Plan = FULL
    devices: tuple[str, ...] | None = None  # None: the CPU and CUDA when present
    skip: frozenset[str] = frozenset()  # sections of SECTIONS not measured now
    served_backend: str = "auto"  # backend of our .mar end to end; auto: faster at batch 8
    rows: tuple[str, ...] = ()  # model rows to time, by backend; empty: all
    serving: Serving = field(default_factory=Serving)  # gpu is decided by the devices
    reuse: Path | None = None  # an earlier results.json: skipped sections come from it

    def __post_init__(self) -> None:
        unknown = set(self.skip) - set(SECTIONS)
        if unknown:
            raise ValueError(f"unknown sections {sorted(unknown)}; use {', '.join(SECTIONS)}")
        if self.served_backend not in SERVED_BACKENDS:
            raise ValueError(f"served backend {self.served_backend!r} not in {SERVED_BACKENDS}")

    def measures(self, section: str) -> bool:
        return section not in self.skip


def row_name(backend: str) -> str:
    """The report's name for an archive backend: the ONNX file runs in ONNX Runtime."""
    return {"onnx": "onnxruntime", "aoti": "aotinductor"}.get(backend, backend)
