"""Explanations mean something: on a model the test trains in seconds, whose class is decided by
a coloured patch at a known place, the saliency mass lies on that patch, for Grad-CAM (the
TorchScript file export writes) and for occlusion (ONNX Runtime), through the handler's own
backends. Then the service path: /explanations items beside predictions in one batch, each
with its own answer or error."""

from __future__ import annotations

import base64
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from export.writers import last_conv_stage, write_onnx, write_torchscript
from handler.backends import OnnxBackend, TorchScriptBackend
from handler.config import HandlerConfig
from handler.errors import InvalidInput
from handler.explain import (
    GRAD_CAM,
    OCCLUSION,
    explain_crop,
    overlay_png,
    resolve_target,
    upsample,
)
from handler.service import ImageClassifierService
from modelspec.imaging import Normalizer
from modelspec.meta import ModelMeta, PreprocessSpec
from tests.helpers import FakeContext, encode, gradient_rgb, real_images, statuses

SIZE = 64
PATCH = (slice(8, 24), slice(40, 56))  # rows, cols: 6.25 % of the image
COLOURS = torch.tensor([[230, 25, 25], [25, 25, 230]], dtype=torch.uint8)  # class 0 red, 1 blue
SPEC = PreprocessSpec(resize_size=SIZE, input_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3)


