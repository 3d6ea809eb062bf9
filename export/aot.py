"""AOTInductor: the model compiled ahead of time into a .pt2 package, so workers load a shared
library instead of compiling (torch.compile's minutes) at start-up.

torch.export captures the graph with a dynamic batch dimension; inductor compiles it and packages
the code with the weights. On CUDA the package takes the fast GPU configuration (fp16 weights,
channels_last activations); on the CPU it is fp32. The package records what it needs to run
(modelspec/aoti.py): that device type, this torch version and, on CUDA, this GPU's architecture.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from export.writers import example_batch
from modelspec.aoti import AotiError, AotiInfo
from modelspec.meta import MODEL_FILES

# The dynamic batch's upper bound (a package does not check it: AotiModel splits larger batches).
# TorchServe's batchSize is rarely above 64.
MAX_BATCH = 256


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def precision_for(device: str) -> str:
    return "fp16" if device == "cuda" else "fp32"


def files_entry(device: str) -> tuple[str, str]:
    """The model_meta.json files entry ("aoti/fp16", "model.fp16.aoti.pt2") for a device."""
    precision = precision_for(device)
    return f"aoti/{precision}", MODEL_FILES[("aoti", precision)]


class _ChannelsLastInput(nn.Module):
    """Converts contiguous NCHW input to channels_last inside the compiled graph.

    Every backend takes contiguous NCHW, and a package trusts its example's strides without
    checking them: compiled for one layout and fed another, it answers wrong logits silently
    (measured: |Δlogit| ~5e-3 on a small CNN). So the input contract stays contiguous and the
    layout change is the graph's first kernel."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last))


def write_aoti(
    model: nn.Module,
    path: Path,
    input_size: int,
    device: str,
    *,
    channels_last: bool | None = None,
    max_batch: int = MAX_BATCH,
) -> AotiInfo:
    """Compile `model` for `device` into the package `path`; returns what it recorded.

    channels_last defaults to on for CUDA; tests turn it on for the CPU to check the layout."""
    if isinstance(model, torch.jit.ScriptModule):
        raise AotiError(
            "--aot needs the model's Python code (torch.export cannot capture TorchScript): "
            "export from the original checkpoint"
        )
    if device == "cuda" and not torch.cuda.is_available():
        raise AotiError("--aot-device cuda needs a CUDA GPU, and none is visible")
    target = torch.device(device)
    info = AotiInfo(
        device=device,
        precision=precision_for(device),
        torch=torch.__version__,
        max_batch=max_batch,
        channels_last=device == "cuda" if channels_last is None else channels_last,
        cuda_capability="{}.{}".format(*torch.cuda.get_device_capability(target))
        if device == "cuda"
        else "",
    )
    net = copy.deepcopy(model).eval().to(target, info.dtype)
    if info.channels_last:
        net = _ChannelsLastInput(net.to(memory_format=torch.channels_last))
    # batch 2, not 1: torch.export specialises a dimension whose example size is 1
    example = example_batch(input_size, batch=2).to(target, info.dtype)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    from torch._inductor import aoti_compile_and_package

    with torch.no_grad():
        program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
        aoti_compile_and_package(
            program,
            package_path=str(path),
            inductor_configs={"aot_inductor.metadata": info.to_metadata()},
        )
    return info
