"""One request's failure never costs another: the handler's batch path under hostile input.

Every per-item stage runs under one guard (any exception becomes that item's answer), the model
call bisects a failing batch so a poison item is isolated, envelopes and images are bounded
before their parsers run, and cache entries are validated like any other input.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from gameart.measure import hostile_bench
from gameart.measure.hostile_inputs import corpus
from handler import preparation
from handler.cache import image_key
from handler.inputs import MAX_TOP_K
from handler.service import ImageClassifierService
from modelspec.imaging import Normalizer, served_crop
from tests import torchserve
from tests.helpers import (
    FakeContext,
    as_torchserve_request,
    assert_answers_match,
    real_images,
    reference_probabilities,
    statuses,
)

GOOD = [p.read_bytes() for p in real_images()[1:4]]


def start_service(exported, **handler_settings) -> tuple[ImageClassifierService, FakeContext]:
    context = FakeContext(
        exported.out_dir,
        "model.onnx",
        {"handler": {"backend": "onnx", **handler_settings}},
    )
    service = ImageClassifierService()
    service.initialize(context)
    return service, context


def check_good(exported, answers: list[dict], good: list[bytes]) -> None:
    expected = reference_probabilities(exported.model, good, exported.meta.preprocess)
    assert_answers_match(answers, expected, exported.meta.class_names)


@pytest.mark.parametrize("hostile", corpus(), ids=lambda h: h.name)
def test_every_hostile_upload_fails_alone(exported_small, hostile):
    """Each hostile kind, between two good uploads in one batch: its own 4xx, their 200s."""
    service, context = start_service(exported_small)
    batch = [
        {"body": bytearray(GOOD[0])},
        as_torchserve_request(hostile.body),
        {"body": bytearray(GOOD[1])},
    ]
    context.request_headers[1] = {"Content-Type": hostile.content_type}
    answers = [json.loads(a) for a in service.handle(batch, context)]
    assert statuses(context, 3) == [200, hostile.status, 200], answers[1]
    assert answers[1]["type"] == hostile.kind, answers[1]
    check_good(exported_small, [answers[0], answers[2]], GOOD[:2])


@pytest.mark.parametrize("hostile", corpus(), ids=lambda h: h.name)
def test_every_hostile_upload_is_refused_cheaply(hostile):
    """The handler's per-item path refuses each kind in a bounded cost: CPU seconds are counted
    by the kernel, not the wall clock, so a busy machine does not move them much. The goal
    (100 ms, 64 MB) is the benchmark's (docs/benchmarks/hostile-*); this holds 5x room."""
    started = time.process_time()
    outcome = hostile_bench.handler(hostile)
    assert outcome == f"{hostile.status} {hostile.kind}"
    assert time.process_time() - started < 5 * hostile_bench.GOAL_CPU_MS / 1000


def test_any_exception_in_an_item_stage_costs_only_that_item(exported_small, monkeypatch):
    """Not only the errors the code expects: whatever a per-item stage raises is that item's
    answer (500 for the server's own faults, 507 for allocation failures)."""
    service, context = start_service(exported_small)
    real_resize = preparation.resize_crop

    def flaky(image, spec):
        if image.size == (250, 330):
            raise KeyError("a bug nobody anticipated")
        if image.size == (256, 256):
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
            )
        return real_resize(image, spec)

    monkeypatch.setattr(preparation, "resize_crop", flaky)
    penguin = next(p for p in real_images() if p.name.startswith("frozenbubble_penguin_rgba"))
    grass = next(p for p in real_images() if p.name == "etr_icy_grass_256.png")
    fire = next(p for p in real_images() if p.name == "pingus_fire_960x590.jpg")
    batch = [fire.read_bytes(), penguin.read_bytes(), grass.read_bytes(), fire.read_bytes()]
    answers = [
        json.loads(a) for a in service.handle([{"body": bytearray(d)} for d in batch], context)
    ]
    assert statuses(context, 4) == [200, 500, 507, 200]
    assert answers[1]["type"] == "InternalError" and answers[2]["type"] == "OutOfResources"
    check_good(exported_small, [answers[0], answers[3]], [batch[0], batch[3]])


