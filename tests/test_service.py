"""The handler's batch path without a server: per-item errors, backends, precisions, failures."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from onnxruntime import get_available_providers as ort_providers

from handler.backends import OnnxBackend, onnx_providers, select_device
from handler.config import HandlerConfig, cgroup_cpu_quota, usable_cores
from handler.service import ImageClassifierService
from tests.helpers import (
    PROBABILITY_TOLERANCE,
    FakeContext,
    assert_answers_match,
    encode,
    gradient_rgb,
    real_images,
    reference_probabilities,
    requests_for,
    statuses,
)

GOOD = [p.read_bytes() for p in real_images()[:3]]
NOT_AN_IMAGE = b"definitely not an image"
TRUNCATED = GOOD[0][: len(GOOD[0]) // 3]


def start_service(exported, backend="torchscript", precision="fp32", **handler_settings):
    meta = exported.meta
    context = FakeContext(
        exported.out_dir,
        meta.model_file(backend, precision),
        {
            "maxWorkers": 1,
            "handler": {"backend": backend, "precision": precision, **handler_settings},
        },
    )
    service = ImageClassifierService()
    service.initialize(context)
    return service, context


ALL = [p.read_bytes() for p in real_images()]
# Per-class |Δprobability| bounds against the eager fp32 model, per served precision. Measured
# for the small fixture model (2-core CPU): fp32 0.0002, fp16 0.0003, INT8 0.017 (an
# approximation, judged by the export on top-1 agreement). GPU fp16 was not measured yet.
TOLERANCE = {"fp32": PROBABILITY_TOLERANCE, "fp16": PROBABILITY_TOLERANCE, "int8": 0.05}


def expected(exported, images: list[bytes]) -> torch.Tensor:
    return reference_probabilities(exported.model, images, exported.meta.preprocess)


@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
def test_bad_items_fail_alone(exported_small, backend):
    service, context = start_service(exported_small, backend)
    batch = [GOOD[0], NOT_AN_IMAGE, GOOD[1], TRUNCATED, b"", GOOD[2]]
    answers = [json.loads(a) for a in service.handle(requests_for(batch), context)]
    assert statuses(context, len(batch)) == [200, 400, 200, 400, 400, 200]
    assert answers[1]["type"] == "NotAnImage" and answers[1]["code"] == 400
    assert answers[3]["type"] == "CorruptImage"
    assert answers[4]["type"] == "EmptyInput"
    good = [answers[i] for i in (0, 2, 5)]
    assert_answers_match(good, expected(exported_small, GOOD), exported_small.meta.class_names)
    assert [len(a["top_k"]) for a in good] == [3, 3, 3]
    assert set(context.content_types.values()) == {"application/json"}


def test_backends_and_precisions_agree(exported_small):
    """Every exported file (fp32, fp16 and int8) answers each real image, in request order, as
    the eager model does: same label, probabilities within the precision's bound."""
    reference = expected(exported_small, ALL)
    assert len(set(reference.argmax(1).tolist())) == 4  # the images tell the classes apart
    keys = sorted(exported_small.meta.files)
    assert len(keys) == 5  # torchscript fp32/fp16, onnx fp32/fp16/int8
    for key in keys:
        backend, precision = key.split("/")
        service, context = start_service(exported_small, backend, precision)
        answers = [json.loads(a) for a in service.handle(requests_for(ALL), context)]
        assert_answers_match(
            answers, reference, exported_small.meta.class_names, TOLERANCE[precision], [key] * 8
        )
        expected_dtype = torch.float16 if precision == "fp16" else torch.float32
        assert service.backend.input_dtype == expected_dtype


def test_per_request_top_k_and_limits(exported_small):
    service, context = start_service(exported_small, max_image_bytes=400_000, top_k=2)
    big = encode(gradient_rgb(2000, 2000), "BMP")  # 12 MB of raw pixels
    requests = [
        {"data": bytearray(GOOD[0]), "top_k": b"1"},
        {"body": bytearray(GOOD[0])},
        {"data": bytearray(GOOD[0]), "top_k": b"99"},
        {"body": bytearray(big)},
    ]
    answers = [json.loads(a) for a in service.handle(requests, context)]
    assert [len(a.get("top_k", [])) for a in answers] == [1, 2, 4, 0]
    assert statuses(context, 4) == [200, 200, 200, 413]


def test_pixel_limit_from_the_model_config(exported_small):
    service, context = start_service(exported_small, max_image_pixels=100_000)
    small = encode(gradient_rgb(300, 300), "PNG")
    large = encode(gradient_rgb(400, 400), "PNG")
    service.handle(requests_for([small, large]), context)
    assert statuses(context, 2) == [200, 413]


