"""One benchmark run: the subject, the sections the spec asks for, results.json and the report.

results.json holds everything the report needs (machine, subject, plan, the rows of every
section, the goals), so report.render can redo results.md from it alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gameart.measure import gpu_probe
from gameart.measure.benchmark import report
from gameart.measure.benchmark.e2e import bench_e2e
from gameart.measure.benchmark.goals import goals_of, verdicts
from gameart.measure.benchmark.preprocess import bench_preprocess
from gameart.measure.benchmark.spec import DEVICES, BenchmarkSpec
from gameart.measure.benchmark.subject import prepare_subject
from gameart.measure.benchmark.timing import bench_model, pick_backend
from gameart.measure.uploads import upload_mix
from handler.allocator import keep_freed_memory


def machine_info() -> dict[str, Any]:
    """The machine and library versions, as results.json records them."""
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
        gpus = gpu_probe.query("driver_version")
        info["gpu"] = {
            "name": torch.cuda.get_device_name(0),
            "cuda": torch.version.cuda,
            "driver": gpus[0]["driver_version"] if gpus else None,
            "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
        }
    return info


def present_devices(requested: tuple[str, ...] | None) -> list[str]:
    """The requested devices this machine has (all of DEVICES it has when None)."""
    cuda = torch.cuda.is_available()
    wanted = DEVICES if requested is None else requested
    return [d for d in wanted if d == "cpu" or cuda]


def run(spec: BenchmarkSpec) -> dict[str, Any]:
    """Measure what `spec` asks for, write results.json, results.md and the plots into
    spec.out; returns the results."""
    keep_freed_memory()  # as our handler does in its workers; see handler/allocator.py
    plan = spec.plan
    devices = present_devices(spec.devices)
    spec.out.mkdir(parents=True, exist_ok=True)
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    started = time.monotonic()
    subject = prepare_subject(
        model=spec.model,
        num_classes=spec.num_classes,
        export_dir=spec.export_dir,
        workdir=spec.out,
        fp16="cuda" in devices,
    )
    preprocess = subject.meta.preprocess
    results: dict[str, Any] = {
        "machine": machine_info(),
        "subject": {
            "name": subject.name,
            "architecture": subject.architecture,
            "classes": subject.meta.num_classes,
            "input": f"{preprocess.input_size}x{preprocess.input_size}",
        },
        "plan": {
            "quick": spec.quick,
            "devices": devices,
            "threads": threads,
            "e2e_seconds": plan.e2e_seconds,
        },
        "model": [],
        "preprocess": [],
        "e2e": [],
        "stock_note": "",
    }
    earlier = json.loads(spec.reuse.read_text()) if spec.reuse else {}
    for section in spec.skip:
        if section in earlier:
            results[section] = earlier[section]
            if section == "e2e":
                results["stock_note"] = earlier.get("stock_note", "")
                results["plan"]["serving"] = earlier["plan"].get("serving")
    if spec.measures("model"):
        print("== model only", flush=True)
        results["model"] = bench_model(subject, devices, plan, threads, spec.rows)
    if spec.measures("preprocess"):
        print("== preprocessing", flush=True)
        results["preprocess"] = bench_preprocess(preprocess, upload_mix(), devices, plan)
    backend = pick_backend(results["model"], spec.served_backend)
    results["plan"]["served_backend"] = backend
    if spec.measures("e2e"):
        serving = dataclasses.replace(spec.serving, gpu="cuda" in devices)
        results["plan"]["serving"] = dataclasses.asdict(serving)
        where = "GPU" if serving.gpu else "CPU"
        print(f"== end to end through TorchServe (our .mar runs {backend} on {where})", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
            results["e2e"], results["stock_note"] = bench_e2e(
                subject, backend, plan, serving, Path(tmp)
            )
    results["goals"] = goals_of(results)
    results["seconds"] = round(time.monotonic() - started, 1)
    (spec.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report.write_report(results, spec.out)
    print(f"\n{json.dumps(results['goals'], indent=2)}")
    print("\n".join(verdicts(results)))
    print(f"wrote {spec.out / 'results.json'}, results.md and plots in {results['seconds']:.0f}s")
    return results
