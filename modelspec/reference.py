"""The reference preprocessing: the torchvision pipeline the original models were trained with.

The handler has its own faster path (draft decoding, crop-before-resize, batched normalisation);
tests and the export parity check compare against this one.
"""

from __future__ import annotations

from PIL import Image

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


def reference_tensor(image: Image.Image, spec: PreprocessSpec):
    """One RGB PIL image -> normalised CHW float tensor, via the reference pipeline."""
    return reference_transform(spec)(image.convert("RGB"))
