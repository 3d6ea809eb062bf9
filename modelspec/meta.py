"""The contract between export and serving: what a model is and how its input is prepared.

`export` writes one `model_meta.json` per model; the handler reads it inside TorchServe.
Nothing else describes class names, input size or normalisation, so the two cannot drift.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 2  # 2: the decode policy is recorded (1 meant the "project" policy, fast path)
META_FILENAME = "model_meta.json"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ResizeMode = Literal["shorter_side", "square"]
RESIZE_MODES: tuple[str, ...] = ("shorter_side", "square")
ColorPolicy = Literal["convert", "composite"]
COLOR_POLICIES: tuple[str, ...] = ("convert", "composite")
PipelinePath = Literal["fast", "exact"]
PIPELINE_PATHS: tuple[str, ...] = ("fast", "exact")

# Names of the model files an export writes, by (backend, precision).
MODEL_FILES: dict[tuple[str, str], str] = {
    ("torchscript", "fp32"): "model.torchscript.pt",
    ("torchscript", "fp16"): "model.fp16.torchscript.pt",
    ("onnx", "fp32"): "model.onnx",
    ("onnx", "fp16"): "model.fp16.onnx",
    ("onnx", "int8"): "model.int8.onnx",  # ONNX Runtime static quantization, for CPU workers
    # AOTInductor packages (modelspec/aoti.py): fp32 compiled for the CPU, fp16 for CUDA
    ("aoti", "fp32"): "model.aoti.pt2",
    ("aoti", "fp16"): "model.fp16.aoti.pt2",
}
BACKENDS: tuple[str, ...] = ("torchscript", "onnx", "aoti")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")

EXPLAIN_METHOD = "explain"  # the TorchScript method returning (logits, the Grad-CAM stage)
ONNX_INPUT_NAME = "input"
ONNX_OUTPUT_NAME = "logits"


class MetaError(ValueError):
    """A metadata file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class DecodePolicy:
    """How uploaded bytes become the RGB pixels the model sees: part of the model, because a
    model answers best on pixels made the way its training images were.

    color  convert:   Pillow's Image.convert("RGB"), as torchvision's ImageFolder loader (and
                      most training scripts) do: alpha dropped (hidden colours show), palette,
                      LA, 16-bit and CMYK converted as Pillow converts them.
           composite: transparent pixels laid over `background`, 16-bit greyscale rescaled
                      0..65535 -> 0..255 (what scripts/train.py trains on).
    exif   apply the EXIF Orientation tag (rotate/flip as a photo viewer would) or not, as
           Image.open() alone does not.
    path   fast:  JPEG draft decoding and PyTorch's antialiased resize on uint8 (about twice
                  as fast); exact: full decode and PIL's resize, as torchvision's Resize on a
                  PIL image. The export measures the fast path against the exact one on real
                  images and records "exact" where fast would change answers.
    """

    color: ColorPolicy = "convert"
    exif: bool = False
    background: tuple[int, int, int] = (255, 255, 255)
    path: PipelinePath = "fast"

    def __post_init__(self) -> None:
        if self.color not in COLOR_POLICIES:
            raise MetaError(f"color must be one of {COLOR_POLICIES}, got {self.color!r}")
        if self.path not in PIPELINE_PATHS:
            raise MetaError(f"path must be one of {PIPELINE_PATHS}, got {self.path!r}")
        if len(self.background) != 3 or not all(0 <= int(v) <= 255 for v in self.background):
            raise MetaError(f"background needs three 0-255 values, got {self.background!r}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DecodePolicy:
        return cls(
            color=raw["color"],
            exif=bool(raw["exif"]),
            background=tuple(int(v) for v in raw["background"]),  # type: ignore[arg-type]
            path=raw["path"],
        )


# torchvision's ImageFolder default: the policy of a checkpoint trained elsewhere.
TORCHVISION_POLICY = DecodePolicy(color="convert", exif=False)
# What scripts/train.py trains the default model on, and what schema-1 metadata meant.
PROJECT_POLICY = DecodePolicy(color="composite", exif=True)
NAMED_POLICIES: dict[str, DecodePolicy] = {
    "torchvision": TORCHVISION_POLICY,
    "project": PROJECT_POLICY,
}


@dataclass(frozen=True)
class PreprocessSpec:
    """How a decoded RGB image becomes the model's input tensor.

    shorter_side: Resize(resize_size) on the shorter side, keeping aspect (cover art).
    square:       Resize((resize_size, resize_size)), distorting aspect (screenshots).
    Both then CenterCrop(input_size), scale to [0, 1] and normalise with mean/std. Before
    all that, `decode` says how the uploaded bytes become RGB.
    """

    input_size: int = 224
    resize_size: int = 256
    resize_mode: ResizeMode = "shorter_side"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    decode: DecodePolicy = TORCHVISION_POLICY

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise MetaError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if not 0 < self.input_size <= self.resize_size:
            raise MetaError(
                f"need 0 < input_size <= resize_size, got {self.input_size} and {self.resize_size}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise MetaError("mean and std need three values each, std all positive")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], legacy_decode: DecodePolicy = PROJECT_POLICY):
        """From JSON; a dict without "decode" (schema 1, old checkpoints) gets legacy_decode."""
        decode = raw.get("decode")
        return cls(
            input_size=int(raw["input_size"]),
            resize_size=int(raw["resize_size"]),
            resize_mode=raw["resize_mode"],
            mean=tuple(float(v) for v in raw["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in raw["std"]),  # type: ignore[arg-type]
            decode=DecodePolicy.from_dict(decode) if decode else legacy_decode,
        )

    def draft_size(self, oversample: float) -> int | None:
        """JPEG draft target (both sides >= this), on the fast path only; None: decode fully."""
        if self.decode.path != "fast" or not oversample:
            return None
        return round(self.resize_size * oversample)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, rounding exactly as torchvision does."""
        if self.resize_mode == "square":
            return self.resize_size, self.resize_size
        if width <= height:
            return self.resize_size, int(self.resize_size * height / width)
        return int(self.resize_size * width / height), self.resize_size

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The centre crop in resized coordinates, as torchvision's CenterCrop places it."""
        resized_w, resized_h = self.resized_size(width, height)
        top = round((resized_h - self.input_size) / 2.0)
        left = round((resized_w - self.input_size) / 2.0)
        return left, top, left + self.input_size, top + self.input_size


@dataclass
class ModelMeta:
    """Everything the handler needs besides the weights."""

    name: str
    architecture: str
    class_names: list[str]
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    files: dict[str, str] = field(default_factory=dict)  # "torchscript/fp32" -> file name
    export: dict[str, Any] = field(default_factory=dict)  # versions, exporter, date
    source: dict[str, Any] = field(default_factory=dict)  # checkpoint name, format, sha256
    # the module Grad-CAM reads (the TorchScript file's `explain` method); "" if none
    cam_layer: str = ""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.class_names:
            raise MetaError("class_names is empty")
        if len(set(self.class_names)) != len(self.class_names):
            raise MetaError("class_names has duplicates")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def model_file(self, backend: str, precision: str) -> str:
        key = f"{backend}/{precision}"
        if key not in self.files:
            raise MetaError(f"this export has no {key} model (has: {sorted(self.files)})")
        return self.files[key]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # nested dataclasses (preprocess, its decode) become dicts too

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelMeta:
        version = raw.get("schema_version")
        if version not in (1, SCHEMA_VERSION):
            raise MetaError(f"unsupported model_meta schema_version {version!r}")
        try:
            return cls(
                name=str(raw["name"]),
                architecture=str(raw["architecture"]),
                class_names=[str(c) for c in raw["class_names"]],
                preprocess=PreprocessSpec.from_dict(raw["preprocess"]),
                files=dict(raw.get("files", {})),
                export=dict(raw.get("export", {})),
                source=dict(raw.get("source", {})),
                cam_layer=str(raw.get("cam_layer", "")),
            )
        except KeyError as exc:
            raise MetaError(f"model_meta is missing {exc}") from exc

    def save(self, directory: Path) -> Path:
        path = Path(directory) / META_FILENAME
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> ModelMeta:
        path = Path(path)
        if path.is_dir():
            path = path / META_FILENAME
        if not path.is_file():
            raise MetaError(f"no model metadata at {path}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise MetaError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw)
