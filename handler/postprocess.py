"""Logits -> class probabilities -> the JSON answer for each image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def probabilities(logits: torch.Tensor, num_classes: int) -> list[list[float]]:
    """Softmax per row, as plain floats (what the cache stores and answers are built from)."""
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"logits shape {tuple(logits.shape)} does not match {num_classes} classes")
    return torch.softmax(logits.float(), dim=1).tolist()


def answer(row: Sequence[float], class_names: Sequence[str], k: int) -> dict[str, Any]:
    """{"label", "confidence", "top_k": [{"label", "probability"}, ...]}; k capped at classes."""
    if len(row) != len(class_names):
        raise ValueError(f"{len(row)} probabilities for {len(class_names)} classes")
    order = sorted(range(len(row)), key=lambda i: row[i], reverse=True)[: max(1, k)]
    top = [{"label": class_names[i], "probability": round(float(row[i]), 6)} for i in order]
    return {"label": top[0]["label"], "confidence": top[0]["probability"], "top_k": top}
