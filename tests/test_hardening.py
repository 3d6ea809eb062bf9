"""Production hardening against a running TorchServe: security settings, faults, soak, fuzzing,
the nginx front and the cache counters. Servers are started here, on loopback, bounded in time."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gameart.cli import nginx_front, serve
from gameart.measure import loadgen
from gameart.measure.uploads import upload_mix
from gameart.ops.client import prometheus_value
from gameart.ops.ports import free_ports
from handler.decode import decode_image
from handler.errors import RequestError
from modelspec.meta import PROJECT_POLICY, TORCHVISION_POLICY
from tests import torchserve
from tests.components import require
from tests.helpers import (
    assert_answers_match,
    encode,
    gradient_rgb,
    real_images,
    reference_probabilities,
)

pytestmark = pytest.mark.integration
GOOD = upload_mix()[0].body
BATCH = 4
REPLACEMENT_BOUND_S = 60
SOAK_GROWTH_BOUND_MIB = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory, exported_small):
    root = tmp_path_factory.mktemp("hardened")
    store = root / "store"
    torchserve.archive(
        exported_small.out_dir,
        store,
        "small",
        "onnx",
        batch_size=BATCH,
        max_batch_delay_ms=5,
        min_workers=2,
        max_workers=2,
    )
    running = torchserve.start(root / "run", store)
    yield running
    running.stop()


def test_answers_on_the_project_policy_equal_the_eager_model(server, exported_small):
    """The small model is served on the project decode policy (alpha over white, EXIF
    applied): every parity image, sent at once, gets its own reference answer."""
    images = [p.read_bytes() for p in real_images()]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda data: server.client.predict("small", data), images))
    assert [r.status_code for r in responses] == [200] * len(images)
    expected = reference_probabilities(exported_small.model, images, exported_small.meta.preprocess)
    assert_answers_match([r.json() for r in responses], expected, exported_small.meta.class_names)


# ---- security ------------------------------------------------------------------------------
def test_every_listener_is_on_loopback(server):
    sockets = [
        c
        for c in psutil.Process(server.pid).net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    ]
    assert len(sockets) >= 5  # inference, management, metrics, 2x gRPC
    assert {c.laddr.ip for c in sockets} <= {"127.0.0.1", "::ffff:127.0.0.1"}


def test_key_file_is_private_and_keys_last_a_day(server):
    key_file = server.run_dir / "key_file.json"
    assert server.run_dir.stat().st_mode & 0o777 == 0o700  # nobody but the server's user gets in
    assert key_file.stat().st_mode & 0o777 == 0o600
    keys = json.loads(key_file.read_text())
    assert {"management", "inference", "API"} <= set(keys)
    config = (server.run_dir / "config.properties").read_text()
    assert "token_expiration_min=1440" in config.splitlines()


def test_every_api_refuses_a_missing_or_wrong_token(server):
    endpoints = server.client.endpoints
    for url in (
        f"{endpoints.inference}/predictions/small",
        f"{endpoints.inference}/ping",
        f"{endpoints.management}/models",
        f"{endpoints.management}/models/small",
    ):
        for headers in ({}, {"Authorization": "Bearer not-the-key"}):
            response = requests.get(url, headers=headers, timeout=10)
            assert response.status_code in (400, 401), (url, headers)
            assert "Token Authorization failed" in response.text


def test_token_rotation(server):
    old = server.client.headers("inference")
    assert serve.main(["--run-dir", str(server.run_dir), "rotate-token", "inference"]) == 0
    url = f"{server.client.endpoints.inference}/predictions/small"
    stale = requests.post(url, data=GOOD, headers=old, timeout=30)
    assert stale.status_code in (400, 401)  # the old key is dead at once
    fresh = server.client.predict("small", GOOD)  # the client re-reads the key file
    assert fresh.status_code == 200


def test_remote_and_outside_urls_cannot_be_registered(tmp_path, exported_small):
    """With the model API switched on (not the shipped default), allowed_urls still keeps
    registration to archives in the local model store: no SSRF, no arbitrary local files."""
    store = tmp_path / "store"
    torchserve.archive(exported_small.out_dir, store, "small", "onnx")
    outside = tmp_path / "elsewhere"
    torchserve.archive(exported_small.out_dir, outside, "evil", "onnx")
    (decoy,) = free_ports(1)
    running = torchserve.start(tmp_path / "run", store, "enable_model_api=true")
    try:
        for url in (
            f"http://127.0.0.1:{decoy}/evil.mar",
            "https://example.com/evil.mar",
            f"file://{outside / 'evil.mar'}",
        ):
            response = running.client.request(
                "management", "POST", "/models", params={"url": url}, timeout=60
            )
            assert response.status_code in (400, 404, 500), (url, response.text)
            assert "evil" not in running.client.models()
    finally:
        running.stop()


# ---- faults --------------------------------------------------------------------------------
def test_killing_a_worker_under_load_costs_only_its_requests(server):
    """SIGKILL one of two workers under 8 clients: only the batch it held fails; the others are
    answered 200; TorchServe puts a fresh READY worker in its place within 60 s.

    The failed requests get TorchServe's "Worker died." with 507 when its frontend has already
    read the exit code 137 of the killed process (it takes that for the kernel's OOM killer), or
    with 500 when it noticed the broken connection first: a race inside TorchServe
    (WorkerThread.run), seen both ways here."""
    client = server.client
    target = loadgen.Target(
        f"{client.endpoints.inference}/predictions/small", client.headers("inference")
    )
    results = {}

    def load():
        results["step"] = loadgen.run(
            loadgen.closed_loop(target, upload_mix()[:2], 8, duration=12, max_requests=5000)
        )

    thread = threading.Thread(target=load)
    thread.start()
    time.sleep(4)
    victim = client.describe("small")["workers"][0]["pid"]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    replaced = None
    while time.monotonic() < killed + REPLACEMENT_BOUND_S:
        workers = client.describe("small")["workers"]
        pids = {w["pid"] for w in workers}
        if (
            len(workers) == 2
            and victim not in pids
            and all(w["status"] == "READY" for w in workers)
        ):
            replaced = time.monotonic() - killed
            break
        time.sleep(0.5)
    thread.join(60)
    step = results["step"]
    failed = {status: n for status, n in step.statuses.items() if status != "200"}
    print(
        f"\nworker kill under load: {step.requests} requests, {dict(step.statuses)}; "
        f"fresh worker READY {replaced}s after the kill"
    )
    assert step.statuses["200"] > 50
    assert set(failed) <= {"500", "507"}, step.statuses  # "Worker died.", nothing else
    assert sum(failed.values()) <= BATCH, step.statuses  # at most the batch it was running
    assert replaced is not None, f"no fresh READY worker within {REPLACEMENT_BOUND_S}s"
    assert client.predict("small", GOOD).status_code == 200


def test_soak_memory_stays_flat(server):
    """2 000 requests, one in five malformed: each answered as its kind says (1 600 x 200,
    300 x 400, 100 x 415, nothing else), and the workers' resident memory grows by less than
    SOAK_GROWTH_BOUND_MIB: 4 KiB a request, where leaking one decoded image per request would
    cost 300 MiB and leaking its upload 100 MiB."""
    client = server.client
    target = loadgen.Target(
        f"{client.endpoints.inference}/predictions/small", client.headers("inference")
    )
    from gameart.measure.loadtest import mixed

    uploads = mixed(upload_mix(), 0.2)
    loadgen.run(loadgen.closed_loop(target, uploads, 8, duration=120, max_requests=300))
    pids = [w["pid"] for w in client.describe("small")["workers"]]
    before = sum(psutil.Process(p).memory_info().rss for p in pids)
    step = loadgen.run(loadgen.closed_loop(target, uploads, 8, duration=400, max_requests=2000))
    after = sum(psutil.Process(p).memory_info().rss for p in pids)
    growth_mib = (after - before) / 2**20
    print(
        f"\nsoak: {step.requests} requests in {step.duration_s:.0f}s, {dict(step.statuses)}, "
        f"worker RSS {before / 2**20:.0f} -> {after / 2**20:.0f} MiB ({growth_mib:+.1f})"
    )
    assert dict(step.statuses) == {"200": 1600, "400": 300, "415": 100}
    assert {w["pid"] for w in client.describe("small")["workers"]} == set(pids)  # none died
    assert growth_mib < SOAK_GROWTH_BOUND_MIB


# ---- fuzzing -------------------------------------------------------------------------------
def _seeds() -> list[bytes]:
    card = gradient_rgb(64, 48)
    return [
        encode(card, "PNG"),
        encode(card, "JPEG"),
        encode(card, "GIF"),
        encode(card, "WEBP"),
        encode(card, "BMP"),
        real_images()[0].read_bytes()[:4096],
    ]


SEEDS = _seeds()


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A valid image with bytes flipped, cut, spliced, repeated or zeroed: a fuzzer's input."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        position = rng.randrange(max(1, len(out)))
        operation = rng.choice(["flip", "cut", "insert", "repeat", "zero"])
        if operation == "flip" and out:
            out[position] ^= rng.randint(1, 255)
        elif operation == "cut":
            del out[position:]
        elif operation == "insert":
            out[position:position] = rng.randbytes(rng.randint(1, 64))
        elif operation == "repeat":
            out[position:position] = out[position : position + 64] * rng.randint(1, 8)
        else:
            out[position : position + 8] = bytes(8)
    return bytes(out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    rng=st.randoms(use_true_random=False),
    policy=st.sampled_from([PROJECT_POLICY, TORCHVISION_POLICY]),
)
def test_fuzz_decode_only_raises_request_errors(seed, rng, policy):
    data = mutate(seed, rng)
    try:
        image = decode_image(data, max_pixels=4_000_000, policy=policy, draft_min_size=64)
    except RequestError as error:
        assert 400 <= error.status < 500
    else:
        assert image.mode == "RGB" and min(image.size) >= 1


def test_fuzz_the_live_endpoint(server):
    """Fuzzed payloads through HTTP: every answer a 200 or a 4xx with a JSON error, and the
    workers are the same processes afterwards."""
    pids = {w["pid"] for w in server.client.describe("small")["workers"]}
    rng = random.Random(20261122)
    seen = set()
    for _ in range(150):
        response = server.client.predict("small", mutate(rng.choice(SEEDS), rng))
        seen.add(response.status_code)
        assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
        if response.status_code != 200:
            assert {"code", "type", "message"} <= set(response.json())
    assert 400 in seen
    assert {w["pid"] for w in server.client.describe("small")["workers"]} == pids


# ---- nginx in front ------------------------------------------------------------------------
def test_nginx_rate_limits_and_proxies_only_inference(server, tmp_path):
    require("nginx")
    (port,) = free_ports(1)
    prefix = tmp_path / "nginx"
    upstream = server.client.endpoints.inference_host_port
    assert (
        nginx_front.main(
            [
                "--prefix",
                str(prefix),
                "start",
                "--listen",
                f"127.0.0.1:{port}",
                "--upstream",
                upstream,
                "--rate",
                "4",
                "--burst",
                "4",
            ]
        )
        == 0
    )
    try:
        front = f"http://127.0.0.1:{port}"
        headers = server.client.headers("inference")
        codes = []

        def send():
            codes.append(
                requests.post(
                    f"{front}/predictions/small", data=GOOD, headers=headers, timeout=60
                ).status_code
            )

        threads = [threading.Thread(target=send) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert codes.count(200) >= 4 and codes.count(429) >= 8, codes
        assert set(codes) <= {200, 429}
        served_again = False  # the bucket refills (4 a second): served again
        deadline = time.monotonic() + 10
        while not served_again and time.monotonic() < deadline:
            time.sleep(0.5)
            served_again = (
                requests.post(
                    f"{front}/predictions/small", data=GOOD, headers=headers, timeout=60
                ).status_code
                == 200
            )
        assert served_again
        for path in ("/models", "/models/small", "/metrics", "/api-description", "/token"):
            assert requests.get(front + path, headers=headers, timeout=10).status_code == 404
        big = requests.post(
            f"{front}/predictions/small", data=b"\xff" * (17 * 2**20), headers=headers, timeout=60
        )
        assert big.status_code == 413
        assert (
            requests.get(f"{front}/predictions/small", headers=headers, timeout=10).status_code
            == 403
        )
    finally:
        nginx_front.main(["--prefix", str(prefix), "stop"])


# ---- cache counters in Prometheus ----------------------------------------------------------
def test_cache_hits_and_misses_reach_prometheus(tmp_path, exported_small):
    from tests.test_cache import RedisServer

    redis = RedisServer(tmp_path)
    store = tmp_path / "store"
    torchserve.archive(
        exported_small.out_dir, store, "cached", "onnx", handler_settings={"cache_url": redis.url}
    )
    running = torchserve.start(tmp_path / "run", store)
    try:
        for _ in range(3):
            assert running.client.predict("cached", GOOD).status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = running.client.metrics_text()
            if prometheus_value(text, "CacheHits", ModelName="cached") >= 2:
                break
            time.sleep(1)
        assert prometheus_value(text, "CacheHits", ModelName="cached") == 2
        assert prometheus_value(text, "CacheMisses", ModelName="cached") == 1
        redis.stop()
        assert running.client.predict("cached", GOOD).status_code == 200  # fails open
    finally:
        running.stop()
        if redis.process.poll() is None:
            redis.stop()


# ---- the container recipe ------------------------------------------------------------------
def test_health_command_reflects_real_readiness(server, tmp_path, capsys):
    assert serve.main(["--run-dir", str(server.run_dir), "health"]) == 0
    assert "healthy" in capsys.readouterr().out
    assert serve.main(["--run-dir", str(tmp_path), "health"]) == 1
