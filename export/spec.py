"""What one export is asked to do: every option of `python -m export` as one typed value.

The CLI parses argv into an `ExportSpec`; the demo, the benchmarks and the tests build one
directly. Each default is written here once (the CLI's --help shows them from here).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.aot import default_device
from export.pipeline_check import DEFAULT_MAX_DELTA

DEFAULT_PARITY_IMAGES = Path(__file__).resolve().parent / "parity_images"


@dataclass(frozen=True)
class ExportSpec:
    checkpoint: Path
    out: Path
    name: str | None = None  # default: the output directory's name
    arch: str | None = None  # needed for weights-only checkpoints
    classes: Path | None = None  # file with one class name per line
    class_names: str | None = None  # comma-separated, in index order
    trust_checkpoint: bool = False  # allow checkpoints that carry code (pickles, TorchScript)
    # preprocessing: None means the checkpoint's record, else torchvision's defaults
    resize_mode: str | None = None
    resize_size: int | None = None
    input_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    color_policy: str | None = None
    exif: str | None = None
    background: tuple[int, int, int] | None = None
    preprocessing: str = "auto"  # auto | fast | exact image pipeline in the handler
    max_delta: float = DEFAULT_MAX_DELTA  # fast path allowed when within this of the reference
    fp16: bool = False
    parity_images: Path = DEFAULT_PARITY_IMAGES
    tolerance: float = 1e-4  # fp32 max |Δlogit|
    int8: bool = False
    calibration_images: Path | None = None
    int8_min_agreement: float = 0.85
    fp16_tolerance: float = 1e-2
    aot: bool = False
    aot_device: str = field(default_factory=default_device)

    def replace(self, **changes: Any) -> ExportSpec:
        return dataclasses.replace(self, **changes)


def spec_defaults() -> dict[str, Any]:
    """{option: default} for the CLI's argparse.set_defaults."""
    defaults = {}
    for item in dataclasses.fields(ExportSpec):
        if item.default is not dataclasses.MISSING:
            defaults[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            defaults[item.name] = item.default_factory()
    return defaults
