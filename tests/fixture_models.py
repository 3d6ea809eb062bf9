"""Fixture models that behave like trained ones: different images, different answers.

A randomly initialised network answers one class for everything (its BatchNorm statistics are
the init's 0/1, so every image saturates the same logit). A test on such a model proves
nothing about preprocessing, batching or class order: any mistake still gives "the same top-1".

`make_discriminative` turns a random model into one whose answers depend on the input, the way
a trained classifier's do, in a few seconds on a CPU:
1. BatchNorm running statistics are measured on real game images (train-mode pass, cumulative
   average), so activations have realistic scale and vary from image to image;
2. the final Linear layer is fitted (ridge regression on the penultimate features of a few
   augmented views per image) so that each image answers its given class with a clear margin.

It is seeded and deterministic. The guard tests (tests/test_fixture_models.py) fail if a fixture
model answers fewer distinct classes than it should or with too small a margin.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn

from modelspec.meta import PreprocessSpec


def _augmented_views(
    images: list[Image.Image], spec: PreprocessSpec, views: int, seed: int
) -> torch.Tensor:
    """Per image: its reference tensor, then `views` random crops/flips/colour jitters."""
    from torchvision import transforms

    from modelspec.reference import reference_transform

    reference = reference_transform(spec)
    augment = transforms.Compose(
        [
            transforms.RandomResizedCrop(spec.input_size, scale=(0.35, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(0.2, 0.2, 0.2),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )
    torch.manual_seed(seed)
    batches = [torch.stack([reference(image) for image in images])]
    for _ in range(views):
        batches.append(torch.stack([augment(image) for image in images]))
    return torch.cat(batches)  # view-major: row r shows image r % len(images)


def final_linear(model: nn.Module) -> nn.Linear:
    """The classification head: the last nn.Linear of the module tree (fc, classifier[-1])."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no Linear head")
    return linears[-1]


@torch.no_grad()
def _recalibrate_batchnorm(model: nn.Module, batch: torch.Tensor) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over what we show it
    model.train()
    model(torch.cat([batch, batch.flip(-1)]))
    for norm in norms:
        norm.momentum = 0.1
    model.eval()


@torch.no_grad()
def _penultimate(model: nn.Module, head: nn.Linear, batch: torch.Tensor) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda module, args, output: captured.append(args[0]))
    try:
        model(batch)
    finally:
        hook.remove()
    return captured[0].double()


def make_discriminative(
    model: nn.Module,
    images: list[Image.Image],
    labels: list[int],
    spec: PreprocessSpec,
    *,
    views: int = 3,
    margin: float = 7.0,
    ridge: float = 0.3,
    seed: int = 0,
) -> nn.Module:
    """Fit BatchNorm statistics and the head so image i of `images` answers class labels[i].

    `images` are RGB images as the server's decode policy produces them; the fitted model is
    returned in eval mode (the same object, changed in place).
    """
    head = final_linear(model)
    num_classes = head.out_features
    batch = _augmented_views(images, spec, views, seed)
    _recalibrate_batchnorm(model, batch[: len(images)])
    features = _penultimate(model, head, batch)
    mean = features.mean(0)
    centred = features - mean
    rows = len(batch)
    targets = torch.zeros(rows, num_classes, dtype=torch.float64)
    for row in range(rows):
        targets[row, labels[row % len(images)]] = margin
    targets -= targets.mean(0)
    # Kernel ridge regression (rows << feature dimension): W = Z^T (Z Z^T + lam I)^-1 T
    gram = centred @ centred.T
    lam = ridge * gram.trace() / rows
    alpha = torch.linalg.solve(gram + lam * torch.eye(rows, dtype=torch.float64), targets)
    weight = (centred.T @ alpha).T
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        head.bias.copy_((-(weight @ mean)).to(head.bias.dtype))
    return model.eval()
