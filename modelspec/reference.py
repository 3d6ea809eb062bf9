"""The reference pipeline: what the user's own eager code does with an image file.

For the torchvision policy that is literally `Image.open(f).convert("RGB")` followed by
torchvision's Resize / CenterCrop / ToTensor / Normalize on the PIL image, as torchvision's
ImageFolder loader and both original training projects do. For the project policy it is the
same written the way a training script would with plain Pillow calls (exif_transpose, an
alpha_composite over the background, 16-bit divided by 257), independently of the served code
in modelspec/imaging.py, so the two check each other.

The handler has its own faster path (modelspec/imaging.py); the export's parity check and the
tests compare against this one.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from modelspec.meta import PreprocessSpec


def reference_transform(spec: PreprocessSpec):
    """torchvision transforms equal to the training projects' eval transform."""
    from torchvision import transforms

    size = spec.resize_size if spec.resize_mode == "shorter_side" else (spec.resize_size,) * 2
    return transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(spec.input_size),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )


def reference_rgb(image: Image.Image, spec: PreprocessSpec) -> Image.Image:
    """A freshly opened image (EXIF and transparency intact) -> RGB, per the decode policy."""
    policy = spec.decode
    if policy.exif:
        image = ImageOps.exif_transpose(image)
    if policy.color == "convert":
        return image.convert("RGB")  # torchvision's pil_loader, exactly
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.round(np.asarray(image, dtype=np.float64).clip(0, 65535) / 257)
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    background = Image.new("RGBA", image.size, (*policy.background, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")


def reference_tensor(image: Image.Image, spec: PreprocessSpec):
    """One opened PIL image -> normalised CHW float tensor, via the reference pipeline."""
    return reference_transform(spec)(reference_rgb(image, spec))


def reference_tensor_of(data: bytes, spec: PreprocessSpec):
    """Image file bytes -> normalised CHW float tensor, via the reference pipeline."""
    with Image.open(io.BytesIO(data)) as image:
        return reference_tensor(image, spec)
