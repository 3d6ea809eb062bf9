#!/usr/bin/env python3
"""Benchmark: model latency per device x backend x batch, preprocessing cost per image, and
end-to-end HTTP throughput through TorchServe against the stock image_classifier handler.

  python scripts/benchmark.py                  # ResNet-50 at 224, full run (~10 min on 2 cores)
  python scripts/benchmark.py --quick          # minute-scale (tests use it)
  python scripts/benchmark.py --export-dir artifacts/export/gameart   # any exported model

Writes results.json (with machine info), results.md and PNG plots to --out. GPU rows appear
when CUDA is available and are marked absent otherwise. Weights are random: latency does not
depend on their values, only on the architecture.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gameart.measure import loadgen
from gameart.measure.plotting import Curve, throughput_and_p99
from gameart.measure.uploads import Upload, upload_mix
from gameart.ops import server as serve
from gameart.ops.client import REPO_ROOT
from gameart.pipeline import archive as build_mar
from handler.allocator import keep_freed_memory
from handler.backends import load_backend
from handler.decode import decode_image
from modelspec.imaging import DEFAULT_DRAFT_OVERSAMPLE, Normalizer, resize_crop
from modelspec.meta import ModelMeta, PreprocessSpec
from modelspec.reference import reference_rgb, reference_transform

DEFAULT_OUT = REPO_ROOT / "results" / "benchmark"


@dataclass(frozen=True)
class Plan:
    cpu_batches: tuple[int, ...]
    gpu_batches: tuple[int, ...]
    min_time: float  # seconds of timed iterations per cell (more if min_iters needs it)
    min_iters: int
    max_cell_time: float  # a slow cell stops here even below min_iters (at least 3 iterations)
    preprocess_reps: int
    concurrencies: tuple[int, ...]
    e2e_seconds: float
    e2e_warmup: float


FULL = Plan(
    (1, 2, 4, 8, 16, 32, 64),
    (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    2.0,
    20,
    12.0,
    30,
    (1, 8, 32, 128),
    15.0,
    3.0,
)
QUICK = Plan((1, 8), (1, 8, 64), 0.3, 5, 3.0, 5, (1, 8), 3.0, 1.0)


@dataclass(frozen=True)
class Serving:
    """TorchServe settings shared by our models and the stock one in the end-to-end runs."""

    workers: int = 1
    batch_size: int = 8  # batching on; off is batchSize 1
    max_batch_delay: int = 5  # ms
    gpu: bool = False  # deviceType gpu for our models (the stock one takes the GPU by itself)


# ---- the subject ---------------------------------------------------------------------------
@dataclass
class Subject:
    name: str
    architecture: str
    export_dir: Path
    meta: ModelMeta
    checkpoint: Path | None  # weights the stock handler can load (for generated subjects)

    def eager(self) -> torch.nn.Module:
        """A model of the same architecture and class count (random weights time the same)."""
        from export.architectures import _final_linear_name, _set_submodule, create_architecture

        torch.manual_seed(0)
        model = create_architecture(self.architecture)
        head = _final_linear_name(model)
        _set_submodule(
            model,
            head,
            torch.nn.Linear(model.get_submodule(head).in_features, self.meta.num_classes),
        )
        return model.eval()


def prepare_subject(args: argparse.Namespace, workdir: Path, fp16: bool) -> Subject:
    """An export to benchmark: the one given, or `--model` exported through the real pipeline."""
    from export.cli import main as export_main

    if args.export_dir:
        meta = ModelMeta.load(args.export_dir)
        return Subject(meta.name, meta.architecture, args.export_dir, meta, None)
    out = workdir / f"subject-{args.model}"
    checkpoint = out / "weights.pth"
    try:
        meta = ModelMeta.load(out / "export")
        if (fp16 and "aoti/fp16" not in meta.files) or "onnx/int8" not in meta.files:
            raise FileNotFoundError
        print(f"subject: cached export of {args.model} in {out}")
        return Subject(args.model, args.model, out / "export", meta, checkpoint)
    except (FileNotFoundError, ValueError):
        pass
    print(f"subject: exporting a {args.model} with {args.num_classes} classes (random weights)")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    import torchvision

    model = torchvision.models.get_model(args.model, weights=None, num_classes=args.num_classes)
    torch.save(model.state_dict(), checkpoint)
    names = ",".join(f"class_{i}" for i in range(args.num_classes))
    argv = [
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out / "export"),
        "--arch",
        args.model,
        "--class-names",
        names,
        "--name",
        f"bench_{args.model}",
        "--int8",
    ] + (["--fp16", "--aot"] if fp16 else [])
    if export_main(argv) != 0:
        raise SystemExit("export of the benchmark subject failed")
    return Subject(
        args.model, args.model, out / "export", ModelMeta.load(out / "export"), checkpoint
    )


# ---- timing --------------------------------------------------------------------------------
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


def row_name(backend: str) -> str:
    """The report's name for an archive backend: the ONNX file runs in ONNX Runtime."""
    return {"onnx": "onnxruntime", "aoti": "aotinductor"}.get(backend, backend)


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


