"""Explanations in workers of their own, so they never queue predictions behind them.

An explanation costs 5 to 15 predictions (Grad-CAM's backward pass, or occlusion's grid**2
forward passes). In the model's own workers a prediction that arrives behind one waits for it
(measured on 2 cores: p95 from 30 to 578 ms). With pools on, the server loads every archive a
second time as `<model>-explain` (TorchServe's `load_models=name=file.mar`), shrunk to one
worker, and the nginx front sends `/explanations/<model>` there.
"""

from __future__ import annotations

from pathlib import Path

from gameart.ops.client import TorchServeClient

SUFFIX = "-explain"
POOL_WORKERS = 1


def pool_name(model: str) -> str:
    return f"{model}{SUFFIX}"


def is_pool(model: str) -> bool:
    return model.endswith(SUFFIX)


def load_models_with_pools(mars: list[Path]) -> str:
    """config.properties' load_models: each archive under its own name and as its pool."""
    entries = []
    for mar in mars:
        entries += [f"{mar.stem}={mar.name}", f"{pool_name(mar.stem)}={mar.name}"]
    return ",".join(entries)


def shrink_pools(client: TorchServeClient, workers: int = POOL_WORKERS) -> list[str]:
    """Scale every pool to `workers` (they start with the archive's minWorkers); their names."""
    pools = [model for model in client.models() if is_pool(model)]
    for model in pools:
        client.scale(model, workers, workers)
    return pools
