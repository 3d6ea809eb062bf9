"""RGB image -> model input. Per image: resize + crop on uint8; per batch: one normalisation.

The resize is PyTorch's antialiased bilinear kernel on uint8 (vectorised; about twice as fast as
Pillow's here) and lands within one grey level of torchvision's PIL-based Resize. Crops stay
uint8 until the whole batch is on the model's device (4x fewer bytes to copy), where
normalisation is one fused multiply-add.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from modelspec.meta import PreprocessSpec


def resize_crop(image: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """RGB PIL image -> (3, input_size, input_size) uint8: Resize then CenterCrop."""
    width, height = image.size
    resized_w, resized_h = spec.resized_size(width, height)
    left, top, right, bottom = spec.crop_box(width, height)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # H, W, 3 (a writable copy)
    batch = pixels.permute(2, 0, 1).unsqueeze(0)
    resized = F.interpolate(
        batch, size=(resized_h, resized_w), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0, :, top:bottom, left:right]


class Normalizer:
    """Stacks uint8 HWC crops into a normalised NCHW batch on one device, in one dtype."""

    def __init__(self, spec: PreprocessSpec, device: torch.device, dtype: torch.dtype):
        self.device = device
        self.dtype = dtype
        std = torch.tensor(spec.std, dtype=torch.float32)
        mean = torch.tensor(spec.mean, dtype=torch.float32)
        # (x / 255 - mean) / std  ==  x * scale - shift
        self.scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1).to(device)
        self.shift = (mean / std).view(1, 3, 1, 1).to(device)

    def __call__(self, crops: list[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack(crops)  # N, 3, H, W uint8
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        batch = batch.float()
        batch = torch.addcmul(-self.shift, batch, self.scale)
        return batch.to(self.dtype).contiguous()
