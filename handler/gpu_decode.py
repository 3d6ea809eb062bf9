"""JPEG bytes -> uint8 crops on the worker's device, a whole batch at once (nvJPEG on a GPU).

On a GPU worker the CPU was the bottleneck: Huffman + IDCT + resize of a 600x800 cover take
~5 ms of a host core against ~0.13 ms on the GPU (docs/benchmarks/h100-2026-11-23). Here the
CPU only reads headers (handler/decode.py's inspect_image: format, structure, pixel count,
aspect ratio), so a bomb never reaches the GPU; the pixels are decoded by torchvision's
batched decode_jpeg (nvJPEG) and resized + cropped by the same kernel as the fast path's.

Only what both decoders turn into the same RGB goes this way (decode_eligibility); the rest,
and any JPEG the batched decoder refuses, is decoded on the CPU by the caller, per item.
The same code runs on a CPU device with libjpeg-turbo, which is how the tests check it here.
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from handler.decode import Inspected
from modelspec.imaging import resize_crop_tensors
from modelspec.meta import PreprocessSpec

log = logging.getLogger(__name__)
# torchvision >= 0.29 marks its image codecs deprecated in favour of TorchCodec, which has no
# batched nvJPEG decode yet; the warning would be one line per batch in the worker log.
warnings.filterwarnings("ignore", message=r".*(TorchCodec|deprecated).*", module="torchvision")
_EOI = b"\xff\xd9"


def decode_eligibility(inspected: Inspected, data: bytes, spec: PreprocessSpec) -> str:
    """'' when this decoder gives the pixels the model's decode policy asks for, else why not.
    Per image; whether the model can use the decoder at all is serves_model's question."""
    if not inspected.plain_jpeg:
        return "not a three-component JPEG"
    if not data.rstrip(b"\x00").endswith(_EOI):
        return "no end-of-image marker (truncated or trailing data): the CPU decoder judges it"
    if spec.decode.exif and inspected.orientation() != 1:
        return "EXIF-rotated, and the decode policy applies rotation"
    return ""


def serves_model(spec: PreprocessSpec) -> bool:
    """The decoder resizes with the fast path's kernel: a model whose export chose the exact
    path (PIL's resize) keeps Pillow for every image."""
    return spec.decode.path == "fast"


class BatchJpegDecoder:
    """A list of JPEG uploads -> one (3, size, size) uint8 crop each on `device`, or None
    where the decoder failed on that item (the caller decodes it on the CPU instead)."""

    def __init__(self, spec: PreprocessSpec, device: torch.device):
        self.spec = spec
        self.device = device

    def __call__(self, uploads: list[bytes]) -> list[torch.Tensor | None]:
        if not uploads:
            return []
        images = self._decode(uploads)
        crops: list[torch.Tensor | None] = [None] * len(uploads)
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            if image is not None and image.shape[0] == 3:
                by_size[tuple(image.shape[-2:])].append(index)
        # uploads of one size (covers exported at one resolution, say) share one resize call
        for indices in by_size.values():
            resized = resize_crop_tensors(torch.stack([images[i] for i in indices]), self.spec)
            for index, crop in zip(indices, resized, strict=True):
                crops[index] = crop
        return crops

    def _decode(self, uploads: list[bytes]) -> list[torch.Tensor | None]:
        # bytearray: decode_jpeg wants writable CPU tensors; the copy is one memcpy per upload
        tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in uploads]
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError as exc:  # the batch call gives no partial results: one by one
            log.info("batched JPEG decode failed (%s); decoding %d items singly", exc, len(tensors))
        images: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                images.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                images.append(None)
        return images
