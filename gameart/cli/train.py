"""Transfer-learn an image classifier on any ImageFolder dataset (train/<class>, test/<class>).

  python scripts/train.py --data data/gameart --out artifacts/train/gameart

The original projects' recipe: an ImageNet backbone, a new Dropout+Linear head, train-time
augmentation, class weights, label smoothing, differential learning rates, early stopping, a
time budget, GPU when present; then an evaluation on test/ (gameart/pipeline/training.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gameart.cli.common import command_parser
from gameart.paths import DATASET, TRAIN_OUT
from gameart.pipeline.training import Config, train
from modelspec.architectures import ARCHITECTURES


def build_parser() -> argparse.ArgumentParser:
    """Every Config field as an option; the Config's field defaults are the CLI's."""
    defaults = Config(data=Path(), out=Path())
    parser = command_parser(__doc__)
    parser.add_argument(
        "--data",
        type=Path,
        default=DATASET,
        help="ImageFolder root with train/ and test/ (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=TRAIN_OUT,
        help="where the checkpoint and reports go (default: %(default)s)",
    )
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=defaults.arch)
    parser.add_argument(
        "--weights", type=Path, help="state_dict of ImageNet weights for a torchvision --arch"
    )
    for name in (
        "epochs",
        "batch_size",
        "unfreeze",
        "views",
        "val_percent",
        "patience",
        "workers",
        "seed",
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    for name in (
        "lr",
        "backbone_lr_factor",
        "weight_decay",
        "dropout",
        "label_smoothing",
        "time_budget",
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name)
        )
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:1 ...")
    return parser


def main(argv: list[str] | None = None) -> int:
    train(Config(**vars(build_parser().parse_args(argv))))
    return 0
