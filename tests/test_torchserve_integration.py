"""A real TorchServe serving both user checkpoint formats: export -> .mar -> HTTP answers.

One server for the module, two ResNet-50 models: the cover model (whole pickled module, served
with TorchScript) and the screenshot model (state dict with "model." keys, served with ONNX
Runtime). batchSize 4 with a 1.5 s window: requests sent four at a time fill a batch at once,
and a batch that filled proves the four travelled together.
"""

from __future__ import annotations

import base64
import json
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests
from PIL import Image

from gameart.measure.hostile_inputs import corpus
from gameart.ops.client import prometheus_value
from tests import torchserve
from tests.helpers import (
    assert_answers_match,
    encode,
    gradient_rgb,
    real_images,
    reference_probabilities,
)

pytestmark = pytest.mark.integration
BATCH = 4
WINDOW_MS = 1500
IMAGES = real_images()


@pytest.fixture(scope="module")
def server(tmp_path_factory, exported_cover, exported_screens):
    root = tmp_path_factory.mktemp("torchserve")
    store = root / "model_store"
    settings = {"batch_size": BATCH, "max_batch_delay_ms": WINDOW_MS}
    # the cover model decodes plain JPEGs in batches (handler/gpu_decode.py; libjpeg-turbo on
    # this CPU, nvJPEG on a GPU worker) and splits each batch in two, the second half decoded
    # while the model runs on the first (handler/overlap.py), as a GPU worker does by default;
    # so those paths are served by a real TorchServe too
    cover_settings = {
        **settings,
        "handler_settings": {"gpu_decode": "on", "overlap_chunks": 2},
    }
    torchserve.archive(
        exported_cover.out_dir, store, "cover_genre", "torchscript", **cover_settings
    )
    torchserve.archive(exported_screens.out_dir, store, "screen_game", "onnx", **settings)
    running = torchserve.start(root / "run", store)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def exported(exported_cover, exported_screens):
    return {"cover_genre": exported_cover, "screen_game": exported_screens}


def post_all(client, model: str, payloads: list[dict]) -> list[requests.Response]:
    """Send all requests at once, each from its own thread."""

    def send(kwargs):
        return client.request("inference", "POST", f"/predictions/{model}", **kwargs)

    with ThreadPoolExecutor(len(payloads)) as pool:
        return list(pool.map(send, payloads))


def raw(data: bytes) -> dict:
    return {"data": data, "headers": {"Content-Type": "application/octet-stream"}}


def reference(export, images: list[bytes]):
    return reference_probabilities(export.model, images, export.meta.preprocess)


@pytest.mark.parametrize("model", ["cover_genre", "screen_game"])
def test_answers_equal_the_eager_model_on_real_images(server, exported, model):
    """Eight different images sent at once (two full batches): each response carries its own
    image's answer, label and top-3 probabilities within 0.01 of the user's eager model."""
    export = exported[model]
    images = [p.read_bytes() for p in IMAGES]
    responses = post_all(server.client, model, [raw(data) for data in images])
    assert [r.status_code for r in responses] == [200] * len(images), responses[0].text
    assert all(r.headers["Content-Type"].startswith("application/json") for r in responses)
    answers = [r.json() for r in responses]
    assert [len(a["top_k"]) for a in answers] == [3] * len(images)
    expected = reference(export, images)
    assert_answers_match(answers, expected, export.meta.class_names, names=[p.name for p in IMAGES])


def test_one_bad_image_costs_only_its_own_request(server, exported):
    good = [p.read_bytes() for p in IMAGES[:3]]
    batch = [good[0], b"this is not an image", good[1], good[2]]
    responses = post_all(server.client, "screen_game", [raw(d) for d in batch])
    assert [r.status_code for r in responses] == [200, 400, 200, 200]
    assert responses[1].json() == {
        "code": 400,
        "type": "NotAnImage",
        "message": "the data is not a recognised image; send JPEG, PNG, WebP, BMP or GIF bytes",
    }
    assert "batch size=4 ok=3 rejected=1" in server.model_log()  # they travelled together
    good_answers = [responses[i].json() for i in (0, 2, 3)]
    export = exported["screen_game"]
    assert_answers_match(good_answers, reference(export, good), export.meta.class_names)


