"""Where a worker's time goes, per batch and per stage, as Prometheus histograms.

Each batch records the seconds it spent in each stage (extract, cache, inspect, decode,
gpu_decode, model, prepare_wait, explain, answer) as one observation of
HandlerStageSeconds{Stage=...}, declared as a histogram in metrics.yaml (seconds, so
Prometheus' default buckets 5 ms..10 s resolve it).
A GPU stage is timed to its completion (its thread's stream is synchronised at its end, not
the whole device, so a stage beside it on another stream runs on), not to the moment its
kernels were queued. Without overlap the figures add up to the batch's wall time; with it
(handler/overlap.py) decode and model run side by side and their sum exceeds it.
"""

from __future__ import annotations

import threading
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
        self._lock = threading.Lock()  # stages are timed from the overlap helper too

    @contextmanager
    def stage(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            if device is not None and device.type == "cuda":
                torch.cuda.current_stream(device).synchronize()
            elapsed = time.perf_counter() - began
            with self._lock:
                self.seconds[name] = self.seconds.get(name, 0.0) + elapsed

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
