"""The Redis answer cache against a real redis-server: hits skip the model, failures fail open."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from gameart.ops.ports import free_ports
from handler.cache import RedisCache, image_key, model_identity
from handler.service import ImageClassifierService
from tests.components import require
from tests.helpers import FakeContext, real_images, requests_for, statuses

IMAGES = [p.read_bytes() for p in real_images()[:3]]
# The cache's timeout is 50 ms (cache_timeout_ms); what a lookup may cost when Redis is down,
# paused or busy, with room for a loaded 2-core machine's scheduling.
FAIL_OPEN_BOUND_S = 0.25


class RedisServer:
    """A real redis-server on a free loopback port, no persistence."""

    def __init__(self, tmp_path):
        self.programs = require("redis-server", "redis-cli")
        (self.port,) = free_ports(1)
        self.process = subprocess.Popen(
            [
                self.programs["redis-server"],
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
                "--enable-debug-command",
                "local",  # DEBUG SLEEP simulates a stalled Redis
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [self.programs["redis-cli"], "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    if server.process.poll() is None:
        server.stop()


class CountingBackend:
    """Wraps the real backend and counts the images it is asked to run."""

    def __init__(self, backend):
        self.backend, self.images = backend, 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def __call__(self, batch):
        self.images += batch.shape[0]
        return self.backend(batch)


def cached_service(exported, url: str, **settings):
    context = FakeContext(
        exported.out_dir,
        "model.onnx",
        {"handler": {"backend": "onnx", "cache_url": url, "cache_timeout_ms": 50, **settings}},
    )
    service = ImageClassifierService()
    service.initialize(context)
    service.backend = CountingBackend(service.backend)
    return service, context


def test_second_request_is_served_from_the_cache(exported_small, redis):
    service, context = cached_service(exported_small, redis.url)
    first = service.handle(requests_for(IMAGES), context)
    assert service.backend.images == 3
    second = service.handle(requests_for(IMAGES), context)
    assert service.backend.images == 3  # nothing reached the model the second time
    assert first == second
    assert (service.cache.stats.hits, service.cache.stats.misses) == (3, 3)
    keys = redis.cli("--scan", "--pattern", "gameart:*").split()
    assert len(keys) == 3
    assert 0 < int(redis.cli("TTL", keys[0])) <= 86_400


def test_cached_answers_honour_each_requests_top_k(exported_small, redis):
    service, context = cached_service(exported_small, redis.url)
    service.handle(requests_for(IMAGES[:1]), context)
    answers = service.handle([{"data": bytearray(IMAGES[0]), "top_k": b"2"}], context)
    assert len(json.loads(answers[0])["top_k"]) == 2 and service.backend.images == 1


def test_a_mixed_batch_runs_only_the_misses(exported_small, redis):
    service, context = cached_service(exported_small, redis.url)
    service.handle(requests_for(IMAGES[:2]), context)
    batch = [IMAGES[0], b"not an image", IMAGES[2], IMAGES[1]]
    answers = [json.loads(a) for a in service.handle(requests_for(batch), context)]
    assert statuses(context, 4) == [200, 400, 200, 200]
    assert service.backend.images == 3  # 2 earlier + only IMAGES[2] now
    assert answers[1]["type"] == "NotAnImage"


def test_keys_change_with_the_model():
    image = IMAGES[0]
    a = model_identity("m", "1.0", b"weights", b"meta")
    assert image_key(a, image) != image_key(model_identity("m", "1.0", b"weights2", b"meta"), image)
    assert image_key(a, image) != image_key(model_identity("m", "2.0", b"weights", b"meta"), image)
    assert image_key(a, image) == image_key(model_identity("m", "1.0", b"weights", b"meta"), image)


def timed_lookup(service, images: list[bytes]) -> tuple[list, float]:
    """The cache's part of a batch: one lookup of these images' keys, and its seconds."""
    keys = [image_key(service.model_key, image) for image in images]
    started = time.monotonic()
    found = service.cache.get_many(keys, service.meta.num_classes)
    return found, time.monotonic() - started


def test_redis_down_fails_open_quickly(exported_small, redis):
    service, context = cached_service(exported_small, redis.url)
    redis.stop()
    found, elapsed = timed_lookup(service, IMAGES)
    assert found == [None] * 3 and service.cache.stats.errors == 1
    assert elapsed < FAIL_OPEN_BOUND_S  # a refused connection: no wait at all
    answers = service.handle(requests_for(IMAGES), context)
    assert statuses(context, 3) == [200, 200, 200]
    assert all("label" in json.loads(a) for a in answers)
    assert service.cache.stats.bypassed == 3  # within the retry window it is not even tried
    assert service.backend.images == 3


def test_paused_redis_fails_open_within_the_timeout(exported_small, redis):
    """SIGSTOP: Redis accepts the connection and never answers. The lookup gives up after the
    50 ms timeout, answers keep coming, and the cache is used again once Redis is back."""
    service, context = cached_service(exported_small, redis.url)
    service.handle(requests_for(IMAGES[:1]), context)  # connected, one answer stored
    service.cache.retry_after_s = 0.5
    os.kill(redis.process.pid, signal.SIGSTOP)
    try:
        found, elapsed = timed_lookup(service, IMAGES)
        assert found == [None] * 3 and service.cache.stats.errors == 1
        assert 0.045 <= elapsed < FAIL_OPEN_BOUND_S, elapsed  # it waited out 50 ms, no more
        service.handle(requests_for(IMAGES), context)
        assert statuses(context, 3) == [200, 200, 200]
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)
    time.sleep(0.6)  # past the retry window
    found, _ = timed_lookup(service, IMAGES[:1])
    assert found[0] is not None  # the answer stored before the pause is served again


def test_slow_redis_fails_open_within_the_timeout(exported_small, redis):
    service, context = cached_service(exported_small, redis.url)
    blocker = subprocess.Popen(
        [redis.programs["redis-cli"], "-p", str(redis.port), "DEBUG", "SLEEP", "2"]
    )
    time.sleep(0.2)  # redis is now busy for two seconds
    found, elapsed = timed_lookup(service, IMAGES[:1])
    service.handle(requests_for(IMAGES[:1]), context)
    blocker.wait(10)
    assert found == [None] and service.cache.stats.errors == 1
    assert elapsed < FAIL_OPEN_BOUND_S  # a 50 ms timeout, not the 2 s Redis took
    assert statuses(context, 1) == [200]


def test_unreachable_url_is_not_fatal_at_load(exported_small):
    (port,) = free_ports(1)  # nothing listens there
    service, context = cached_service(exported_small, f"redis://127.0.0.1:{port}/0")
    service.handle(requests_for(IMAGES[:1]), context)
    assert statuses(context, 1) == [200] and service.cache.stats.errors == 1


def test_cache_unit_without_server():
    (port,) = free_ports(1)
    cache = RedisCache(f"redis://127.0.0.1:{port}/0", ttl_s=60, timeout_ms=20, retry_after_s=60)
    assert cache.get_many(["a", "b"], 4) == [None, None]
    assert cache.stats.errors == 1
    assert cache.get_many(["a"], 4) == [None] and cache.stats.bypassed == 1
    cache.set_many({"a": [1.0]})  # silently skipped while down
