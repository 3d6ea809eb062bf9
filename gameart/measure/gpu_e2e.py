"""End to end on one host: 600x800 JPEG covers through TorchServe over HTTP, side by side:

  ours        our handler, the served export (fp16 on a GPU), JPEGs decoded batch-wise on the
              GPU (gpu_decode auto)
  ours_serial the same without the overlap inside a worker (overlap_chunks 1): each batch is
              decoded, then run through the model, as before handler/overlap.py
  ours_graphs the same replaying CUDA graphs of the model (cuda_graphs: true)
  ours_cpu    the same with gpu_decode off: Pillow decodes on the host's cores (in the
              overlap's helper thread too, on a GPU worker)
  stock       TorchServe's image_classifier handler on the same weights (eager fp32)
  noop        gameart/measure/noop_handler.py: the same payloads answered with a constant; the
              frontend's own ceiling on this host

All four under one TorchServe, with the frontend settings of one `ArchiveSpec` (workers, batch
size, batch delay, device) and the same threads per worker (OMP_NUM_THREADS = cores / workers
for the stock worker, intra_op_threads for ours). The clients are several processes
(gameart/measure/loadgen.py), and their own ceiling against a do-nothing server is measured
first. GPU utilisation is sampled with nvidia-smi during each measured step (gpu_probe.py).

`run(Setup)` writes e2e.json, e2e.md and e2e.png to the setup's `out`; the command line is
gameart/cli/gpu_e2e.py (scripts/gpu_e2e.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gameart.measure import grpc_load as ts_grpc
from gameart.measure import loadgen
from gameart.measure.gpu_probe import GpuSampler
from gameart.measure.uploads import Upload, cover_uploads
from gameart.ops.server import RunningServer, ServerSpec, start_server
from gameart.paths import REPO_ROOT
from modelspec.meta import ModelMeta

if TYPE_CHECKING:  # the archive module imports torch, which the client processes need not
    from gameart.pipeline.archive import ArchiveSpec

NOOP_HANDLER = Path(__file__).with_name("noop_handler.py")
DEFAULT_OUT = REPO_ROOT / "results" / "gpu_e2e"
HANDLERS = ("noop", "ours", "ours_serial", "ours_graphs", "ours_cpu", "stock")
# our rows: the handler settings each adds to the served archive's
OUR_VARIANTS = {
    "ours": {"gpu_decode": "auto"},
    "ours_serial": {"gpu_decode": "auto", "overlap_chunks": 1},
    "ours_graphs": {"gpu_decode": "auto", "cuda_graphs": True},
    "ours_cpu": {"gpu_decode": "off"},
}
PROTOCOLS = ("http", "grpc")  # grpc: TorchServe's gRPC inference API
GPU_BATCH_SIZE = 32  # the e2e default: a GPU worker wants larger batches than the CPU default
GPU_WORKERS = 4


@dataclass(frozen=True)
class Setup:
    """One comparison: `served` is our archive (export, backend, precision, device, batching,
    workers), whose frontend settings every other row's archive copies."""

    served: ArchiveSpec
    out: Path = DEFAULT_OUT
    checkpoint: Path | None = None  # eager weights for the stock handler (None: no stock row)
    handlers: tuple[str, ...] = HANDLERS
    concurrencies: tuple[int, ...] = (64, 128, 256)
    seconds: float = 10.0
    warmup: float = 3.0
    processes: int = 4
    covers: int = 32
    protocols: tuple[str, ...] = ("http",)

    @property
    def workers(self) -> int:
        return self.served.max_workers

    def record(self) -> dict[str, Any]:
        """The setup as e2e.json has always written it (flat, paths as strings)."""
        served = self.served
        return {
            "export_dir": str(served.export_dir),
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "architecture": ModelMeta.load(served.export_dir).architecture,
            "backend": served.backend,
            "precision": served.precision,
            "workers": self.workers,
            "batch_size": served.batch_size,
            "max_batch_delay": served.max_batch_delay_ms,
            "gpu": served.device == "gpu",
            "handlers": self.handlers,
            "concurrencies": self.concurrencies,
            "seconds": self.seconds,
            "warmup": self.warmup,
            "processes": self.processes,
            "covers": self.covers,
            "protocols": self.protocols,
        }


