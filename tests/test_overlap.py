"""Inside one worker, preparing the next micro-batch overlaps the model call on this one
(handler/overlap.py): the answers are those of an unsplit batch, per item and in order, a
failure stays with its own items, and the overlap really happens (checked without timing:
the model call waits for the helper to start on the next micro-batch). On this CPU machine
the helper is a thread; the GPU-marked test runs it on a second CUDA stream."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from handler.config import HandlerConfig
from handler.overlap import WAIT_STAGE, split
from handler.service import ImageClassifierService
from tests.helpers import (
    FakeContext,
    assert_answers_match,
    real_images,
    reference_probabilities,
    requests_for,
    statuses,
)

IMAGES = [p.read_bytes() for p in real_images()]
NOT_AN_IMAGE = b"GIF89a but not really" * 10


def start(exported, chunks: int, device=None) -> tuple[ImageClassifierService, FakeContext]:
    context = FakeContext(
        exported.out_dir,
        exported.meta.model_file("torchscript", "fp32"),
        # gpu_decode on: plain JPEGs take the batch decoder, the rest Pillow, both in the helper
        {"handler": {"gpu_decode": "on", "overlap_chunks": chunks}},
        gpu_id=device,
    )
    service = ImageClassifierService()
    service.initialize(context)
    return service, context


def test_split_keeps_order_and_leaves_no_micro_batch_empty():
    assert split(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert split(list(range(2)), 4) == [[0], [1]]
    assert split(list(range(6)), 3) == [[0, 1], [2, 3], [4, 5]]
    assert split(list(range(3)), 1) == [[0, 1, 2]]
    assert split([], 3) == []


def test_chunks_default_to_two_on_gpu_workers_and_none_on_cpu_workers():
    config = HandlerConfig.from_yaml({})
    assert config.resolved_overlap_chunks(torch.device("cpu")) == 1
    assert config.resolved_overlap_chunks(torch.device("cuda", 0)) == 2
    assert (
        HandlerConfig.from_yaml({"overlap_chunks": 3}).resolved_overlap_chunks(torch.device("cpu"))
        == 3
    )
    with pytest.raises(ValueError, match="overlap_chunks"):
        HandlerConfig.from_yaml({"overlap_chunks": 65})


class Watched:
    """Wraps the real backend and preparer to see the overlap without timing anything: the
    prepare of micro-batch k+1 waits until the model call on k has started, and that call
    waits until the prepare of k+1 has started. Both waits are met only if the two run at
    once; run one after the other, one of them times out (10 s)."""

    def __init__(self, service: ImageClassifierService, chunks: int):
        self.backend, self.preparer = service.backend, service.preparer
        self.chunks = chunks
        self.prepared: list[tuple[int, str]] = []  # (items, thread) per prepare call
        self.prepare_started = [threading.Event() for _ in range(chunks)]
        self.model_started = [threading.Event() for _ in range(chunks)]
        self.model_calls = 0
        self.waits_met: list[tuple[str, bool]] = []
        service.backend, service.preparer = self, self

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def __call__(self, *args, **kwargs):
        if "clock" in kwargs:  # the preparer's call: (items, clock=...)
            k = len(self.prepared)
            self.prepared.append((len(args[0]), threading.current_thread().name))
            self.prepare_started[k].set()
            if k:
                self.waits_met.append(("prepare", self.model_started[k - 1].wait(10)))
            return self.preparer(*args, **kwargs)
        k = self.model_calls
        self.model_calls += 1
        self.model_started[k].set()
        if k + 1 < self.chunks:
            self.waits_met.append(("model", self.prepare_started[k + 1].wait(10)))
        return self.backend(*args, **kwargs)


def test_next_micro_batch_is_prepared_while_the_model_runs(exported_small):
    service, context = start(exported_small, chunks=3)
    watched = Watched(service, chunks=3)
    batch = IMAGES[:9]
    answers = [json.loads(a) for a in service.handle(requests_for(batch), context)]
    assert statuses(context, 9) == [200] * 9
    reference = reference_probabilities(exported_small.model, batch, exported_small.meta.preprocess)
    assert_answers_match(answers, reference, exported_small.meta.class_names)
    assert [n for n, _ in watched.prepared] == [3, 3, 3]
    main = threading.current_thread().name
    assert watched.prepared[0][1] == main  # the first, with nothing to overlap, on this thread
    assert all(thread.startswith("prepare-ahead") for _, thread in watched.prepared[1:])
    assert sorted(watched.waits_met) == [("model", True)] * 2 + [("prepare", True)] * 2


@pytest.mark.parametrize("chunks", [2, 4])
def test_overlapped_answers_equal_unsplit_ones_with_every_failure_kept_apart(
    exported_small, chunks
):
    """Every image mode plus a non-image and an oversized one, split or not: the same JSON and
    statuses per item, and the good ones equal the user's pipeline."""
    batch = [*IMAGES, NOT_AN_IMAGE, IMAGES[0] * 2000]  # the last is over the byte limit
    unsplit, unsplit_context = start(exported_small, chunks=1)
    split_service, split_context = start(exported_small, chunks=chunks)
    expected = unsplit.handle(requests_for(batch), unsplit_context)
    got = split_service.handle(requests_for(batch), split_context)
    codes = statuses(split_context, len(batch))
    assert codes == statuses(unsplit_context, len(batch))
    assert codes[: len(IMAGES)] == [200] * len(IMAGES) and codes[-2:] == [400, 413]
    for ours, theirs in zip(got, expected, strict=True):
        ours, theirs = json.loads(ours), json.loads(theirs)
        if "predictions" not in theirs:
            assert ours == theirs
            continue
        for a, b in zip(ours["predictions"], theirs["predictions"], strict=True):
            assert a["label"] == b["label"]
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
    reference = reference_probabilities(
        exported_small.model, IMAGES, exported_small.meta.preprocess
    )
    answers = [json.loads(a) for a in got[: len(IMAGES)]]
    assert_answers_match(answers, reference, exported_small.meta.class_names)


