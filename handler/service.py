"""TorchServe glue: load once per worker, then turn each batch of requests into answers.

Every item of a batch is decoded on its own; an item that fails gets its own 4xx status and JSON
error through context.set_response_status, and the rest of the batch goes on to the model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from handler.allocator import keep_freed_memory
from handler.backends import Backend, load_backend, select_device
from handler.cache import RedisCache, image_key, model_identity
from handler.config import HandlerConfig
from handler.decode import decode_image
from handler.errors import RequestError, ServerError
from handler.inputs import extract_image
from handler.postprocess import answer, probabilities
from modelspec.imaging import Normalizer, resize_crop
from modelspec.meta import META_FILENAME, ModelMeta

log = logging.getLogger(__name__)
JSON_CONTENT_TYPE = "application/json"
CACHE_URL_ENV = "GAMEART_CACHE_URL"


@dataclass
class Item:
    """One request on its way through the batch."""

    top_k: int = 0
    image: bytes = b""
    cache_key: str = ""
    crop: torch.Tensor | None = None  # (3, size, size) uint8
    probabilities: list[float] | None = None
    from_cache: bool = False
    error: RequestError | None = None

    @property
    def needs_model(self) -> bool:
        return self.error is None and self.probabilities is None


class ImageClassifierService:
    def __init__(self) -> None:
        self.initialized = False
        self.config = HandlerConfig()
        self.meta: ModelMeta | None = None
        self.backend: Backend | None = None
        self.normalizer: Normalizer | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.cache: RedisCache | None = None
        self.model_key = ""
        self._errors_reported = 0

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
        self.connect_cache(model_file, context)
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

    def connect_cache(self, model_file: Path, context: Any) -> None:
        """Use Redis when a URL is configured (cache_url, or GAMEART_CACHE_URL in the env)."""
        url = self.config.cache_url or os.environ.get(CACHE_URL_ENV, "")
        if not url:
            return
        name = getattr(context, "model_name", None) or self.meta.name
        version = str(context.manifest["model"].get("modelVersion", ""))
        meta_file = model_file.parent / META_FILENAME
        self.model_key = model_identity(
            name, version, model_file.read_bytes(), meta_file.read_bytes()
        )
        self.cache = RedisCache(url, self.config.cache_ttl_s, self.config.cache_timeout_ms)
        log.info("answers cached in Redis for %ds (model key %s)", self.cache.ttl_s, self.model_key)

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
        items = [self.extract(request) for request in data]
        hits = self.lookup(items)
        self._map(self.decode, [item for item in items if item.needs_model])
        decoded = time.perf_counter()
        computed = self.infer(
            [item for item in items if item.needs_model and item.crop is not None]
        )
        self.store(computed)
        answers = []
        for i, item in enumerate(items):
            if item.error is not None:
                context.set_response_status(item.error.status, item.error.reason_phrase, i)
                answers.append(item.error.body())
            else:
                answers.append(answer(item.probabilities, self.meta.class_names, item.top_k))
            context.set_response_content_type(i, JSON_CONTENT_TYPE)
        self._emit_cache_metrics(context, hits, len(computed))
        finished = time.perf_counter()
        rejected = sum(item.error is not None for item in items)
        log.info(
            "batch size=%d ok=%d rejected=%d cached=%d in %.1f ms (decode %.1f, model %.1f)",
            len(items),
            len(items) - rejected,
            rejected,
            hits,
            (finished - started) * 1e3,
            (decoded - started) * 1e3,
            (finished - decoded) * 1e3,
        )
        return [json.dumps(a, separators=(",", ":")) for a in answers]

    def extract(self, request: dict[str, Any]) -> Item:
        """The image bytes and options of one request, or its 4xx."""
        try:
            image, options = extract_image(request, self.config.max_image_bytes)
        except RequestError as error:
            return Item(error=error)
        return Item(top_k=options.top_k or self.config.top_k, image=image)

    def lookup(self, items: list[Item]) -> int:
        """Answer what the cache already knows; returns how many it did."""
        if self.cache is None:
            return 0
        wanted = [item for item in items if item.error is None]
        for item in wanted:
            item.cache_key = image_key(self.model_key, item.image)
        found = self.cache.get_many([item.cache_key for item in wanted])
        for item, cached in zip(wanted, found, strict=True):
            if cached is not None and len(cached) == self.meta.num_classes:
                item.probabilities, item.from_cache = cached, True
        return sum(item.from_cache for item in wanted)

    def decode(self, item: Item) -> None:
        """Bytes -> a uint8 crop ready to batch, or the item's 4xx."""
        spec = self.meta.preprocess
        try:
            image = decode_image(
                item.image,
                max_pixels=self.config.max_image_pixels,
                policy=spec.decode,
                draft_min_size=spec.draft_size(self.config.jpeg_draft_oversample),
            )
            item.crop = resize_crop(image, spec)
        except RequestError as error:
            item.error = error
        except MemoryError:
            item.error = ServerError(
                "out of memory while decoding", status=507, kind="OutOfResources"
            )

    def infer(self, items: list[Item]) -> list[Item]:
        """Run the model once for the batch; a failure becomes a 5xx for these items only."""
        if not items:
            return []
        try:
            logits = self.backend(self.normalizer([item.crop for item in items]))
            rows = probabilities(logits, self.meta.num_classes)
        except Exception as exc:
            failure = _server_error(exc)
            for item in items:
                item.error = failure
            return []
        for item, row in zip(items, rows, strict=True):
            item.probabilities = row
        return items

    def store(self, items: list[Item]) -> None:
        if self.cache is not None and items:
            self.cache.set_many({item.cache_key: item.probabilities for item in items})

    def _emit_cache_metrics(self, context: Any, hits: int, computed: int) -> None:
        """Counters CacheHits/CacheMisses/CacheErrors for Prometheus (declared in metrics.yaml)."""
        metrics = getattr(context, "metrics", None)
        if self.cache is None or metrics is None:
            return
        from ts.metrics.dimension import Dimension

        new_errors = self.cache.stats.errors - self._errors_reported
        self._errors_reported = self.cache.stats.errors
        dimensions = [Dimension("ModelName", self.meta.name)]
        for name, value in (
            ("CacheHits", hits),
            ("CacheMisses", computed),
            ("CacheErrors", new_errors),
        ):
            if value:
                metrics.add_counter(name, value, None, dimensions)

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
