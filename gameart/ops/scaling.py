"""Scaling a model's workers: what each worker uses, and the single-host controller.

`watch` is a controller with hysteresis: it adds a worker when the queue or the p99 stays high
for a few intervals, removes one when both stay low, and waits out a cool-down after each
change. Beyond one host, use an orchestrator (Kubernetes HPA/KEDA on these same signals).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from gameart.ops.client import (
    TorchServeClient,
    TorchServeError,
    WorkerStatus,
    prometheus_value,
)


def worker_memory_mib(worker: WorkerStatus) -> int:
    """Resident memory: the process's own when it runs on this host, else what TorchServe
    reports."""
    rss = None
    if worker.pid and psutil.pid_exists(worker.pid):
        try:
            rss = psutil.Process(worker.pid).memory_info().rss
        except psutil.Error:
            rss = None
    return round((rss or worker.memory_bytes) / 2**20)


# ---- watch: the single-host controller -----------------------------------------------------
@dataclass(frozen=True)
class Policy:
    min_workers: int
    max_workers: int
    queue_high: int = 8  # pending requests that call for another worker
    queue_low: int = 1
    p99_high_ms: float = 1000.0
    p99_low_ms: float = 300.0
    up_after: int = 2  # consecutive high intervals before adding a worker
    down_after: int = 4  # consecutive low intervals before removing one (slower: hysteresis)
    cooldown_s: float = 30.0


@dataclass
class ControllerState:
    high_streak: int = 0
    low_streak: int = 0
    last_change: float = -1e9
    history: list[dict] = field(default_factory=list)


def decide(
    workers: int,
    queue: int,
    p99_ms: float | None,
    now: float,
    policy: Policy,
    state: ControllerState,
) -> int:
    """Target worker count for this interval (pure: unit-tested on its own)."""
    p99 = p99_ms if p99_ms is not None else 0.0
    high = queue >= policy.queue_high or p99 >= policy.p99_high_ms
    low = queue <= policy.queue_low and p99 <= policy.p99_low_ms
    state.high_streak = state.high_streak + 1 if high else 0
    state.low_streak = state.low_streak + 1 if low else 0
    target = min(max(workers, policy.min_workers), policy.max_workers)
    if target != workers:  # outside the bounds: correct at once
        return target
    if now - state.last_change < policy.cooldown_s:
        return workers
    if state.high_streak >= policy.up_after and workers < policy.max_workers:
        return workers + 1
    if state.low_streak >= policy.down_after and workers > policy.min_workers:
        return workers - 1
    return workers


class MeanQueueWait:
    """Mean time requests waited in TorchServe's queue since the last read, in ms, from the
    Prometheus counters ts_queue_latency_microseconds / ts_inference_requests_total."""

    def __init__(self, client: TorchServeClient, model: str):
        self.client, self.model = client, model
        self.last = self._read()

    def _read(self) -> tuple[float, float]:
        try:
            text = self.client.metrics_text()
        except (TorchServeError, OSError):
            return (0.0, 0.0)
        return (
            prometheus_value(text, "ts_queue_latency_microseconds", model_name=self.model),
            prometheus_value(text, "ts_inference_requests_total", model_name=self.model),
        )

    def since_last(self) -> float | None:
        now = self._read()
        (queue0, count0), self.last = self.last, now
        requests = now[1] - count0
        return (now[0] - queue0) / requests / 1e3 if requests > 0 else None


class AccessLogTail:
    """Per-request latencies TorchServe wrote to its access log since the last read.

    TorchServe's Prometheus metrics hold request latency only as counters (a mean), so the p99
    comes from the access log, where the frontend records each request's time in ms."""

    def __init__(self, path: Path, model: str):
        self.path, self.needle = path, f"/predictions/{model}"
        self.offset = path.stat().st_size if path.is_file() else 0

    def latencies(self) -> list[float]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        values = []
        for line in complete.decode(errors="replace").splitlines():
            if self.needle in line:
                try:
                    values.append(float(line.rsplit(" ", 1)[1]))
                except (IndexError, ValueError):
                    continue
        return values


def watch(
    client: TorchServeClient,
    model: str,
    policy: Policy,
    access_log: Path,
    interval_s: float = 5.0,
    duration_s: float = 600.0,
) -> ControllerState:
    """Scale `model` between the policy's bounds for `duration_s`; prints one line per
    interval and returns what it saw and did."""
    state = ControllerState()
    tail = AccessLogTail(access_log, model)
    queue_wait = MeanQueueWait(client, model)
    deadline = time.monotonic() + duration_s
    print(
        f"watching {model}: workers {policy.min_workers}..{policy.max_workers}, up when "
        f"queue >= {policy.queue_high} or p99 >= {policy.p99_high_ms:.0f} ms for "
        f"{policy.up_after} intervals, down when queue <= {policy.queue_low} and p99 <= "
        f"{policy.p99_low_ms:.0f} ms for {policy.down_after}; cool-down "
        f"{policy.cooldown_s:.0f}s",
        flush=True,
    )
    while time.monotonic() < deadline:
        time.sleep(interval_s)
        status = client.status(model)
        workers, queue = len(status.workers), int(status.pending or 0)
        latencies = tail.latencies()
        p99 = float(np.percentile(latencies, 99)) if latencies else None
        waited = queue_wait.since_last()
        now = time.monotonic()
        target = decide(workers, queue, p99, now, policy, state)
        if target != workers:
            response = client.scale(
                model, target, max(target, policy.min_workers), synchronous=True, timeout=300
            )
            if response.status_code == 200:
                state.last_change = time.monotonic()
        record = {
            "t": round(now, 1),
            "workers": workers,
            "queue": queue,
            "requests": len(latencies),
            "p99_ms": p99,
            "mean_queue_wait_ms": waited,
            "target": target,
        }
        state.history.append(record)
        p99_text = f"{p99:7.0f} ms" if p99 is not None else "      - "
        wait_text = f"{waited:6.0f} ms" if waited is not None else "     - "
        action = f"-> {target} workers" if target != workers else ""
        print(
            f"{time.strftime('%H:%M:%S')} workers {workers} queue {queue:4d} "
            f"requests {len(latencies):5d} p99 {p99_text} queue wait {wait_text} {action}",
            flush=True,
        )
    return state