def quick(setup: Setup) -> Setup:
    """A small run for a CPU machine (the tests): one worker, batches of 4, two clients'
    processes, a few seconds a step."""
    return dataclasses.replace(
        setup,
        served=setup.served.replace(batch_size=4).with_workers(1),
        concurrencies=(2, 4),
        seconds=2.0,
        warmup=0.5,
        processes=2,
        covers=8,
    )


def threads_per_worker(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // workers)


def archive_all(setup: Setup, store: Path) -> None:
    # archive and benchmark import torch: imported here, not at the top, so that the client
    # processes (spawned, importing the modules around their loops) need not load it
    from gameart.measure import benchmark
    from gameart.pipeline.archive import build_archive, package

    ours = setup.served.replace(model_store=store)
    ours = ours.with_handler(intra_op_threads=threads_per_worker(setup.workers))
    for name, settings in OUR_VARIANTS.items():
        if name in setup.handlers:
            build_archive(ours.replace(name=name).with_handler(**settings))
    if "noop" in setup.handlers:
        config = ours.frontend_config()
        package(name="noop", handler=NOOP_HANDLER, config=config, model_store=store)
    if "stock" in setup.handlers and setup.checkpoint is not None:
        meta = ModelMeta.load(setup.served.export_dir)
        export_dir = setup.served.export_dir
        subject = benchmark.Subject("stock", meta.architecture, export_dir, meta, setup.checkpoint)
        benchmark.archive_stock(subject, ours.replace(name="stock"))  # ours' batching, workers


def serve(setup: Setup, store: Path, run_dir: Path) -> RunningServer:
    """One TorchServe on free loopback ports for every row, its queue deep enough for them."""
    queue = max(1024, 4 * max(setup.concurrencies))
    # the stock worker takes torch's default thread count (every core) unless told otherwise
    threads = threads_per_worker(setup.workers)
    spec = ServerSpec(
        model_store=store,
        run_dir=run_dir,
        overrides={"job_queue_size": str(queue)},
        free_ports=True,
        ready_timeout_s=900.0,
        env={"OMP_NUM_THREADS": str(threads)},
    )
    return start_server(spec)


def measure(
    target: loadgen.Target | ts_grpc.GrpcTarget,
    uploads: list[Upload],
    concurrency: int,
    setup: Setup,
) -> dict[str, Any]:
    """One step: a warm-up, then the measured run with nvidia-smi sampling it. The warm-up is
    run apart (not loadgen.measure_closed_loop) so that the GPU samples and the load average
    cover the measured seconds only."""
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
    from gameart.measure.load_checks import client_ceiling

    top = max(setup.concurrencies)
    return client_ceiling(uploads, top, min(setup.seconds, 5.0), setup.processes)


def run(setup: Setup) -> dict[str, Any]:
    out = setup.out
    out.mkdir(parents=True, exist_ok=True)
    workdir = out / "work"
    store = workdir / "model_store"
    store.mkdir(parents=True, exist_ok=True)
    uploads = cover_uploads(setup.covers)
    print(f"clients: {setup.processes} processes; measuring their ceiling", flush=True)
    ceiling = measure_client_ceiling(uploads, setup)
    print(f"  client ceiling: {ceiling['throughput_rps']:.0f} req/s", flush=True)
    archive_all(setup, store)
    if "grpc" in setup.protocols:
        ts_grpc.stubs()  # generate once here, not in every client process
    with serve(setup, store, workdir / "run") as server:
        client = server.client
        token = client.headers("inference").get("Authorization", "").removeprefix("Bearer ")
        rows = []
        for handler in setup.handlers:
            if not (store / f"{handler}.mar").exists():
                continue
            targets = {
                "http": loadgen.Target.for_model(client, handler),
                "grpc": ts_grpc.GrpcTarget(server.grpc_inference_address, handler, token),
            }
            for protocol, concurrency in itertools.product(setup.protocols, setup.concurrencies):
                row = {
                    "handler": handler,
                    "protocol": protocol,
                    **measure(targets[protocol], uploads, concurrency, setup),
                }
                rows.append(row)
                print(
                    f"  {handler:11s} {protocol:4s} c={concurrency:4d}: "
                    f"{row['throughput_rps']:8.1f} img/s "
                    f"p50 {row['p50_ms']:7.1f} p99 {row['p99_ms']:7.1f} ms  "
                    f"GPU {row['gpu_busy_pct']}%  load {row['load_avg_1m']}  {row['statuses']}",
                    flush=True,
                )
        stage_text = client.metrics_text()
    result = {
        "setup": setup.record(),
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