class PoisonBackend:
    """Wraps the real backend; any batch holding the poison image fails, as a model bug that
    one input triggers would. Counts the calls."""

    def __init__(self, backend, poison_mean: float):
        self.backend, self.poison_mean, self.calls = backend, poison_mean, 0

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        means = batch.float().mean(dim=(1, 2, 3))
        if torch.isclose(means, torch.tensor(self.poison_mean), atol=1e-4).any():
            raise RuntimeError("index out of range in a custom op")
        return self.backend(batch)


def test_a_poison_item_in_the_model_call_is_isolated_by_bisection(exported_small):
    service, context = start_service(exported_small)
    images = [p.read_bytes() for p in real_images()[:8]]
    poison = images[5]
    poison_input = service.normalizer([served_crop(poison, exported_small.meta.preprocess)])
    service.backend = PoisonBackend(service.backend, float(poison_input.mean()))
    answers = [
        json.loads(a) for a in service.handle([{"body": bytearray(d)} for d in images], context)
    ]
    expected = [200] * 8
    expected[5] = 500
    assert statuses(context, 8) == expected
    assert answers[5]["type"] == "InferenceFailed"
    good = [i for i in range(8) if i != 5]
    check_good(exported_small, [answers[i] for i in good], [images[i] for i in good])
    # the whole batch, then halves down to the poison item: at most 1 + 2 log2(n) calls
    assert service.backend.calls <= 1 + 2 * math.ceil(math.log2(8))


def test_out_of_memory_retries_at_a_smaller_batch(exported_small):
    """A batch too big for the device is answered in halves; only what cannot run at all
    gets 507."""
    service, context = start_service(exported_small)

    class SmallDevice:
        def __init__(self, backend):
            self.backend, self.sizes = backend, []

        def __getattr__(self, name):
            return getattr(self.backend, name)

        def __call__(self, batch):
            self.sizes.append(len(batch))
            if len(batch) > 2:
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return self.backend(batch)

    service.backend = SmallDevice(service.backend)
    images = [p.read_bytes() for p in real_images()[:6]]
    answers = [
        json.loads(a) for a in service.handle([{"body": bytearray(d)} for d in images], context)
    ]
    assert statuses(context, 6) == [200] * 6
    check_good(exported_small, answers, images)
    assert service.backend.sizes == [6, 3, 1, 2, 3, 1, 2]  # halves until the batches fit


def test_a_model_that_always_fails_costs_bounded_calls(exported_small):
    service, context = start_service(exported_small)
    calls = []

    def broken(batch):
        calls.append(len(batch))
        raise RuntimeError("kernel exploded")

    service.backend = broken
    images = [p.read_bytes() for p in real_images()[:8]]
    service.handle([{"body": bytearray(d)} for d in images], context)
    assert statuses(context, 8) == [500] * 8
    assert len(calls) <= 1 + 2 * math.ceil(math.log2(8))  # the bisection budget, not 2n - 1


@pytest.mark.parametrize(
    ("request_dict", "kind"),
    [
        ({"data": bytearray(GOOD[0]), "top_k": str(MAX_TOP_K + 1).encode()}, "InvalidInput"),
        ({"data": bytearray(GOOD[0]), "top_k": b"1e309"}, "InvalidInput"),
        ({f"part{i}": b"x" for i in range(100)} | {"data": bytearray(GOOD[0])}, "TooManyParts"),
        ({"body": {"image": {"image": {"image": {"image": {"image": "AAAA"}}}}}}, "JSONTooComplex"),
        ({"body": {f"k{i}": 0 for i in range(100)} | {"image": "AAAA"}}, "JSONTooComplex"),
        ({"body": [{"b64": "AAAA"}, {"b64": "AAAA"}]}, "InvalidInput"),
    ],
    ids=[
        "top_k_too_big",
        "top_k_not_int",
        "too_many_parts",
        "too_deep",
        "too_many_keys",
        "two_images",
    ],
)
def test_envelope_limits_each_have_their_own_4xx(exported_small, request_dict, kind):
    service, context = start_service(exported_small)
    answers = service.handle([request_dict, {"body": bytearray(GOOD[1])}], context)
    assert statuses(context, 2) == [400, 200]
    assert json.loads(answers[0])["type"] == kind


