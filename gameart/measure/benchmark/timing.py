"""Model-only timing: every variant (device x backend x precision) at every batch size.

Variants of one batch size are timed round-robin, so a burst of noise from a shared machine
hits them all alike and their ratios stay honest.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gameart.measure.benchmark.spec import Plan, Serving, row_name
from gameart.measure.benchmark.subject import Subject
from handler.backends import load_backend


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cells(
    runs: dict[str, Callable[[], Any]], device: torch.device, plan: Plan, batch: int
) -> dict[str, dict]:
    """Time several variants of one batch size round-robin, one iteration each per round, so a
    burst of noise from a shared machine hits them all alike and their ratios stay honest.
    Each variant runs until it has min_time and min_iters (or the cell's cap, >= 3 iterations);
    latency percentiles over its iterations, throughput over its summed time."""
    for run in runs.values():
        for _ in range(3):
            run()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    started = time.perf_counter()
    active = set(runs)
    while active:
        for name in list(active):
            t0 = time.perf_counter()
            runs[name]()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
            spent, count = sum(times[name]), len(times[name])
            done = spent >= plan.min_time and count >= plan.min_iters
            capped = time.perf_counter() - started >= plan.max_cell_time * len(runs)
            if done or (capped and count >= 3):
                active.discard(name)
    cells = {}
    for name, values in times.items():
        ms = np.array(values) * 1e3
        cells[name] = {
            "batch": batch,
            "iterations": len(values),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "images_per_s": round(batch * len(values) / sum(values), 2),
        }
    return cells


@dataclass
class Variant:
    device: str
    backend: str  # eager | torchscript | onnxruntime | cuda-graph | torch.compile
    precision: str
    channels_last: bool = False
    build: Callable[[torch.device], Callable[[torch.Tensor], Any]] = field(repr=False, default=None)
    batches: tuple[int, ...] | None = None  # only these batch sizes (None: all of the plan's)

    @property
    def label(self) -> str:
        extra = "+channels_last" if self.channels_last else ""
        return f"{self.backend} {self.precision}{extra}"


def eager_runner(subject: Subject, precision: str, channels_last: bool):
    def build(device: torch.device):
        model = subject.eager().to(device)
        if precision == "fp16":
            model = model.half()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)

        def run(x: torch.Tensor):
            with torch.inference_mode():
                return model(x)

        return run

    return build


def file_runner(subject: Subject, backend: str, precision: str, threads: int):
    def build(device: torch.device):
        path = subject.export_dir / subject.meta.model_file(backend, precision)
        runner = load_backend(path, backend, device, precision, threads)
        if runner.device != device:
            raise RuntimeError(f"{backend} cannot run on {device} here")
        return runner

    return build


def cuda_graph_runner(subject: Subject):
    """Eager fp16 channels_last, captured once per batch shape and replayed."""

    def build(device: torch.device):
        model = subject.eager().to(device).half().to(memory_format=torch.channels_last)
        graphs: dict[tuple, tuple] = {}

        def run(x: torch.Tensor):
            key = tuple(x.shape)
            if key not in graphs:
                static_in = x.clone()
                stream = torch.cuda.Stream(device)
                stream.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(stream), torch.inference_mode():
                    for _ in range(3):
                        model(static_in)
                torch.cuda.current_stream(device).wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph), torch.inference_mode():
                    static_out = model(static_in)
                graphs[key] = (graph, static_in, static_out)
            graph, static_in, static_out = graphs[key]
            static_in.copy_(x)
            graph.replay()
            return static_out

        return run

    return build


def compiled_runner(subject: Subject):
    """Inductor, default mode: max-autotune takes minutes per batch shape on a lease."""

    def build(device: torch.device):
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = 64  # one graph per batch shape, never eager
        model = subject.eager().to(device).half().to(memory_format=torch.channels_last)
        compiled = torch.compile(model, dynamic=False)

        def run(x: torch.Tensor):
            with torch.inference_mode():
                return compiled(x)

        return run

    return build


COMPILED_BATCHES = (1, 8, 64, 256)  # torch.compile recompiles per shape: a few, not all


def variants(subject: Subject, device: str, threads: int) -> list[Variant]:
    def from_file(backend: str, precision: str) -> Variant:
        build = file_runner(subject, backend, precision, threads)
        return Variant(device, row_name(backend), precision, build=build)

    def if_exported(backend: str, precision: str) -> list[Variant]:
        """Optional files (int8, fp16) exist only when the export was asked for them."""
        exported = f"{backend}/{precision}" in subject.meta.files
        return [from_file(backend, precision)] if exported else []

    eager_fp32 = Variant(device, "eager", "fp32", build=eager_runner(subject, "fp32", False))
    if device == "cpu":
        return [
            eager_fp32,
            from_file("torchscript", "fp32"),
            from_file("onnx", "fp32"),
            *if_exported("onnx", "int8"),
            *if_exported("aoti", "fp32"),
        ]
    return [
        eager_fp32,
        Variant(device, "eager", "fp16", build=eager_runner(subject, "fp16", False)),
        Variant(device, "eager", "fp16", True, eager_runner(subject, "fp16", True)),
        from_file("torchscript", "fp32"),
        from_file("onnx", "fp32"),
        Variant(device, "cuda-graph", "fp16", True, cuda_graph_runner(subject)),
        Variant(device, "torch.compile", "fp16", True, compiled_runner(subject), COMPILED_BATCHES),
        *if_exported("torchscript", "fp16"),
        *if_exported("onnx", "fp16"),
        *if_exported("aoti", "fp16"),  # AOTInductor: fp16 + channels_last, compiled at export
    ]


def bench_model(
    subject: Subject,
    devices: list[str],
    plan: Plan,
    threads: int,
    only: tuple[str, ...] = (),
) -> list[dict]:
    """Every variant x batch per device (or only the variants whose backend is in `only`)."""
    rows = []
    size = subject.meta.preprocess.input_size
    for device_name in devices:
        device = torch.device(device_name)
        batches = plan.cpu_batches if device.type == "cpu" else plan.gpu_batches
        built: dict[str, tuple[Variant, Callable]] = {}
        for variant in variants(subject, device_name, threads):
            if only and variant.backend not in only:
                continue
            labels = {
                "device": device_name,
                "backend": variant.backend,
                "precision": variant.precision,
                "variant": variant.label,
            }
            try:
                built[variant.label] = (variant, variant.build(device))
            except Exception as exc:  # a backend that cannot run here is reported, not fatal
                print(f"  {device_name} {variant.label}: unavailable ({exc})")
                rows.append({**labels, "unavailable": str(exc)[:200]})
        for batch in batches:
            runs = {}
            for label, (variant, run) in list(built.items()):
                if variant.batches and batch not in variant.batches:
                    continue
                dtype = torch.float16 if variant.precision == "fp16" else torch.float32
                x = torch.randn(batch, 3, size, size, device=device).to(dtype)
                if variant.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                try:
                    run(x)
                except Exception as exc:  # e.g. out of memory at this batch size
                    print(f"  {device_name} {label} batch {batch}: failed ({exc})")
                    del built[label]
                    continue
                runs[label] = functools.partial(run, x)
            for label, cell in time_cells(runs, device, plan, batch).items():
                variant = built[label][0]
                rows.append(
                    {
                        "device": device_name,
                        "backend": variant.backend,
                        "precision": variant.precision,
                        "variant": label,
                        **cell,
                    }
                )
                print(
                    f"  {device_name:4s} {label:30s} batch {batch:4d}: p50 "
                    f"{cell['p50_ms']:9.2f} ms  p99 {cell['p99_ms']:9.2f} ms  "
                    f"{cell['images_per_s']:9.1f} img/s",
                    flush=True,
                )
        built.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def pick_backend(
    model_rows: list[dict], requested: str, at_batch: int = Serving().batch_size
) -> str:
    """The backend our .mar serves end to end: as requested, or (auto) the faster of ONNX
    Runtime and TorchScript on the CPU at the default batch size of our archives (ONNX when
    these rows did not time that)."""
    if requested != "auto":
        return requested
    candidates = [
        r
        for r in model_rows
        if r.get("device") == "cpu"
        and r.get("batch") == at_batch
        and r.get("backend") in ("onnxruntime", "torchscript")
    ]
    if not candidates:
        return "onnx"
    fastest = min(candidates, key=lambda r: r["p50_ms"])
    return "onnx" if fastest["backend"] == row_name("onnx") else "torchscript"
