"""CUDA graphs of the served model (handler/cuda_graphs.py): the buckets a batch is padded to,
the plain model wherever graphs cannot be used, and on a GPU the same answers as without them
for every batch size, padded or not."""

from __future__ import annotations

import json

import pytest
import torch

from handler.backends import TorchScriptBackend
from handler.config import HandlerConfig
from handler.cuda_graphs import GraphedBackend, bucket_for, buckets_for
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


def test_buckets_are_powers_of_two_up_to_the_batch_size():
    assert buckets_for(32) == (1, 2, 4, 8, 16, 32)
    assert buckets_for(6) == (1, 2, 4, 6)
    assert buckets_for(1) == (1,)
    assert [bucket_for(n, (1, 2, 4, 6)) for n in range(1, 8)] == [1, 2, 4, 4, 6, 6, None]


def test_the_setting_is_a_boolean():
    assert HandlerConfig.from_yaml({}).cuda_graphs is False
    assert HandlerConfig.from_yaml({"cuda_graphs": True}).cuda_graphs is True
    with pytest.raises(ValueError, match="cuda_graphs"):
        HandlerConfig.from_yaml({"cuda_graphs": "sometimes"})


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_a_cpu_worker_serves_the_plain_model(exported_small, backend):
    """Graphs need a GPU: on a CPU worker the setting changes nothing, answers included."""
    context = FakeContext(
        exported_small.out_dir,
        exported_small.meta.model_file(backend, "fp32"),
        {"handler": {"backend": backend, "cuda_graphs": True}},
    )
    service = ImageClassifierService()
    service.initialize(context)
    assert not isinstance(service.backend, GraphedBackend)
    answers = [json.loads(a) for a in service.handle(requests_for(IMAGES[:3]), context)]
    assert statuses(context, 3) == [200] * 3
    reference = reference_probabilities(
        exported_small.model, IMAGES[:3], exported_small.meta.preprocess
    )
    assert_answers_match(answers, reference, exported_small.meta.class_names)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none present")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_worker_replays_graphs_with_the_same_answers(exported_small, precision, monkeypatch):
    """Archive batch size 4 (buckets 1, 2, 4): batches of 1 to 4 replay a graph, padded where
    needed, 6 runs plainly; every answer equals the user's pipeline, and a Grad-CAM
    explanation still finds the file's explain method through the wrapper."""
    settings = {"precision": precision, "cuda_graphs": True, "overlap_chunks": 1}
    context = FakeContext(
        exported_small.out_dir,
        exported_small.meta.model_file("torchscript", precision),
        {"handler": settings},
        gpu_id=0,
        batch_size=4,
    )
    service = ImageClassifierService()
    service.initialize(context)  # captures, and checks each graph against the plain model
    assert isinstance(service.backend, GraphedBackend)
    assert isinstance(service.backend.inner, TorchScriptBackend)
    assert service.backend.buckets == (1, 2, 4)
    replays: list[int] = []
    original = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(
        torch.cuda.CUDAGraph, "replay", lambda graph: (replays.append(rows), original(graph))
    )
    for rows in (1, 3, 4, 2, 6, 1):  # overlap off: the model sees each batch whole
        batch = IMAGES[:rows]
        answers = [json.loads(a) for a in service.handle(requests_for(batch), context)]
        assert statuses(context, rows) == [200] * rows
        reference = reference_probabilities(
            exported_small.model, batch, exported_small.meta.preprocess
        )
        assert_answers_match(answers, reference, exported_small.meta.class_names)
    assert replays == [1, 3, 4, 2, 1]  # 6 is over every bucket: the plain model
    explain = [{"body": bytearray(IMAGES[0])}]
    context.request_headers = {0: {"explain": "True"}}
    answer = json.loads(service.handle(explain, context)[0])
    # fp16 Grad-CAM may fall back to occlusion; either way the answer is an explanation
    methods = ("grad-cam",) if precision == "fp32" else ("grad-cam", "occlusion")
    assert answer["explanation"]["method"] in methods
