"""RGB image -> model input. Per image: one resize of just the crop; per batch: one normalisation.

Resizing with a source box gives the same pixels as torchvision's Resize followed by CenterCrop
(Pillow's filter still reads pixels outside the box), while computing only the cropped output.
Normalisation runs once per batch on the model's device, in one fused multiply-add.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from modelspec.meta import PreprocessSpec


def resize_crop(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB PIL image -> (input_size, input_size, 3) uint8, equal to Resize + CenterCrop."""
    width, height = image.size
    resized_w, resized_h = spec.resized_size(width, height)
    left, top, right, bottom = spec.crop_box(width, height)
    scale_x, scale_y = width / resized_w, height / resized_h
    box = (left * scale_x, top * scale_y, right * scale_x, bottom * scale_y)
    size = (spec.input_size, spec.input_size)
    cropped = image.resize(size, Image.Resampling.BILINEAR, box=box)
    return np.asarray(cropped, dtype=np.uint8)


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

    def __call__(self, crops: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(crops))  # N, H, W, 3 uint8: 4x fewer bytes to copy
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        batch = batch.permute(0, 3, 1, 2).float()
        batch = torch.addcmul(-self.shift, batch, self.scale)
        return batch.to(self.dtype).contiguous()