def test_cache_entries_are_data_not_trust(exported_small):
    """Whatever Redis hands back that is not num_classes finite probabilities is a miss."""
    from handler.cache import valid_probabilities

    assert valid_probabilities([0.1, 0.2, 0.3, 0.4], 4)
    for bad in (
        None,
        [0.5] * 3,
        [0.1, 0.2, 0.3, float("nan")],
        [0.1, 0.2, "x", 0.4],
        {"a": 1},
        [2.0, -1.0, 0.0, 0.0],
        [1e308] * 4,
        "[0.25]",
        [True, False, True, False],
    ):
        assert not valid_probabilities(bad, 4), bad


def test_cache_key_covers_the_settings_that_change_answers(exported_small):
    keys = set()
    for settings in ({}, {"jpeg_draft_oversample": 0}, {"max_image_pixels": 1_000_000}):
        service, _ = start_service(exported_small, cache_url="redis://127.0.0.1:1/0", **settings)
        keys.add(image_key(service.model_key, GOOD[0]))
    assert len(keys) == 3


class Poisoned(torch.nn.Module):
    """A model that fails whenever one particular input is in its batch: a model bug that a
    single input triggers, as a custom op with an out-of-range index would."""

    def __init__(self, model: torch.nn.Module, poison_mean: float):
        super().__init__()
        self.model = model
        self.poison_mean = poison_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.float().mean(dim=(1, 2, 3))
        if bool((means - self.poison_mean).abs().min() < 1e-4):
            raise RuntimeError("poison input in this batch")
        return self.model(x)


@pytest.mark.integration
def test_a_poison_request_in_a_live_batch_costs_only_itself(tmp_path, exported_small):
    """A real TorchServe, batchSize 4: the batch holding the poison request is bisected, the
    three others get their answers, the poison one its own 500, and the worker stays up."""
    images = [p.read_bytes() for p in real_images()[4:8]]
    poison = images[2]
    spec = exported_small.meta.preprocess
    poison_mean = float(
        Normalizer(spec, torch.device("cpu"), torch.float32)([served_crop(poison, spec)]).mean()
    )
    export = tmp_path / "export"
    shutil.copytree(exported_small.out_dir, export)
    inner = torch.jit.load(str(export / "model.torchscript.pt"))
    torch.jit.save(
        torch.jit.script(Poisoned(inner, poison_mean)), str(export / "model.torchscript.pt")
    )
    store = tmp_path / "store"
    torchserve.archive(
        export, store, "poisoned", "torchscript", batch_size=4, max_batch_delay_ms=2000
    )
    running = torchserve.start(tmp_path / "run", store)
    try:
        pid = running.client.describe("poisoned")["workers"][0]["pid"]
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda d: running.client.predict("poisoned", d), images))
        assert [r.status_code for r in responses] == [200, 200, 500, 200]
        assert responses[2].json()["type"] == "InferenceFailed"
        good = [0, 1, 3]
        check_good(exported_small, [responses[i].json() for i in good], [images[i] for i in good])
        assert "batch size=4" in running.model_log() and "retrying in halves" in running.model_log()
        workers = running.client.describe("poisoned")["workers"]
        assert [(w["pid"], w["status"]) for w in workers] == [(pid, "READY")]
    finally:
        running.stop()
