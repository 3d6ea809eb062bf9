"""Logits -> class probabilities -> the JSON answer for each image (this project's format, or
the Open Inference Protocol's for KServe v2 requests)."""

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


def oip_answer(
    body: dict[str, Any], model_name: str, model_version: str, request_id: str | None = None
) -> dict[str, Any]:
    """An answer as an Open Inference Protocol response: the label, then the top-k labels and
    probabilities as [1, k] tensors, in order."""
    labels = [entry["label"] for entry in body["top_k"]]
    k = len(labels)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = [
        {"name": "label", "shape": [1], "datatype": "BYTES", "data": [body["label"]]},
        {"name": "top_k_labels", "shape": [1, k], "datatype": "BYTES", "data": labels},
        {
            "name": "top_k_probabilities",
            "shape": [1, k],
            "datatype": "FP32",
            "data": [entry["probability"] for entry in body["top_k"]],
        },
    ]
    return response