# ---- preprocessing -------------------------------------------------------------------------
def preprocess_methods(spec: PreprocessSpec, devices: list[str]):
    """name -> function(upload bytes) doing decode + resize + crop + normalise for one image."""
    from PIL import Image
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode
    from torchvision.transforms.v2 import functional as F

    reference = reference_transform(spec)
    cpu = torch.device("cpu")
    normalizer = Normalizer(spec, cpu, torch.float32)
    crop_size = [spec.input_size, spec.input_size]
    resize = spec.resize_size if spec.resize_mode == "shorter_side" else [spec.resize_size] * 2

    def torchvision_pil(data: bytes):
        import io

        return reference(reference_rgb(Image.open(io.BytesIO(data)), spec))

    def handler(path: str):
        path_spec = dataclasses.replace(spec, decode=dataclasses.replace(spec.decode, path=path))
        draft = path_spec.draft_size(DEFAULT_DRAFT_OVERSAMPLE)

        def run(data: bytes):
            image = decode_image(
                data, max_pixels=10**9, policy=path_spec.decode, draft_min_size=draft
            )
            return normalizer([resize_crop(image, path_spec)])

        return run

    def torchvision_io(data: bytes):
        tensor = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
        tensor = F.center_crop(F.resize(tensor, resize, antialias=True), crop_size)
        return F.normalize(tensor.float() / 255, spec.mean, spec.std)

    methods = {
        "PIL + torchvision transforms (reference)": torchvision_pil,
        "handler, exact path (full decode, PIL resize)": handler("exact"),
        "handler, fast path (JPEG draft x2, PyTorch resize)": handler("fast"),
        "torchvision.io decode (CPU)": torchvision_io,
    }
    if "cuda" in devices:
        methods["nvJPEG batched decode (GPU)"] = None  # measured per batch, see bench_nvjpeg
    return methods


def bench_preprocess(
    spec: PreprocessSpec, uploads: Sequence[Upload], devices: list[str], plan: Plan
) -> list[dict]:
    rows = []
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for name, method in preprocess_methods(spec, devices).items():
        for upload in uploads:
            if method is None:
                row = bench_nvjpeg(spec, upload, plan)
                if row is None:
                    continue
            else:
                method(upload.body)
                times = []
                for _ in range(plan.preprocess_reps):
                    t0 = time.perf_counter()
                    method(upload.body)
                    times.append(time.perf_counter() - t0)
                row = {"ms_per_image": round(statistics.median(times) * 1e3, 3)}
            rows.append(
                {
                    "method": name,
                    "image": upload.name,
                    "size": f"{upload.size[0]}x{upload.size[1]}",
                    **row,
                }
            )
            print(f"  {name:42s} {upload.name:22s} {row['ms_per_image']:8.2f} ms/image", flush=True)
    return rows


