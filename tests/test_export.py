"""`python -m export`: files, metadata, parity, and loud failures."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import onnx
import onnxruntime as ort
import pytest
import torch

from export import cli
from export.parity import compare, parity_inputs
from modelspec.meta import (
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    PROJECT_POLICY,
    TORCHVISION_POLICY,
    ModelMeta,
    PreprocessSpec,
)
from tests.helpers import (
    COVER_CLASSES,
    SCREEN_CLASSES,
    SMALL_ARCH,
    eager_logits,
    real_images,
    small_model,
)


def test_cover_export_files_and_meta(exported_cover):
    out, meta = exported_cover.out_dir, exported_cover.meta
    assert (out / "model.torchscript.pt").is_file() and (out / "model.onnx").is_file()
    assert meta.name == "cover_genre" and meta.architecture == "resnet50"
    assert meta.class_names == COVER_CLASSES
    # Resize(256) shorter side, crop 224, ImageNet; torchvision's loader for an imported model
    assert dataclasses.replace(meta.preprocess, decode=TORCHVISION_POLICY) == PreprocessSpec()
    assert meta.preprocess.decode.color == "convert" and meta.preprocess.decode.exif is False
    assert meta.source["format"] == "pickled-module" and len(meta.source["sha256"]) == 64
    assert meta.export["torch"] == torch.__version__ and meta.export["onnx_exporter"]


def test_screens_export_keeps_square_resize_and_names(exported_screens):
    meta = exported_screens.meta
    assert meta.class_names == SCREEN_CLASSES and meta.preprocess.resize_mode == "square"
    assert meta.source["format"] == "state-dict-in-model_state_dict"
    assert meta.source["val_acc"] == 0.9


def test_parity_report_is_written_and_tight(exported_cover):
    report = json.loads((exported_cover.out_dir / "parity.json").read_text())
    assert report["passed"] is True
    assert report["image_inputs"] == [p.name for p in real_images()]
    assert {f["file"] for f in report["files"]} == {"model.torchscript.pt", "model.onnx"}
    for entry in report["files"]:
        assert entry["max_abs_diff"] < 1e-3
        assert entry["top1_agreement"] == 1.0


@pytest.mark.parametrize("name", ["exported_cover", "exported_screens", "exported_small"])
def test_bytes_to_label_parity_is_reported_and_honoured(request, name):
    """parity.json measures both image paths against the reference on every parity image and
    the metadata records the path chosen: fast only where it kept every answer."""
    exported = request.getfixturevalue(name)
    pipeline = json.loads((exported.out_dir / "parity.json").read_text())["pipeline"]
    decode = exported.meta.preprocess.decode
    assert (pipeline["color"], pipeline["exif"]) == (decode.color, decode.exif)
    paths = {p["path"]: p for p in pipeline["paths"]}
    assert set(paths) == {"fast", "exact"}
    for path in paths.values():
        assert [i["image"] for i in path["images"]] == [p.name for p in real_images()]
    assert paths["exact"]["passed"] and paths["exact"]["max_delta"] < 1e-4
    assert paths["exact"]["top1_agreement"] == 1.0
    assert pipeline["chosen"] == decode.path == ("fast" if paths["fast"]["passed"] else "exact")
    if paths["fast"]["passed"]:
        assert paths["fast"]["max_delta"] <= pipeline["max_delta_bound"]


def test_a_drifting_fast_path_makes_the_export_choose_exact(tmp_path):
    """With a bound no fast path can meet, the export records exact preprocessing instead of
    failing; asked for fast explicitly, it keeps fast and says what that costs."""
    checkpoint = tmp_path / "m.pth"
    torch.save(small_model(seed=5).state_dict(), checkpoint)
    base = ["--checkpoint", str(checkpoint), "--arch", SMALL_ARCH, "--class-names", "a,b,c,d"]
    assert cli.main([*base, "--out", str(tmp_path / "auto"), "--max-delta", "0"]) == 0
    assert ModelMeta.load(tmp_path / "auto").preprocess.decode.path == "exact"
    forced = tmp_path / "forced"
    assert (
        cli.main([*base, "--out", str(forced), "--max-delta", "0", "--preprocessing", "fast"]) == 0
    )
    assert ModelMeta.load(forced).preprocess.decode.path == "fast"
    pipeline = json.loads((forced / "parity.json").read_text())["pipeline"]
    assert pipeline["requested"] == "fast" and pipeline["chosen"] == "fast"


def test_decode_policy_flags_and_what_train_py_records(tmp_path):
    checkpoint = tmp_path / "m.pth"
    model = small_model(seed=5)
    base = ["--arch", SMALL_ARCH, "--class-names", "a,b,c,d", "--checkpoint", str(checkpoint)]
    torch.save(model.state_dict(), checkpoint)
    flags = ["--color-policy", "composite", "--exif", "apply", "--background", "0", "0", "0"]
    assert cli.main([*base, "--out", str(tmp_path / "flags"), *flags]) == 0
    decode = ModelMeta.load(tmp_path / "flags").preprocess.decode
    assert (decode.color, decode.exif, decode.background) == ("composite", True, (0, 0, 0))
    # a scripts/train.py checkpoint from before decode policies were recorded: project policy
    old = {
        "preprocess": {
            "input_size": 224,
            "resize_size": 256,
            "resize_mode": "shorter_side",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        }
    }
    torch.save({"model_state_dict": model.state_dict(), **old}, checkpoint)
    assert cli.main([*base, "--out", str(tmp_path / "old")]) == 0
    decode = ModelMeta.load(tmp_path / "old").preprocess.decode
    assert (decode.color, decode.exif) == (PROJECT_POLICY.color, PROJECT_POLICY.exif)


def test_onnx_has_named_input_and_dynamic_batch(exported_cover):
    path = exported_cover.out_dir / "model.onnx"
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == [ONNX_INPUT_NAME]
    assert [o.name for o in graph.output] == [ONNX_OUTPUT_NAME]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    spec = exported_cover.meta.preprocess
    for batch in (1, 3):
        x = parity_inputs(spec, [], random_count=batch, seed=batch)
        (out,) = session.run(None, {ONNX_INPUT_NAME: x.numpy()})
        assert out.shape == (batch, 5)
        assert torch.allclose(
            torch.from_numpy(out), eager_logits(exported_cover.model, x), atol=1e-3
        )


def test_torchscript_is_frozen_and_equal(exported_screens):
    module = torch.jit.load(str(exported_screens.out_dir / "model.torchscript.pt"))
    assert not list(module.parameters())  # frozen: weights are graph constants
    x = parity_inputs(exported_screens.meta.preprocess, real_images()[:2], random_count=1)
    assert torch.allclose(module(x), eager_logits(exported_screens.model, x), atol=1e-3)


def test_fp16_files_pass_their_own_tolerance(exported_small):
    report = json.loads((exported_small.out_dir / "parity.json").read_text())
    fp16 = [f for f in report["files"] if f["precision"] == "fp16"]
    assert {f["backend"] for f in fp16} == {"torchscript", "onnx"}
    assert all(f["passed"] and f["max_abs_diff"] > 0 for f in fp16)
    session = ort.InferenceSession(
        str(exported_small.out_dir / "model.fp16.onnx"), providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[0].type == "tensor(float16)"


def test_int8_file_is_judged_by_agreement_on_real_images(exported_small):
    report = json.loads((exported_small.out_dir / "parity.json").read_text())
    (int8,) = [f for f in report["files"] if f["precision"] == "int8"]
    assert int8["file"] == "model.int8.onnx" and int8["passed"]
    assert int8["criterion"].startswith("top-1 agreement")
    assert int8["top1_agreement"] >= 0.85 and int8["max_abs_diff"] > 1e-3  # truly quantized
    graph = onnx.load(str(exported_small.out_dir / "model.int8.onnx")).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    assert [i.name for i in graph.input] == [ONNX_INPUT_NAME]


def test_parity_compare_catches_drift():
    eager = torch.tensor([[5.0, 1.0, 0.0], [0.0, 3.0, 2.9]])
    assert compare("m", "onnx", "fp32", eager, eager + 1e-5, 1e-4).passed
    drifted = eager.clone()
    drifted[0, 1] += 0.1
    assert not compare("m", "onnx", "fp32", eager, drifted, 1e-4).passed
    flipped = eager[:, [1, 0, 2]]  # top-1 changes on both rows
    result = compare("m", "onnx", "fp32", eager, flipped, 1e-4)
    assert result.top1_agreement == 0.0 and not result.passed
    assert compare("m", "onnx", "int8", eager, flipped, 1.0, min_agreement=0.5).passed is False
    assert compare("m", "onnx", "int8", eager, eager + 0.5, 1.0, min_agreement=0.5).passed
    nan = eager.clone()
    nan[1, 2] = float("nan")
    assert not compare("m", "onnx", "fp32", eager, nan, 1e-4).passed


def test_export_fails_loudly_when_parity_breaks(tmp_path, monkeypatch, capsys):
    """An exporter that writes a different model must stop the export, leaving no meta."""
    checkpoint = tmp_path / "m.pth"
    torch.save(small_model(seed=5).state_dict(), checkpoint)
    real_write_onnx = cli.write_onnx
    monkeypatch.setattr(
        cli,
        "write_onnx",
        lambda model, path, example: real_write_onnx(small_model(seed=6), path, example),
    )
    code = cli.main(
        [
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(tmp_path / "out"),
            "--arch",
            SMALL_ARCH,
            "--class-names",
            "a,b,c,d",
        ]
    )
    assert code == 2
    assert "parity check failed" in capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["passed"] is False
    assert not (tmp_path / "out" / "model_meta.json").exists()


def test_torchscript_checkpoint_exports_too(tmp_path):
    model = small_model(num_classes=3, seed=7)
    path = tmp_path / "model.ts"
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, torch.randn(1, 3, 224, 224)), str(path))
    out = tmp_path / "out"
    argv = ["--checkpoint", str(path), "--out", str(out), "--class-names", "x,y,z"]
    assert cli.main(argv) == 2  # code in the file: refused without the flag
    assert cli.main([*argv, "--trust-checkpoint"]) == 0
    meta = ModelMeta.load(out)
    assert meta.source["format"] == "torchscript" and meta.architecture == "torchscript"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--class-names", "a,b"], "lists 2 class names but the model has 4"),
        ([], "no names were given"),
    ],
)
def test_class_name_problems(tmp_path, extra, message):
    checkpoint = tmp_path / "m.pth"
    torch.save(small_model().state_dict(), checkpoint)
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(tmp_path / "o"),
        "--arch",
        SMALL_ARCH,
        *extra,
    ]
    result = subprocess.run([sys.executable, "-m", "export", *argv], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr


def test_cli_help():
    result = subprocess.run(
        [sys.executable, "-m", "export", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--trust-checkpoint" in result.stdout
