"""Build a classifier by name whose head matches a checkpoint's weights.

Names are torchvision classification models ("resnet50", "efficientnet_v2_s") or timm models
with a "timm/" prefix ("timm/tf_efficientnet_lite0", the project's default model).

Training projects often replace the head: ResNet's `fc` becomes Sequential(Dropout, Linear), or
EfficientNet's classifier keeps torchvision's own Sequential(Dropout, Linear). The number of
classes and the head's layout are read from the weights, never asked for.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn


class ArchitectureError(ValueError):
    """The weights do not fit the named architecture."""


TIMM_PREFIX = "timm/"


def known_architectures() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def create_architecture(arch: str) -> nn.Module:
    """A randomly initialised model (never a download) of the named architecture."""
    if arch.startswith(TIMM_PREFIX):
        import timm

        name = arch[len(TIMM_PREFIX) :]
        if name not in timm.list_models():
            raise ArchitectureError(f"timm has no model {name!r}")
        return timm.create_model(name, pretrained=False)
    import torchvision

    if arch not in known_architectures():
        raise ArchitectureError(
            f"unknown architecture {arch!r}; use a torchvision classification model ("
            + ", ".join(known_architectures())
            + f") or a timm model as '{TIMM_PREFIX}<name>'"
        )
    return torchvision.models.get_model(arch, weights=None)


def _final_linear_name(model: nn.Module) -> str:
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not names:
        raise ArchitectureError(
            f"{type(model).__name__} has no Linear classifier head; export it as TorchScript"
        )
    return names[-1]


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


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)


def build_for_state_dict(arch: str, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """`arch` (random init, no download) with its head shaped to load `state_dict` strictly."""
    model = create_architecture(arch)
    head = _final_linear_name(model)
    in_features = model.get_submodule(head).in_features
    head_key = _find_head_key(state_dict, arch, head, in_features)
    num_classes = state_dict[head_key].shape[0]
    head_path = head_key[: -len(".weight")]
    linear = nn.Linear(in_features, num_classes, bias=f"{head_path}.bias" in state_dict)

    if head_path == head:
        _set_submodule(model, head, linear)
        return model
    # The checkpoint's head differs in layout: rebuild it at the common root.
    head_parts, key_parts = head.split("."), head_path.split(".")
    common = 0
    while common < min(len(head_parts), len(key_parts)) and head_parts[common] == key_parts[common]:
        common += 1
    root, suffix = ".".join(key_parts[:common]), key_parts[common:]
    if not root or len(suffix) > 1 or (suffix and not suffix[0].isdigit()):
        raise ArchitectureError(
            f"unsupported classifier layout '{head_path}' for {arch}; export the model as "
            "TorchScript, or save it whole and pass --trust-checkpoint"
        )
    if not suffix:
        replacement: nn.Module = linear
    else:  # Sequential(Dropout, ..., Linear) with the Linear at that index; Dropout is a no-op
        replacement = nn.Sequential(*[nn.Dropout() for _ in range(int(suffix[0]))], linear)
    _set_submodule(model, root, replacement)
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
