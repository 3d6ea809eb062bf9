"""The served image pipeline as pure functions: decoded image -> RGB -> uint8 crop -> batch.

The handler runs exactly these (after its own validation of the bytes); the export runs them
too, to measure bytes -> label against the reference pipeline (modelspec/reference.py) before a
model ships. Per image: the decode policy's RGB conversion, then resize + crop on uint8; per
batch: one normalisation on the model's device.

Fast path: PyTorch's antialiased bilinear kernel on uint8 (vectorised, about twice as fast as
Pillow's here, within one grey level of it) after a JPEG draft decode. Exact path: PIL's resize
on the fully decoded image, as torchvision's Resize on a PIL image does.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from modelspec.meta import DecodePolicy, PreprocessSpec

# JPEG draft decoding keeps both sides at least this multiple of resize_size (2.0 keeps the mean
# error near 0.2 grey levels); the handler's jpeg_draft_oversample setting may change it.
DEFAULT_DRAFT_OVERSAMPLE = 2.0
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_ORIENTATION = 0x0112  # the EXIF tag


def apply_draft(image: Image.Image, spec: PreprocessSpec, oversample: float) -> None:
    """Let libjpeg decode at 1/2, 1/4 or 1/8 scale (fast path, JPEG only; before loading)."""
    size = spec.draft_size(oversample)
    if size and image.format in ("JPEG", "MPO"):
        image.draft("RGB", (size, size))


def to_rgb(image: Image.Image, policy: DecodePolicy) -> Image.Image:
    """A decoded image in any Pillow mode -> 8-bit RGB, as the model's decode policy says."""
    if policy.exif:
        image = _apply_orientation(image)
    if policy.color == "convert":
        return image if image.mode == "RGB" else image.convert("RGB")
    return _composite_rgb(image, policy.background)


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip per the EXIF Orientation tag, as a photo viewer would (no copy without one)."""
    try:
        if image.getexif().get(_ORIENTATION, 1) == 1:
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block should not cost the prediction
        return image


def _composite_rgb(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB that looks like the image does on screen over `background`."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale: scale 0..65535 to 0..255; convert("L") would clip to white.
        values = np.asarray(image, dtype=np.uint32).clip(0, 65535)
        grey = ((values + 128) // 257).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode == "F":
        grey = (np.asarray(image, dtype=np.float32).clip(0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK (Adobe inversion handled by Pillow), YCbCr


def resize_crop(image: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """RGB PIL image -> (3, input_size, input_size) uint8: Resize then CenterCrop."""
    width, height = image.size
    resized_w, resized_h = spec.resized_size(width, height)
    left, top, right, bottom = spec.crop_box(width, height)
    if spec.decode.path == "exact":
        resized = image.resize((resized_w, resized_h), Image.Resampling.BILINEAR)
        pixels = np.array(resized.crop((left, top, right, bottom)), dtype=np.uint8)
        return torch.from_numpy(pixels).permute(2, 0, 1)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # H, W, 3 (a writable copy)
    return resize_crop_tensors(pixels.permute(2, 0, 1).unsqueeze(0), spec)[0]


def resize_crop_tensors(images: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(N, 3, H, W) uint8 of one size, on any device -> (N, 3, size, size) uint8: the fast
    path's antialiased bilinear Resize then CenterCrop. The CPU has a uint8 kernel; CUDA's
    works on floats, rounded back to uint8 so both devices hand the model the same kind of
    pixels (within one grey level of each other)."""
    height, width = images.shape[-2:]
    resized_w, resized_h = spec.resized_size(width, height)
    left, top, right, bottom = spec.crop_box(width, height)
    size = (resized_h, resized_w)
    if images.device.type == "cpu":
        resized = F.interpolate(
            images, size=size, mode="bilinear", antialias=True, align_corners=False
        )
    else:
        resized = F.interpolate(
            images.float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )
        resized = resized.round_().clamp_(0, 255).to(torch.uint8)
    return resized[:, :, top:bottom, left:right]


class Normalizer:
    """Stacks uint8 CHW crops into a normalised NCHW batch on one device, in one dtype.

    Crops stay uint8 until the whole batch is on the model's device (4x fewer bytes to copy),
    where normalisation is one fused multiply-add."""

    def __init__(self, spec: PreprocessSpec, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype
        std = torch.tensor(spec.std, dtype=torch.float32)
        mean = torch.tensor(spec.mean, dtype=torch.float32)
        # (x / 255 - mean) / std  ==  x * scale - shift
        self.scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device)
        self.shift = (mean / std).view(1, 3, 1, 1).to(device)

    def __call__(self, crops: list[torch.Tensor]) -> torch.Tensor:
        if all(crop.device == self.device for crop in crops):  # decoded on this device
            batch = torch.stack(crops)
        elif self.device.type == "cuda":
            # crops decoded on the CPU go over in one copy from page-locked memory (torch's
            # caching host allocator reuses those buffers from batch to batch)
            on_host = [i for i, crop in enumerate(crops) if crop.device.type == "cpu"]
            moved = torch.stack([crops[i] for i in on_host]).pin_memory()
            moved = moved.to(self.device, non_blocking=True)
            placed = dict(zip(on_host, moved, strict=True))
            batch = torch.stack([placed.get(i, crop) for i, crop in enumerate(crops)])
        else:
            batch = torch.stack([crop.to(self.device) for crop in crops])  # N, 3, H, W uint8
        batch = batch.float()
        batch = torch.addcmul(-self.shift, batch, self.scale)
        return batch.to(self.dtype).contiguous()


def served_crop(
    data: bytes, spec: PreprocessSpec, oversample: float = DEFAULT_DRAFT_OVERSAMPLE
) -> torch.Tensor:
    """Bytes -> the uint8 crop a worker computes for them (the handler adds validation first)."""
    image = Image.open(io.BytesIO(data))
    apply_draft(image, spec, oversample)
    image.load()
    return resize_crop(to_rgb(image, spec.decode), spec)
