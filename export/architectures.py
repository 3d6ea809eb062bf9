"""Build a classifier by name whose head matches a checkpoint's weights.

Names are those of modelspec.architectures: torchvision classification models ("resnet50",
"efficientnet_v2_s"), timm models with a "timm/" prefix ("timm/tf_efficientnet_lite0", the
project's default model) or the registry's names ("efficientnet_lite0").

Training projects often replace the head: ResNet's `fc` becomes Sequential(Dropout, Linear), or
EfficientNet's classifier keeps torchvision's own Sequential(Dropout, Linear). The number of
classes and the head's layout are read from the weights, never asked for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from modelspec.architectures import (
    HeadNotFoundError,
    UnknownArchitectureError,
    create_architecture,
    head_path,
    set_submodule,
)


class ArchitectureError(ValueError):
    """The weights do not fit the named architecture."""


def _create(arch: str) -> nn.Module:
    try:
        return create_architecture(arch)
    except UnknownArchitectureError as exc:
        raise ArchitectureError(str(exc)) from exc


def _head(model: nn.Module) -> str:
    try:
        return head_path(model)
    except HeadNotFoundError as exc:
        raise ArchitectureError(f"{exc}; export it as TorchScript") from exc


def _find_head_key(
    state_dict: Mapping[str, torch.Tensor], arch: str, head: str, in_features: int
) -> str:
    """The checkpoint key of the final Linear weight, under the head's path or its parent's."""
    roots = [head]
    if "." in head:
        roots.append(head.rsplit(".", 1)[0])
    for root in roots:
        pattern = re.compile(rf"^{re.escape(root)}(\.\d+)*\.weight$")
        keys = [
            k
            for k, v in state_dict.items()
            if pattern.match(k) and v.ndim == 2 and v.shape[1] == in_features
        ]
        if keys:
            return max(keys, key=lambda k: [int(p) for p in re.findall(r"\.(\d+)", k)] or [0])
    raise ArchitectureError(
        f"no classifier weight of shape (classes, {in_features}) under '{head}', as {arch} "
        "has: do these weights belong to another architecture? (check --arch)"
    )


def build_for_state_dict(arch: str, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """`arch` (random init, no download) with its head shaped to load `state_dict` strictly."""
    model = _create(arch)
    head = _head(model)
    in_features = model.get_submodule(head).in_features
    head_key = _find_head_key(state_dict, arch, head, in_features)
    num_classes = state_dict[head_key].shape[0]
    key_path = head_key[: -len(".weight")]
    linear = nn.Linear(in_features, num_classes, bias=f"{key_path}.bias" in state_dict)

    if key_path == head:
        set_submodule(model, head, linear)
        return model
    # The checkpoint's head differs in layout: rebuild it at the common root.
    head_parts, key_parts = head.split("."), key_path.split(".")
    common = 0
    while common < min(len(head_parts), len(key_parts)) and head_parts[common] == key_parts[common]:
        common += 1
    root, suffix = ".".join(key_parts[:common]), key_parts[common:]
    if not root or len(suffix) > 1 or (suffix and not suffix[0].isdigit()):
        raise ArchitectureError(
            f"unsupported classifier layout '{key_path}' for {arch}; export the model as "
            "TorchScript, or save it whole and pass --trust-checkpoint"
        )
    if not suffix:
        replacement: nn.Module = linear
    else:  # Sequential(Dropout, ..., Linear) with the Linear at that index; Dropout is a no-op
        replacement = nn.Sequential(*[nn.Dropout() for _ in range(int(suffix[0]))], linear)
    set_submodule(model, root, replacement)
    return model


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str) -> None:
    """load_state_dict(strict=True) with an error a person can act on."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        raise ArchitectureError(f"weights do not match {arch}: {str(exc)[:600]}") from exc
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys, e.g. {result.missing_keys[:4]}")
    if result.unexpected_keys:
        problems.append(
            f"unexpected {len(result.unexpected_keys)} keys, e.g. {result.unexpected_keys[:4]}"
        )
    if problems:
        raise ArchitectureError(f"weights do not match {arch}: " + "; ".join(problems))
