"""The model under test: an export given by the user, or a torchvision model exported here.

Weights are random: latency does not depend on their values, only on the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from modelspec.architectures import create_architecture
from modelspec.meta import ModelMeta


@dataclass
class Subject:
    name: str
    architecture: str
    export_dir: Path
    meta: ModelMeta
    checkpoint: Path | None  # weights the stock handler can load (for generated subjects)

    def eager(self) -> torch.nn.Module:
        """A model of the same architecture and class count (random weights time the same)."""
        torch.manual_seed(0)
        model = create_architecture(self.architecture, num_classes=self.meta.num_classes)
        return model.eval()


def prepare_subject(
    *, model: str, num_classes: int, export_dir: Path | None, workdir: Path, fp16: bool
) -> Subject:
    """An export to benchmark: `export_dir` as given, or `model` exported through the real
    pipeline into workdir/subject-<model> (reused when an earlier run left a complete one)."""
    if export_dir:
        meta = ModelMeta.load(export_dir)
        return Subject(meta.name, meta.architecture, export_dir, meta, None)
    out = workdir / f"subject-{model}"
    checkpoint = out / "weights.pth"
    try:
        meta = ModelMeta.load(out / "export")
        if (fp16 and "aoti/fp16" not in meta.files) or "onnx/int8" not in meta.files:
            raise FileNotFoundError
        print(f"subject: cached export of {model} in {out}")
        return Subject(model, model, out / "export", meta, checkpoint)
    except (FileNotFoundError, ValueError):
        pass
    print(f"subject: exporting a {model} with {num_classes} classes (random weights)")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    import torchvision

    weights = torchvision.models.get_model(model, weights=None, num_classes=num_classes)
    torch.save(weights.state_dict(), checkpoint)
    _export(checkpoint, out / "export", model, num_classes, fp16)
    return Subject(model, model, out / "export", ModelMeta.load(out / "export"), checkpoint)


def _export(checkpoint: Path, out: Path, model: str, num_classes: int, fp16: bool) -> None:
    """The export step on the checkpoint: int8 always, fp16 + AOTInductor for a GPU."""
    from export.cli import EXPORT_ERRORS, export_model
    from export.spec import ExportSpec

    spec = ExportSpec(
        checkpoint=checkpoint,
        out=out,
        arch=model,
        class_names=",".join(f"class_{i}" for i in range(num_classes)),
        name=f"bench_{model}",
        int8=True,
        fp16=fp16,
        aot=fp16,
    )
    try:
        export_model(spec)
    except EXPORT_ERRORS as exc:
        raise SystemExit(f"export of the benchmark subject failed: {exc}") from exc
