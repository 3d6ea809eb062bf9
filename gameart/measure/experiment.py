"""The serving-configuration experiment: workers, batchSize/maxBatchDelay, a full queue.

For each configuration it builds a .mar of the served export (one `ArchiveSpec`, varied per
step), serves it with the project's config.properties on loopback ports, and drives it with
the load generator (closed loop, after a warm-up):
  workers   1..N workers x concurrency, at the served spec's batching: throughput, p50, p99
  batching  batchSize x maxBatchDelay with one worker, at concurrency 1 and under load
  queue     a queue of 10 under 64 clients: how fast the overflow is refused, and recovery
`run(ExperimentSpec)` writes experiment.json, experiment.md and plots to the spec's `out`;
the command line is gameart/cli/experiment.py (scripts/experiment.py).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gameart.measure import loadgen
from gameart.measure.gpu_probe import describe as describe_gpus
from gameart.measure.plotting import Curve, throughput_and_p99
from gameart.measure.uploads import upload_mix
from gameart.ops.server import RunningServer, ServerSpec, start_server
from gameart.paths import REPO_ROOT
from gameart.pipeline.archive import ArchiveSpec, build_archive
from modelspec.meta import ModelMeta

DEFAULT_EXPORT = REPO_ROOT / "artifacts" / "export" / "gameart"
DEFAULT_OUT = REPO_ROOT / "docs" / "experiments" / "serving-config-cpu"
SECTIONS = ("workers", "batching", "queue")
QUEUE_SIZE, QUEUE_CLIENTS = 10, 64  # the full-queue section: a small queue, many clients
SERVER_QUEUE = {"job_queue_size": "1024"}  # the workers and batching sections never overflow


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


@dataclass(frozen=True)
class ExperimentSpec:
    """One run: the served archive (export, backend, precision, device and the batching of the
    workers section), varied per step with `replace`; the plan; the sections; where to write."""

    served: ArchiveSpec
    out: Path = DEFAULT_OUT
    plan: Plan = FULL
    sections: tuple[str, ...] = SECTIONS

    @property
    def gpu(self) -> bool:
        return self.served.device == "gpu"


def served_spec(export_dir: Path, gpu: bool = False, **changes: Any) -> ArchiveSpec:
    """ONNX Runtime on CPU workers (the shipped default), or TorchScript on GPU workers (fp16
    where exported); `changes` are other ArchiveSpec fields (batching, for one)."""
    if not gpu:
        return ArchiveSpec(export_dir=export_dir, backend="onnx", **changes)
    files = ModelMeta.load(export_dir).files
    precision = "fp16" if "torchscript/fp16" in files else "fp32"
    return ArchiveSpec(
        export_dir=export_dir, backend="torchscript", precision=precision, device="gpu", **changes
    )


def serving_flags(spec: ArchiveSpec) -> str:
    """The build_mar options that make `spec`'s kind of archive, for the report."""
    defaults = ArchiveSpec(export_dir=spec.export_dir)
    flags = ["--backend", spec.backend]
    if spec.precision != defaults.precision or spec.device != defaults.device:
        flags += ["--precision", spec.precision]
    if spec.device != defaults.device:
        flags += ["--device", spec.device]
    return " ".join(flags)


def serve(store: Path, run_dir: Path, overrides: dict[str, str] | None = None) -> RunningServer:
    """A TorchServe on free loopback ports serving one model store, for one section."""
    spec = ServerSpec(
        model_store=store,
        run_dir=run_dir,
        overrides=overrides or {},
        free_ports=True,
        ready_timeout_s=900.0,
    )
    return start_server(spec)


def target(server: RunningServer, model: str) -> loadgen.Target:
    """`model`'s predictions URL with the inference key (re-read if the server renews it)."""
    return loadgen.Target.for_model(server.client, model)


def measure(server: RunningServer, model: str, concurrency: int, plan: Plan, **labels) -> dict:
    result = loadgen.measure_closed_loop(
        target(server, model),
        upload_mix(),
        concurrency,
        warmup_s=plan.warmup,
        duration_s=plan.seconds,
    )
    row = {**labels, "concurrency": concurrency, **result.summary()}
    print(
        f"  {labels} c={concurrency:3d}: {row['throughput_rps']:7.1f} img/s  p50 "
        f"{row['p50_ms']:7.1f}  p99 {row['p99_ms']:7.1f} ms  {row['statuses']}",
        flush=True,
    )
    return row


