"""TorchServe's gRPC inference API against a real server: the same answers and errors as HTTP,
the token checked, and the multi-process load loop (gameart/measure/grpc_load.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gameart.measure import grpc_load as ts_grpc
from gameart.measure import loadgen
from gameart.measure.uploads import cover_uploads
from gameart.ops.client import read_properties
from tests import torchserve
from tests.helpers import real_images

pytestmark = pytest.mark.integration
IMAGES = [p.read_bytes() for p in real_images()[:6]]


@pytest.fixture(scope="module")
def server(tmp_path_factory, exported_small):
    root = tmp_path_factory.mktemp("grpc")
    torchserve.archive(exported_small.out_dir, root / "store", "small", "torchscript")
    running = torchserve.start(root / "run", root / "store")
    yield running
    running.stop()


def target(server, token: str | None = None) -> ts_grpc.GrpcTarget:
    port = read_properties(server.run_dir / "config.properties")["grpc_inference_port"]
    if token is None:
        token = server.client.headers("inference")["Authorization"].removeprefix("Bearer ")
    return ts_grpc.GrpcTarget(f"127.0.0.1:{port}", "small", token)


def test_grpc_answers_equal_http(server):
    for data in IMAGES:
        status, body = ts_grpc.predict(target(server), data)
        assert status == "OK"
        over_http = server.client.predict("small", data)
        assert over_http.status_code == 200
        assert json.loads(body) == over_http.json()


def test_a_bad_image_fails_alone_with_its_reason(server):
    """TorchServe 0.12's gRPC API says OK to a request the handler answered 400 (over HTTP the
    status carries it): the error is in the body, as the same JSON as over HTTP."""
    status, body = ts_grpc.predict(target(server), b"definitely not an image")
    assert status == "OK"
    assert ts_grpc.answer_status(body) == 400
    assert json.loads(body)["type"] == "NotAnImage"
    status, body = ts_grpc.predict(target(server), IMAGES[0])
    assert status == "OK" and ts_grpc.answer_status(body) == 200
    assert ts_grpc.answer_status(b'{"label":"x"}') == 200


def test_the_load_loop_counts_bad_answers_as_their_status(server):
    uploads = cover_uploads(2)
    bad = dataclasses.replace(uploads[0], body=b"not an image")
    result = loadgen.closed_loop_processes(
        target(server),
        [uploads[1], bad],
        1,
        duration=1.5,
        processes=1,
        loop=ts_grpc.closed_loop,
    )
    assert set(result.statuses) == {"200", "400"}
    assert abs(result.statuses["200"] - result.statuses["400"]) <= 1  # they alternate


def test_the_token_is_checked(server):
    status, _ = ts_grpc.predict(target(server, token="wrong"), IMAGES[0])
    assert status != "OK"
    status, _ = ts_grpc.predict(target(server, token=""), IMAGES[0])
    assert status != "OK"


def test_load_over_grpc_in_processes(server):
    result = loadgen.closed_loop_processes(
        target(server),
        cover_uploads(4),
        4,
        duration=2.0,
        processes=2,
        loop=ts_grpc.closed_loop,
    )
    assert set(result.statuses) == {"200"} and result.ok > 4
    assert len(result.latencies_ms) == result.requests
