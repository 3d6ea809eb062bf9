"""Session fixtures: checkpoints shaped like the users' two projects, exported once per run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from export.cli import main as export_main
from modelspec.meta import ModelMeta
from tests.helpers import (
    COVER_CLASSES,
    SCREEN_CLASSES,
    SMALL_ARCH,
    cover_resnet50,
    screenshot_resnet50,
    small_model,
)


@dataclass
class Exported:
    checkpoint: Path
    out_dir: Path
    model: torch.nn.Module  # the original eager model, for comparisons
    meta: ModelMeta


def _export(argv: list[str]) -> None:
    code = export_main(argv)
    assert code == 0, f"export failed for {argv}"


@pytest.fixture(scope="session")
def exported_cover(tmp_path_factory) -> Exported:
    """Cover -> genre: a whole pickled ResNet-50 (Dropout+Linear head), classes.txt, Resize(256)."""
    root = tmp_path_factory.mktemp("cover")
    model = cover_resnet50(seed=0)
    checkpoint = root / "cover_resnet50.pth"
    torch.save(model, checkpoint)
    classes = root / "classes.txt"
    classes.write_text("\n".join(COVER_CLASSES) + "\n")
    out = root / "export"
    _export(
        [
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--name",
            "cover_genre",
            "--classes",
            str(classes),
            "--arch",
            "resnet50",
            "--trust-checkpoint",
        ]
    )
    return Exported(checkpoint, out, model, ModelMeta.load(out))


@pytest.fixture(scope="session")
def exported_screens(tmp_path_factory) -> Exported:
    """Screenshot -> game: {"model_state_dict": ...} with "model." keys, square resize."""
    root = tmp_path_factory.mktemp("screens")
    model = screenshot_resnet50(seed=1)
    checkpoint = root / "best_model.pth"
    torch.save({"model_state_dict": model.state_dict(), "val_acc": 0.9}, checkpoint)
    out = root / "export"
    _export(
        [
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--name",
            "screen_game",
            "--arch",
            "resnet50",
            "--class-names",
            ",".join(SCREEN_CLASSES),
            "--resize-mode",
            "square",
        ]
    )
    return Exported(checkpoint, out, model, ModelMeta.load(out))


@pytest.fixture(scope="session")
def exported_small(tmp_path_factory) -> Exported:
    """A quick ResNet-18 export with fp16 and int8 files, for handler and archive tests."""
    root = tmp_path_factory.mktemp("small")
    model = small_model(num_classes=4, seed=2)
    checkpoint = root / "small.pth"
    torch.save(model.state_dict(), checkpoint)
    out = root / "export"
    _export(
        [
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--name",
            "small",
            "--arch",
            SMALL_ARCH,
            "--class-names",
            "alpha,beta,gamma,delta",
            "--fp16",
            "--int8",
        ]
    )
    return Exported(checkpoint, out, model, ModelMeta.load(out))
