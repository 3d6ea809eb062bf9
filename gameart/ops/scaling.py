#!/usr/bin/env python3
"""Inspect and scale a model's workers through TorchServe's management API.

  python scripts/scale.py show                             # every model: workers and queue
  python scripts/scale.py set gameart --min 2 --max 2      # PUT /models/gameart?min_worker=2...
  python scripts/scale.py watch gameart --min 1 --max 2    # scale from queue depth and p99
  python scripts/scale.py register model_store/x.mar       # needs enable_model_api=true
  python scripts/scale.py unregister x | set-default x 2.0

Scaling works with model registration disabled (the shipped config). `watch` is a single-host
controller with hysteresis: it adds a worker when the queue or the p99 stays high for a few
intervals, removes one when both stay low, and waits out a cool-down after each change. Beyond
one host, use an orchestrator (Kubernetes HPA/KEDA on these same signals), not this loop.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from gameart.ops.client import (
    DEFAULT_RUN_DIR,
    TorchServeClient,
    TorchServeError,
    prometheus_value,
)

MODEL_API_OFF = (
    "the management API refused (405): model registration is disabled in config.properties "
    "(enable_model_api=false, the shipped and recommended setting). Put the .mar in model_store/ "
    "and restart (make serve), or turn enable_model_api on and keep allowed_urls local."
)


# ---- show ----------------------------------------------------------------------------------
def worker_rows(description: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for worker in description.get("workers", []):
        pid = worker.get("pid")
        rss = None
        if pid and psutil.pid_exists(pid):  # same host: the real resident memory
            try:
                rss = psutil.Process(pid).memory_info().rss
            except psutil.Error:
                rss = None
        rows.append(
            {
                "id": worker.get("id"),
                "pid": pid,
                "status": worker.get("status"),
                "gpu": worker.get("gpu"),
                "gpu_usage": worker.get("gpuUsage"),
                "memory_mib": round((rss or worker.get("memoryUsage") or 0) / 2**20),
            }
        )
    return rows


def print_model(description: dict[str, Any]) -> None:
    queue = description.get("jobQueueStatus", {})
    print(
        f"{description['modelName']} v{description.get('modelVersion')}: "
        f"workers {description.get('minWorkers')}..{description.get('maxWorkers')}, "
        f"batch {description.get('batchSize')} / {description.get('maxBatchDelay')} ms, "
        f"queue {queue.get('pendingRequests', '?')} pending, "
        f"{queue.get('remainingCapacity', '?')} free"
    )
    for row in worker_rows(description):
        print(
            f"  worker {row['id']:>5s}  pid {row['pid']!s:>7s}  {row['status']:9s} "
            f"gpu={row['gpu']!s:5s} mem {row['memory_mib']:6d} MiB"
        )


def show(client: TorchServeClient, args: argparse.Namespace) -> int:
    for name in [args.model] if args.model else client.models():
        print_model(client.describe(name))
    return 0


# ---- changes -------------------------------------------------------------------------------
def set_workers(client: TorchServeClient, args: argparse.Namespace) -> int:
    started = time.monotonic()
    response = client.scale(args.model, args.min, args.max, synchronous=True, timeout=args.timeout)
    if response.status_code != 200:
        print(f"error: HTTP {response.status_code}: {response.text.strip()}", file=sys.stderr)
        return 1
    print(
        f"scaled {args.model} to min {args.min} max {args.max or args.min} in "
        f"{time.monotonic() - started:.1f}s"
    )
    print_model(client.describe(args.model))
    return 0


def _management_call(client: TorchServeClient, method: str, path: str, **params: Any) -> int:
    response = client.request("management", method, path, params=params or None, timeout=300)
    if response.status_code == 405:
        print(f"error: {MODEL_API_OFF}", file=sys.stderr)
        return 1
    if not response.ok:
        print(f"error: HTTP {response.status_code}: {response.text.strip()}", file=sys.stderr)
        return 1
    print(response.text.strip())
    return 0


def register(client: TorchServeClient, args: argparse.Namespace) -> int:
    url = args.url if "://" in args.url else Path(args.url).name  # store-relative .mar name
    return _management_call(
        client, "POST", "/models", url=url, initial_workers=args.initial_workers, synchronous="true"
    )


def unregister(client: TorchServeClient, args: argparse.Namespace) -> int:
    path = f"/models/{args.model}" + (f"/{args.version}" if args.version else "")
    return _management_call(client, "DELETE", path)


def set_default(client: TorchServeClient, args: argparse.Namespace) -> int:
    return _management_call(client, "PUT", f"/models/{args.model}/{args.version}/set-default")


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


def watch(client: TorchServeClient, args: argparse.Namespace) -> int:
    policy = Policy(
        args.min,
        args.max,
        args.queue_high,
        args.queue_low,
        args.p99_high_ms,
        args.p99_low_ms,
        args.up_after,
        args.down_after,
        args.cooldown,
    )
    state = ControllerState()
    tail = AccessLogTail(args.run_dir / "logs" / "access_log.log", args.model)
    queue_wait = MeanQueueWait(client, args.model)
    deadline = time.monotonic() + args.duration
    print(
        f"watching {args.model}: workers {policy.min_workers}..{policy.max_workers}, up when "
        f"queue >= {policy.queue_high} or p99 >= {policy.p99_high_ms:.0f} ms for "
        f"{policy.up_after} intervals, down when queue <= {policy.queue_low} and p99 <= "
        f"{policy.p99_low_ms:.0f} ms for {policy.down_after}; cool-down "
        f"{policy.cooldown_s:.0f}s",
        flush=True,
    )
    while time.monotonic() < deadline:
        time.sleep(args.interval)
        description = client.describe(args.model)
        workers = len(description.get("workers", []))
        queue = int(description.get("jobQueueStatus", {}).get("pendingRequests", 0))
        latencies = tail.latencies()
        p99 = float(np.percentile(latencies, 99)) if latencies else None
        waited = queue_wait.since_last()
        now = time.monotonic()
        target = decide(workers, queue, p99, now, policy, state)
        if target != workers:
            response = client.scale(
                args.model, target, max(target, policy.min_workers), synchronous=True, timeout=300
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
    return 0


# ---- the command ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help="server run dir: addresses, key file, logs (default %(default)s)",
    )
    parser.add_argument("--token", help="management token instead of the run dir's key file")
    commands = parser.add_subparsers(dest="command", required=True)
    show_cmd = commands.add_parser("show", help="workers (id, pid, status, GPU, memory), queue")
    show_cmd.add_argument("model", nargs="?")
    show_cmd.set_defaults(func=show)
    set_cmd = commands.add_parser("set", help="set min/max workers (synchronous)")
    set_cmd.add_argument("model")
    set_cmd.add_argument("--min", type=int, required=True)
    set_cmd.add_argument("--max", type=int)
    set_cmd.add_argument("--timeout", type=float, default=300.0)
    set_cmd.set_defaults(func=set_workers)
    register_cmd = commands.add_parser("register", help="register a .mar (model API must be on)")
    register_cmd.add_argument("url", help="a .mar name in the model store (or an allowed URL)")
    register_cmd.add_argument("--initial-workers", type=int, default=1)
    register_cmd.set_defaults(func=register)
    unregister_cmd = commands.add_parser("unregister", help="unregister a model version")
    unregister_cmd.add_argument("model")
    unregister_cmd.add_argument("version", nargs="?")
    unregister_cmd.set_defaults(func=unregister)
    default_cmd = commands.add_parser("set-default", help="make a version the default")
    default_cmd.add_argument("model")
    default_cmd.add_argument("version")
    default_cmd.set_defaults(func=set_default)
    watch_cmd = commands.add_parser("watch", help="scale between bounds from queue depth and p99")
    watch_cmd.add_argument("model")
    watch_cmd.add_argument("--min", type=int, required=True)
    watch_cmd.add_argument("--max", type=int, required=True)
    defaults = Policy(1, 1)
    watch_cmd.add_argument("--queue-high", type=int, default=defaults.queue_high)
    watch_cmd.add_argument("--queue-low", type=int, default=defaults.queue_low)
    watch_cmd.add_argument("--p99-high-ms", type=float, default=defaults.p99_high_ms)
    watch_cmd.add_argument("--p99-low-ms", type=float, default=defaults.p99_low_ms)
    watch_cmd.add_argument("--up-after", type=int, default=defaults.up_after)
    watch_cmd.add_argument("--down-after", type=int, default=defaults.down_after)
    watch_cmd.add_argument("--cooldown", type=float, default=defaults.cooldown_s)
    watch_cmd.add_argument("--interval", type=float, default=5.0, help="seconds")
    watch_cmd.add_argument("--duration", type=float, default=600.0, help="stop after (s)")
    watch_cmd.set_defaults(func=watch)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    low, high = getattr(args, "min", None), getattr(args, "max", None)
    if low is not None and high is not None and high < low:
        print("error: --max must be at least --min", file=sys.stderr)
        return 2
    try:
        client = TorchServeClient.from_run_dir(args.run_dir)
        if args.token:
            client.set_token("management", args.token)
        return args.func(client, args)
    except TorchServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
