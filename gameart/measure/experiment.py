#!/usr/bin/env python3
"""The serving-configuration experiment: workers, batchSize/maxBatchDelay, a full queue.

  python scripts/experiment.py                       # the default model, ~15 min on 2 cores
  python scripts/experiment.py --quick --out /tmp/x  # a couple of minutes

For each configuration it builds a .mar of the export, serves it with the project's
config.properties on loopback ports, and drives it with the load generator (closed loop):
  workers   1..N workers (threads split between them) x concurrency: throughput, p50, p99
  batching  batchSize x maxBatchDelay with one worker, at concurrency 1 and under load
  queue     a queue of 10 under 64 clients: how fast the overflow is refused, and recovery
Writes experiment.json, experiment.md and plots to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gameart.measure import loadgen
from gameart.measure.plotting import Curve, throughput_and_p99
from gameart.measure.uploads import upload_mix
from gameart.ops import server as serve
from gameart.ops.client import REPO_ROOT
from gameart.pipeline import archive as build_mar

DEFAULT_EXPORT = REPO_ROOT / "artifacts" / "export" / "gameart"
DEFAULT_OUT = REPO_ROOT / "docs" / "experiments" / "serving-config-cpu"


@dataclass(frozen=True)
class Plan:
    workers: tuple[int, ...]
    worker_concurrency: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    delays_ms: tuple[int, ...]
    batch_concurrency: tuple[int, ...]
    seconds: float
    warmup: float


FULL = Plan((1, 2, 3, 4), (1, 4, 16, 64), (1, 4, 8, 16), (0, 5, 20, 50), (1, 16), 12.0, 2.0)
QUICK = Plan((1, 2), (1, 8), (1, 4), (0, 20), (1, 8), 3.0, 1.0)


class Server:
    """A TorchServe on free loopback ports serving one model store, for one section."""

    def __init__(self, store: Path, run_dir: Path, extra: tuple[str, ...] = ()):
        self.run_dir = run_dir
        self.client, _ = serve.start_on_free_ports(store, run_dir, extra)

    def target(self, model: str) -> loadgen.Target:
        return loadgen.Target(
            f"{self.client.endpoints.inference}/predictions/{model}",
            self.client.headers("inference"),
        )

    def stop(self) -> None:
        serve.stop_server(self.run_dir)


@dataclass(frozen=True)
class Served:
    """The export under test and how every archive of it is built: ONNX Runtime on CPU workers
    (the shipped default), or with --gpu TorchScript on GPU workers (fp16 where exported)."""

    export_dir: Path
    flags: tuple[str, ...] = ("--backend", "onnx")


def archive(served: Served, store: Path, name: str, *flags: str) -> None:
    argv = [
        "--export-dir",
        str(served.export_dir),
        "--name",
        name,
        *served.flags,
        "--model-store",
        str(store),
        *flags,
    ]
    if build_mar.main(argv) != 0:
        raise SystemExit(f"could not archive {name}")


def measure(server: Server, model: str, concurrency: int, plan: Plan, **labels) -> dict:
    uploads = upload_mix()
    target = server.target(model)
    loadgen.run(
        loadgen.closed_loop(target, uploads, concurrency, duration=plan.warmup, max_requests=10**6)
    )
    result = loadgen.run(
        loadgen.closed_loop(target, uploads, concurrency, duration=plan.seconds, max_requests=10**6)
    )
    row = {**labels, "concurrency": concurrency, **result.summary()}
    print(
        f"  {labels} c={concurrency:3d}: {row['throughput_rps']:7.1f} img/s  p50 "
        f"{row['p50_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  {row['statuses']}",
        flush=True,
    )
    return row


def workers_section(served: Served, workdir: Path, plan: Plan) -> list[dict]:
    store = workdir / "workers_store"
    for n in plan.workers:
        archive(
            served,
            store,
            f"workers_{n}",
            "--min-workers",
            str(n),
            "--max-workers",
            str(n),
            "--batch-size",
            "8",
            "--max-batch-delay",
            "5",
        )
    server = Server(store, workdir / "workers_run", ("job_queue_size=1024",))
    try:
        return [
            measure(server, f"workers_{n}", c, plan, workers=n)
            for n in plan.workers
            for c in plan.worker_concurrency
        ]
    finally:
        server.stop()


def batching_section(served: Served, workdir: Path, plan: Plan) -> list[dict]:
    store = workdir / "batching_store"
    configs = [(1, 0)] + [(b, d) for b in plan.batch_sizes if b > 1 for d in plan.delays_ms]
    for batch, delay in configs:
        archive(
            served,
            store,
            f"batch_{batch}_delay_{delay}",
            "--batch-size",
            str(batch),
            "--max-batch-delay",
            str(delay),
        )
    server = Server(store, workdir / "batching_run", ("job_queue_size=1024",))
    try:
        return [
            measure(server, f"batch_{b}_delay_{d}", c, plan, batch_size=b, delay_ms=d)
            for b, d in configs
            for c in plan.batch_concurrency
        ]
    finally:
        server.stop()


def queue_section(served: Served, workdir: Path, plan: Plan) -> dict:
    store = workdir / "queue_store"
    archive(served, store, "small_queue", "--batch-size", "1", "--job-queue-size", "10")
    server = Server(store, workdir / "queue_run")
    try:
        target = server.target("small_queue")
        uploads = upload_mix()
        overload = loadgen.run(
            loadgen.closed_loop(target, uploads, 64, duration=plan.seconds, max_requests=10**6)
        )
        after = loadgen.run(
            loadgen.closed_loop(target, uploads, 1, duration=plan.seconds / 2, max_requests=10**6)
        )
    finally:
        server.stop()
    result = {
        "overload": overload.summary(),
        "p50_ms_503": round(overload.percentile(50, "503"), 2),
        "p99_ms_503": round(overload.percentile(99, "503"), 2),
        "p50_ms_200": round(overload.percentile(50, "200"), 2),
        "after": after.summary(),
    }
    print(
        f"  queue of 10 under 64 clients: {result['overload']['statuses']}, 503 answered in "
        f"p50 {result['p50_ms_503']} / p99 {result['p99_ms_503']} ms (200s: p50 "
        f"{result['p50_ms_200']} ms); afterwards {result['after']['statuses']}",
        flush=True,
    )
    return result


# ---- report --------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Serving configuration experiment: {report['model']}",
        "",
        f"- machine: {report['machine']}",
        f"- date: {report['date']}",
        f"- load: closed loop, upload mix {report['uploads']}, {report['seconds']} s per "
        f"step after warm-up; archived with `{report.get('serving', '--backend onnx')}`",
        "",
    ]
    if report["workers"]:
        concurrencies = sorted({r["concurrency"] for r in report["workers"]})
        lines += [
            "## Workers (batchSize 8, maxBatchDelay 5 ms): images/s, p99 ms",
            "",
            "| workers | " + " | ".join(f"c={c}" for c in concurrencies) + " |",
            "|---|" + "---|" * len(concurrencies),
        ]
        for n in sorted({r["workers"] for r in report["workers"]}):
            cells = [
                next(
                    f"{r['throughput_rps']:.1f}, {r['p99_ms']:.0f}"
                    for r in report["workers"]
                    if r["workers"] == n and r["concurrency"] == c
                )
                for c in concurrencies
            ]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
    if report["batching"]:
        concurrencies = sorted({r["concurrency"] for r in report["batching"]})
        lines += [
            "",
            "## batchSize x maxBatchDelay, one worker: images/s, p50 / p99 ms",
            "",
            "| batchSize | maxBatchDelay | " + " | ".join(f"c={c}" for c in concurrencies) + " |",
            "|---|---|" + "---|" * len(concurrencies),
        ]
        for b, d in dict.fromkeys((r["batch_size"], r["delay_ms"]) for r in report["batching"]):
            cells = [
                next(
                    f"{r['throughput_rps']:.1f}, {r['p50_ms']:.0f} / {r['p99_ms']:.0f}"
                    for r in report["batching"]
                    if (r["batch_size"], r["delay_ms"], r["concurrency"]) == (b, d, c)
                )
                for c in concurrencies
            ]
            lines.append(f"| {b} | {d} ms | " + " | ".join(cells) + " |")
    if report["queue"]:
        q = report["queue"]
        lines += [
            "",
            "## A full queue",
            "",
            f"A model with jobQueueSize 10 and one worker under 64 closed-loop clients for "
            f"{report['seconds']} s: {q['overload']['statuses']}. Refusals came back in "
            f"p50 {q['p50_ms_503']} ms / p99 {q['p99_ms_503']} ms, served requests in p50 "
            f"{q['p50_ms_200']} ms. One client afterwards: {q['after']['statuses']}, "
            f"p50 {q['after']['p50_ms']} ms.",
        ]
    lines += ["", "![workers](workers.png)", "![batching](batching.png)"]
    return "\n".join(lines) + "\n"


def plots(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if report["workers"]:
        curves = []
        for n in sorted({r["workers"] for r in report["workers"]}):
            rows = sorted(
                (r for r in report["workers"] if r["workers"] == n), key=lambda r: r["concurrency"]
            )
            clients = [r["concurrency"] for r in rows]
            throughput = [r["throughput_rps"] for r in rows]
            curves.append(Curve(f"{n} workers", clients, throughput, [r["p99_ms"] for r in rows]))
        titles = ("throughput by worker count", "p99 latency by worker count")
        throughput_and_p99(curves, out / "workers.png", titles)
    if report["batching"]:
        low, high = (
            min(r["concurrency"] for r in report["batching"]),
            max(r["concurrency"] for r in report["batching"]),
        )
        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
        for b in sorted({r["batch_size"] for r in report["batching"]}):
            rows = sorted(
                (r for r in report["batching"] if r["batch_size"] == b), key=lambda r: r["delay_ms"]
            )
            at_low = [r for r in rows if r["concurrency"] == low]
            at_high = [r for r in rows if r["concurrency"] == high]
            left.plot(
                [r["delay_ms"] for r in at_low],
                [r["p50_ms"] for r in at_low],
                marker="o",
                label=f"batchSize {b}",
            )
            right.plot(
                [r["delay_ms"] for r in at_high],
                [r["throughput_rps"] for r in at_high],
                marker="o",
                label=f"batchSize {b}",
            )
        left.set(
            xlabel="maxBatchDelay (ms)", ylabel="p50 (ms)", title=f"latency at concurrency {low}"
        )
        right.set(
            xlabel="maxBatchDelay (ms)",
            ylabel="images / s",
            title=f"throughput at concurrency {high}",
        )
        for axis in (left, right):
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / "batching.png")
        plt.close(figure)


def gpu_name() -> str:
    import subprocess

    query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
    answer = subprocess.run(query, capture_output=True, text=True, check=False)
    return answer.stdout.strip().replace(", ", " driver ") or "GPU (unnamed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--export-dir",
        type=Path,
        default=DEFAULT_EXPORT,
        help="the export to serve (default: the demo's model)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--sections",
        nargs="+",
        default=["workers", "batching", "queue"],
        choices=["workers", "batching", "queue"],
    )
    parser.add_argument(
        "--gpu", action="store_true", help="GPU workers, TorchScript (fp16 where exported)"
    )
    parser.add_argument("--workers", help="comma-separated worker counts (default: 1,2,3,4)")
    parser.add_argument(
        "--concurrency", help="comma-separated client counts of the workers section"
    )
    parser.add_argument(
        "--batch-sizes", help="comma-separated batchSize values (default: 1,4,8,16)"
    )
    parser.add_argument("--delays", help="comma-separated maxBatchDelay ms (default: 0,5,20,50)")
    parser.add_argument("--seconds", type=float, help="timed seconds per step (default: 12)")
    args = parser.parse_args(argv)
    if not (args.export_dir / "model_meta.json").is_file():
        print(f"error: no export in {args.export_dir}; run `make demo` first", file=sys.stderr)
        return 1
    plan = QUICK if args.quick else FULL
    if args.workers:
        plan = dataclasses.replace(plan, workers=tuple(int(n) for n in args.workers.split(",")))
    if args.concurrency:
        counts = tuple(int(n) for n in args.concurrency.split(","))
        plan = dataclasses.replace(plan, worker_concurrency=counts)
    if args.batch_sizes:
        sizes = tuple(int(n) for n in args.batch_sizes.split(","))
        plan = dataclasses.replace(plan, batch_sizes=sizes)
    if args.delays:
        plan = dataclasses.replace(plan, delays_ms=tuple(int(n) for n in args.delays.split(",")))
    if args.seconds:
        plan = dataclasses.replace(plan, seconds=args.seconds)
    if args.gpu:
        meta = json.loads((args.export_dir / "model_meta.json").read_text())
        precision = "fp16" if "torchscript/fp16" in meta["files"] else "fp32"
        gpu_flags = ("--backend", "torchscript", "--precision", precision, "--device", "gpu")
        served = Served(args.export_dir, gpu_flags)
    else:
        served = Served(args.export_dir)
    import platform

    report: dict[str, Any] = {
        "model": args.export_dir.name,
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores" + (f", {gpu_name()}" if args.gpu else ""),
        "date": time.strftime("%Y-%m-%d"),
        "uploads": [u.name for u in upload_mix()],
        "seconds": plan.seconds,
        "serving": " ".join(served.flags),
        "workers": [],
        "batching": [],
        "queue": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="experiment_") as tmp:
        workdir = Path(tmp)
        if "workers" in args.sections:
            print("== workers", flush=True)
            report["workers"] = workers_section(served, workdir, plan)
        if "batching" in args.sections:
            print("== batchSize x maxBatchDelay", flush=True)
            report["batching"] = batching_section(served, workdir, plan)
        if "queue" in args.sections:
            print("== a full queue", flush=True)
            report["queue"] = queue_section(served, workdir, plan)
        shutil.rmtree(workdir, ignore_errors=True)
    (args.out / "experiment.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "experiment.md").write_text(markdown(report))
    plots(report, args.out)
    print(f"wrote {args.out / 'experiment.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
