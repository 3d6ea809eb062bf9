"""The batch JPEG decoder (handler/gpu_decode.py): what goes to it, what falls back, and that
its answers equal the user's pipeline. On this CPU machine the same code runs with
torchvision's libjpeg-turbo decoder (gpu_decode: on); the GPU-marked tests run it on nvJPEG."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from gameart.measure.uploads import cover_uploads
from handler.config import HandlerConfig
from handler.decode import inspect_image
from handler.gpu_decode import BatchJpegDecoder, decode_eligibility
from handler.service import ImageClassifierService
from handler.stage_metrics import StageClock
from modelspec.imaging import served_crop
from modelspec.meta import PreprocessSpec
from modelspec.reference import reference_rgb
from tests.helpers import (
    FakeContext,
    assert_answers_match,
    encode,
    gradient_rgb,
    real_images,
    reference_probabilities,
    requests_for,
    statuses,
)

ALL = [p.read_bytes() for p in real_images()]
NAMES = [p.name for p in real_images()]
PLAIN_JPEGS = [
    "neverball_pyramid_256.jpg",
    "pingus_fire_960x590.jpg",
    "pingus_fire_exif_rotated.jpg",
    "pingus_worldmap_1920x1200.jpg",
]


def exact_crop(data: bytes, spec: PreprocessSpec) -> torch.Tensor:
    """The user's pipeline up to the crop: PIL Resize + CenterCrop, as uint8 CHW."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = reference_rgb(image, spec)
    crop = transforms.CenterCrop(spec.input_size)(transforms.Resize(spec.resize_size)(rgb))
    return torch.from_numpy(np.array(crop)).permute(2, 0, 1)


def by_name(name: str) -> bytes:
    return ALL[NAMES.index(name)]


class Spy:
    """Wraps the service's batch decoder and records what it was given."""

    def __init__(self, decoder: BatchJpegDecoder):
        self.decoder = decoder
        self.seen: list[bytes] = []

    def __call__(self, uploads: list[bytes]):
        self.seen.extend(uploads)
        return self.decoder(uploads)


def start(exported, device=None, **settings) -> tuple[ImageClassifierService, FakeContext, Spy]:
    meta = exported.meta
    context = FakeContext(
        exported.out_dir,
        meta.model_file("torchscript", "fp32"),
        {"handler": {"gpu_decode": "on", **settings}},
        gpu_id=device,
    )
    service = ImageClassifierService()
    service.initialize(context)
    spy = None
    if service.preparer.jpeg_decoder is not None:
        spy = Spy(service.preparer.jpeg_decoder)
        service.preparer.jpeg_decoder = spy
    return service, context, spy


def test_answers_equal_the_users_pipeline_for_every_image(exported_cover):
    """Fourteen images in every mode, one batch: plain JPEGs through the batch decoder, the
    rest through Pillow, each answered as the eager model answers the user's pipeline."""
    service, context, spy = start(exported_cover)
    # and three different covers of one size, which share one resize call
    covers = [upload.body for upload in cover_uploads(3)]
    batch, names = [*ALL, *covers], [*NAMES, "cover0", "cover1", "cover2"]
    answers = [json.loads(a) for a in service.handle(requests_for(batch), context)]
    assert statuses(context, len(batch)) == [200] * len(batch)
    reference = reference_probabilities(exported_cover.model, batch, exported_cover.meta.preprocess)
    assert len(set(reference[-3:].argmax(1).tolist())) > 1  # the covers are told apart
    assert_answers_match(answers, reference, exported_cover.meta.class_names, names=names)
    # exif is off in the torchvision policy, so the rotated JPEG is plain too; CMYK is not
    assert sorted(names[batch.index(data)] for data in spy.seen) == sorted(
        [*PLAIN_JPEGS, "cover0", "cover1", "cover2"]
    )