def bench_nvjpeg(spec: PreprocessSpec, upload: Upload, plan: Plan, batch: int = 32) -> dict | None:
    """torchvision.io.decode_jpeg on the GPU for a batch of JPEGs, then resize/normalise there."""
    if upload.content_type != "image/jpeg":
        return None
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    device = torch.device("cuda")
    data = [torch.frombuffer(bytearray(upload.body), dtype=torch.uint8)] * batch
    mean = torch.tensor(spec.mean, device=device).view(3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(3, 1, 1)

    def run():
        images = decode_jpeg(data, device=device)
        crops = [
            F.center_crop(F.resize(i, spec.resize_size, antialias=True), [spec.input_size] * 2)
            for i in images
        ]
        return (torch.stack(crops).float() / 255 - mean) / std

    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(plan.preprocess_reps):
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"ms_per_image": round(statistics.median(times) * 1e3 / batch, 3), "batch": batch}


# ---- end to end ----------------------------------------------------------------------------
STOCK_MODEL_PY = '''"""Stock comparison: torchvision {arch} for TorchServe's BaseHandler."""
import torchvision
from torch import nn


class StockModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torchvision.models.get_model("{arch}", weights=None, num_classes={classes})

    def forward(self, x):
        return self.net(x)
'''


def archive_stock(
    subject: Subject, store: Path, name: str, batch: int, delay: int, workers: int, staging: Path
) -> None:
    """The stock image_classifier handler serving the same weights as an eager model."""
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "model.py").write_text(
        STOCK_MODEL_PY.format(arch=subject.architecture, classes=subject.meta.num_classes)
    )
    weights = torch.load(subject.checkpoint, map_location="cpu", weights_only=True)
    torch.save({f"net.{k}": v for k, v in weights.items()}, staging / "stock.pth")
    mapping = {str(i): n for i, n in enumerate(subject.meta.class_names)}
    (staging / "index_to_name.json").write_text(json.dumps(mapping))
    (staging / "model-config.yaml").write_text(
        f"minWorkers: {workers}\nmaxWorkers: {workers}\nbatchSize: {batch}\n"
        f"maxBatchDelay: {delay}\n"
        "responseTimeout: 120\n"
    )
    env = {**os.environ, "TMPDIR": str(staging)}
    command = [
        build_mar.archiver_command(),
        "--model-name",
        name,
        "--version",
        "1.0",
        "--model-file",
        str(staging / "model.py"),
        "--serialized-file",
        str(staging / "stock.pth"),
        "--handler",
        "image_classifier",
        "--extra-files",
        str(staging / "index_to_name.json"),
        "--config-file",
        str(staging / "model-config.yaml"),
        "--export-path",
        str(store),
        "--force",
    ]
    subprocess.run(command, check=True, capture_output=True, env=env)


