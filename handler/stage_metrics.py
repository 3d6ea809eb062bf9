"""Where a worker's time goes, per batch and per stage, as Prometheus histograms.

Each batch records the seconds it spent in each stage (extract, cache, inspect, decode,
gpu_decode, model, answer) as one observation of HandlerStageSeconds{Stage=...}, declared as
a histogram in metrics.yaml (seconds, so Prometheus' default buckets 5 ms..10 s resolve it).
A GPU stage is timed to its completion (the stream is synchronised at its end), not to the
moment its kernels were queued, so the figures add up to the batch's wall time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

STAGE_METRIC = "HandlerStageSeconds"


class StageClock:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began

    def total_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1e3

    def describe(self) -> str:
        """'decode 3.1, model 9.0' in milliseconds, for the worker log."""
        return ", ".join(f"{name} {seconds * 1e3:.1f}" for name, seconds in self.seconds.items())

    def emit(self, context: Any, model_name: str) -> None:
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        from ts.metrics.dimension import Dimension
        from ts.metrics.metric_type_enum import MetricTypes

        for name, seconds in self.seconds.items():
            dimensions = [Dimension("ModelName", model_name), Dimension("Stage", name)]
            metrics.add_time(
                STAGE_METRIC, seconds, None, "s", dimensions, metric_type=MetricTypes.HISTOGRAM
            )