def test_crops_equal_the_cpu_path_and_the_reference():
    """Per JPEG: the batch decoder's crop is the CPU fast path's crop within draft mode's
    error (mean <= 0.5 grey levels) and nearer the exact reference than it."""
    spec = PreprocessSpec()
    jpegs = [by_name(name) for name in PLAIN_JPEGS]
    crops = BatchJpegDecoder(spec, torch.device("cpu"))(jpegs)
    for name, data, crop in zip(PLAIN_JPEGS, jpegs, crops, strict=True):
        assert crop is not None and crop.shape == (3, 224, 224) and crop.dtype == torch.uint8
        fast = served_crop(data, spec).int()
        exact = exact_crop(data, spec).int()
        ours = crop.int()
        assert (ours - fast).abs().float().mean() <= 0.5, name
        assert (ours - exact).abs().float().mean() <= (fast - exact).abs().float().mean(), name


def test_what_is_not_plain_goes_to_pillow(exported_small):
    """The project policy applies EXIF rotation, so a rotated JPEG is Pillow's; so are grey and
    CMYK JPEGs, PNGs, and a JPEG cut short (which Pillow then refuses)."""
    spec = exported_small.meta.preprocess
    grey = encode(gradient_rgb(300, 200).convert("L"), "JPEG")
    truncated = by_name("pingus_fire_960x590.jpg")[:-5000]
    cases = {
        "neverball_pyramid_256.jpg": "",
        "pingus_fire_exif_rotated.jpg": "EXIF-rotated",
        "neverball_pyramid_cmyk.jpg": "not a three-component JPEG",
        "neverball_tennis_256.png": "not a three-component JPEG",
    }
    for name, why in cases.items():
        data = by_name(name)
        reason = decode_eligibility(inspect_image(data, max_pixels=10**8), data, spec)
        assert reason.startswith(why) if why else reason == "", (name, reason)
    assert decode_eligibility(inspect_image(grey, max_pixels=10**8), grey, spec)
    reason = decode_eligibility(inspect_image(truncated, max_pixels=10**8), truncated, spec)
    assert reason.startswith("no end-of-image marker")

    service, context, spy = start(exported_small)
    batch = [by_name("neverball_pyramid_256.jpg"), truncated, grey, b"not an image"]
    answers = [json.loads(a) for a in service.handle(requests_for(batch), context)]
    assert statuses(context, 4) == [200, 400, 200, 400]
    assert answers[1]["type"] == "CorruptImage" and answers[3]["type"] == "NotAnImage"
    assert spy.seen == batch[:1]


def test_headers_are_checked_before_the_decoder_sees_anything(exported_small):
    """A JPEG over the pixel limit, or too thin, is refused from its header alone."""
    service, context, spy = start(exported_small, max_image_pixels=300_000)
    big = encode(gradient_rgb(800, 600), "JPEG")
    thin = encode(gradient_rgb(2000, 20), "JPEG")
    good = by_name("neverball_pyramid_256.jpg")
    service.handle(requests_for([big, good, thin]), context)
    assert statuses(context, 3) == [413, 200, 400]
    assert spy.seen == [good]


def test_decoder_failures_fall_back_per_item(exported_cover, monkeypatch):
    """A JPEG the batch call chokes on is decoded alone, and, failing that, by Pillow, which
    judges it; a decoder that fails outright costs nothing but time."""
    good = [by_name(name) for name in PLAIN_JPEGS]
    broken = bytearray(good[1])
    broken[200:4000] = b"\xff\x00" * 1900  # garbage entropy data, end marker kept
    batch = [good[0], bytes(broken), good[2]]
    service, context, _ = start(exported_cover)
    answers = [json.loads(a) for a in service.handle(requests_for(batch), context)]
    codes = statuses(context, 3)
    assert codes[0] == codes[2] == 200 and codes[1] in (200, 400)
    reference = reference_probabilities(
        exported_cover.model, [good[0], good[2]], exported_cover.meta.preprocess
    )
    assert_answers_match([answers[0], answers[2]], reference, exported_cover.meta.class_names)

    def explode(uploads):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(service.preparer, "jpeg_decoder", explode)
    context = FakeContext(exported_cover.out_dir, "x")
    answers = [json.loads(a) for a in service.handle(requests_for(good), context)]
    assert statuses(context, 4) == [200] * 4
    reference = reference_probabilities(exported_cover.model, good, exported_cover.meta.preprocess)
    assert_answers_match(answers, reference, exported_cover.meta.class_names)


