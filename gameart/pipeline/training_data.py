"""The training data: ImageFolder read with the server's own decoder, train-time augmentation,
and a validation split carved from train/ by file hash (stable on any machine)."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from handler.decode import decode_image
from modelspec.meta import PROJECT_POLICY, PreprocessSpec


def load_rgb(path: str):
    """The server's own decoder and the project's decode policy (alpha over white, EXIF
    applied, 16-bit rescaled), recorded in the checkpoint so serving does the same."""
    with open(path, "rb") as handle:
        return decode_image(handle.read(), max_pixels=100_000_000, policy=PROJECT_POLICY)


def train_transform(spec: PreprocessSpec):
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.RandomResizedCrop(spec.input_size, scale=(0.35, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )


def image_folder(root: Path, transform):
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(root), transform=transform, loader=load_rgb)


def val_indices(dataset, val_percent: int) -> tuple[list[int], list[int]]:
    """Split train/ by file-name hash (the dataset names files by pixel hash): stable anywhere."""
    import zlib

    train, val = [], []
    for index, (path, _) in enumerate(dataset.samples):
        bucket = zlib.crc32(Path(path).name.encode()) % 100
        (val if bucket < val_percent else train).append(index)
    return train, val


class Transformed(Dataset):
    """The same samples with another transform (val needs eval preprocessing)."""

    def __init__(self, base, indices: list[int], transform):
        self.base, self.indices, self.transform = base, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        path, label = self.base.samples[self.indices[i]]
        return self.transform(self.base.loader(path)), label
