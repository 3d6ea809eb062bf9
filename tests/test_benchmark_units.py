"""The benchmark's parts that need no server: its GPU preprocessing rule, the goal table, the
report as a pure function of results.json, and the command line's spec."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from gameart.cli import benchmark as cli
from gameart.measure.benchmark import goals as goal_table
from gameart.measure.benchmark import report
from gameart.measure.benchmark.preprocess import resize_crop_normalize
from gameart.measure.benchmark.spec import FULL, QUICK
from gameart.pipeline.archive import ArchiveSpec
from modelspec.imaging import Normalizer
from modelspec.meta import PreprocessSpec
from modelspec.reference import reference_tensor
from tests.helpers import REPO_ROOT

SAVED_RUNS = sorted((REPO_ROOT / "docs" / "benchmarks").glob("*/results.json"))
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def smooth_picture(width: int, height: int) -> Image.Image:
    """Gradients that differ along both axes: where a resize puts the crop shows."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1)
    return Image.fromarray(rgb.round().astype(np.uint8))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["shorter_side", "square"])
def test_gpu_preprocessing_resizes_as_the_spec_says(device, mode):
    """The nvJPEG row's resize + crop + normalise (device-agnostic, so it runs on the CPU too)
    follows the spec's resize_mode as the reference pipeline does; it once always resized the
    shorter side, so a square-resize model's crop held only the picture's middle."""
    spec = PreprocessSpec(resize_mode=mode)
    picture = smooth_picture(640, 240)  # wide, as a screenshot: the modes crop differently
    pixels = torch.from_numpy(np.array(picture)).permute(2, 0, 1).to(device)
    normalizer = Normalizer(spec, torch.device(device), torch.float32)
    ours = resize_crop_normalize([pixels, pixels], spec, normalizer).cpu()
    expected = reference_tensor(picture, spec)
    assert ours.shape == (2, 3, spec.input_size, spec.input_size)
    # one grey level apart at most (PyTorch's kernel against PIL's), in normalised units
    assert (ours[0] - expected).abs().max() <= 1.5 / (255 * min(spec.std))
    assert torch.equal(ours[0], ours[1])


@pytest.mark.parametrize("saved", SAVED_RUNS, ids=lambda p: p.parent.name)
def test_saved_runs_rerender_to_their_committed_report(saved):
    """The report is a pure function of results.json: a saved run renders to the very
    results.md committed beside it, and the goal table grades it as the run did."""
    results = json.loads(saved.read_text())
    assert goal_table.goals_of(results) == results["goals"]
    assert report.render(results) == (saved.parent / "results.md").read_text()


def test_report_only_rewrites_report_and_plots(tmp_path):
    saved = next(p for p in SAVED_RUNS if json.loads(p.read_text())["e2e"])
    shutil.copy(saved, tmp_path / "results.json")
    assert cli.main(["--report-only", str(tmp_path)]) == 0
    assert (tmp_path / "results.md").read_text() == (saved.parent / "results.md").read_text()
    for name in ("model_latency_vs_batch.png", "model_throughput_vs_batch.png"):
        with Image.open(tmp_path / name) as image:
            assert image.size[0] >= 600
    plots = [name for _, name, _, _ in report.MODEL_PLOTS] + [report.E2E_PLOT]
    assert {p.name for p in tmp_path.iterdir()} == {"results.json", "results.md", *plots}


def e2e_row(handler: str, concurrency: int, rps: float, p99: float) -> dict:
    return {
        "handler": handler,
        "batching": "on",
        "concurrency": concurrency,
        "throughput_rps": rps,
        "p99_ms": p99,
    }


def test_goal_table_grades_against_its_bounds():
    e2e = [
        e2e_row("stock", 1, 10.0, 100.0),
        e2e_row("ours", 1, 11.0, 90.0),  # c=1 is reported, never graded
        e2e_row("stock", 8, 10.0, 100.0),
        e2e_row("ours", 8, 25.0, 100.0),  # 2.5x throughput, p99 equal: met
        e2e_row("ours int8", 8, 30.0, 120.0),  # p99 worse: missed
    ]
    results = {
        "model": [],
        "preprocess": [],
        "e2e": e2e,
        "plan": {"served_backend": "onnx", "serving": {"gpu": False}},
    }
    graded = {e.key: e.met for e in goal_table.evaluate(results)}
    assert graded == {
        "e2e_c1_ours_over_stock": None,
        "e2e_c8_ours_over_stock": True,
        "e2e_c8_ours_int8_over_stock": False,
    }
    goals = goal_table.goals_of(results)
    assert goals["e2e_c1_ours_over_stock"]["goal"] == "(reported)"
    assert goals["gpu"].startswith("absent")
    verdicts = goal_table.verdicts(results)
    assert [line.split()[0] for line in verdicts] == ["met", "missed"]


def test_every_goal_reads_a_bound_it_can_check():
    for goal in goal_table.GOALS:
        assert goal.what and goal.key
        assert bool(goal.bounds) == (goal.target is not None), goal.key
        for bound in goal.bounds:
            assert bound.direction in ("<=", ">=") and bound.threshold > 0


def test_command_line_becomes_a_spec():
    args = cli.build_parser().parse_args(
        ["--quick", "--skip", "e2e,preprocess", "--devices", "cuda", "--concurrency", "1,4"]
    )
    spec = cli.spec_from_args(args)
    assert spec.skip == {"e2e", "preprocess"} and spec.devices == ("cuda",)
    assert spec.plan == QUICK.replace(concurrencies=(1, 4))
    defaults = ArchiveSpec(export_dir=REPO_ROOT)
    assert spec.serving.batch_size == defaults.batch_size
    assert spec.serving.max_batch_delay == defaults.max_batch_delay_ms
    full = cli.spec_from_args(cli.build_parser().parse_args(["--rows", "aotinductor,eager"]))
    assert full.plan == FULL and full.rows == ("aotinductor", "eager") and not full.skip
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--skip", "e2e", "preprocess"])  # the old syntax
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--skip", "model,nothing"])