def _oip_body(data: bytes, request_id: str, top_k: int | None = None) -> dict:
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES"}
    tensor["data"] = [base64.b64encode(data).decode()]
    body = {"id": request_id, "inputs": [tensor]}
    return {**body, "parameters": {"top_k": top_k}} if top_k else body


def test_open_inference_protocol_beside_the_other_formats(server, exported):
    """KServe v2 requests at /v2/models/{model}/infer, in one batch with a raw request and a bad
    OIP request: each gets its own answer in its own format, the bad one its own 400."""
    export = exported["cover_genre"]
    images = [path.read_bytes() for path in IMAGES[:3]]
    client = server.client

    def send(job):
        path, kwargs = job
        return client.request("inference", "POST", path, **kwargs)

    v2 = "/v2/models/cover_genre/infer"
    bad = {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}
    jobs = [
        (v2, {"json": _oip_body(images[0], "a")}),
        (v2, {"json": bad}),
        ("/predictions/cover_genre", raw(images[1])),
        (v2, {"json": _oip_body(images[2], "c", top_k=5)}),
    ]
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(send, jobs))
    assert [r.status_code for r in responses] == [200, 400, 200, 200], responses[1].text
    assert "batch size=4 ok=3 rejected=1" in server.model_log()  # they travelled together
    error = responses[1].json()
    assert error["type"] == "InvalidInput" and "datatype" in error["error"]
    first, _, plain, last = (r.json() for r in responses)
    for body, request_id, k in ((first, "a", 3), (last, "c", 5)):
        assert body["model_name"] == "cover_genre" and body["model_version"] == "1.0"
        assert body["id"] == request_id
        names = [output["name"] for output in body["outputs"]]
        assert names == ["label", "top_k_labels", "top_k_probabilities"]
        assert [output["shape"] for output in body["outputs"]] == [[1], [1, k], [1, k]]
    as_ours = [
        {
            "label": body["outputs"][0]["data"][0],
            "confidence": body["outputs"][2]["data"][0],
            "top_k": [
                {"label": label, "probability": probability}
                for label, probability in zip(
                    body["outputs"][1]["data"], body["outputs"][2]["data"], strict=True
                )
            ],
        }
        for body in (first, last)
    ]
    expected = reference(export, [images[0], images[2]])
    assert_answers_match(as_ours, expected, export.meta.class_names)
    assert_answers_match([plain], reference(export, [images[1]]), export.meta.class_names)


