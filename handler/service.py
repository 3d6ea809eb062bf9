"""TorchServe glue: load once per worker, then turn each batch of requests into answers.

A batch goes: extract -> cache lookup -> prepare (header checks, decode, resize; see
handler/preparation.py) -> model -> explain -> answer, with prepare of the next micro-batch
overlapping the model call on this one where the worker splits batches (handler/overlap.py).

Isolation is a mechanism here, not a list of caught exceptions:
- every per-item stage runs under items.guarded, which turns any exception into that item's
  error: its own 4xx where the request caused it, 507 when memory ran out, 500 for a fault of
  the server's, logged with the item's index, never raised;
- the model call, the one place a failure touches several items, is retried in halves when it
  fails (within 1 + 2 log2(n) calls), so a poison item or a batch too big for the device costs
  only the items that cannot run.
Each item's status and JSON body go back through context.set_response_status.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from handler.allocator import keep_freed_memory
from handler.backends import Backend, load_backend, select_device
from handler.cache import RedisCache, image_key, model_identity
from handler.config import HandlerConfig, live_workers_on_host
from handler.cuda_graphs import with_cuda_graphs
from handler.errors import OIP, PayloadTooLarge, ServerError
from handler.explain import explain_crop, resolve_target
from handler.inputs import extract_image
from handler.items import Item, guarded, server_error
from handler.overlap import Overlap, split
from handler.postprocess import answer, oip_answer, probabilities
from handler.preparation import Preparer
from handler.stage_metrics import StageClock
from modelspec.imaging import Normalizer
from modelspec.meta import META_FILENAME, ModelMeta

log = logging.getLogger(__name__)
JSON_CONTENT_TYPE = "application/json"
CACHE_URL_ENV = "GAMEART_CACHE_URL"
# TorchServe's worker parses JSON and text bodies before the handler sees them, unbounded; with
# this off they arrive as bytes and handler/inputs.py bounds them before parsing. The worker
# reads it per request, so setting it when the handler loads is enough.
WORKER_DECODING_ENV = "TS_DECODE_INPUT_REQUEST"


class ImageClassifierService:
    def __init__(self) -> None:
        self.initialized = False
        self.config = HandlerConfig()
        self.meta: ModelMeta | None = None
        self.backend: Backend | None = None
        self.normalizer: Normalizer | None = None
        self.preparer: Preparer | None = None
        self.overlap: Overlap | None = None
        self.chunks = 1  # micro-batches per batch
        self.cache: RedisCache | None = None
        self.model_key = ""
        self.served_name = ""  # the name clients use; set by initialize
        self.model_version = ""
        self._errors_reported = 0

    # ---- load ------------------------------------------------------------------------------
    def initialize(self, context: Any) -> None:
        os.environ[WORKER_DECODING_ENV] = "false"
        props = context.system_properties
        model_dir = Path(props["model_dir"])
        yaml_config = context.model_yaml_config or {}
        self.config = HandlerConfig.from_yaml(yaml_config.get("handler"))
        if self.config.keep_freed_memory:
            keep_freed_memory()
        self.meta = ModelMeta.load(model_dir)
        # metrics carry the name clients use, which may differ from the export's name
        self.served_name = getattr(context, "model_name", None) or self.meta.name
        self.model_version = str(context.manifest["model"].get("modelVersion", ""))
        model_file = model_dir / context.manifest["model"]["serializedFile"]
        workers = max(int(yaml_config.get("maxWorkers", 1)), live_workers_on_host())
        threads = self.config.resolved_threads(workers)
        device = select_device(props.get("gpu_id"))
        self.load(model_file, device, threads)
        batch_size = int(props.get("batch_size") or 1)
        if self.config.cuda_graphs:
            size = self.meta.preprocess.input_size
            self.backend = with_cuda_graphs(self.backend, batch_size, size)
        self.connect_cache(model_file, context)
        if self.config.warmup:
            self.warm_up(batch_size)
        self.initialized = True
        log.info(
            "loaded %s: %s/%s on %s, %d threads, %d classes, JPEG decode on %s",
            self.meta.name,
            self.backend.name,
            self.config.precision,
            self.backend.device,
            threads,
            self.meta.num_classes,
            "the model's device (batched)" if self.preparer.jpeg_decoder else "the CPU",
        )

    def load(self, model_file: Path, device: torch.device, threads: int) -> None:
        """Load the model and per-worker helpers (also used by tests and the benchmark)."""
        self.backend = load_backend(
            model_file, self.config.backend, device, self.config.precision, threads
        )
        self.normalizer = Normalizer(
            self.meta.preprocess, self.backend.device, self.backend.input_dtype
        )
        device = self.backend.device
        decode_threads = self.config.decode_threads or threads
        self.preparer = Preparer(self.meta.preprocess, self.config, device, decode_threads)
        self.overlap = Overlap(device)
        self.chunks = self.config.resolved_overlap_chunks(device)

    @property
    def metric_name(self) -> str:
        """ModelName in metrics: the name clients use (a service built by load() alone, as in
        tests and the benchmark, has only the export's)."""
        return self.served_name or self.meta.name

    def connect_cache(self, model_file: Path, context: Any) -> None:
        """Use Redis when a URL is configured (cache_url, or GAMEART_CACHE_URL in the env)."""
        url = self.config.cache_url or os.environ.get(CACHE_URL_ENV, "")
        if not url:
            return
        name = getattr(context, "model_name", None) or self.meta.name
        version = str(context.manifest["model"].get("modelVersion", ""))
        meta_file = model_file.parent / META_FILENAME
        self.model_key = model_identity(
            name,
            version,
            model_file.read_bytes(),
            meta_file.read_bytes(),
            self.config.answer_settings(),
        )
        self.cache = RedisCache(url, self.config.cache_ttl_s, self.config.cache_timeout_ms)
        log.info("answers cached in Redis for %ds (model key %s)", self.cache.ttl_s, self.model_key)

    def warm_up(self, batch_size: int) -> None:
        """Run the sizes TorchServe will send, so the first real request is not the slow one."""
        size = self.meta.preprocess.input_size
        blank = torch.full((3, size, size), 128, dtype=torch.uint8)
        batch_size = max(1, batch_size)
        micro_batch = math.ceil(batch_size / self.chunks)  # what the model sees when split
        for n in sorted({1, micro_batch, batch_size}):
            for _ in range(2):  # TorchScript's profiling executor specialises on the 2nd call
                self.backend(self.normalizer([blank] * n))

    # ---- per batch -------------------------------------------------------------------------
    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        clock = StageClock()
        items = [
            Item(
                index=i,
                content_type=_header(context, i, "content-type"),
                explain=_header(context, i, "explain") == "True",  # TorchServe's /explanations
            )
            for i in range(len(data))
        ]
        with clock.stage("extract"):
            for item, request in zip(items, data, strict=True):
                guarded(item, "extract", functools.partial(self.extract, request=request))
        with clock.stage("cache"):
            hits = self.lookup(items)
        computed: list[Item] = []

        def run_model(chunk: list[Item]) -> None:
            with clock.stage("model"):
                ready = [item for item in chunk if item.needs_model and item.crop is not None]
                computed.extend(self.infer(ready))

        self.overlap.run(
            split(self._waiting(items), self.chunks),
            functools.partial(self.prepare, clock=clock),
            run_model,
            clock,
        )
        explained = [item for item in items if item.explain and item.error is None]
        if explained:
            # one time limit for the batch's explanations: the predictions batched with them wait
            deadline = time.monotonic() + self.config.explain_timeout_s
            with clock.stage("explain"):
                for item in explained:
                    work = functools.partial(self.explain, deadline=deadline)
                    guarded(item, "explain", work)
        with clock.stage("answer"):
            answers = [self.answer(item, context) for item in items]
        try:  # bookkeeping: its failure must not cost the answers already made
            self.store(computed)
            self._emit_cache_metrics(context, hits, sum(bool(i.cache_key) for i in computed))
            clock.emit(context, self.metric_name)
        except Exception:
            log.exception("storing answers in the cache or reporting metrics failed")
        rejected = sum(item.error is not None for item in items)
        log.info(
            "batch size=%d ok=%d rejected=%d cached=%d in %.1f ms (%s)",
            len(items),
            len(items) - rejected,
            rejected,
            hits,
            clock.total_ms(),
            clock.describe(),
        )
        return answers

    @staticmethod
    def _waiting(items: list[Item]) -> list[Item]:
        return [item for item in items if item.needs_model]

    def extract(self, item: Item, request: dict[str, Any]) -> None:
        """The image bytes and options of one request."""
        item.image, options = extract_image(request, self.config.max_image_bytes, item.content_type)
        item.top_k = options.top_k or self.config.top_k
        item.protocol, item.request_id = options.protocol, options.request_id
        item.target = options.target
        if item.explain and len(item.image) > self.config.explain_max_bytes:
            raise PayloadTooLarge(
                f"image is {len(item.image)} bytes, over the {self.config.explain_max_bytes} byte "
                "limit for explanations"
            )

    def lookup(self, items: list[Item]) -> int:
        """Answer what the cache already knows; returns how many it did."""
        if self.cache is None:
            return 0
        # an explanation needs the decoded crop, which a cached answer does not have
        wanted = [item for item in items if item.error is None and not item.explain]
        for item in wanted:
            item.cache_key = image_key(self.model_key, item.image)
        found = self.cache.get_many([item.cache_key for item in wanted], self.meta.num_classes)
        for item, cached in zip(wanted, found, strict=True):
            if cached is not None:
                item.probabilities, item.from_cache = cached, True
        return sum(item.from_cache for item in wanted)

    def prepare(self, chunk: list[Item], clock: StageClock) -> list[torch.Tensor]:
        """Crops for one micro-batch; returns those made on the GPU, for the overlap to hand
        over between CUDA streams. Per-item faults are already each item's own; a fault of
        the preparer's own code fails the items of this micro-batch still without a crop."""
        try:
            self.preparer(chunk, clock=clock)
        except Exception as exc:
            failure = server_error(exc, f"preparing {len(chunk)} item(s)")
            for item in chunk:
                if item.error is None and item.crop is None:
                    item.error = failure
        return [item.crop for item in chunk if item.crop is not None and item.crop.is_cuda]

    def infer(self, items: list[Item]) -> list[Item]:
        """Run the model for the batch; on failure, in halves, so only failing items fail."""
        if not items:
            return []
        budget = [1 + 2 * math.ceil(math.log2(len(items)))]
        self._run_model(items, budget)
        return [item for item in items if item.probabilities is not None]

    def _run_model(self, items: list[Item], budget: list[int]) -> None:
        if budget[0] <= 0:
            for item in items:
                item.error = ServerError("the model call failed for this batch; see the model log")
            return
        budget[0] -= 1
        try:
            logits = self.backend(self.normalizer([item.crop for item in items]))
            rows = probabilities(logits, self.meta.num_classes)
        except Exception as exc:
            if len(items) == 1 or budget[0] < 2:
                failure = server_error(exc, f"model call on {len(items)} item(s)", model=True)
                for item in items:
                    item.error = failure
                return
            log.warning("model call failed on %d items (%s); retrying in halves", len(items), exc)
            half = len(items) // 2
            self._run_model(items[:half], budget)
            self._run_model(items[half:], budget)
            return
        for item, row in zip(items, rows, strict=True):
            item.probabilities = row

    def explain(self, item: Item, deadline: float) -> None:
        item.explanation = explain_crop(
            self.backend,
            self.normalizer,
            item.crop,
            resolve_target(item.target, self.meta.class_names, item.probabilities),
            self.meta,
            self.config,
            deadline,
        )

    def build_answer(self, item: Item) -> None:
        item.body = answer(item.probabilities, self.meta.class_names, item.top_k)
        if item.explanation is not None:
            item.body["explanation"] = item.explanation
        if item.protocol == OIP:
            name, version = self.served_name or self.meta.name, self.model_version
            item.body = oip_answer(item.body, name, version, item.request_id)

    def answer(self, item: Item, context: Any) -> str:
        """The item's JSON answer or error; its status and content type on the context."""
        if item.error is None:
            guarded(item, "answer", self.build_answer)
        if item.error is not None:
            context.set_response_status(item.error.status, item.error.reason_phrase, item.index)
            if item.protocol == OIP and item.error.protocol != OIP:
                # a later stage's error, in the request's format; a copy, as one error may be
                # shared by every item of a failed batch
                item.error = copy.copy(item.error)
                item.error.protocol = OIP
            body = item.error.body()
        else:
            body = item.body
        context.set_response_content_type(item.index, JSON_CONTENT_TYPE)
        return json.dumps(body, separators=(",", ":"))

    def store(self, items: list[Item]) -> None:
        keyed = {item.cache_key: item.probabilities for item in items if item.cache_key}
        if self.cache is not None and keyed:  # explanations skip the cache: no key
            self.cache.set_many(keyed)

    def _emit_cache_metrics(self, context: Any, hits: int, computed: int) -> None:
        """Counters CacheHits/CacheMisses/CacheErrors for Prometheus (declared in metrics.yaml)."""
        metrics = getattr(context, "metrics", None)
        if self.cache is None or metrics is None:
            return
        from ts.metrics.dimension import Dimension

        new_errors = self.cache.stats.errors - self._errors_reported
        self._errors_reported = self.cache.stats.errors
        dimensions = [Dimension("ModelName", self.metric_name)]
        for name, value in (
            ("CacheHits", hits),
            ("CacheMisses", computed),
            ("CacheErrors", new_errors),
        ):
            if value:
                metrics.add_counter(name, value, None, dimensions)


def _header(context: Any, index: int, name: str) -> str:
    """One request header, whatever case the client wrote it in ("" when absent)."""
    try:
        headers = context.get_all_request_header(index) or {}
    except Exception:  # a context without the request's headers: judge the bytes alone
        return ""
    value = next((v for k, v in headers.items() if str(k).lower() == name), "")
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)