def patch_images(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (count, 3, SIZE, SIZE) noise crops with the class's colour on the patch."""
    generator = torch.Generator().manual_seed(seed)
    crops = torch.randint(0, 256, (count, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 2, (count,), generator=generator)
    crops[:, :, PATCH[0], PATCH[1]] = COLOURS[labels][:, :, None, None]
    return crops, labels


class PatchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


@dataclass
class Trained:
    meta: ModelMeta
    torchscript: Path
    onnx: Path
    normalizer: Normalizer


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    torch.manual_seed(0)
    model = PatchNet()
    normalizer = Normalizer(SPEC, torch.device("cpu"), torch.float32)
    crops, labels = patch_images(512, seed=0)
    inputs = normalizer(list(crops))
    optimiser = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        pick = torch.randint(0, len(crops), (64,))
        loss = nn.functional.cross_entropy(model(inputs[pick]), labels[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    held_out, truth = patch_images(32, seed=1)
    with torch.no_grad():
        accuracy = (model(normalizer(list(held_out))).argmax(1) == truth).float().mean().item()
    assert accuracy == 1.0, f"the patch model did not learn its task ({accuracy:.0%})"

    out = tmp_path_factory.mktemp("patch")
    example = inputs[:2]
    layer = last_conv_stage(model, example)
    write_torchscript(model, out / "model.pt", example, layer)
    write_onnx(model, out / "model.onnx", example)
    meta = ModelMeta("patch", "PatchNet", ["red", "blue"], SPEC, cam_layer=layer)
    return Trained(meta, out / "model.pt", out / "model.onnx", normalizer)


def patch_share(saliency: np.ndarray) -> float:
    """The share of the saliency mass on the patch, at the crop's resolution."""
    full = upsample(saliency, SIZE)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[PATCH] = True
    return float(full[mask].sum() / full.sum())


def test_the_grad_cam_layer_is_the_last_spatial_stage(trained):
    assert trained.meta.cam_layer == "features"
    from tests.helpers import small_model

    model = small_model(num_classes=4).eval()  # a torchvision ResNet
    assert last_conv_stage(model, torch.zeros(1, 3, 64, 64)) == "layer4"


@pytest.mark.parametrize("backend_name", ["torchscript", "onnx"])
def test_the_saliency_lies_on_the_patch_that_decides_the_class(trained, backend_name):
    cpu = torch.device("cpu")
    if backend_name == "torchscript":
        backend = TorchScriptBackend(trained.torchscript, cpu, "fp32", 2)
    else:
        backend = OnnxBackend(trained.onnx, cpu, "fp32", 2)
    config = HandlerConfig(explain_grid=8)
    crops, labels = patch_images(6, seed=2)
    for crop, label in zip(crops, labels, strict=True):
        deadline = time.monotonic() + 60
        body = explain_crop(
            backend, trained.normalizer, crop, int(label), trained.meta, config, deadline
        )
        assert body["method"] == (GRAD_CAM if backend_name == "torchscript" else OCCLUSION)
        assert body["target"] == trained.meta.class_names[label]
        saliency = np.array(body["grid"], dtype=np.float32)
        # uniform saliency would put 6 % on the patch; the model looks only there
        assert patch_share(saliency) > 0.45, (backend_name, patch_share(saliency))
        hottest = np.unravel_index(saliency.argmax(), saliency.shape)
        centre = [
            (index + 0.5) * SIZE / side for index, side in zip(hottest, saliency.shape, strict=True)
        ]
        assert PATCH[0].start - 4 <= centre[0] <= PATCH[0].stop + 4, hottest
        assert PATCH[1].start - 4 <= centre[1] <= PATCH[1].stop + 4, hottest
        png = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
        assert png.format == "PNG" and png.size == (SIZE, SIZE)


def test_the_target_is_a_label_an_index_or_the_top_1():
    names = ["red", "blue", "green"]
    assert resolve_target(None, names, [0.2, 0.7, 0.1]) == 1
    assert resolve_target("green", names, [0.2, 0.7, 0.1]) == 2
    assert resolve_target("0", names, [0.2, 0.7, 0.1]) == 0
    for bad in ("purple", "3", "-1", "²"):  # "²".isdigit() is True, int("²") fails
        with pytest.raises(InvalidInput):
            resolve_target(bad, names, [0.2, 0.7, 0.1])


def test_the_overlay_keeps_the_image_where_the_map_is_cold():
    crop = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    saliency = np.zeros((4, 4), dtype=np.float32)
    saliency[0, 0] = 1.0
    pixels = np.asarray(Image.open(io.BytesIO(overlay_png(crop, saliency))).convert("RGB"))
    cold, hot = pixels[31, 31].astype(int), pixels[0, 0].astype(int)
    assert np.abs(cold - 200).max() < 120  # still the image, tinted
    assert hot[0] > hot[2] + 60  # red where the map is hot


# ---- through the service, as TorchServe's /explanations calls it ---------------------------
@pytest.mark.parametrize(
    ("serialized", "yaml", "method"),
    [
        ("model.torchscript.pt", {}, GRAD_CAM),
        ("model.onnx", {"handler": {"backend": "onnx"}}, OCCLUSION),
    ],
)
def test_explanations_and_predictions_in_one_batch(exported_small, serialized, yaml, method):
    context = FakeContext(exported_small.out_dir, serialized, yaml)
    service = ImageClassifierService()
    service.initialize(context)
    photo = real_images()[0].read_bytes()
    other = encode(gradient_rgb(), "PNG")
    data = [
        {"body": bytearray(photo)},  # a prediction
        {"body": bytearray(photo)},  # the same image explained
        {"body": bytearray(other), "target": b"gamma"},  # explained for a class of our choice
        {"body": bytearray(b"not an image at all")},  # explained, but no image
        {"body": bytearray(photo), "target": b"omega"},  # a class the model does not have
    ]
    for index in (1, 2, 3, 4):
        context.request_headers[index] = {"explain": "True"}
    answers = [json.loads(text) for text in service.handle(data, context)]
    assert statuses(context, 5) == [200, 200, 200, 400, 400]
    assert "explanation" not in answers[0]
    assert answers[1]["label"] == answers[0]["label"]
    assert answers[1]["top_k"] == answers[0]["top_k"]
    explanation = answers[1]["explanation"]
    assert explanation["method"] == method and explanation["target"] == answers[0]["label"]
    assert answers[2]["explanation"]["target"] == "gamma"
    assert answers[3]["type"] == "NotAnImage"
    assert "target" in answers[4]["message"]
    size = exported_small.meta.preprocess.input_size
    png = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"])))
    assert png.size == (size, size)
    grid = np.array(explanation["grid"])
    assert grid.max() == pytest.approx(1.0) and grid.min() >= 0.0
    # a different image is explained differently
    assert not np.allclose(grid, np.array(answers[2]["explanation"]["grid"]), atol=1e-3)


def test_an_explanation_has_its_own_upload_cap(exported_small):
    context = FakeContext(exported_small.out_dir, "model.torchscript.pt", {})
    context.model_yaml_config = {"handler": {"explain_max_bytes": 1000}}
    service = ImageClassifierService()
    service.initialize(context)
    photo = real_images()[0].read_bytes()
    assert len(photo) > 1000
    context.request_headers[1] = {"explain": "True"}
    answers = service.handle([{"body": bytearray(photo)}, {"body": bytearray(photo)}], context)
    assert statuses(context, 2) == [200, 413]
    assert json.loads(answers[1])["type"] == "PayloadTooLarge"


def test_a_batch_of_explanations_shares_one_time_limit(exported_small):
    """Explanations past the batch's limit get their own 503; the prediction batched with them
    is still answered."""
    context = FakeContext(exported_small.out_dir, "model.onnx", {})
    context.model_yaml_config = {
        "handler": {"backend": "onnx", "explain_timeout_s": 0.001, "explain_grid": 16}
    }
    service = ImageClassifierService()
    service.initialize(context)
    photo = real_images()[0].read_bytes()
    data = [{"body": bytearray(photo)} for _ in range(3)]
    context.request_headers[1] = context.request_headers[2] = {"explain": "True"}
    answers = [json.loads(text) for text in service.handle(data, context)]
    assert statuses(context, 3) == [200, 503, 503]
    assert answers[0]["label"] and answers[1]["type"] == answers[2]["type"] == "ExplanationTimeout"
