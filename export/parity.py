"""Parity: do the exported files compute what the original model computes?

Each exported file runs the same inputs as the eager model (random tensors and real images
through the reference preprocessing). Reported per file: max |Δlogit| and top-1 agreement.
A file fails when max |Δlogit| exceeds tolerance x max(1, max|eager logit|). Within that bound
a top-1 can only change where the eager top-2 margin is under twice the bound (a near-tie).
INT8 files are approximations by design: they are judged by top-1 agreement on the real images
(random inputs lie outside the calibrated ranges), with max |Δlogit| reported alongside.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from modelspec.aoti import AotiModel
from modelspec.meta import ONNX_INPUT_NAME, PreprocessSpec
from modelspec.reference import reference_tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
CHUNK = 8


@dataclass
class FileParity:
    file: str
    backend: str
    precision: str
    max_abs_diff: float
    bound: float
    top1_agreement: float
    passed: bool
    criterion: str = "max|Δlogit|"


@dataclass
class ParityReport:
    random_inputs: int
    image_inputs: list[str]
    files: list[FileParity]

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.files)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "random_inputs": self.random_inputs,
            "image_inputs": self.image_inputs,
            "files": [asdict(f) for f in self.files],
        }

    def table(self) -> str:
        lines = [
            f"parity on {self.random_inputs} random + {len(self.image_inputs)} image inputs",
            f"{'file':28s} {'max|Δlogit|':>12s} {'bound':>9s} {'top-1 agree':>11s}  result",
        ]
        for f in self.files:
            by_bound = f.criterion.startswith("max")
            bound = f"{f.bound:9.1e}" if by_bound else f"{'-':>9s}"
            result = "ok" if f.passed else "FAIL"
            if not by_bound:
                result += f" (judged by {f.criterion}, real images only)"
            lines.append(
                f"{f.file:28s} {f.max_abs_diff:12.2e} {bound} {f.top1_agreement:11.1%}  {result}"
            )
        return "\n".join(lines)


def image_paths(folder: Path | None) -> list[Path]:
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def parity_inputs(
    spec: PreprocessSpec, images: list[Path], random_count: int = 8, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    size = spec.input_size
    tensors = [torch.randn(random_count, 3, size, size, generator=generator)]
    for path in images:
        with Image.open(path) as image:
            tensors.append(reference_tensor(image, spec).unsqueeze(0))
    return torch.cat(tensors)


def _in_chunks(run, inputs: torch.Tensor) -> torch.Tensor:
    return torch.cat([run(inputs[i : i + CHUNK]) for i in range(0, len(inputs), CHUNK)])


def run_eager(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return _in_chunks(lambda x: model(x).float(), inputs)


def run_torchscript(path: Path, inputs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    module = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        return _in_chunks(lambda x: module(x.to(dtype)).float(), inputs)


def run_onnx(path: Path, inputs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np_dtype = np.float16 if dtype == torch.float16 else np.float32

    def run(x: torch.Tensor) -> torch.Tensor:
        (out,) = session.run(None, {ONNX_INPUT_NAME: x.numpy().astype(np_dtype)})
        return torch.from_numpy(out).float()

    return _in_chunks(run, inputs)


def run_aoti(path: Path, inputs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Through AotiModel, as the handler runs it; the package's own precision decides the dtype,
    and it runs on the device it was compiled for (CUDA if it says so)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AotiModel(path, device)
    return _in_chunks(model, inputs)


RUNNERS = {"torchscript": run_torchscript, "onnx": run_onnx, "aoti": run_aoti}


def compare(
    name: str,
    backend: str,
    precision: str,
    eager: torch.Tensor,
    other: torch.Tensor,
    tolerance: float,
    min_agreement: float | None = None,
) -> FileParity:
    """Judge by |Δlogit| against the bound, or (min_agreement given) by top-1 agreement."""
    bound = tolerance * max(1.0, eager.abs().max().item())
    diff = (eager - other).abs().max().item()
    agreement = (eager.argmax(1) == other.argmax(1)).float().mean().item()
    return FileParity(
        file=name,
        backend=backend,
        precision=precision,
        max_abs_diff=diff,
        bound=bound,
        top1_agreement=agreement,
        passed=bool(np.isfinite(diff) and diff <= bound)
        if min_agreement is None
        else bool(np.isfinite(diff) and agreement >= min_agreement),
        criterion="max|Δlogit|" if min_agreement is None else f"top-1 agreement >= {min_agreement}",
    )


def check_parity(
    model: nn.Module,
    export_dir: Path,
    files: dict[str, str],
    spec: PreprocessSpec,
    images: list[Path],
    tolerances: dict[str, float],
    int8_min_agreement: float = 0.85,
) -> ParityReport:
    """files: {"torchscript/fp32": "model.torchscript.pt", ...}; tolerances per precision."""
    inputs = parity_inputs(spec, images)
    eager = run_eager(model, inputs)
    results = []
    for key, filename in sorted(files.items()):
        backend, precision = key.split("/")
        dtype = torch.float16 if precision == "fp16" else torch.float32  # int8 takes float
        outputs = RUNNERS[backend](Path(export_dir) / filename, inputs, dtype)
        if precision == "int8" and images:
            real = slice(len(inputs) - len(images), None)
            results.append(
                compare(
                    filename,
                    backend,
                    precision,
                    eager[real],
                    outputs[real],
                    tolerances[precision],
                    int8_min_agreement,
                )
            )
        else:
            results.append(
                compare(filename, backend, precision, eager, outputs, tolerances[precision])
            )
    return ParityReport(
        random_inputs=len(inputs) - len(images),
        image_inputs=[p.name for p in images],
        files=results,
    )