def bench_e2e(
    subject: Subject, backend: str, plan: Plan, serving: Serving, workdir: Path
) -> tuple[list[dict], str]:
    """One TorchServe, our handler and the stock one, batching on and off, same workers each."""
    store = workdir / "e2e_model_store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    stock_note = stock_unavailable(subject)
    models: dict[str, tuple[str, str]] = {}

    def archive_ours(name: str, precision: str, batch: int, delay: int) -> None:
        argv = [
            "--export-dir",
            str(subject.export_dir),
            "--name",
            name,
            "--backend",
            backend,
            "--precision",
            precision,
            "--batch-size",
            str(batch),
            "--max-batch-delay",
            str(delay),
            "--min-workers",
            str(serving.workers),
            "--max-workers",
            str(serving.workers),
            "--device",
            "gpu" if serving.gpu else "cpu",
            "--model-store",
            str(store),
        ]
        if build_mar.main(argv) != 0:
            raise SystemExit(f"could not archive {name}")

    on = (serving.batch_size, serving.max_batch_delay)
    for batching, (batch, delay) in {"on": on, "off": (1, 0)}.items():
        archive_ours(f"ours_batching_{batching}", "fp32", batch, delay)
        models[f"ours_batching_{batching}"] = ("ours", batching)
        if not stock_note:
            name = f"stock_batching_{batching}"
            staging = workdir / "stock" / batching
            archive_stock(subject, store, name, batch, delay, serving.workers, staging)
            models[name] = ("stock", batching)
    if serving.gpu and f"{backend}/fp16" in subject.meta.files:
        archive_ours("ours_fp16_batching_on", "fp16", *on)
        models["ours_fp16_batching_on"] = ("ours fp16", "on")
    elif not serving.gpu and backend == "onnx" and "onnx/int8" in subject.meta.files:
        archive_ours("ours_int8_batching_on", "int8", *on)
        models["ours_int8_batching_on"] = ("ours int8", "on")
    run_dir = workdir / "e2e_run"
    # a queue deep enough for the highest concurrency: no 503s
    queue = f"job_queue_size={max(1024, 4 * max(plan.concurrencies))}"
    client, _ = serve.start_on_free_ports(store, run_dir, (queue,), timeout=600)
    uploads = [u for u in upload_mix() if u.content_type == "image/jpeg"]
    rows = []
    try:
        for name, (handler, batching) in models.items():
            target = loadgen.Target(
                f"{client.endpoints.inference}/predictions/{name}", client.headers("inference")
            )
            for concurrency in plan.concurrencies:
                loadgen.run(
                    loadgen.closed_loop(
                        target, uploads, concurrency, duration=plan.e2e_warmup, max_requests=10**6
                    )
                )
                result = loadgen.run(
                    loadgen.closed_loop(
                        target, uploads, concurrency, duration=plan.e2e_seconds, max_requests=10**6
                    )
                )
                row = {
                    "handler": handler,
                    "batching": batching,
                    "concurrency": concurrency,
                    **result.summary(),
                }
                rows.append(row)
                print(
                    f"  {handler:5s} batching {batching:3s} concurrency {concurrency:4d}: "
                    f"{row['throughput_rps']:8.1f} img/s  p50 {row['p50_ms']:8.1f} ms  "
                    f"p99 {row['p99_ms']:8.1f} ms  {row['statuses']}",
                    flush=True,
                )
    finally:
        serve.stop_server(run_dir)
    return rows, stock_note


def stock_unavailable(subject: Subject) -> str:
    """Why the stock handler cannot serve this subject, or '' when it can."""
    import importlib.util

    if importlib.util.find_spec("captum") is None:
        return "captum is not installed (TorchServe's VisionHandler imports it)"
    if subject.checkpoint is None:
        return "the stock handler needs the eager weights; run with --model, not --export-dir"
    if subject.meta.num_classes < 5:
        return "the stock image_classifier returns a top-5 and needs at least 5 classes"
    return ""


# ---- machine and report --------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    import onnxruntime
    import PIL
    import torchvision
    from ts import version as ts_version

    cpu_model = "unknown"
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    if Path("/proc/meminfo").is_file():
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory_gib = round(kib / 2**20, 1)
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib,
        "gpu": None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torchserve": ts_version.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
    }
    if torch.cuda.is_available():
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        )
        info["gpu"] = {
            "name": torch.cuda.get_device_name(0),
            "cuda": torch.version.cuda,
            "driver": driver.stdout.strip() or None,
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        }
    return info


HANDLER_ROWS = ("ours", "ours int8", "ours fp16", "stock")


def best(rows: list[dict], **where) -> dict | None:
    matching = [r for r in rows if "p50_ms" in r and all(r.get(k) == v for k, v in where.items())]
    return min(matching, key=lambda r: r["p50_ms"]) if matching else None