def test_every_kind_of_bad_input_in_one_batch(server):
    bomb = encode(Image.new("L", (8000, 8000)), "PNG", optimize=True)  # 64 MP > 40 MP limit
    good = IMAGES[0].read_bytes()
    batch = [b"", encode(gradient_rgb(40, 40), "TIFF"), bomb, good[: len(good) // 2]]
    responses = post_all(server.client, "cover_genre", [raw(d) for d in batch])
    assert [r.status_code for r in responses] == [400, 415, 413, 400]
    assert [r.json()["type"] for r in responses] == [
        "EmptyInput",
        "UnsupportedImageFormat",
        "TooManyPixels",
        "CorruptImage",
    ]


def test_request_styles_raw_multipart_json(server, exported):
    path = IMAGES[1]
    data = path.read_bytes()
    export = exported["cover_genre"]
    b64 = base64.b64encode(data).decode()
    payloads = [
        raw(data),
        {"files": {"data": (path.name, data, "image/png")}, "data": {"top_k": "5"}},
        {"json": {"image": b64, "top_k": 2}},
        {"data": f"data:image/png;base64,{b64}", "headers": {"Content-Type": "text/plain"}},
    ]
    responses = post_all(server.client, "cover_genre", payloads)
    assert [r.status_code for r in responses] == [200] * 4
    answers = [r.json() for r in responses]
    assert_answers_match(answers, reference(export, [data] * 4), export.meta.class_names)
    assert [len(a["top_k"]) for a in answers] == [3, 5, 2, 3]


def test_frontend_refuses_oversized_bodies(server):
    too_big = b"\xff\xd8\xff" + b"\0" * (16 * 1024 * 1024 + 10)
    response = server.client.predict("cover_genre", too_big)
    assert response.status_code == 413


def test_token_authorisation_is_enforced(server):
    endpoints = server.client.endpoints
    no_token = requests.post(
        f"{endpoints.inference}/predictions/cover_genre", data=IMAGES[0].read_bytes(), timeout=10
    )
    assert no_token.status_code in (400, 401)
    assert "Token Authorization failed" in no_token.text
    management = requests.get(f"{endpoints.management}/models", timeout=10)
    assert management.status_code in (400, 401)
    inference_key = server.client.headers("inference")
    wrong_key = requests.get(f"{endpoints.management}/models", headers=inference_key, timeout=10)
    assert wrong_key.status_code in (400, 401)


def test_model_registration_api_is_off(server):
    response = server.client.request(
        "management", "POST", "/models", params={"url": "https://example.com/evil.mar"}
    )
    assert response.status_code == 405  # registration is switched off, not merely failing
    unregister = server.client.request("management", "DELETE", "/models/cover_genre")
    assert unregister.status_code == 405
    assert sorted(server.client.models()) == ["cover_genre", "screen_game"]


def test_scaling_workers_through_the_management_api(server):
    client = server.client
    response = client.scale("screen_game", min_worker=2, max_worker=2)
    assert response.status_code == 200, response.text
    workers = client.describe("screen_game")["workers"]
    assert len(workers) == 2 and {w["status"] for w in workers} == {"READY"}
    answers = post_all(client, "screen_game", [raw(p.read_bytes()) for p in IMAGES[:4]])
    assert [r.status_code for r in answers] == [200] * 4
    response = client.scale("screen_game", min_worker=1, max_worker=1)
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 30
    while len(client.describe("screen_game")["workers"]) != 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(client.describe("screen_game")["workers"]) == 1


def test_prometheus_metrics_count_the_requests(server):
    def counted() -> float:
        text = server.client.metrics_text()
        return prometheus_value(text, "ts_inference_requests_total", model_name="cover_genre")

    before = counted()
    jpegs = [p for p in IMAGES if p.suffix == ".jpg"][:3]  # two plain, one CMYK (Pillow's)
    assert "cmyk" in jpegs[1].name
    responses = post_all(server.client, "cover_genre", [raw(p.read_bytes()) for p in jpegs])
    assert [r.status_code for r in responses] == [200] * 3
    assert counted() - before == 3  # exactly the requests this test sent
    text = server.client.metrics_text()
    assert prometheus_value(text, "ts_queue_latency_microseconds") > 0
    assert "Requests2XX" in text
    # the handler's per-stage histogram, one observation per batch and stage
    for stage in ("extract", "inspect", "gpu_decode", "decode", "model", "answer"):
        count = prometheus_value(
            text, "HandlerStageSeconds_count", ModelName="cover_genre", Stage=stage
        )
        assert count >= 1, stage
    assert (
        prometheus_value(
            text, "HandlerStageSeconds_bucket", ModelName="cover_genre", Stage="model", le="+Inf"
        )
        >= 1
    )


def test_workers_never_died(server):
    assert "Backend worker process died" not in server.ts_log()
    assert all(psutil.pid_exists(pid) for pid in server.worker_pids())


def test_clean_shutdown(tmp_path, exported_small):
    """Its own server, so no other test depends on running before it."""
    store = tmp_path / "store"
    torchserve.archive(exported_small.out_dir, store, "small", "onnx")
    server = torchserve.start(tmp_path / "run", store)
    pids = [server.pid, *server.worker_pids()]
    assert len(pids) >= 2  # the frontend and a worker
    ports = [int(url.rsplit(":", 1)[1]) for url in vars(server.client.endpoints).values()]
    assert server.stop() is True
    assert not any(psutil.pid_exists(pid) for pid in pids)
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
    assert not (server.run_dir / "key_file.json").exists()
    assert server.stop() is False  # idempotent


# ---- isolation: hostile and fuzzed requests inside batches of good ones ---------------------
def good_and(client, model: str, odd: dict) -> tuple[list[requests.Response], list[bytes]]:
    """Three good uploads and one odd request sent at once: with batchSize 4 they share a batch."""
    good = [p.read_bytes() for p in IMAGES[2:5]]
    payloads = [raw(good[0]), odd, raw(good[1]), raw(good[2])]
    return post_all(client, model, payloads), good


def assert_good_answers(exported, responses, good) -> None:
    export = exported["screen_game"]
    assert [r.status_code for r in responses] == [200] * len(good), [r.text for r in responses]
    assert_answers_match(
        [r.json() for r in responses], reference(export, good), export.meta.class_names
    )


@pytest.mark.parametrize("hostile", corpus(), ids=lambda h: h.name)
def test_hostile_uploads_fail_alone_in_a_live_batch(server, exported, hostile):
    odd = {"data": hostile.body, "headers": {"Content-Type": hostile.content_type}}
    responses, good = good_and(server.client, "screen_game", odd)
    assert responses[1].status_code == hostile.status, responses[1].text
    assert responses[1].json()["type"] == hostile.kind
    assert_good_answers(exported, [responses[0], *responses[2:]], good)


def fuzzed_envelopes(count: int, seed: int = 20261125) -> list[tuple[str, dict]]:
    """Odd envelopes a client can send: JSON of every shape and size, base64 variants,
    multipart bodies with many parts, and content types that lie about the body."""
    rng = random.Random(seed)
    image = IMAGES[0].read_bytes()
    b64 = base64.b64encode(image).decode()
    makers = [
        lambda: ("deep json", b"[" * rng.randint(20, 300_000) + b"]" * 5, "application/json"),
        lambda: (
            "deep object",
            b'{"image":' * rng.randint(3, 60_000) + b'"AAAA"' + b"}" * 3,
            "application/json",
        ),
        lambda: (
            "many keys",
            json.dumps({f"k{i}": i for i in range(rng.randint(17, 50_000))}).encode(),
            "application/json",
        ),
        lambda: (
            "huge number",
            b'{"image": "' + b64.encode() + b'", "top_k": 1e999}',
            "application/json",
        ),
        lambda: ("duplicate keys", b'{"image": 1, "image": [], "image": {}}', "application/json"),
        lambda: (
            "unicode",
            json.dumps({"image": "é" * rng.randint(1, 5000)}).encode(),
            "application/json",
        ),
        lambda: (
            "wrong type",
            json.dumps({"image": rng.choice([None, 3, True, [1, 2]])}).encode(),
            "application/json",
        ),
        lambda: ("invalid utf-8", b'{"image": "\xff\xfe"}', "application/json"),
        lambda: ("image as json", image, "application/json"),
        lambda: ("json as image", json.dumps({"image": b64}).encode(), "image/jpeg"),
        lambda: ("base64 broken", (b64[: rng.randint(1, 400)] + "!*").encode(), "text/plain"),
        lambda: (
            "base64 wrapped",
            "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)).encode(),
            "text/plain",
        ),
        lambda: ("binary as text", bytes(rng.randbytes(300)), "text/plain"),
        lambda: (
            "data uri not base64",
            b"data:image/png," + bytes(rng.randbytes(40)),
            "text/plain",
        ),
    ]
    cases = []
    for _ in range(count):
        name, body, content_type = rng.choice(makers)()
        cases.append((name, {"data": body, "headers": {"Content-Type": content_type}}))
    parts = {f"part{i}": (None, b"x") for i in range(40)} | {"data": ("a.png", image, "image/png")}
    cases.append(("40 multipart parts", {"files": parts}))
    return cases


@pytest.mark.parametrize(
    ("name", "odd"), fuzzed_envelopes(30), ids=lambda v: v if isinstance(v, str) else ""
)
def test_fuzzed_envelopes_cost_only_themselves(server, exported, name, odd):
    """Whatever the odd request is, it gets a 200 (if it happens to be a valid image request)
    or its own 4xx with a JSON error; the three good requests beside it get their answers."""
    responses, good = good_and(server.client, "screen_game", odd)
    status = responses[1].status_code
    assert status == 200 or 400 <= status < 500, (name, responses[1].text)
    if status != 200:
        assert {"code", "type", "message"} <= set(responses[1].json())
    assert_good_answers(exported, [responses[0], *responses[2:]], good)
