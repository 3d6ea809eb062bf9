"""End to end through one TorchServe: our handler against the stock image_classifier, batching
on and off, the same batching and workers for both (one ArchiveSpec decides them)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

import torch

from gameart.measure import loadgen
from gameart.measure.benchmark.spec import Plan, Serving
from gameart.measure.benchmark.subject import Subject
from gameart.measure.uploads import upload_mix
from gameart.ops.server import ServerSpec, start_server
from gameart.pipeline.archive import ArchiveSpec, build_archive, package

STOCK_HANDLER = "image_classifier"  # TorchServe's own, from its default handlers
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


def archive_stock(subject: Subject, spec: ArchiveSpec) -> Path:
    """The stock image_classifier handler serving the subject's weights as an eager model, as
    `spec.name`, into `spec.model_store`, with the frontend settings (batching, workers,
    device, timeouts) of `spec`, our model's: only the handler differs. Needs the subject's
    checkpoint (see stock_unavailable)."""
    if subject.checkpoint is None:
        raise ValueError("the stock handler needs the subject's eager weights (a checkpoint)")
    with tempfile.TemporaryDirectory(prefix="bench_stock_") as tmp:
        staging = Path(tmp)
        (staging / "model.py").write_text(
            STOCK_MODEL_PY.format(arch=subject.architecture, classes=subject.meta.num_classes)
        )
        weights = torch.load(subject.checkpoint, map_location="cpu", weights_only=True)
        torch.save({f"net.{k}": v for k, v in weights.items()}, staging / "stock.pth")
        mapping = {str(i): n for i, n in enumerate(subject.meta.class_names)}
        (staging / "index_to_name.json").write_text(json.dumps(mapping))
        return package(
            name=spec.name or "stock",
            handler=STOCK_HANDLER,
            config=spec.frontend_config(),
            model_store=spec.model_store,
            serialized_file=staging / "stock.pth",
            model_file=staging / "model.py",
            extra_files=(staging / "index_to_name.json",),
            version=spec.version,
        )


def stock_unavailable(subject: Subject) -> str:
    """Why the stock handler cannot serve this subject, or '' when it can."""
    if importlib.util.find_spec("captum") is None:
        return "captum is not installed (TorchServe's VisionHandler imports it)"
    if subject.checkpoint is None:
        return "the stock handler needs the eager weights; run with --model, not --export-dir"
    if subject.meta.num_classes < 5:
        return "the stock image_classifier returns a top-5 and needs at least 5 classes"
    return ""


def archive_models(
    subject: Subject, backend: str, serving: Serving, store: Path, with_stock: bool
) -> dict[str, tuple[str, str]]:
    """Every .mar of the run into `store`: model name -> (handler row, batching)."""
    on = serving.archive_spec(subject.export_dir, store, backend)
    off = on.replace(batch_size=1, max_batch_delay_ms=0)
    models: dict[str, tuple[str, str]] = {}
    for batching, spec in (("on", on), ("off", off)):
        build_archive(spec.replace(name=f"ours_batching_{batching}"))
        models[f"ours_batching_{batching}"] = ("ours", batching)
        if with_stock:
            archive_stock(subject, spec.replace(name=f"stock_batching_{batching}"))
            models[f"stock_batching_{batching}"] = ("stock", batching)
    if serving.gpu and f"{backend}/fp16" in subject.meta.files:
        build_archive(on.replace(name="ours_fp16_batching_on", precision="fp16"))
        models["ours_fp16_batching_on"] = ("ours fp16", "on")
    elif not serving.gpu and backend == "onnx" and "onnx/int8" in subject.meta.files:
        build_archive(on.replace(name="ours_int8_batching_on", precision="int8"))
        models["ours_int8_batching_on"] = ("ours int8", "on")
    return models


def bench_e2e(
    subject: Subject, backend: str, plan: Plan, serving: Serving, workdir: Path
) -> tuple[list[dict], str]:
    """One TorchServe, our handler and the stock one, batching on and off, same workers each.
    Returns the rows and why the stock handler was not measured ('' when it was)."""
    store = workdir / "e2e_model_store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    stock_note = stock_unavailable(subject)
    models = archive_models(subject, backend, serving, store, with_stock=not stock_note)
    # a queue deep enough for the highest concurrency: no 503s
    queue = max(1024, 4 * max(plan.concurrencies))
    server_spec = ServerSpec(
        model_store=store,
        run_dir=workdir / "e2e_run",
        overrides={"job_queue_size": str(queue)},
        free_ports=True,
        ready_timeout_s=600.0,
    )
    uploads = [u for u in upload_mix() if u.content_type == "image/jpeg"]
    rows = []
    with start_server(server_spec) as server:
        client = server.client
        for name, (handler, batching) in models.items():
            target = loadgen.Target.for_model(client, name)
            for concurrency in plan.concurrencies:
                result = loadgen.measure_closed_loop(
                    target,
                    uploads,
                    concurrency,
                    warmup_s=plan.e2e_warmup,
                    duration_s=plan.e2e_seconds,
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
    return rows, stock_note