def goals(
    model_rows: list[dict],
    pre_rows: list[dict],
    e2e_rows: list[dict],
    served_backend: str,
    e2e_on_gpu: bool = False,
) -> dict[str, Any]:
    """The issue's benchmark goals, computed from this run's numbers only."""
    out: dict[str, Any] = {}
    eager = best(model_rows, device="cpu", backend="eager", batch=1)
    for label, where in (("fp32", {"precision": "fp32"}), ("any_precision", {})):
        top = best(model_rows, device="cpu", batch=1, **where)
        if eager and top:
            out[f"cpu_b1_best_{label}_over_eager"] = {
                "value": round(top["p50_ms"] / eager["p50_ms"], 3),
                "goal": "<= 0.6",
                "detail": f"{top['variant']} {top['p50_ms']} ms vs eager {eager['p50_ms']} ms",
            }
    served = best(
        model_rows, device="cpu", backend=row_name(served_backend), precision="fp32", batch=1
    )
    screenshot = [
        r
        for r in pre_rows
        if r["image"] == "screenshot_1080p.jpg"
        # "handler (default: ...)" in reports from before decode policies were recorded
        and r["method"].startswith(("handler, fast path", "handler (default"))
    ]
    if served and screenshot:
        out["preprocess_1080p_jpeg_over_model_b1"] = {
            "value": round(screenshot[0]["ms_per_image"] / served["p50_ms"], 3),
            "goal": "<= 0.25",
            "detail": f"{screenshot[0]['ms_per_image']} ms preprocessing vs "
            f"{served['p50_ms']} ms {served['variant']} at batch 1",
        }

    def e2e_row(handler: str, concurrency: int) -> dict | None:
        rows = [
            r
            for r in e2e_rows
            if r["handler"] == handler and r["batching"] == "on" and r["concurrency"] == concurrency
        ]
        return rows[0] if rows else None

    for concurrency in sorted({r["concurrency"] for r in e2e_rows}):
        stock = e2e_row("stock", concurrency)
        for handler, key in (
            ("ours", "ours"),
            ("ours int8", "ours_int8"),
            ("ours fp16", "ours_fp16"),
        ):
            ours = e2e_row(handler, concurrency)
            if ours and stock and stock["throughput_rps"]:
                out[f"e2e_c{concurrency}_{key}_over_stock"] = {
                    "throughput_ratio": round(ours["throughput_rps"] / stock["throughput_rps"], 2),
                    "p99_ratio": round(ours["p99_ms"] / stock["p99_ms"], 2),
                    "goal": ">= 2x throughput, p99 no worse" if concurrency == 8 else "(reported)",
                }
    if e2e_on_gpu and e2e_rows:
        peak = max(e2e_rows, key=lambda r: r["throughput_rps"])
        out["gpu_e2e_peak_images_per_s"] = {
            "value": peak["throughput_rps"],
            "goal": ">= 2000 (JPEG, HTTP)",
            "detail": f"{peak['handler']} batching {peak['batching']}, "
            f"concurrency {peak['concurrency']}, p99 {peak['p99_ms']} ms",
        }
    gpu = [r for r in model_rows if r.get("device") == "cuda" and "p50_ms" in r]
    cpu = [r for r in model_rows if r.get("device") == "cpu" and "p50_ms" in r]
    if gpu:
        peak = max(gpu, key=lambda r: r["images_per_s"])
        gpu_b1 = best(gpu, batch=1)
        out["gpu_peak_images_per_s"] = {
            "value": peak["images_per_s"],
            "goal": ">= 15000 (fp16)",
            "detail": f"{peak['variant']} batch {peak['batch']}",
        }
        out["gpu_b1_latency_ms"] = {
            "value": gpu_b1["p50_ms"],
            "goal": "<= 2 ms",
            "detail": gpu_b1["variant"],
        }
        if cpu:
            cpu_peak = max(cpu, key=lambda r: r["images_per_s"])
            out["gpu_over_cpu_speedup"] = {
                "latency_b1": round(best(cpu, batch=1)["p50_ms"] / gpu_b1["p50_ms"], 1),
                "throughput": round(peak["images_per_s"] / cpu_peak["images_per_s"], 1),
            }
    else:
        out["gpu"] = "absent: no CUDA device on this machine; GPU rows not measured"
    return out


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    gpu = machine["gpu"]
    gpu_line = f"{gpu['name']}, driver {gpu['driver']}, CUDA {gpu['cuda']}" if gpu else "absent"
    lines = [
        f"# Benchmark: {result['subject']['name']} ({result['subject']['architecture']}, "
        f"{result['subject']['classes']} classes, {result['subject']['input']})",
        "",
        f"- date: {machine['date']}",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB",
        f"- GPU: {gpu_line}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f"- plan: {result['plan']}",
        "",
        "## Goals",
        "",
        "| goal | measured | target | detail |",
        "|---|---|---|---|",
    ]
    for name, goal in result["goals"].items():
        if isinstance(goal, str):
            lines.append(f"| {name} | {goal} | | |")
            continue
        value = goal.get("value", goal.get("throughput_ratio"))
        extra = f"p99 ratio {goal['p99_ratio']}" if "p99_ratio" in goal else goal.get("detail", "")
        if "latency_b1" in goal:
            value, extra = f"latency {goal['latency_b1']}x", f"throughput {goal['throughput']}x"
        lines.append(f"| {name} | {value} | {goal.get('goal', '')} | {extra} |")

    model_rows = [r for r in result["model"] if "p50_ms" in r]
    for device in sorted({r["device"] for r in result["model"]}):
        rows = [r for r in model_rows if r["device"] == device]
        batches = sorted({r["batch"] for r in rows})
        lines += [
            "",
            f"## Model only, {device}: p50 latency ms / images per s",
            "",
            "| variant | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---|" + "---|" * len(batches),
        ]
        for variant in dict.fromkeys(r["variant"] for r in rows):
            cells = []
            for b in batches:
                cell = [r for r in rows if r["variant"] == variant and r["batch"] == b]
                cells.append(
                    f"{cell[0]['p50_ms']:.2f} / {cell[0]['images_per_s']:.0f}" if cell else "-"
                )
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        for r in result["model"]:
            if r["device"] == device and "unavailable" in r:
                lines.append(f"| {r['variant']} | unavailable: {r['unavailable']} |")
    if not any(r["device"] == "cuda" for r in result["model"]):
        lines += ["", "GPU rows: absent (no CUDA device on this machine)."]

    images = list(dict.fromkeys(r["image"] for r in result["preprocess"]))
    lines += [
        "",
        "## Preprocessing: decode + resize + crop + normalise, ms per image",
        "",
        "| method | " + " | ".join(images) + " |",
        "|---|" + "---|" * len(images),
    ]
    for method in dict.fromkeys(r["method"] for r in result["preprocess"]):
        cells = []
        for image in images:
            cell = [
                r for r in result["preprocess"] if r["method"] == method and r["image"] == image
            ]
            cells.append(f"{cell[0]['ms_per_image']:.2f}" if cell else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")

    if result["e2e"]:
        plan = result["plan"]
        serving = plan.get("serving", dataclasses.asdict(Serving()))
        concurrencies = sorted({r["concurrency"] for r in result["e2e"]})
        lines += [
            "",
            "## End to end through TorchServe: images/s, p50 / p99 ms",
            "",
            f"Closed loop, JPEG mix (600x800 cover + 1080p screenshot), "
            f"{plan['e2e_seconds']} s per step after warm-up, {serving['workers']} worker(s) "
            f"per model on the {'GPU' if serving['gpu'] else 'CPU'}, batching on = batchSize "
            f"{serving['batch_size']} + maxBatchDelay {serving['max_batch_delay']} ms, "
            "off = batchSize 1.",
            "",
            "| handler | batching | " + " | ".join(f"c={c}" for c in concurrencies) + " |",
            "|---|---|" + "---|" * len(concurrencies),
        ]
        for handler in HANDLER_ROWS:
            for batching in ("on", "off"):
                cells = []
                for c in concurrencies:
                    cell = [
                        r
                        for r in result["e2e"]
                        if r["handler"] == handler
                        and r["batching"] == batching
                        and r["concurrency"] == c
                    ]
                    if cell:
                        r = cell[0]
                        bad = r["requests"] - r["ok"]
                        cells.append(
                            f"{r['throughput_rps']:.1f}, {r['p50_ms']:.0f} / "
                            f"{r['p99_ms']:.0f}" + (f" ({bad} failed)" if bad else "")
                        )
                if cells:
                    lines.append(f"| {handler} | {batching} | " + " | ".join(cells) + " |")
    if result.get("stock_note"):
        lines += ["", f"Stock handler not measured: {result['stock_note']}."]
    if model_rows:
        lines += [
            "",
            "![latency vs batch](model_latency_vs_batch.png)",
            "![throughput vs batch](model_throughput_vs_batch.png)",
        ]
    if result["e2e"]:
        lines.append("![end to end](e2e_vs_concurrency.png)")
    return "\n".join(lines) + "\n"


def plots(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["model"] if "p50_ms" in r]
    devices = sorted({r["device"] for r in rows})
    for metric, name, label in (
        ()
        if not devices
        else (
            ("p50_ms", "model_latency_vs_batch.png", "p50 latency (ms)"),
            ("images_per_s", "model_throughput_vs_batch.png", "images / s"),
        )
    ):
        figure, axes = plt.subplots(
            1, len(devices), figsize=(6 * len(devices), 4.5), dpi=100, squeeze=False
        )
        for axis, device in zip(axes[0], devices, strict=True):
            for variant in dict.fromkeys(r["variant"] for r in rows if r["device"] == device):
                points = sorted(
                    (r["batch"], r[metric])
                    for r in rows
                    if r["device"] == device and r["variant"] == variant
                )
                axis.plot(*zip(*points, strict=True), marker="o", label=variant)
            axis.set(
                xscale="log",
                yscale="log",
                xlabel="batch size",
                ylabel=label,
                title=f"{result['subject']['name']} on {device}",
            )
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / name)
        plt.close(figure)
    if result["e2e"]:
        curves = []
        for handler in HANDLER_ROWS:
            for batching in ("on", "off"):
                points = sorted(
                    (r["concurrency"], r["throughput_rps"], r["p99_ms"])
                    for r in result["e2e"]
                    if r["handler"] == handler and r["batching"] == batching
                )
                if points:
                    style = "--" if handler == "stock" else "-"
                    label = f"{handler}, batching {batching}"
                    curves.append(Curve(label, *zip(*points, strict=True), style))
        titles = ("end-to-end throughput", "end-to-end p99 latency")
        throughput_and_p99(curves, out / "e2e_vs_concurrency.png", titles)


