"""A Redis cache of class probabilities, keyed by the model's identity and the image's SHA-256.

Identical uploads (the same cover art sent by many users) skip decoding and the model. The cache
fails open: if Redis is down or slow, requests are served as if there were no cache. After a
failure the cache stays bypassed for `retry_after_s`, so a dead Redis costs one short timeout
per window, not one per batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


def image_key(model_key: str, image: bytes) -> str:
    return f"gameart:{model_key}:{hashlib.sha256(image).hexdigest()}"


def model_identity(name: str, version: str, *parts: bytes) -> str:
    """Changes whenever the weights, the metadata or the answer-changing handler settings do, so
    a new export or a tightened limit never reads old answers."""
    digest = hashlib.sha256()
    for part in (name.encode(), version.encode(), *parts):
        digest.update(hashlib.sha256(part).digest())
    return f"{name}:{version}:{digest.hexdigest()[:16]}"


def valid_probabilities(row: object, num_classes: int) -> bool:
    """Exactly num_classes finite floats in [0, 1] summing to 1 (within float rounding)."""
    if not isinstance(row, list) or len(row) != num_classes:
        return False
    if not all(type(p) in (float, int) and math.isfinite(p) and 0 <= p <= 1 for p in row):
        return False
    return abs(sum(row) - 1.0) < 1e-3


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    bypassed: int = 0  # lookups skipped while the cache was considered down
    invalid: int = 0  # entries that were not probabilities for this model: misses


class RedisCache:
    def __init__(self, url: str, ttl_s: int, timeout_ms: int, retry_after_s: float = 5.0):
        import redis

        self._errors = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_ms / 1000,
            socket_connect_timeout=timeout_ms / 1000,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self.down_until = 0.0
        self.stats = CacheStats()

    def _available(self, count: int) -> bool:
        if time.monotonic() < self.down_until:
            self.stats.bypassed += count
            return False
        return True

    def _failed(self, action: str, exc: Exception) -> None:
        self.stats.errors += 1
        self.down_until = time.monotonic() + self.retry_after_s
        log.warning("cache %s failed (%s); serving without it for %.0fs", action, exc,
                    self.retry_after_s)  # fmt: skip

    def get_many(self, keys: Sequence[str], num_classes: int) -> list[list[float] | None]:
        """Cached probabilities per key; None for a miss, an entry that is not num_classes
        probabilities, or when the cache is unavailable. Cache contents are data, not trust."""
        if not keys or not self._available(len(keys)):
            return [None] * len(keys)
        try:
            values = self.client.mget(list(keys))
        except self._errors as exc:
            self._failed("lookup", exc)
            return [None] * len(keys)
        found = [self._parse(v, num_classes) if v is not None else None for v in values]
        hits = sum(v is not None for v in found)
        self.stats.hits += hits
        self.stats.misses += len(keys) - hits
        return found

    def _parse(self, value: bytes, num_classes: int) -> list[float] | None:
        try:
            row = json.loads(value)
        except (ValueError, UnicodeDecodeError, RecursionError):
            row = None
        if valid_probabilities(row, num_classes):
            return row
        self.stats.invalid += 1
        return None

    def set_many(self, entries: dict[str, list[float]]) -> None:
        if not entries or time.monotonic() < self.down_until:
            return
        try:
            pipeline = self.client.pipeline(transaction=False)
            for key, probabilities in entries.items():
                pipeline.set(key, json.dumps(probabilities, separators=(",", ":")), ex=self.ttl_s)
            pipeline.execute()
        except self._errors as exc:
            self._failed("store", exc)