def test_exact_path_models_and_cpu_workers_keep_pillow(exported_screens, exported_small):
    service, _, _ = start(exported_screens)  # the export chose the exact path for it
    assert exported_screens.meta.preprocess.decode.path == "exact"
    assert service.preparer.jpeg_decoder is None
    config = HandlerConfig.from_yaml({})
    assert config.gpu_decode == "auto"
    assert not config.batch_jpeg_decode(torch.device("cpu"))
    assert config.batch_jpeg_decode(torch.device("cuda", 0))
    assert HandlerConfig.from_yaml({"gpu_decode": False}).gpu_decode == "off"  # YAML's bare off
    with pytest.raises(ValueError, match="gpu_decode"):
        HandlerConfig.from_yaml({"gpu_decode": "sometimes"})


def test_stage_times_are_recorded_per_batch(exported_small):
    service, context, _ = start(exported_small)
    recorded: list[tuple] = []

    class Metrics:
        def add_time(self, name, value, idx, unit, dimensions, metric_type):
            stage = next(d.value for d in dimensions if d.name == "Stage")
            recorded.append((name, value, unit, stage, metric_type.value))

        def add_counter(self, *args, **kwargs):
            pass

    context.metrics = Metrics()
    service.handle(requests_for([by_name("neverball_pyramid_256.jpg"), ALL[0]]), context)
    stages = [r[3] for r in recorded]
    assert stages == ["extract", "cache", "inspect", "gpu_decode", "decode", "model", "answer"]
    assert all(r[0] == "HandlerStageSeconds" and r[2] == "s" for r in recorded)
    assert all(r[4] == "histogram" and 0 <= r[1] < 30 for r in recorded)
    clock = StageClock()
    with clock.stage("x"):
        pass
    assert clock.describe().startswith("x 0.")


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    gradient_rgb(64, 64).convert("CMYK").save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none present")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_worker_decodes_jpegs_on_the_gpu(exported_small, precision):
    """On a GPU worker (gpu_decode auto): plain JPEGs decode with nvJPEG, crops within one grey
    level (mean) of the CPU decoder's, answers equal the user's pipeline; the rest fall back."""
    context = FakeContext(
        exported_small.out_dir,
        exported_small.meta.model_file("torchscript", precision),
        {"handler": {"precision": precision}},
        gpu_id=0,
    )
    service = ImageClassifierService()
    service.initialize(context)
    assert service.preparer.jpeg_decoder is not None
    spy = Spy(service.preparer.jpeg_decoder)
    service.preparer.jpeg_decoder = spy
    batch = [*ALL, _cmyk_jpeg()]
    answers = [json.loads(a) for a in service.handle(requests_for(batch), context)]
    assert statuses(context, len(batch)) == [200] * len(batch)
    reference = reference_probabilities(exported_small.model, batch, exported_small.meta.preprocess)
    assert_answers_match(answers, reference, exported_small.meta.class_names)
    assert len(spy.seen) == 3  # the project policy sends the EXIF-rotated one to Pillow
    spec = exported_small.meta.preprocess
    jpegs = [by_name(name) for name in PLAIN_JPEGS]
    on_gpu = BatchJpegDecoder(spec, torch.device("cuda", 0))(jpegs)
    on_cpu = BatchJpegDecoder(spec, torch.device("cpu"))(jpegs)
    for name, gpu, cpu in zip(PLAIN_JPEGS, on_gpu, on_cpu, strict=True):
        assert gpu.device.type == "cuda"
        assert (gpu.cpu().int() - cpu.int()).abs().float().mean() <= 1.0, name
