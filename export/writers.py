"""Write the serving formats: traced+frozen TorchScript and ONNX with a dynamic batch axis."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from modelspec.meta import ONNX_INPUT_NAME, ONNX_OUTPUT_NAME

log = logging.getLogger(__name__)
ONNX_OPSET = 18
MAX_BATCH = 4096


def example_batch(input_size: int, dtype: torch.dtype = torch.float32, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, input_size, input_size, generator=generator).to(dtype)


def write_torchscript(
    model: nn.Module, path: Path, example: torch.Tensor
) -> torch.jit.ScriptModule:
    """Trace (unless already TorchScript), freeze, save. Returns the saved module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        with torch.no_grad():
            if isinstance(model, torch.jit.ScriptModule):
                scripted = model
            else:
                scripted = torch.jit.trace(model, example, check_trace=False)
            if not _is_frozen(scripted):
                scripted = torch.jit.freeze(scripted.eval())
        torch.jit.save(scripted, str(path))
    return scripted


def _is_frozen(module: torch.jit.ScriptModule) -> bool:
    # freeze() inlines parameters into the graph, leaving none as attributes
    return not any(True for _ in module.parameters())


def write_onnx(model: nn.Module, path: Path, example: torch.Tensor) -> str:
    """Export with input 'input' (N,3,H,W) and output 'logits' (N,classes), N dynamic.

    Uses the torch.export-based exporter; TorchScript inputs (or models it cannot export) go
    through the older TorchScript-based exporter. Returns which exporter was used.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not isinstance(model, torch.jit.ScriptModule):
            try:
                batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    input_names=[ONNX_INPUT_NAME],
                    output_names=[ONNX_OUTPUT_NAME],
                    dynamic_shapes=({0: batch},),
                    opset_version=ONNX_OPSET,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                )
                _check(path)
                return "torch.export"
            except Exception as exc:
                log.warning("torch.export-based ONNX export failed (%s); using the legacy one", exc)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[ONNX_INPUT_NAME],
            output_names=[ONNX_OUTPUT_NAME],
            opset_version=17,
            dynamo=False,
            dynamic_axes={ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}},
        )
    _check(path)
    return "torchscript-legacy"


def _check(path: Path) -> None:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
