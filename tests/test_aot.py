"""AOTInductor packages: `python -m export --aot`, its parity gate, the handler's AotBackend, and
the refusals (corrupt file, another torch, a CUDA package on a CPU worker).

A CPU compile of even a small CNN takes ~15 s here (ResNet-18: ~50 s on 2 cores), so these tests
compile two tiny CNNs once per module and reuse the packages.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from export import cli
from export.aot import MAX_BATCH, write_aoti
from export.parity import parity_inputs
from gameart.pipeline.archive import BuildError, check_aoti_device
from handler.backends import AotBackend
from handler.config import HandlerConfig
from handler.service import ImageClassifierService
from modelspec.aoti import KEY, AotiError, AotiModel
from modelspec.meta import ModelMeta, PreprocessSpec
from tests.conftest import Exported, trained_like
from tests.helpers import (
    FakeContext,
    assert_answers_match,
    eager_logits,
    real_images,
    reference_probabilities,
    requests_for,
    small_model,
)

CLASSES = ["alpha", "beta", "gamma", "delta"]
CPU = torch.device("cpu")
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}  # the export's defaults (--tolerance, --fp16-tolerance)


def tiny_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 64, 3, stride=2, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, len(CLASSES)),
    ).eval()


def export_argv(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    names = ",".join(CLASSES)
    return ["--checkpoint", str(checkpoint), "--out", str(out), "--class-names", names, *extra]


@pytest.fixture(scope="module")
def aot_export(tmp_path_factory) -> Exported:
    """A tiny CNN answering like a trained one, exported with --aot for the CPU."""
    root = tmp_path_factory.mktemp("aot")
    model = trained_like(tiny_cnn(seed=0), PreprocessSpec())
    checkpoint = root / "tiny.pth"
    torch.save(model, checkpoint)
    out = root / "export"
    argv = export_argv(checkpoint, out, "--trust-checkpoint", "--aot", "--aot-device", "cpu")
    assert cli.main(argv) == 0
    return Exported(checkpoint, out, model, ModelMeta.load(out))


@pytest.fixture(scope="module")
def channels_last_package(tmp_path_factory) -> tuple[Path, nn.Module]:
    """Another model, compiled channels_last (CUDA's layout) on the CPU."""
    model = tiny_cnn(seed=1)
    path = tmp_path_factory.mktemp("aot_cl") / "model.aoti.pt2"
    write_aoti(model, path, 224, "cpu", channels_last=True)
    return path, model


def bound(eager: torch.Tensor, precision: str) -> float:
    """The parity check's: tolerance x max(1, max|eager logit|)."""
    return TOLERANCE[precision] * max(1.0, eager.abs().max().item())


def assert_each_item_matches(logits: torch.Tensor, eager: torch.Tensor, precision: str) -> None:
    assert logits.shape == eager.shape and logits.dtype == torch.float32
    for i, (row, want) in enumerate(zip(logits, eager.float(), strict=True)):
        assert (row - want).abs().max().item() <= bound(eager, precision), f"item {i}"


def with_info(src: Path, dst: Path, **changes: str) -> Path:
    """A copy of a package whose recorded info says otherwise (the library is unchanged)."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for item in old.infolist():
            data = old.read(item)
            if item.filename.endswith("metadata.json") and KEY.encode() in data:
                raw = json.loads(data)
                raw[KEY] = json.dumps({**json.loads(raw[KEY]), **changes})
                data = json.dumps(raw).encode()
            new.writestr(item, data)
    return dst


def test_export_writes_the_package_and_records_it(aot_export):
    out, meta = aot_export.out_dir, aot_export.meta
    assert (out / "model.aoti.pt2").is_file()
    assert meta.model_file("aoti", "fp32") == "model.aoti.pt2"
    info = meta.export["aoti"]
    assert (info["device"], info["precision"], info["torch"]) == ("cpu", "fp32", torch.__version__)
    assert info["max_batch"] == MAX_BATCH and info["channels_last"] is False
    report = json.loads((out / "parity.json").read_text())
    (row,) = [f for f in report["files"] if f["backend"] == "aoti"]
    assert row["file"] == "model.aoti.pt2" and row["precision"] == "fp32"
    assert row["passed"] and row["max_abs_diff"] <= row["bound"] and row["top1_agreement"] == 1.0
    assert report["passed"]


@pytest.mark.parametrize("batch", [1, 3])
def test_backend_matches_eager_per_item(aot_export, batch):
    backend = AotBackend(aot_export.out_dir / "model.aoti.pt2", CPU, "fp32", threads=2)
    assert (backend.name, backend.device, backend.input_dtype) == ("aoti", CPU, torch.float32)
    x = parity_inputs(aot_export.meta.preprocess, real_images()[:batch], random_count=0)
    assert_each_item_matches(backend(x), eager_logits(aot_export.model, x), "fp32")


def test_batches_above_the_bound_run_in_chunks(aot_export):
    model = AotiModel(aot_export.out_dir / "model.aoti.pt2", CPU)
    model.info = dataclasses.replace(model.info, max_batch=2)  # as if 5 > MAX_BATCH
    package, sizes = model.model, []
    model.model = lambda x: sizes.append(len(x)) or package(x)
    x = parity_inputs(aot_export.meta.preprocess, real_images()[:3], random_count=2)
    assert_each_item_matches(model(x), eager_logits(aot_export.model, x), "fp32")
    assert sizes == [2, 2, 1]


def test_a_channels_last_package_takes_contiguous_input(channels_last_package):
    """Compiled for channels_last, fed contiguous NCHW like every backend (and fed channels_last
    too: AotiModel makes it contiguous, as the package, which checks no strides, expects)."""
    path, model = channels_last_package
    aoti = AotiModel(path, CPU)
    assert aoti.info.channels_last
    x = parity_inputs(PreprocessSpec(), real_images()[:3], random_count=0)
    eager = eager_logits(model, x)
    assert_each_item_matches(aoti(x), eager, "fp32")
    assert_each_item_matches(aoti(x.contiguous(memory_format=torch.channels_last)), eager, "fp32")


def test_the_handler_serves_the_package(aot_export):
    images = [p.read_bytes() for p in real_images()]
    context = FakeContext(
        aot_export.out_dir,
        "model.aoti.pt2",
        {"maxWorkers": 1, "handler": {"backend": "aoti", "precision": "fp32"}},
    )
    service = ImageClassifierService()
    service.initialize(context)
    assert service.backend.name == "aoti"
    answers = [json.loads(a) for a in service.handle(requests_for(images), context)]
    expected = reference_probabilities(aot_export.model, images, aot_export.meta.preprocess)
    assert_answers_match(answers, expected, CLASSES)


def test_packages_that_cannot_run_here_are_refused(aot_export, tmp_path):
    good = aot_export.out_dir / "model.aoti.pt2"
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases = {
        truncated: "not a readable AOTInductor package",
        aot_export.out_dir / "model.torchscript.pt": "not an AOTInductor package written by",
        with_info(good, tmp_path / "old.pt2", torch="2.0.0"): "compiled by torch 2.0.0",
        with_info(good, tmp_path / "gpu.pt2", device="cuda"): "compiled for CUDA but this worker",
    }
    for path, message in cases.items():
        with pytest.raises(ValueError, match=message):
            AotBackend(path, CPU, "fp32", 1)
    with pytest.raises(ValueError, match="is an fp32 package, but the handler is configured"):
        AotBackend(good, CPU, "fp16", 1)
    with pytest.raises(BuildError, match="compiled for cpu workers: use --device cpu"):
        check_aoti_device(good, "gpu")
    with pytest.raises(BuildError, match="compiled for gpu workers: use --device gpu"):
        check_aoti_device(tmp_path / "gpu.pt2", "cpu")
    HandlerConfig(backend="aoti").validate()
    with pytest.raises(ValueError, match="torchscript, onnx or aoti"):
        HandlerConfig(backend="aot").validate()
    with pytest.raises(AotiError, match="cannot capture TorchScript"):
        write_aoti(torch.jit.script(tiny_cnn(0)), tmp_path / "x.pt2", 224, "cpu")


def test_a_package_of_another_model_fails_the_export(
    aot_export, channels_last_package, tmp_path, monkeypatch, capsys
):
    """The parity gate: a compile that went wrong (here: another model's package) stops the
    export with the parity exit code, its row failed in parity.json and no model_meta.json."""
    other, _ = channels_last_package

    def wrong_compile(model, path, *args, **kwargs):
        shutil.copy(other, path)
        return AotiModel(other, CPU).info

    monkeypatch.setattr(cli, "write_aoti", wrong_compile)
    out = tmp_path / "out"
    flags = ["--trust-checkpoint", "--aot", "--aot-device", "cpu"]
    assert cli.main(export_argv(aot_export.checkpoint, out, *flags)) == 2
    assert "parity check failed" in capsys.readouterr().err
    report = json.loads((out / "parity.json").read_text())
    failed = {f["file"] for f in report["files"] if not f["passed"]}
    assert failed == {"model.aoti.pt2"} and not report["passed"]
    assert not (out / "model_meta.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none present")
def test_cuda_package_is_fp16_channels_last_and_matches_eager(tmp_path):
    model = small_model(num_classes=4, seed=3)
    checkpoint = tmp_path / "small.pth"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "export"
    argv = export_argv(checkpoint, out, "--arch", "resnet18", "--aot", "--aot-device", "cuda")
    assert cli.main(argv) == 0
    meta = ModelMeta.load(out)
    assert meta.model_file("aoti", "fp16") == "model.fp16.aoti.pt2"
    info = meta.export["aoti"]
    assert (info["device"], info["precision"], info["channels_last"]) == ("cuda", "fp16", True)
    report = json.loads((out / "parity.json").read_text())
    (row,) = [f for f in report["files"] if f["backend"] == "aoti"]
    assert row["passed"] and row["precision"] == "fp16" and row["max_abs_diff"] > 0
    gpu = torch.device("cuda", 0)
    backend = AotBackend(out / "model.fp16.aoti.pt2", gpu, "fp16", 1)
    assert (backend.device, backend.input_dtype) == (gpu, torch.float16)
    for batch in (1, 3):
        x = parity_inputs(meta.preprocess, real_images()[:batch], random_count=0)
        assert_each_item_matches(backend(x.to(gpu).half()), eager_logits(model, x), "fp16")
    with pytest.raises(ValueError, match="compiled for CUDA but this worker runs on the CPU"):
        AotBackend(out / "model.fp16.aoti.pt2", CPU, "fp16", 1)
