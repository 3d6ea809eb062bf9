"""Preprocessing cost per image: decode + resize + crop + normalise, by each method we could
serve with (the reference PIL pipeline, the handler's two paths, torchvision.io, nvJPEG)."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence

import torch

from gameart.measure.benchmark.spec import Plan
from gameart.measure.uploads import Upload
from handler.decode import decode_image
from modelspec.imaging import (
    DEFAULT_DRAFT_OVERSAMPLE,
    Normalizer,
    resize_crop,
    resize_crop_tensors,
)
from modelspec.meta import PreprocessSpec
from modelspec.reference import reference_rgb, reference_transform

NVJPEG = "nvJPEG batched decode (GPU)"


def preprocess_methods(spec: PreprocessSpec, devices: list[str]):
    """name -> function(upload bytes) doing decode + resize + crop + normalise for one image."""
    from PIL import Image
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode
    from torchvision.transforms.v2 import functional as F

    reference = reference_transform(spec)
    cpu = torch.device("cpu")
    normalizer = Normalizer(spec, cpu, torch.float32)
    crop_size = [spec.input_size, spec.input_size]
    resize = spec.resize_size if spec.resize_mode == "shorter_side" else [spec.resize_size] * 2

    def torchvision_pil(data: bytes):
        import io

        return reference(reference_rgb(Image.open(io.BytesIO(data)), spec))

    def handler(path: str):
        path_spec = dataclasses.replace(spec, decode=dataclasses.replace(spec.decode, path=path))
        draft = path_spec.draft_size(DEFAULT_DRAFT_OVERSAMPLE)

        def run(data: bytes):
            image = decode_image(
                data, max_pixels=10**9, policy=path_spec.decode, draft_min_size=draft
            )
            return normalizer([resize_crop(image, path_spec)])

        return run

    def torchvision_io(data: bytes):
        tensor = tv_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
        tensor = F.center_crop(F.resize(tensor, resize, antialias=True), crop_size)
        return F.normalize(tensor.float() / 255, spec.mean, spec.std)

    methods = {
        "PIL + torchvision transforms (reference)": torchvision_pil,
        "handler, exact path (full decode, PIL resize)": handler("exact"),
        "handler, fast path (JPEG draft x2, PyTorch resize)": handler("fast"),
        "torchvision.io decode (CPU)": torchvision_io,
    }
    if "cuda" in devices:
        methods[NVJPEG] = None  # measured per batch, see bench_nvjpeg
    return methods


def bench_preprocess(
    spec: PreprocessSpec, uploads: Sequence[Upload], devices: list[str], plan: Plan
) -> list[dict]:
    rows = []
    for name, method in preprocess_methods(spec, devices).items():
        for upload in uploads:
            if method is None:
                row = bench_nvjpeg(spec, upload, plan)
                if row is None:
                    continue
            else:
                method(upload.body)
                times = []
                for _ in range(plan.preprocess_reps):
                    t0 = time.perf_counter()
                    method(upload.body)
                    times.append(time.perf_counter() - t0)
                row = {"ms_per_image": round(statistics.median(times) * 1e3, 3)}
            rows.append(
                {
                    "method": name,
                    "image": upload.name,
                    "size": f"{upload.size[0]}x{upload.size[1]}",
                    **row,
                }
            )
            print(f"  {name:42s} {upload.name:22s} {row['ms_per_image']:8.2f} ms/image", flush=True)
    return rows


def resize_crop_normalize(
    images: Sequence[torch.Tensor], spec: PreprocessSpec, normalizer: Normalizer
) -> torch.Tensor:
    """Decoded (3, H, W) uint8 images, on any device -> the model's normalised batch.

    Resized as the spec's resize_mode says (shorter side or square, by spec.resized_size, the
    rule resize_crop follows on the CPU) with the handler's kernel; images of one size share
    one resize call, as in the handler's GPU decoder (handler/gpu_decode.py)."""
    crops: list[torch.Tensor | None] = [None] * len(images)
    by_size: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        by_size.setdefault(tuple(image.shape), []).append(index)
    for indices in by_size.values():
        resized = resize_crop_tensors(torch.stack([images[i] for i in indices]), spec)
        for index, crop in zip(indices, resized, strict=True):
            crops[index] = crop
    return normalizer(crops)


def bench_nvjpeg(spec: PreprocessSpec, upload: Upload, plan: Plan, batch: int = 32) -> dict | None:
    """torchvision.io.decode_jpeg on the GPU for a batch of JPEGs, then resize/normalise there."""
    if upload.content_type != "image/jpeg":
        return None
    from torchvision.io import decode_jpeg

    device = torch.device("cuda")
    data = [torch.frombuffer(bytearray(upload.body), dtype=torch.uint8)] * batch
    normalizer = Normalizer(spec, device, torch.float32)

    def run():
        return resize_crop_normalize(decode_jpeg(data, device=device), spec, normalizer)

    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(plan.preprocess_reps):
        t0 = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"ms_per_image": round(statistics.median(times) * 1e3 / batch, 3), "batch": batch}