def test_model_failure_is_a_server_error_for_good_items_only(exported_small, monkeypatch):
    service, context = start_service(exported_small)

    def broken(batch):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(service, "backend", broken)
    answers = [json.loads(a) for a in service.handle(requests_for([GOOD[0], b"junk"]), context)]
    assert statuses(context, 2) == [500, 400]
    assert answers[0]["type"] == "InferenceFailed"


def test_out_of_memory_maps_to_507(exported_small, monkeypatch):
    service, context = start_service(exported_small)

    def oom(batch):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(service, "backend", oom)
    service.handle(requests_for([GOOD[0]]), context)
    assert statuses(context, 1) == [507]


def test_unknown_handler_setting_fails_at_load(exported_small):
    with pytest.raises(ValueError, match="unknown handler settings"):
        start_service(exported_small, topk=3)
    with pytest.raises(ValueError, match="use backend onnx"):
        HandlerConfig.from_yaml({"backend": "torchscript", "precision": "int8"})


def test_handler_entry_point_initialises_once(exported_small):
    from handler import game_image_handler

    context = FakeContext(exported_small.out_dir, "model.torchscript.pt", {})
    assert game_image_handler.handle(None, context) is None
    answers = game_image_handler.handle(requests_for(GOOD), context)
    assert_answers_match(
        [json.loads(a) for a in answers],
        expected(exported_small, GOOD),
        exported_small.meta.class_names,
    )


def test_onnx_provider_pinned_to_the_workers_gpu():
    assert onnx_providers(torch.device("cuda", 3)) == [
        ("CUDAExecutionProvider", {"device_id": 3}),
        "CPUExecutionProvider",
    ]
    assert onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]


def test_device_selection_without_gpu_id_is_cpu():
    assert select_device(None) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device(0) == torch.device("cpu")  # GPU id given, no CUDA: CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: no fallback to test")
def test_onnx_falls_back_to_cpu_when_cuda_cannot_start(exported_small):
    backend = OnnxBackend(exported_small.out_dir / "model.onnx", torch.device("cuda", 0), "fp32", 1)
    assert backend.device == torch.device("cpu")
    out = backend(torch.zeros(2, 3, 224, 224))
    assert out.shape == (2, 4) and out.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none present")
@pytest.mark.parametrize("backend", ["torchscript", "onnx"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_worker_matches_cpu(exported_small, backend, precision):
    if backend == "onnx" and "CUDAExecutionProvider" not in ort_providers():
        pytest.skip("this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
    reference = expected(exported_small, ALL)
    context = FakeContext(
        exported_small.out_dir,
        exported_small.meta.model_file(backend, precision),
        {"handler": {"backend": backend, "precision": precision}},
        gpu_id=0,
    )
    service = ImageClassifierService()
    service.initialize(context)
    assert service.backend.device.type == "cuda"
    answers = [json.loads(a) for a in service.handle(requests_for(ALL), context)]
    assert_answers_match(answers, reference, exported_small.meta.class_names, TOLERANCE[precision])


def test_threads_are_sized_for_the_workers_already_running(tmp_path):
    """Scaling past the archive's maxWorkers must not oversubscribe: a new worker counts its
    model's running workers (children of the frontend running TorchServe's worker script in
    the model's directory); other models' workers and other programs do not count."""
    import subprocess
    import sys

    from handler.config import HandlerConfig, live_workers_on_host

    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    processes = [
        *(subprocess.Popen([*sleeper, "ts/model_service_worker.py"], cwd=ours) for _ in range(3)),
        subprocess.Popen([*sleeper, "ts/model_service_worker.py"], cwd=theirs),  # another model
        subprocess.Popen([*sleeper, "something_else.py"], cwd=ours),  # not a worker
    ]
    try:
        assert live_workers_on_host(os.getpid(), str(ours)) == 3
        assert live_workers_on_host(os.getpid(), str(theirs)) == 1
    finally:
        for process in processes:
            process.kill()
            process.wait()
    cores = len(os.sched_getaffinity(0))
    config = HandlerConfig()
    assert config.resolved_threads(1) == cores
    assert config.resolved_threads(cores * 2) == 1  # never zero
    assert HandlerConfig(intra_op_threads=3).resolved_threads(8) == 3


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # cgroup v2, no limit
        ({"cpu.max": "150000 100000\n"}, 1.5),  # limits.cpu: 1500m
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({}, None),
    ],
)
def test_threads_follow_a_containers_cpu_limit(tmp_path, files, quota):
    """A worker in a 1.5-CPU pod on a 64-core node sizes its pools for 2 cores, not 64."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_cpu_quota(tmp_path) == quota
    cores = len(os.sched_getaffinity(0))
    expected = min(cores, math.ceil(quota)) if quota else cores
    assert usable_cores(tmp_path) == expected
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # one CPU: one thread, whatever the node
    assert usable_cores(tmp_path) == 1
