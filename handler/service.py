"""TorchServe glue: load once per worker, then turn each batch of requests into answers.

Every item of a batch is decoded on its own; an item that fails gets its own 4xx status and JSON
error through context.set_response_status, and the rest of the batch goes on to the model.
"""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from handler.allocator import keep_freed_memory
from handler.backends import Backend, load_backend, select_device
from handler.config import HandlerConfig
from handler.decode import decode_image
from handler.errors import RequestError, ServerError
from handler.inputs import extract_image
from handler.postprocess import top_k_predictions
from handler.preprocess import Normalizer, resize_crop
from modelspec.meta import ModelMeta

log = logging.getLogger(__name__)
JSON_CONTENT_TYPE = "application/json"


@dataclass
class PreparedImage:
    crop: torch.Tensor  # (3, size, size) uint8
    top_k: int


class ImageClassifierService:
    def __init__(self) -> None:
        self.initialized = False
        self.config = HandlerConfig()
        self.meta: ModelMeta | None = None
        self.backend: Backend | None = None
        self.normalizer: Normalizer | None = None
        self.pool: ThreadPoolExecutor | None = None

    # ---- load ------------------------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        yaml_config = context.model_yaml_config or {}
        self.config = HandlerConfig.from_yaml(yaml_config.get("handler"))
        if self.config.keep_freed_memory:
            keep_freed_memory()
        self.meta = ModelMeta.load(model_dir)
        model_file = model_dir / context.manifest["model"]["serializedFile"]
        threads = self.config.resolved_threads(int(yaml_config.get("maxWorkers", 1)))
        device = select_device(props.get("gpu_id"))
        self.load(model_file, device, threads)
        if self.config.warmup:
            self.warm_up(int(props.get("batch_size") or 1))
        self.initialized = True
        log.info(
            "loaded %s: %s/%s on %s, %d threads, %d classes",
            self.meta.name,
            self.backend.name,
            self.config.precision,
            self.backend.device,
            threads,
            self.meta.num_classes,
        )

    def load(self, model_file: Path, device: torch.device, threads: int) -> None:
        """Load the model and per-worker helpers (also used by tests and the benchmark)."""
        self.backend = load_backend(
            model_file, self.config.backend, device, self.config.precision, threads
        )
        self.normalizer = Normalizer(
            self.meta.preprocess, self.backend.device, self.backend.input_dtype
        )
        decode_threads = self.config.decode_threads or threads
        self.pool = ThreadPoolExecutor(decode_threads) if decode_threads > 1 else None

    def warm_up(self, batch_size: int) -> None:
        """Run the sizes TorchServe will send, so the first real request is not the slow one."""
        size = self.meta.preprocess.input_size
        blank = torch.full((3, size, size), 128, dtype=torch.uint8)
        for n in sorted({1, max(1, batch_size)}):
            for _ in range(2):  # TorchScript's profiling executor specialises on the 2nd call
                self.backend(self.normalizer([blank] * n))

    # ---- per batch -------------------------------------------------------------------------
    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        started = time.perf_counter()
        prepared = self._map(self.prepare, data)
        decoded = time.perf_counter()
        answers: list[Any] = list(prepared)
        good = [i for i, item in enumerate(prepared) if isinstance(item, PreparedImage)]
        if good:
            try:
                predictions = self.predict([prepared[i] for i in good])
            except Exception as exc:  # the model failed: a server error for these items only
                failure = _server_error(exc)
                predictions = [failure] * len(good)
            for i, prediction in zip(good, predictions, strict=True):
                answers[i] = prediction
        for i, answer in enumerate(answers):
            if isinstance(answer, RequestError):
                context.set_response_status(answer.status, answer.reason_phrase, i)
                answers[i] = answer.body()
            context.set_response_content_type(i, JSON_CONTENT_TYPE)
        finished = time.perf_counter()
        log.info(
            "batch size=%d ok=%d rejected=%d in %.1f ms (decode %.1f, model %.1f)",
            len(data),
            len(good),
            len(data) - len(good),
            (finished - started) * 1e3,
            (decoded - started) * 1e3,
            (finished - decoded) * 1e3,
        )
        return [json.dumps(answer, separators=(",", ":")) for answer in answers]

    def prepare(self, request: dict[str, Any]) -> PreparedImage | RequestError:
        """One request -> a uint8 crop ready to batch, or the error to send back for it."""
        try:
            raw, options = extract_image(request, self.config.max_image_bytes)
            spec = self.meta.preprocess
            image = decode_image(
                raw,
                max_pixels=self.config.max_image_pixels,
                draft_min_size=self.config.draft_min_size(spec.resize_size),
                background=self.config.alpha_background,
            )
            crop = resize_crop(image, spec)
        except RequestError as error:
            return error
        except MemoryError:
            return ServerError("out of memory while decoding", status=507, kind="OutOfResources")
        return PreparedImage(crop=crop, top_k=options.top_k or self.config.top_k)

    def predict(self, items: list[PreparedImage]) -> list[dict[str, Any]]:
        logits = self.backend(self.normalizer([item.crop for item in items]))
        return top_k_predictions(logits, self.meta.class_names, [item.top_k for item in items])

    def _map(self, function, items: list) -> list:
        if self.pool is None or len(items) < 2:
            return [function(item) for item in items]
        return list(self.pool.map(function, items))


def _server_error(exc: Exception) -> ServerError:
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        log.error("out of memory during inference", exc_info=True)
        return ServerError("the server ran out of memory", status=507, kind="OutOfResources")
    log.exception("inference failed")
    return ServerError("inference failed on the server; see the model log")
