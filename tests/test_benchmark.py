"""scripts/benchmark.py: the quick run end to end (real TorchServe, both handlers), its maths."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from gameart.measure.benchmark import goals as goal_table
from gameart.measure.benchmark import timing
from gameart.measure.benchmark.spec import QUICK
from gameart.measure.benchmark.subject import Subject
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "scripts" / "benchmark.py"),
            "--quick",
            "--model",
            "resnet18",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text())


def test_machine_info_is_recorded(quick_run):
    _, result = quick_run
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["date"]
    assert machine["versions"]["torch"] == torch.__version__
    assert {"torchserve", "onnxruntime", "torchvision"} <= set(machine["versions"])


def test_model_rows_cover_every_cpu_backend_and_batch(quick_run):
    _, result = quick_run
    rows = [r for r in result["model"] if r["device"] == "cpu"]
    assert {(r["variant"], r["batch"]) for r in rows} == {
        (v, n)
        for v in ("eager fp32", "torchscript fp32", "onnxruntime fp32", "onnxruntime int8")
        for n in QUICK.cpu_batches
    }
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
        assert row["iterations"] >= 3
        # throughput and latency describe the same timed run
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1e3 / row["p50_ms"], rel=0.6)


def test_gpu_is_marked_absent_without_one(quick_run):
    out, result = quick_run
    if torch.cuda.is_available():
        assert any(r["device"] == "cuda" for r in result["model"])
    else:
        assert not any(r["device"] == "cuda" for r in result["model"])
        assert "absent" in result["goals"]["gpu"]
        assert "GPU rows: absent" in (out / "results.md").read_text()


def test_preprocessing_rows(quick_run):
    _, result = quick_run
    methods = {r["method"] for r in result["preprocess"]}
    assert "handler, fast path (JPEG draft x2, PyTorch resize)" in methods
    assert "handler, exact path (full decode, PIL resize)" in methods
    assert "PIL + torchvision transforms (reference)" in methods
    assert all(r["ms_per_image"] > 0 for r in result["preprocess"])
    images = {r["image"] for r in result["preprocess"]}
    assert {"cover_600x800.jpg", "screenshot_1080p.jpg", "screenshot_1080p.png"} <= images


def test_end_to_end_ours_and_stock_both_answer(quick_run):
    _, result = quick_run
    e2e = result["e2e"]
    assert {(r["handler"], r["batching"], r["concurrency"]) for r in e2e} == {
        (h, b, c) for h in ("ours", "stock") for b in ("on", "off") for c in (1, 8)
    } | {("ours int8", "on", c) for c in (1, 8)}
    for row in e2e:
        assert row["ok"] > 0 and set(row["statuses"]) == {"200"}, row
        assert row["throughput_rps"] > 0 and row["p99_ms"] >= row["p50_ms"]
    assert result["goals"]["e2e_c8_ours_over_stock"]["throughput_ratio"] > 0
    assert result["goals"]["e2e_c8_ours_int8_over_stock"]["throughput_ratio"] > 0


def test_report_files(quick_run):
    out, _ = quick_run
    markdown = (out / "results.md").read_text()
    assert "## Goals" in markdown and "## End to end through TorchServe" in markdown
    for name in (
        "model_latency_vs_batch.png",
        "model_throughput_vs_batch.png",
        "e2e_vs_concurrency.png",
    ):
        with Image.open(out / name) as image:
            assert image.size[0] >= 600


def test_goals_arithmetic():
    model = [
        {
            "device": "cpu",
            "backend": "eager",
            "precision": "fp32",
            "variant": "eager fp32",
            "batch": 1,
            "p50_ms": 100.0,
        },
        {
            "device": "cpu",
            "backend": "onnxruntime",
            "precision": "fp32",
            "variant": "onnxruntime fp32",
            "batch": 1,
            "p50_ms": 55.0,
        },
        {
            "device": "cpu",
            "backend": "onnxruntime",
            "precision": "int8",
            "variant": "onnxruntime int8",
            "batch": 1,
            "p50_ms": 30.0,
        },
    ]
    pre = [
        {
            "method": "handler, fast path (JPEG draft x2, PyTorch resize)",
            "image": "screenshot_1080p.jpg",
            "ms_per_image": 11.0,
        }
    ]
    e2e = [
        {
            "handler": "ours",
            "batching": "on",
            "concurrency": 8,
            "throughput_rps": 30.0,
            "p99_ms": 400.0,
        },
        {
            "handler": "stock",
            "batching": "on",
            "concurrency": 8,
            "throughput_rps": 12.0,
            "p99_ms": 800.0,
        },
    ]
    goals = goal_table.goals(model, pre, e2e, "onnx")
    assert goals["cpu_b1_best_fp32_over_eager"]["value"] == 0.55
    assert goals["cpu_b1_best_any_precision_over_eager"]["value"] == 0.3
    assert goals["preprocess_1080p_jpeg_over_model_b1"]["value"] == 0.2
    assert goals["e2e_c8_ours_over_stock"] == {
        "throughput_ratio": 2.5,
        "p99_ratio": 0.5,
        "goal": ">= 2x throughput, p99 no worse",
    }
    assert timing.pick_backend([*model, dict(model[1], batch=8)], "auto") == "onnx"


def test_gpu_variants_build_and_run_as_far_as_a_cpu_allows(tmp_path):
    """The fp16 and channels_last eager runners are device-agnostic: run them on the CPU."""
    from modelspec.meta import ModelMeta

    meta = ModelMeta(name="r18", architecture="resnet18", class_names=list("abcde"))
    subject = Subject("r18", "resnet18", tmp_path, meta, None)
    names = [v.label for v in timing.variants(subject, "cuda", 1)]
    assert {
        "eager fp16+channels_last",
        "cuda-graph fp16+channels_last",
        "torch.compile fp16+channels_last",
        "onnxruntime fp32",
    } <= set(names)
    run = timing.eager_runner(subject, "fp16", True)(torch.device("cpu"))
    x = torch.randn(2, 3, 224, 224).half().contiguous(memory_format=torch.channels_last)
    assert run(x).shape == (2, 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none present")
def test_cuda_graph_and_compile_runners_match_eager(tmp_path):
    from modelspec.meta import ModelMeta

    meta = ModelMeta(name="r18", architecture="resnet18", class_names=list("abcde"))
    subject = Subject("r18", "resnet18", tmp_path, meta, None)
    device = torch.device("cuda")
    x = (
        torch.randn(4, 3, 224, 224, device=device)
        .half()
        .contiguous(memory_format=torch.channels_last)
    )
    reference = timing.eager_runner(subject, "fp16", True)(device)(x).float()
    for build in (timing.cuda_graph_runner(subject), timing.compiled_runner(subject)):
        out = build(device)(x).float()
        assert torch.allclose(out, reference, atol=5e-2, rtol=5e-2)
