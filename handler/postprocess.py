"""Logits -> the JSON answer for each image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def top_k_predictions(
    logits: torch.Tensor, class_names: Sequence[str], ks: Sequence[int]
) -> list[dict[str, Any]]:
    """One answer per row: {"label", "confidence", "top_k": [{"label", "probability"}, ...]}.

    ks gives each row its own k, capped at the number of classes.
    """
    if logits.ndim != 2 or logits.shape[1] != len(class_names):
        raise ValueError(
            f"logits shape {tuple(logits.shape)} does not match {len(class_names)} classes"
        )
    if len(ks) != logits.shape[0]:
        raise ValueError("need one k per row")
    probabilities = torch.softmax(logits.float(), dim=1)
    widest = min(max(ks), len(class_names))
    values, indices = probabilities.topk(widest, dim=1)
    values, indices = values.tolist(), indices.tolist()
    answers = []
    for row, k in enumerate(ks):
        k = min(k, len(class_names))
        top = [
            {"label": class_names[i], "probability": round(p, 6)}
            for p, i in zip(values[row][:k], indices[row][:k], strict=True)
        ]
        answers.append(
            {"label": top[0]["label"], "confidence": top[0]["probability"], "top_k": top}
        )
    return answers
