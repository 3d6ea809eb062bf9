"""Transfer-learn an image classifier on any ImageFolder dataset (train/<class>, test/<class>).

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

import copy
import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from gameart.pipeline.evaluation import evaluation, plot_confusion, plot_history, print_evaluation
from gameart.pipeline.training_data import Transformed, image_folder, train_transform, val_indices
from handler.allocator import keep_freed_memory
from modelspec.architectures import ARCHITECTURES, split_backbone
from modelspec.meta import PROJECT_POLICY, PreprocessSpec
from modelspec.reference import reference_transform


# ---- the backbone (architectures: modelspec.architectures.ARCHITECTURES) -----------------
def stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's trainable units in forward order; Sequential containers are opened up."""
    units = []
    for child in backbone.children():
        if isinstance(child, nn.Sequential):
            units.extend(child.children())
        else:
            units.append(child)
    return [u for u in units if any(True for _ in u.parameters())]


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


# ---- the run ------------------------------------------------------------------------------
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

    if not architecture.bundled_weights and not config.weights:
        print(
            f"warning: no --weights for {architecture.name}: its backbone starts from random "
            "weights (no model hub is reachable here to fetch ImageNet ones)"
        )
    model = architecture.pretrained(config.weights)
    model, features = split_backbone(model, architecture.classifier)
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

    setattr(model, architecture.classifier, head)  # the finished classifier: backbone + new head
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
            "arch": architecture.model_name,
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


def train(config: Config) -> dict:
    """The whole training run for `config`, with the worker's allocator tuning; the
    evaluation on test/ (also written to config.out)."""
    keep_freed_memory()  # no page-fault churn per batch; see handler/allocator.py
    return run(config)
