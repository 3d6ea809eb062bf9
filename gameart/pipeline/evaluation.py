"""Training's honest evaluation on test/ and its plots: per-class precision/recall/F1,
accuracy against the majority-class baseline, confusion matrix, learning curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


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
