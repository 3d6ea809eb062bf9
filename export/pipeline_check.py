"""Bytes -> label parity: the served image pipeline against the user's own, on real images.

The tensor-level parity (export/parity.py) feeds every backend the same tensors. This check is
the step before: the same image *file* goes through the reference pipeline (the user's eager
code: modelspec/reference.py) and through the pure functions a worker runs
(modelspec/imaging.py), on the fast path (JPEG draft + PyTorch's resize) and on the exact path
(full decode + PIL's resize). The eager model scores all three, so only the pixels differ.

The fast path is kept where it is exact enough: top-1 equal to the reference on every image
whose reference top-2 margin exceeds `margin`, and no class probability off by more than
`max_delta`. Otherwise the export records the exact path for the model, instead of failing, and
the report says what the fast path would have cost in agreement and gained in speed.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from modelspec.imaging import DEFAULT_DRAFT_OVERSAMPLE, Normalizer, served_crop
from modelspec.meta import PipelinePath, PreprocessSpec
from modelspec.reference import reference_tensor_of

DEFAULT_MAX_DELTA = 0.02
DEFAULT_MARGIN = 0.05
# The exact path runs the reference's own resize: only float rounding in the normalisation
# differs. Past this, something is broken (and the export fails), whatever --max-delta says.
EXACT_BOUND = 1e-4


@dataclass
class ImageParity:
    image: str
    reference_label: int
    reference_margin: float  # top-1 minus top-2 probability on the reference pipeline
    label: int
    max_delta: float  # max over classes of |served - reference probability|
    ms: float  # decode + resize + crop, median of a few runs

    def agrees(self, margin: float) -> bool:
        return self.label == self.reference_label or self.reference_margin <= margin


@dataclass
class PathParity:
    path: PipelinePath
    images: list[ImageParity]
    passed: bool = False
    top1_agreement: float = 0.0
    max_delta: float = 0.0
    ms_per_image: float = 0.0

    def judge(self, max_delta: float, margin: float) -> None:
        count = max(1, len(self.images))
        self.top1_agreement = sum(i.label == i.reference_label for i in self.images) / count
        self.max_delta = max((i.max_delta for i in self.images), default=0.0)
        self.ms_per_image = sum(i.ms for i in self.images) / count
        self.passed = self.max_delta <= max_delta and all(i.agrees(margin) for i in self.images)


@dataclass
class PipelineReport:
    color: str
    exif: bool
    max_delta_bound: float
    margin: float
    requested: str  # auto | fast | exact
    chosen: PipelinePath
    paths: list[PathParity] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def table(self) -> str:
        lines = [
            f"bytes -> label on {len(self.paths[0].images)} real images, decode policy "
            f"color={self.color} exif={'apply' if self.exif else 'ignore'}:\nthe served pipeline "
            "vs the reference (PIL + torchvision transforms, as in training)",
            f"{'path':6s} {'top-1 agree':>11s} {'max|Δp|':>8s} {'ms/image':>9s}  result",
        ]
        for path in self.paths:
            bound = self.max_delta_bound if path.path == "fast" else EXACT_BOUND
            result = "ok" if path.passed else f"drifts (bound {bound})"
            lines.append(
                f"{path.path:6s} {path.top1_agreement:11.1%} {path.max_delta:8.4f} "
                f"{path.ms_per_image:9.2f}  {result}"
            )
        fast, exact = self.by_path("fast"), self.by_path("exact")
        if fast and exact:
            saved = exact.ms_per_image - fast.ms_per_image
            verdict = ""
            if not fast.passed:
                verdict = (
                    ", but moves answers past the bound: exact it is"
                    if self.chosen == "exact"
                    else ", and moves answers past the bound (kept, as asked)"
                )
            lines.append(
                f"chosen: {self.chosen} ({self.requested}); the fast path saves {saved:.2f} ms "
                f"per image here{verdict}"
            )
        for image in fast.images if fast else []:
            if not image.agrees(self.margin) or image.max_delta > self.max_delta_bound:
                lines.append(f"  fast path drifts on {image.image}: |Δp| {image.max_delta:.2e}")
        return "\n".join(lines)

    def by_path(self, path: str) -> PathParity | None:
        return next((p for p in self.paths if p.path == path), None)


def _timed_crop(data: bytes, spec: PreprocessSpec, oversample: float, runs: int = 3):
    times, crop = [], None
    for _ in range(runs):
        started = time.perf_counter()
        crop = served_crop(data, spec, oversample)
        times.append((time.perf_counter() - started) * 1e3)
    return crop, statistics.median(times)


def _probabilities(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(batch).float().softmax(dim=1)


def check_pipeline(
    model: nn.Module,
    spec: PreprocessSpec,
    images: list[Path],
    *,
    requested: str = "auto",
    max_delta: float = DEFAULT_MAX_DELTA,
    margin: float = DEFAULT_MARGIN,
    oversample: float = DEFAULT_DRAFT_OVERSAMPLE,
) -> PipelineReport:
    """Measure both served paths against the reference; choose one (auto) or keep the one asked."""
    model = model.eval()
    datas = [p.read_bytes() for p in images]
    reference = _probabilities(model, torch.stack([reference_tensor_of(d, spec) for d in datas]))
    ordered = reference.sort(dim=1, descending=True).values
    margins = (
        (ordered[:, 0] - ordered[:, 1]).tolist() if reference.shape[1] > 1 else [1.0] * len(datas)
    )
    report = PipelineReport(
        spec.decode.color, spec.decode.exif, max_delta, margin, requested, "fast"
    )
    for path in ("fast", "exact"):
        path_spec = dataclasses.replace(spec, decode=dataclasses.replace(spec.decode, path=path))
        normalizer = Normalizer(path_spec, torch.device("cpu"), torch.float32)
        crops, times = zip(*(_timed_crop(d, path_spec, oversample) for d in datas), strict=True)
        served = _probabilities(model, normalizer(list(crops)))
        deltas = (served - reference).abs().amax(dim=1).tolist()
        result = PathParity(
            path,
            [
                ImageParity(p.name, int(r), m, int(s), d, t)
                for p, r, m, s, d, t in zip(
                    images,
                    reference.argmax(1).tolist(),
                    margins,
                    served.argmax(1).tolist(),
                    deltas,
                    times,
                    strict=True,
                )
            ],
        )
        result.judge(max_delta if path == "fast" else EXACT_BOUND, margin)
        report.paths.append(result)
    fast = report.by_path("fast")
    report.chosen = (
        requested if requested in ("fast", "exact") else ("fast" if fast.passed else "exact")
    )
    return report
