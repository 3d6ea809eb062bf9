"""Session fixtures: checkpoints shaped like the users' two projects, exported once per run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from export.cli import main as export_main
from modelspec.meta import PROJECT_POLICY, ModelMeta, PreprocessSpec
from modelspec.reference import reference_rgb
from tests import components, fixture_models
from tests.helpers import (
    COVER_CLASSES,
    SCREEN_CLASSES,
    SMALL_ARCH,
    cover_resnet50,
    real_images,
    screenshot_resnet50,
    small_model,
    source_picture,
)


def pytest_addoption(parser):
    parser.addoption(
        "--strict-components",
        action="store_true",
        help="fail (not skip) tests whose real component (Redis, nginx, ab, ...) is missing; "
        "on whenever CI is set in the environment",
    )


def pytest_configure(config):
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    components.strict = bool(config.getoption("--strict-components") or ci)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    components.current_test = item.nodeid  # before any fixture, module-scoped ones included


def pytest_terminal_summary(terminalreporter, config):
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int):
        terminalreporter.write_line(f"test order: random, repeat it with --randomly-seed={seed}")
    lines = components.summary_lines()
    if lines:
        mode = "strict: missing = failure" if components.strict else "missing = skip"
        terminalreporter.section(f"real components ({mode})")
        for line in lines:
            terminalreporter.write_line(line)


@dataclass
class Exported:
    checkpoint: Path
    out_dir: Path
    model: torch.nn.Module  # the original eager model, for comparisons
    meta: ModelMeta


def _export(argv: list[str]) -> None:
    code = export_main(argv)
    assert code == 0, f"export failed for {argv}"


def trained_like(model: torch.nn.Module, spec: PreprocessSpec) -> torch.nn.Module:
    """The model with answers that depend on the image (see tests/fixture_models.py): each
    parity image, as the user's own pipeline shows it, answers the class of its source picture
    (the mode variants of one picture, e.g. pyramid and its CMYK copy, share it)."""
    paths = real_images()
    sources = sorted({source_picture(p) for p in paths})
    num_classes = fixture_models.final_linear(model).out_features
    labels = [sources.index(source_picture(p)) % num_classes for p in paths]
    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(reference_rgb(image, spec).copy())  # loaded before it closes
    return fixture_models.make_discriminative(model, images, labels, spec)


PILLOW_PIXEL_LIMIT = Image.MAX_IMAGE_PIXELS  # Pillow's default, before any handler set it


@pytest.fixture(autouse=True)
def _restore_pillow_pixel_limit():
    """The handler sets Pillow's process-wide pixel limit to its configured one (right in a
    worker, which has one limit); a test that configures a small limit must not leave it for
    the reference pipeline of the tests after it."""
    Image.MAX_IMAGE_PIXELS = PILLOW_PIXEL_LIMIT
    yield
    Image.MAX_IMAGE_PIXELS = PILLOW_PIXEL_LIMIT


@pytest.fixture(scope="session")
def exported_cover(tmp_path_factory) -> Exported:
    """Cover -> genre: a whole pickled ResNet-50 (Dropout+Linear head), classes.txt, Resize(256)."""
    root = tmp_path_factory.mktemp("cover")
    model = trained_like(cover_resnet50(seed=0), PreprocessSpec())
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
    model = trained_like(screenshot_resnet50(seed=1), PreprocessSpec(resize_mode="square"))
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
    """A quick ResNet-18 export with fp16 and int8 files, for handler and archive tests. It is
    trained like scripts/train.py's models, on the project decode policy (alpha over white,
    EXIF applied), so the handler tests cover that policy and the HTTP tests the other."""
    root = tmp_path_factory.mktemp("small")
    model = trained_like(small_model(num_classes=4, seed=2), PreprocessSpec(decode=PROJECT_POLICY))
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
            "--color-policy",
            "composite",
            "--exif",
            "apply",
            "--fp16",
            "--int8",
        ]
    )
    return Exported(checkpoint, out, model, ModelMeta.load(out))
