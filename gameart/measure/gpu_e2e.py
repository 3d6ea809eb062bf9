#!/usr/bin/env python3
"""End to end on one host: 600x800 JPEG covers through TorchServe over HTTP, side by side:

  ours        our handler, the served export (fp16 on a GPU), JPEGs decoded batch-wise on the
              GPU (gpu_decode auto)
  ours_cpu    the same with gpu_decode off: Pillow decodes on the host's cores, as before
  stock       TorchServe's image_classifier handler on the same weights (eager fp32)
  noop        scripts/noop_handler.py: the same payloads answered with a constant; the
              frontend's own ceiling on this host

All four under one TorchServe, the same workers, batch size, batch delay and threads per worker
(OMP_NUM_THREADS = cores / workers for the stock worker, intra_op_threads for ours). The clients
are several processes (scripts/loadgen.py), and their own ceiling against a do-nothing server
is measured first. GPU utilisation is sampled with nvidia-smi during each measured step.

  python scripts/gpu_e2e.py --export-dir results/gpu/r50_export --out results/gpu_e2e
  python scripts/gpu_e2e.py --quick --out /tmp/e2e          # CPU smoke run (tests)

Writes e2e.json, e2e.md and e2e.png to --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gameart.measure import grpc_load as ts_grpc
from gameart.measure import loadgen
from gameart.measure.uploads import Upload, cover_uploads
from gameart.ops import server as serve
from gameart.ops.client import REPO_ROOT, TorchServeClient
from modelspec.meta import ModelMeta

NOOP_HANDLER = Path(__file__).with_name("noop_handler.py")


@dataclass(frozen=True)
class Setup:
    export_dir: Path
    checkpoint: Path | None  # eager weights for the stock handler (None: no stock row)
    architecture: str
    backend: str = "torchscript"
    precision: str = "fp16"
    workers: int = 4
    batch_size: int = 32
    max_batch_delay: int = 5
    gpu: bool = True
    handlers: tuple[str, ...] = ("noop", "ours", "ours_cpu", "stock")
    concurrencies: tuple[int, ...] = (64, 128, 256)
    seconds: float = 10.0
    warmup: float = 3.0
    processes: int = 4
    covers: int = 32
    protocols: tuple[str, ...] = ("http",)  # and "grpc": TorchServe's gRPC inference API


@dataclass
class GpuSampler:
    """nvidia-smi's utilisation.gpu every 100 ms while a step runs (absent without a GPU)."""

    process: subprocess.Popen | None = None
    samples: list[float] = field(default_factory=list)

    def __enter__(self) -> GpuSampler:
        try:
            self.process = subprocess.Popen(
                [
                    "nvidia-smi",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "100",
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
        except FileNotFoundError:
            self.process = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        self.samples = [float(x) for x in out.split() if x.strip().isdigit()]

    def mean(self) -> float | None:
        return round(statistics.fmean(self.samples), 1) if self.samples else None


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def archive_all(setup: Setup, store: Path, staging: Path) -> None:
    # build_mar and benchmark import torch: imported here, not at the top, because the client
    # processes (spawned) import this module, and 16 of them need not load torch
    from gameart.measure import benchmark
    from gameart.pipeline import archive as build_mar

    common = [
        "--batch-size",
        str(setup.batch_size),
        "--max-batch-delay",
        str(setup.max_batch_delay),
        "--min-workers",
        str(setup.workers),
        "--max-workers",
        str(setup.workers),
        "--device",
        "gpu" if setup.gpu else "cpu",
        "--model-store",
        str(store),
        "--export-dir",
        str(setup.export_dir),
        "--backend",
        setup.backend,
        "--precision",
        setup.precision,
        "--handler-set",
        f"intra_op_threads={threads_per_worker(setup.workers)}",
    ]
    for name, decode in (("ours", "auto"), ("ours_cpu", "off")):
        if name in setup.handlers:
            argv = [*common, "--name", name, "--handler-set", f"gpu_decode={decode}"]
            if build_mar.main(argv) != 0:
                raise SystemExit(f"could not archive {name}")
    if "noop" in setup.handlers:
        archive_noop(setup, store, staging / "noop")
    if "stock" in setup.handlers and setup.checkpoint is not None:
        meta = ModelMeta.load(setup.export_dir)
        subject = benchmark.Subject("stock", setup.architecture, setup.export_dir, meta, None)
        subject.checkpoint = setup.checkpoint
        benchmark.archive_stock(
            subject,
            store,
            "stock",
            setup.batch_size,
            setup.max_batch_delay,
            setup.workers,
            staging / "stock",
        )


def archive_noop(setup: Setup, store: Path, staging: Path) -> None:
    from gameart.pipeline import archive as build_mar

    staging.mkdir(parents=True, exist_ok=True)
    config = staging / "model-config.yaml"
    config.write_text(
        f"minWorkers: {setup.workers}\nmaxWorkers: {setup.workers}\n"
        f"batchSize: {setup.batch_size}\nmaxBatchDelay: {setup.max_batch_delay}\n"
    )
    command = [
        build_mar.archiver_command(),
        *("--model-name", "noop", "--version", "1.0", "--handler", str(NOOP_HANDLER)),
        *("--config-file", str(config), "--export-path", str(store), "--force"),
    ]
    env = {**os.environ, "TMPDIR": str(staging)}
    subprocess.run(command, check=True, capture_output=True, env=env)


def start_server(setup: Setup, store: Path, run_dir: Path) -> tuple[TorchServeClient, str]:
    """The running server's client and its gRPC inference address."""
    queue = f"job_queue_size={max(1024, 4 * max(setup.concurrencies))}"
    # the stock worker takes torch's default thread count (every core) unless told otherwise
    os.environ["OMP_NUM_THREADS"] = str(threads_per_worker(setup.workers))
    return serve.start_on_free_ports(store, run_dir, (queue,))


def measure(
    target: loadgen.Target | ts_grpc.GrpcTarget,
    uploads: list[Upload],
    concurrency: int,
    setup: Setup,
) -> dict[str, Any]:
    processes = min(setup.processes, concurrency)
    grpc = isinstance(target, ts_grpc.GrpcTarget)
    loop = ts_grpc.closed_loop if grpc else loadgen.closed_loop
    loadgen.closed_loop_processes(
        target, uploads, concurrency, duration=setup.warmup, processes=processes, loop=loop
    )
    load = os.getloadavg()[0]
    with GpuSampler() as gpu:
        result = loadgen.closed_loop_processes(
            target,
            uploads,
            concurrency,
            duration=setup.seconds,
            processes=processes,
            loop=loop,
        )
    return {
        "concurrency": concurrency,
        **result.summary(),
        "gpu_busy_pct": gpu.mean(),
        "load_avg_1m": round(max(load, os.getloadavg()[0]), 1),
    }


def measure_client_ceiling(uploads: list[Upload], setup: Setup) -> dict[str, Any]:
    """The client processes against a do-nothing aiohttp server with as many processes."""
    from gameart.measure.loadtest import client_ceiling

    top = max(setup.concurrencies)
    return client_ceiling(uploads, top, min(setup.seconds, 5.0), setup.processes)


def run(setup: Setup, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "work"
    store = workdir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    uploads = cover_uploads(setup.covers)
    print(f"clients: {setup.processes} processes; measuring their ceiling", flush=True)
    ceiling = measure_client_ceiling(uploads, setup)
    print(f"  client ceiling: {ceiling['throughput_rps']:.0f} req/s", flush=True)
    archive_all(setup, store, workdir / "staging")
    run_dir = workdir / "run"
    client, grpc_address = start_server(setup, store, run_dir)
    if "grpc" in setup.protocols:
        ts_grpc.stubs()  # generate once here, not in every client process
    token = client.headers("inference").get("Authorization", "").removeprefix("Bearer ")
    rows = []
    try:
        for handler in setup.handlers:
            if not (store / f"{handler}.mar").exists():
                continue
            targets = {
                "http": loadgen.Target(
                    f"{client.endpoints.inference}/predictions/{handler}",
                    client.headers("inference"),
                ),
                "grpc": ts_grpc.GrpcTarget(grpc_address, handler, token),
            }
            for protocol, concurrency in itertools.product(setup.protocols, setup.concurrencies):
                row = {
                    "handler": handler,
                    "protocol": protocol,
                    **measure(targets[protocol], uploads, concurrency, setup),
                }
                rows.append(row)
                print(
                    f"  {handler:8s} {protocol:4s} c={concurrency:4d}: "
                    f"{row['throughput_rps']:8.1f} img/s "
                    f"p50 {row['p50_ms']:7.1f} p99 {row['p99_ms']:7.1f} ms  "
                    f"GPU {row['gpu_busy_pct']}%  load {row['load_avg_1m']}  {row['statuses']}",
                    flush=True,
                )
        stage_text = client.metrics_text()
    finally:
        serve.stop_server(run_dir)
    result = {
        "setup": {k: str(v) if isinstance(v, Path) else v for k, v in vars(setup).items()},
        "machine": machine_info(),
        "client_ceiling": ceiling,
        "rows": rows,
        "stage_seconds": stage_means(stage_text),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (out / "e2e.json").write_text(json.dumps(result, indent=2))
    (out / "e2e.md").write_text(markdown(result))
    plot(result, out / "e2e.png")
    return result


def machine_info() -> dict[str, Any]:
    from gameart.measure import benchmark

    return benchmark.machine_info()


def stage_means(metrics_text: str) -> dict[str, dict[str, float]]:
    """Mean seconds per batch and stage, per model, from HandlerStageSeconds' _sum and _count."""
    sums: dict[tuple[str, str], dict[str, float]] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("HandlerStageSeconds_") or "{" not in line:
            continue
        name, rest = line.split("{", 1)
        labels, value = rest.rsplit("}", 1)
        pairs = dict(p.split("=", 1) for p in labels.split(",") if "=" in p)
        key = (pairs.get("ModelName", "").strip('"'), pairs.get("Stage", "").strip('"'))
        kind = name.rsplit("_", 1)[1]
        if kind in ("sum", "count"):
            sums.setdefault(key, {})[kind] = float(value)
    means: dict[str, dict[str, float]] = {}
    for (model, stage), parts in sums.items():
        if parts.get("count"):
            means.setdefault(model, {})[stage] = round(parts["sum"] / parts["count"] * 1e3, 3)
    return means  # milliseconds per batch


def markdown(result: dict[str, Any]) -> str:
    setup = result["setup"]
    lines = [
        f"# End to end: 600x800 JPEG covers through TorchServe ({', '.join(setup['protocols'])})",
        "",
        f"{gpu_name(result) or 'no GPU'}; {result['machine']['cpu']} "
        f"({result['machine']['cores']} cores); "
        f"{setup['workers']} workers per model, batch {setup['batch_size']}, "
        f"{setup['max_batch_delay']} ms delay, {setup['backend']}/{setup['precision']}; "
        f"{setup['processes']} client processes; {setup['seconds']} s per step; {result['date']}",
        "",
        f"Client ceiling (same processes, do-nothing server): "
        f"{result['client_ceiling']['throughput_rps']:.0f} req/s",
        "",
        "| handler | protocol | clients | images/s | p50 ms | p99 ms | GPU busy % | load "
        "| statuses |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['handler']} | {row.get('protocol', 'http')} | {row['concurrency']} | "
            f"{row['throughput_rps']:.0f} | "
            f"{row['p50_ms']:.1f} | {row['p99_ms']:.1f} | {row['gpu_busy_pct']} | "
            f"{row['load_avg_1m']} | {row['statuses']} |"
        )
    if result["stage_seconds"]:
        lines += ["", "Mean ms per batch in each handler stage (HandlerStageSeconds):", ""]
        for model, stages in sorted(result["stage_seconds"].items()):
            parts = ", ".join(f"{stage} {ms:.2f}" for stage, ms in stages.items())
            lines.append(f"- {model}: {parts}")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    from gameart.measure.plotting import Curve, throughput_and_p99

    curves = []
    keys = dict.fromkeys((row["handler"], row.get("protocol", "http")) for row in result["rows"])
    for handler, protocol in keys:
        rows = [
            row
            for row in result["rows"]
            if (row["handler"], row.get("protocol", "http")) == (handler, protocol)
        ]
        curves.append(
            Curve(
                handler if protocol == "http" else f"{handler} (gRPC)",
                [row["concurrency"] for row in rows],
                [row["throughput_rps"] for row in rows],
                [row["p99_ms"] for row in rows],
            )
        )
    where = gpu_name(result) or "CPU"
    titles = (f"images/s, 600x800 JPEG ({where})", "p99 latency (ms)")
    throughput_and_p99(curves, path, titles)


def gpu_name(result: dict[str, Any]) -> str:
    gpu = result["machine"].get("gpu")
    return gpu["name"] if gpu else ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--export-dir", type=Path, help="an export (python -m export --fp16)")
    parser.add_argument("--checkpoint", type=Path, help="its eager weights, for the stock row")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "gpu_e2e")
    parser.add_argument("--backend", default="torchscript")
    parser.add_argument("--precision", default=None, help="default: fp16 on a GPU, else fp32")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-batch-delay", type=int, default=5)
    parser.add_argument("--concurrency", default="64,128,256")
    parser.add_argument("--handlers", default="noop,ours,ours_cpu,stock")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--protocols", default="http", help="http, grpc or http,grpc")
    parser.add_argument("--quick", action="store_true", help="a small CPU run (tests)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    gpu = torch.cuda.is_available()
    if args.export_dir is None:
        raise SystemExit("--export-dir is required (python -m export ... --fp16)")
    meta = ModelMeta.load(args.export_dir)
    setup = Setup(
        export_dir=args.export_dir,
        checkpoint=args.checkpoint,
        architecture=meta.architecture,
        backend=args.backend,
        precision=args.precision or ("fp16" if gpu else "fp32"),
        workers=1 if args.quick else args.workers,
        batch_size=4 if args.quick else args.batch_size,
        max_batch_delay=args.max_batch_delay,
        gpu=gpu,
        handlers=tuple(args.handlers.split(",")),
        concurrencies=(2, 4) if args.quick else tuple(int(c) for c in args.concurrency.split(",")),
        seconds=2.0 if args.quick else args.seconds,
        warmup=0.5 if args.quick else 3.0,
        processes=2 if args.quick else args.processes,
        covers=8 if args.quick else 32,
        protocols=tuple(args.protocols.split(",")),
    )
    run(setup, args.out)
    print(f"wrote {args.out / 'e2e.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
