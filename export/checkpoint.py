"""Load what users bring: state_dicts in their usual wrappings, whole pickled modules, TorchScript.

Formats, detected from the file:
- TorchScript archive (torch.jit.save): code, so only
  with --trust-checkpoint                            -> "torchscript"
- whole module, torch.save(model); runs pickled code,
  so only with --trust-checkpoint                      -> "pickled-module"
- {"model_state_dict": ...}, {"state_dict": ...}, ...  -> "state-dict-in-<key>"
- plain state_dict                                     -> "state-dict"
State dict keys may carry "module." (DataParallel), "model." (a wrapper module) or "_orig_mod."
(torch.compile) prefixes.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export.architectures import build_for_state_dict, load_strict

STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "net", "weights")
CLASS_NAME_KEYS = ("class_names", "classes", "idx_to_class", "class_to_idx", "labels")
STRIPPABLE_PREFIXES = ("module.", "model.", "_orig_mod.")


class CheckpointError(ValueError):
    """The checkpoint cannot be loaded as given; the message says what to do."""


@dataclass
class LoadedModel:
    model: nn.Module
    architecture: str
    format: str
    class_names: list[str] | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. val_acc, epoch
    preprocess: dict[str, Any] | None = None  # as recorded by scripts/train.py
    sha256: str = ""

    @property
    def is_torchscript(self) -> bool:
        return isinstance(self.model, torch.jit.ScriptModule)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name and name.endswith(".py") for name in archive.namelist())


def load_checkpoint(path: Path, arch: str | None = None, trust: bool = False) -> LoadedModel:
    """Load any supported checkpoint as an eval-mode module on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    digest = sha256_of(path)
    if is_torchscript_archive(path):
        if not trust:
            raise CheckpointError(
                f"{path.name} is a TorchScript file: it carries code that runs when it is "
                "loaded. If you trust where it came from, re-run with --trust-checkpoint."
            )
        model = torch.jit.load(str(path), map_location="cpu").eval()
        return LoadedModel(model, arch or "torchscript", "torchscript", sha256=digest)

    obj = _torch_load(path, trust)
    loaded = _from_object(obj, arch)
    loaded.model.eval()
    loaded.sha256 = digest
    return loaded


def _torch_load(path: Path, trust: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler refusing a Python object, vs a file that is not a pickle.
        if "global" not in str(exc).lower():
            raise CheckpointError(f"{path.name} is not a PyTorch checkpoint: {exc}") from exc
        if not trust:
            raise CheckpointError(
                f"{path.name} holds pickled Python objects (for example a whole model saved "
                "with torch.save(model)); loading it runs code stored in the file. If you "
                "trust where it came from, re-run with --trust-checkpoint."
            ) from exc
    except Exception as exc:
        raise CheckpointError(f"{path.name} is not a PyTorch checkpoint: {exc}") from exc
    return torch.load(path, map_location="cpu", weights_only=False)


def _from_object(obj: Any, arch: str | None) -> LoadedModel:
    if isinstance(obj, nn.Module):
        name = arch or type(obj).__name__
        return LoadedModel(obj, name, "pickled-module")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"unsupported checkpoint content: {type(obj).__name__}")

    if _is_state_dict(obj):
        return _build(obj, arch, "state-dict", None, {})
    extras = {k: v for k, v in obj.items() if isinstance(v, (int, float, str)) and k != "arch"}
    class_names = _class_names_from(obj)
    arch = arch or (obj["arch"] if isinstance(obj.get("arch"), str) else None)
    for key in STATE_DICT_KEYS:
        value = obj.get(key)
        if isinstance(value, nn.Module):
            fmt = f"pickled-module-in-{key}"
            return LoadedModel(value, arch or type(value).__name__, fmt, class_names, extras)
        if isinstance(value, Mapping) and _is_state_dict(value):
            loaded = _build(value, arch, f"state-dict-in-{key}", class_names, extras)
            if isinstance(obj.get("preprocess"), Mapping):
                loaded.preprocess = dict(obj["preprocess"])
            return loaded
    raise CheckpointError(
        "found no weights in the checkpoint; expected a state_dict, or a dict with one of "
        f"{list(STATE_DICT_KEYS)} (keys present: {sorted(map(str, obj))[:10]})"
    )


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes shared by every key, repeatedly ("module.model.fc" -> "fc")."""
    keys = list(state_dict)
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPABLE_PREFIXES:
            if keys and all(k.startswith(prefix) for k in keys):
                keys = [k[len(prefix) :] for k in keys]
                changed = True
    return dict(zip(keys, state_dict.values(), strict=True))


def _build(state_dict: Mapping, arch: str | None, fmt: str, class_names, extras) -> LoadedModel:
    if not arch:
        raise CheckpointError(
            "this checkpoint holds weights only; name the architecture with --arch "
            "(for example resnet50 or efficientnet_v2_s)"
        )
    state_dict = strip_prefixes(state_dict)
    model = build_for_state_dict(arch, state_dict)
    load_strict(model, state_dict, arch)
    return LoadedModel(model, arch, fmt, class_names, extras)


def _class_names_from(obj: Mapping) -> list[str] | None:
    for key in CLASS_NAME_KEYS:
        value = obj.get(key)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
        if isinstance(value, Mapping) and value:
            if key == "class_to_idx":
                return [name for name, _ in sorted(value.items(), key=lambda kv: kv[1])]
            return [str(value[i]) for i in sorted(value)]
    return None