# ---- the command ---------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default="resnet50",
        help="torchvision architecture to benchmark (default: %(default)s)",
    )
    parser.add_argument("--num-classes", type=int, default=5, help="for --model (default: 5)")
    parser.add_argument("--export-dir", type=Path, help="benchmark this export instead")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    parser.add_argument("--quick", action="store_true", help="minute-scale run: fewer sizes")
    parser.add_argument("--devices", default="auto", help="cpu, cuda or cpu,cuda (default: all)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["model", "preprocess", "e2e"])
    parser.add_argument(
        "--served-backend",
        choices=["auto", "onnx", "torchscript"],
        default="auto",
        help="backend of our .mar in the end-to-end runs; auto "
        "picks the faster one at batch 8 on CPU",
    )
    parser.add_argument(
        "--rows",
        help="model rows to time, by backend (e.g. aotinductor,torchscript,cuda-graph); "
        "default: all",
    )
    parser.add_argument(
        "--cell-seconds", type=float, help="timed seconds per model cell (default: 2; quick: 0.3)"
    )
    serving = parser.add_argument_group("end to end")
    serving.add_argument("--workers", type=int, default=1, help="workers per model (default: 1)")
    serving.add_argument("--batch-size", type=int, default=8, help="batchSize with batching on")
    serving.add_argument("--max-batch-delay", type=int, default=5, help="ms, with batching on")
    serving.add_argument(
        "--concurrency", help="comma-separated client counts (default: 1,8,32,128; quick: 1,8)"
    )
    serving.add_argument("--e2e-seconds", type=float, help="timed seconds per step (default: 15)")
    parser.add_argument(
        "--reuse",
        type=Path,
        help="an earlier results.json of the same subject: sections skipped now are taken from "
        "it (to measure model and end-to-end in separate runs, e.g. on a GPU lease)",
    )
    return parser.parse_args(argv)


def pick_backend(model_rows: list[dict], requested: str) -> str:
    if requested != "auto":
        return requested
    candidates = [
        r
        for r in model_rows
        if r.get("device") == "cpu"
        and r.get("batch") == 8
        and r.get("backend") in ("onnxruntime", "torchscript")
    ]
    if not candidates:
        return "onnx"
    fastest = min(candidates, key=lambda r: r["p50_ms"])
    return "onnx" if fastest["backend"] == row_name("onnx") else "torchscript"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # as our handler does in its workers; see handler/allocator.py
    plan = QUICK if args.quick else FULL
    if args.concurrency:
        plan = dataclasses.replace(
            plan, concurrencies=tuple(int(c) for c in args.concurrency.split(","))
        )
    if args.cell_seconds:
        plan = dataclasses.replace(plan, min_time=args.cell_seconds)
    if args.e2e_seconds:
        plan = dataclasses.replace(plan, e2e_seconds=args.e2e_seconds)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.devices != "auto":
        devices = [d for d in args.devices.split(",") if d == "cpu" or torch.cuda.is_available()]
    args.out.mkdir(parents=True, exist_ok=True)
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    started = time.monotonic()
    subject = prepare_subject(args, args.out, fp16="cuda" in devices)
    spec = subject.meta.preprocess
    result: dict[str, Any] = {
        "machine": machine_info(),
        "subject": {
            "name": subject.name,
            "architecture": subject.architecture,
            "classes": subject.meta.num_classes,
            "input": f"{spec.input_size}x{spec.input_size}",
        },
        "plan": {
            "quick": args.quick,
            "devices": devices,
            "threads": threads,
            "e2e_seconds": plan.e2e_seconds,
        },
        "model": [],
        "preprocess": [],
        "e2e": [],
        "stock_note": "",
    }
    earlier = json.loads(args.reuse.read_text()) if args.reuse else {}
    for section in args.skip:
        if section in earlier:
            result[section] = earlier[section]
            if section == "e2e":
                result["stock_note"] = earlier.get("stock_note", "")
                result["plan"]["serving"] = earlier["plan"].get("serving")
    if "model" not in args.skip:
        print("== model only", flush=True)
        only = tuple(args.rows.split(",")) if args.rows else ()
        result["model"] = bench_model(subject, devices, plan, threads, only)
    if "preprocess" not in args.skip:
        print("== preprocessing", flush=True)
        result["preprocess"] = bench_preprocess(spec, upload_mix(), devices, plan)
    backend = pick_backend(result["model"], args.served_backend)
    result["plan"]["served_backend"] = backend
    if "e2e" not in args.skip:
        serving = Serving(args.workers, args.batch_size, args.max_batch_delay, "cuda" in devices)
        result["plan"]["serving"] = dataclasses.asdict(serving)
        where = "GPU" if serving.gpu else "CPU"
        print(f"== end to end through TorchServe (our .mar runs {backend} on {where})", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
            result["e2e"], result["stock_note"] = bench_e2e(
                subject, backend, plan, serving, Path(tmp)
            )
    e2e_on_gpu = bool((result["plan"].get("serving") or {}).get("gpu"))
    result["goals"] = goals(
        result["model"], result["preprocess"], result["e2e"], backend, e2e_on_gpu
    )
    result["seconds"] = round(time.monotonic() - started, 1)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    plots(result, args.out)
    print(f"\n{json.dumps(result['goals'], indent=2)}")
    print(f"wrote {args.out / 'results.json'}, results.md and plots in {result['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
