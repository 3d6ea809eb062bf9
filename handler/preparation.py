"""Uploads -> uint8 crops ready to batch, for a batch or a micro-batch of items.

Headers are checked on the CPU first for every item (inspect_image: format, structure, pixel
count, aspect ratio), so a bomb reaches no decoder. Where the worker has a batch decoder
(handler/gpu_decode.py, nvJPEG on a GPU), the plain JPEGs go to it in one call; the rest,
and whatever it could not decode, are decoded by Pillow, per item, on a pool of threads.
Every per-item step runs under items.guarded: one bad upload fails alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from handler.config import HandlerConfig
from handler.decode import decode_inspected, inspect_image
from handler.gpu_decode import BatchJpegDecoder, decode_eligibility, serves_model
from handler.items import Item, guarded
from handler.stage_metrics import StageClock
from modelspec.imaging import resize_crop
from modelspec.meta import PreprocessSpec

log = logging.getLogger(__name__)


class Preparer:
    def __init__(
        self,
        spec: PreprocessSpec,
        config: HandlerConfig,
        device: torch.device,
        decode_threads: int,
    ):
        self.spec = spec
        self.config = config
        self.device = device
        self.pool = ThreadPoolExecutor(decode_threads) if decode_threads > 1 else None
        self.jpeg_decoder: Callable[[list[bytes]], list[torch.Tensor | None]] | None = None
        if config.batch_jpeg_decode(device):
            if serves_model(spec):
                self.jpeg_decoder = BatchJpegDecoder(spec, device)
            else:
                log.info("JPEGs decode on the CPU: this model's decode policy is the exact path")

    def __call__(self, items: list[Item], clock: StageClock) -> None:
        """Give each item without an error its crop."""
        if self.jpeg_decoder is not None:
            with clock.stage("inspect"):
                for item in items:
                    guarded(item, "inspect", self.route)
            batch = [item for item in items if item.error is None and item.to_jpeg_decoder]
            if batch:
                with clock.stage("gpu_decode", self.device):
                    crops = self._batch_decode([item.image for item in batch])
                for item, crop in zip(batch, crops, strict=True):
                    item.crop = crop
        rest = [item for item in items if item.error is None and item.crop is None]
        if rest:
            with clock.stage("decode"):
                self._map(lambda it: guarded(it, "decode", self.decode), rest)

    def inspect(self, item: Item) -> None:
        """The header checks (inspect_image) under this worker's limits, once per item."""
        if item.inspected is None:
            item.inspected = inspect_image(
                item.image,
                max_pixels=self.config.max_image_pixels,
                max_aspect_ratio=self.config.max_aspect_ratio,
            )

    def route(self, item: Item) -> None:
        """Header checks, then whether the batch decoder takes this upload."""
        self.inspect(item)
        item.to_jpeg_decoder = not decode_eligibility(item.inspected, item.image, self.spec)

    def _batch_decode(self, uploads: list[bytes]) -> list[torch.Tensor | None]:
        try:
            return self.jpeg_decoder(uploads)
        except Exception:  # e.g. out of GPU memory: every item still has the CPU decoder
            log.exception("batch JPEG decode of %d items failed; decoding on the CPU", len(uploads))
            return [None] * len(uploads)

    def decode(self, item: Item) -> None:
        """Bytes -> a uint8 crop ready to batch, on the CPU."""
        self.inspect(item)
        image = decode_inspected(
            item.inspected,
            policy=self.spec.decode,
            draft_min_size=self.spec.draft_size(self.config.jpeg_draft_oversample),
        )
        item.inspected = None  # the decoded pixels are in the crop now; free the parser
        item.crop = resize_crop(image, self.spec)

    def _map(self, function: Callable[[Any], Any], items: list) -> list:
        if self.pool is None or len(items) < 2:
            return [function(item) for item in items]
        return list(self.pool.map(function, items))
