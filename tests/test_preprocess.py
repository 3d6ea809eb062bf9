"""The handler's fast preprocessing vs the torchvision pipeline the models were trained with."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from handler.decode import decode_image
from handler.postprocess import answer, probabilities
from modelspec.imaging import Normalizer, resize_crop
from modelspec.meta import MetaError, ModelMeta, PreprocessSpec
from modelspec.reference import reference_tensor
from tests.helpers import gradient_rgb, real_images

# One grey level after normalisation is 1 / (255 * std) ~ 0.0175: rounding may differ by that.
ONE_LEVEL = 1 / (255 * min(PreprocessSpec().std)) + 1e-6


def ours(image: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    normalizer = Normalizer(spec, torch.device("cpu"), torch.float32)
    return normalizer([resize_crop(image, spec)])[0]


@pytest.mark.parametrize("mode", ["shorter_side", "square"])
@pytest.mark.parametrize("path", real_images(), ids=lambda p: p.name)
def test_matches_torchvision_within_one_grey_level(path, mode):
    spec = PreprocessSpec(resize_mode=mode)
    image = decode_image(path.read_bytes(), max_pixels=10**8)
    difference = (ours(image, spec) - reference_tensor(image, spec)).abs()
    assert difference.max().item() <= ONE_LEVEL


@pytest.mark.parametrize("size", [(224, 224), (225, 1000), (1000, 225), (3, 5), (4000, 300)])
def test_odd_sizes_match_reference(size):
    spec = PreprocessSpec()
    image = gradient_rgb(*size)
    out = ours(image, spec)
    assert out.shape == (3, 224, 224)
    assert (out - reference_tensor(image, spec)).abs().max().item() <= ONE_LEVEL


def test_jpeg_draft_error_is_small():
    """Draft decoding (2x oversampling) changes pixels a little: bound how much."""
    path = next(p for p in real_images() if "1920x1200" in p.name)
    spec = PreprocessSpec()
    data = path.read_bytes()
    exact = reference_tensor(decode_image(data, max_pixels=10**8), spec)
    drafted = ours(decode_image(data, max_pixels=10**8, draft_min_size=512), spec)
    difference = (drafted - exact).abs()
    assert difference.mean().item() < 0.01  # well under one grey level on average
    assert difference.max().item() < 0.25


def test_normalizer_batches_and_casts():
    spec = PreprocessSpec(input_size=8, resize_size=8)
    crops = [torch.full((3, 8, 8), v, dtype=torch.uint8) for v in (0, 255)]
    batch = Normalizer(spec, torch.device("cpu"), torch.float16)(crops)
    assert batch.shape == (2, 3, 8, 8) and batch.dtype == torch.float16
    assert batch.is_contiguous()
    mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
    assert torch.allclose(batch[0, :, 0, 0].float(), -mean / std, atol=1e-2)
    assert torch.allclose(batch[1, :, 0, 0].float(), (1 - mean) / std, atol=1e-2)


def test_spec_resize_geometry_matches_torchvision_rounding():
    spec = PreprocessSpec()
    assert spec.resized_size(1920, 1080) == (455, 256)
    assert spec.resized_size(600, 800) == (256, 341)
    assert spec.crop_box(1920, 1080) == (116, 16, 340, 240)
    assert PreprocessSpec(resize_mode="square").resized_size(1920, 1080) == (256, 256)


def test_spec_rejects_nonsense():
    with pytest.raises(MetaError):
        PreprocessSpec(resize_mode="stretch")
    with pytest.raises(MetaError):
        PreprocessSpec(input_size=300, resize_size=256)
    with pytest.raises(MetaError):
        PreprocessSpec(std=(0.0, 1.0, 1.0))


def test_meta_round_trip(tmp_path):
    meta = ModelMeta(
        name="m",
        architecture="resnet50",
        class_names=["a", "b"],
        preprocess=PreprocessSpec(resize_mode="square"),
        files={"onnx/fp32": "model.onnx"},
    )
    meta.save(tmp_path)
    loaded = ModelMeta.load(tmp_path)
    assert loaded == meta
    assert loaded.model_file("onnx", "fp32") == "model.onnx"
    with pytest.raises(MetaError):
        loaded.model_file("torchscript", "fp16")
    with pytest.raises(MetaError):
        ModelMeta(name="m", architecture="x", class_names=["a", "a"])


def test_top_k_answers():
    logits = torch.tensor([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    rows = probabilities(logits, 3)
    first, second = answer(rows[0], ["a", "b", "c"], 2), answer(rows[1], ["a", "b", "c"], 10)
    assert first["label"] == "b"
    assert [p["label"] for p in first["top_k"]] == ["b", "c"]
    assert len(second["top_k"]) == 3  # k capped at the class count
    assert first["confidence"] == pytest.approx(torch.softmax(logits, 1)[0, 1].item(), abs=1e-6)
    assert sum(p["probability"] for p in second["top_k"]) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        probabilities(logits, 2)
    with pytest.raises(ValueError):
        answer(rows[0], ["a", "b"], 1)