class BrokenSecondPrepare:
    """The preparer's own code failing (not one item's stage) on the second micro-batch."""

    def __init__(self, preparer):
        self.preparer, self.calls = preparer, 0

    def __getattr__(self, name):
        return getattr(self.preparer, name)

    def __call__(self, items, clock):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("a bug in the preparer")
        return self.preparer(items, clock)


def test_a_failed_micro_batch_costs_only_its_own_items(exported_small):
    service, context = start(exported_small, chunks=3)
    service.preparer = BrokenSecondPrepare(service.preparer)
    batch = IMAGES[:6]
    answers = [json.loads(a) for a in service.handle(requests_for(batch), context)]
    assert statuses(context, 6) == [200, 200, 500, 500, 200, 200]
    assert answers[2]["type"] == answers[3]["type"] == "InternalError"
    good = [batch[i] for i in (0, 1, 4, 5)]
    reference = reference_probabilities(exported_small.model, good, exported_small.meta.preprocess)
    assert_answers_match(
        [answers[i] for i in (0, 1, 4, 5)], reference, exported_small.meta.class_names
    )
    # and the next batch is whole again
    context = FakeContext(exported_small.out_dir, "x")
    service.handle(requests_for(batch), context)
    assert statuses(context, 6) == [200] * 6


def test_the_wait_for_the_helper_is_a_stage_of_its_own(exported_small):
    service, context = start(exported_small, chunks=2)
    recorded: list[str] = []

    class Metrics:
        def add_time(self, name, value, idx, unit, dimensions, metric_type):
            recorded.append(next(d.value for d in dimensions if d.name == "Stage"))

        def add_counter(self, *args, **kwargs):
            pass

    context.metrics = Metrics()
    service.handle(requests_for(IMAGES[:4]), context)
    assert WAIT_STAGE in recorded and "model" in recorded and "decode" in recorded
    recorded.clear()
    service.handle(requests_for(IMAGES[:1]), context)  # one item: one micro-batch, no helper
    assert WAIT_STAGE not in recorded


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none present")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_worker_overlaps_on_a_second_stream_with_the_same_answers(exported_small, precision):
    """On a GPU worker (overlap auto = 2 micro-batches): nvJPEG decode of the next half on the
    helper's stream beside the model; answers equal the user's pipeline, and equal to those
    of one unsplit batch, repeated (a stream race would show as a changing answer)."""
    batch = IMAGES * 3
    model_file = exported_small.meta.model_file("torchscript", precision)
    services = {}
    for chunks in (1, 0, 4):
        context = FakeContext(
            exported_small.out_dir,
            model_file,
            {"handler": {"precision": precision, "overlap_chunks": chunks}},
            gpu_id=0,
        )
        service = ImageClassifierService()
        service.initialize(context)
        services[chunks] = (service, context)
    assert services[0][0].chunks == 2
    reference = reference_probabilities(exported_small.model, batch, exported_small.meta.preprocess)
    first = None
    for _ in range(3):
        for service, context in services.values():
            answers = [json.loads(a) for a in service.handle(requests_for(batch), context)]
            assert statuses(context, len(batch)) == [200] * len(batch)
            assert_answers_match(answers, reference, exported_small.meta.class_names)
            labels = [a["predictions"][0]["label"] for a in answers]
            first = first or labels
            assert labels == first