def workers_section(spec: ExperimentSpec, workdir: Path) -> list[dict]:
    """The served spec's batching, 1..N workers each."""
    plan, store = spec.plan, workdir / "workers_store"
    for n in plan.workers:
        build_archive(spec.served.replace(name=f"workers_{n}", model_store=store).with_workers(n))
    with serve(store, workdir / "workers_run", SERVER_QUEUE) as server:
        return [
            measure(server, f"workers_{n}", c, plan, workers=n)
            for n in plan.workers
            for c in plan.worker_concurrency
        ]


def batching_section(spec: ExperimentSpec, workdir: Path) -> list[dict]:
    plan, store = spec.plan, workdir / "batching_store"
    configs = [(1, 0)] + [(b, d) for b in plan.batch_sizes if b > 1 for d in plan.delays_ms]
    for batch, delay in configs:
        build_archive(
            spec.served.replace(
                name=f"batch_{batch}_delay_{delay}",
                model_store=store,
                batch_size=batch,
                max_batch_delay_ms=delay,
            )
        )
    with serve(store, workdir / "batching_run", SERVER_QUEUE) as server:
        return [
            measure(server, f"batch_{b}_delay_{d}", c, plan, batch_size=b, delay_ms=d)
            for b, d in configs
            for c in plan.batch_concurrency
        ]


def queue_section(spec: ExperimentSpec, workdir: Path) -> dict:
    plan, store = spec.plan, workdir / "queue_store"
    small = spec.served.replace(
        name="small_queue", model_store=store, batch_size=1, job_queue_size=QUEUE_SIZE
    )
    build_archive(small)
    with serve(store, workdir / "queue_run") as server:
        model, uploads = target(server, "small_queue"), upload_mix()
        # no warm-up: the overflow itself is what is measured, and then the recovery
        overload = loadgen.measure_closed_loop(
            model, uploads, QUEUE_CLIENTS, warmup_s=0, duration_s=plan.seconds
        )
        after = loadgen.measure_closed_loop(
            model, uploads, 1, warmup_s=0, duration_s=plan.seconds / 2
        )
    result = {
        "overload": overload.summary(),
        "p50_ms_503": round(overload.percentile(50, "503"), 2),
        "p99_ms_503": round(overload.percentile(99, "503"), 2),
        "p50_ms_200": round(overload.percentile(50, "200"), 2),
        "after": after.summary(),
    }
    print(
        f"  queue of {QUEUE_SIZE} under {QUEUE_CLIENTS} clients: "
        f"{result['overload']['statuses']}, 503 answered in "
        f"p50 {result['p50_ms_503']} / p99 {result['p99_ms_503']} ms (200s: p50 "
        f"{result['p50_ms_200']} ms); afterwards {result['after']['statuses']}",
        flush=True,
    )
    return result


def run(spec: ExperimentSpec) -> dict[str, Any]:
    """Every section of `spec`, then its report files in `spec.out`; the report."""
    cores = len(os.sched_getaffinity(0))
    report: dict[str, Any] = {
        "model": spec.served.export_dir.name,
        "machine": f"{platform.processor() or platform.machine()}, {cores} cores"
        + (f", {describe_gpus()}" if spec.gpu else ""),
        "date": time.strftime("%Y-%m-%d"),
        "uploads": [u.name for u in upload_mix()],
        "seconds": spec.plan.seconds,
        "serving": serving_flags(spec.served),
        "workers_batching": {
            "batch_size": spec.served.batch_size,
            "max_batch_delay_ms": spec.served.max_batch_delay_ms,
        },
        "workers": [],
        "batching": [],
        "queue": {},
    }
    spec.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="experiment_") as tmp:
        workdir = Path(tmp)
        if "workers" in spec.sections:
            print("== workers", flush=True)
            report["workers"] = workers_section(spec, workdir)
        if "batching" in spec.sections:
            print("== batchSize x maxBatchDelay", flush=True)
            report["batching"] = batching_section(spec, workdir)
        if "queue" in spec.sections:
            print("== a full queue", flush=True)
            report["queue"] = queue_section(spec, workdir)
    (spec.out / "experiment.json").write_text(json.dumps(report, indent=2) + "\n")
    (spec.out / "experiment.md").write_text(markdown(report))
    plots(report, spec.out)
    return report


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
        batching = report["workers_batching"]
        lines += [
            f"## Workers (batchSize {batching['batch_size']}, maxBatchDelay "
            f"{batching['max_batch_delay_ms']} ms): images/s, p99 ms",
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
            f"A model with jobQueueSize {QUEUE_SIZE} and one worker under {QUEUE_CLIENTS} "
            f"closed-loop clients for {report['seconds']} s: {q['overload']['statuses']}. "
            "Refusals came back in "
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
