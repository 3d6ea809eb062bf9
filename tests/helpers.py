"""Builders for the models and images the tests need, shaped like what users bring."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import nn

from export.parity import image_paths
from modelspec.meta import PreprocessSpec
from modelspec.reference import reference_tensor_of

REPO_ROOT = Path(__file__).resolve().parent.parent
PARITY_IMAGES = REPO_ROOT / "export" / "parity_images"
COVER_CLASSES = ["fighting", "indie", "platform", "puzzle", "sport"]
SCREEN_CLASSES = [
    "dark souls 2",
    "elden ring",
    "hollow knight",
    "minecraft",
    "portal 2",
    "stardew valley",
    "terraria",
]


def real_images() -> list[Path]:
    """The export's parity images: real game art in every mode users upload (see SOURCES.md)."""
    return image_paths(PARITY_IMAGES)


def source_picture(path: Path) -> str:
    """The picture a parity image shows: "neverball_pyramid" for its JPEG and its CMYK copy."""
    return "_".join(path.stem.split("_")[:2])


# ---- models shaped like the two user projects ----------------------------------------------
def cover_resnet50(seed: int = 0) -> nn.Module:
    """Cover -> genre: ResNet-50 with fc = Sequential(Dropout(0.5), Linear(2048, 5))."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None)
    model.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(2048, len(COVER_CLASSES)))
    return model.eval()


def cover_efficientnet_v2_s(seed: int = 0) -> nn.Module:
    """The EfficientNetV2-S variant: classifier = Sequential(Dropout(0.4), Linear(1280, 5))."""
    torch.manual_seed(seed)
    model = torchvision.models.efficientnet_v2_s(weights=None)
    model.classifier = nn.Sequential(nn.Dropout(0.4), nn.Linear(1280, len(COVER_CLASSES)))
    return model.eval()


class ScreenshotClassifier(nn.Module):
    """Screenshot -> game: ResNet-50 wrapped as self.model with a plain Linear(2048, 7) head,
    so its state_dict keys carry a "model." prefix."""

    def __init__(self, num_classes: int = len(SCREEN_CLASSES)):
        super().__init__()
        self.model = torchvision.models.resnet50(weights=None)
        self.model.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def screenshot_resnet50(seed: int = 1) -> ScreenshotClassifier:
    torch.manual_seed(seed)
    return ScreenshotClassifier().eval()


SMALL_ARCH = "resnet18"


def small_model(num_classes: int = 4, seed: int = 0) -> nn.Module:
    """A quicker torchvision model for tests that need many exports. (Randomly initialised
    MobileNets answer ~1e-9 for everything, useless for telling models apart; ResNets don't.)"""
    torch.manual_seed(seed)
    return torchvision.models.resnet18(weights=None, num_classes=num_classes).eval()


def eager_logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(batch)


# ---- what the server should answer ---------------------------------------------------------
# Per-class |served probability - reference probability| allowed for fp32 models: the export's
# own bound for keeping the fast image path (--max-delta 0.02; beyond it the model is served on
# the exact path, within 1e-5 of the reference), plus the backends' rounding (about 1e-4).
PROBABILITY_TOLERANCE = 0.025


def reference_probabilities(
    model: nn.Module, images: Iterable[bytes], spec: PreprocessSpec
) -> torch.Tensor:
    """(N, classes) softmax of the eager model on the user's own pipeline for each image file:
    the decode policy's RGB, then torchvision's eval transform (modelspec/reference.py)."""
    batch = torch.stack([reference_tensor_of(data, spec) for data in images])
    return eager_logits(model, batch).softmax(dim=1)


def answer_error(
    answer: dict[str, Any],
    expected: torch.Tensor,
    class_names: list[str],
    tolerance: float = PROBABILITY_TOLERANCE,
) -> str | None:
    """Why an answer differs from a reference probability row, or None if it matches.

    Matches means: the label is the reference's top-1, confidence is the first top_k entry,
    every top_k entry names a class whose reference probability is within `tolerance`, and the
    entries come in the reference's order wherever the reference separates them by more than
    twice the tolerance."""
    reference = {name: float(p) for name, p in zip(class_names, expected, strict=True)}
    best = max(reference, key=reference.get)
    if answer.get("label") != best:
        return f"label {answer.get('label')!r}, reference {best!r} ({reference})"
    top = answer["top_k"]
    if answer["confidence"] != top[0]["probability"]:
        return "confidence is not the first top_k probability"
    for entry in top:
        want = reference[entry["label"]]
        if abs(entry["probability"] - want) > tolerance:
            return f"{entry['label']}: served {entry['probability']:.4f}, reference {want:.4f}"
    for first, second in itertools.pairwise(top):
        if reference[second["label"]] - reference[first["label"]] > 2 * tolerance:
            return f"top_k order: {first['label']} before {second['label']}"
    return None


def assert_answers_match(
    answers: list[dict[str, Any]],
    expected: torch.Tensor,
    class_names: list[str],
    tolerance: float = PROBABILITY_TOLERANCE,
    names: list[str] | None = None,
) -> None:
    """Per item, in request order: every answer equals its own reference row."""
    assert len(answers) == len(expected)
    problems = []
    for i, (answer, row) in enumerate(zip(answers, expected, strict=True)):
        error = answer_error(answer, row, class_names, tolerance)
        if error:
            problems.append(f"item {i} ({names[i] if names else ''}): {error}")
    assert not problems, "\n".join(problems)


# ---- images --------------------------------------------------------------------------------
def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def gradient_rgb(width: int = 320, height: int = 240) -> Image.Image:
    """A smooth, asymmetric test card: red grows left->right, green top->bottom."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    pixels = np.stack([x, y, np.full_like(x, 64)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


class FakeContext:
    """The parts of ts.context.Context the handler touches, recording per-request statuses."""

    def __init__(
        self,
        model_dir: Path,
        serialized_file: str,
        yaml_config: dict | None = None,
        gpu_id: int | None = None,
        batch_size: int = 4,
    ):
        self.system_properties = {
            "model_dir": str(model_dir),
            "gpu_id": gpu_id,
            "batch_size": batch_size,
        }
        self.model_name = "model"
        self.manifest = {"model": {"serializedFile": serialized_file, "modelVersion": "1.0"}}
        self.model_yaml_config = yaml_config or {}
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}
        self.request_headers: dict[int, dict[str, str]] = {}  # what the client sent, per request

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.request_headers.get(idx, {})

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value

    def status_of(self, idx: int) -> int:
        return self.statuses.get(idx, (200, ""))[0]


def statuses(context: FakeContext, count: int) -> list[int]:
    return [context.status_of(i) for i in range(count)]


def requests_for(images: Iterable[bytes]) -> list[dict[str, Any]]:
    return [{"body": bytearray(data)} for data in images]


def as_torchserve_request(body: bytes) -> dict[str, Any]:
    """The request dict a TorchServe worker hands the handler for a raw body. The handler turns
    the worker's own JSON/text decoding off (TS_DECODE_INPUT_REQUEST=false), so every body
    arrives as bytes, whatever its content type (which the context's headers carry)."""
    return {"body": bytearray(body)}
