"""Write the serving formats: traced+frozen TorchScript and ONNX with a dynamic batch axis.

The TorchScript file also carries an `explain` method, (logits, the last convolutional stage's
activations), which the handler's Grad-CAM differentiates (handler/explain.py).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from modelspec.meta import EXPLAIN_METHOD, ONNX_INPUT_NAME, ONNX_OUTPUT_NAME

log = logging.getLogger(__name__)
ONNX_OPSET = 18
MAX_BATCH = 4096


def example_batch(input_size: int, dtype: torch.dtype = torch.float32, batch: int = 2):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, input_size, input_size, generator=generator).to(dtype)


def write_torchscript(
    model: nn.Module, path: Path, example: torch.Tensor, cam_layer: str = ""
) -> torch.jit.ScriptModule:
    """Trace (unless already TorchScript), freeze, save. Returns the saved module. With
    `cam_layer` (see last_conv_stage) the file gets an `explain` method beside `forward`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        with torch.no_grad():
            if isinstance(model, torch.jit.ScriptModule):
                scripted = model
            elif cam_layer:
                methods = {"forward": example, EXPLAIN_METHOD: example}
                scripted = torch.jit.trace_module(
                    _WithFeatures(model, cam_layer), methods, check_trace=False
                )
            else:
                scripted = torch.jit.trace(model, example, check_trace=False)
            if not _is_frozen(scripted):
                preserved = [EXPLAIN_METHOD] if hasattr(scripted, EXPLAIN_METHOD) else []
                scripted = torch.jit.freeze(scripted.eval(), preserved_attrs=preserved)
        torch.jit.save(scripted, str(path))
    return scripted


def last_conv_stage(model: nn.Module, example: torch.Tensor) -> str:
    """The module Grad-CAM reads: the last one to finish with a spatial (N, C, H>1, W>1)
    output, i.e. the last convolutional stage before global pooling ("layer4" for ResNet,
    "features" for torchvision's EfficientNet, "bn2" for timm's). "" if none (or TorchScript)."""
    if isinstance(model, torch.jit.ScriptModule):
        return ""
    finished: list[tuple[str, torch.Tensor]] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: finished.append((name, out)))
        for name, module in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    spatial = [
        name
        for name, out in finished
        if isinstance(out, torch.Tensor) and out.ndim == 4 and min(out.shape[2:]) > 1
    ]
    return spatial[-1] if spatial else ""


class _WithFeatures(nn.Module):
    """forward as the model's; explain also returns the activations of `layer`."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model = model
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def explain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        hook = self.model.get_submodule(self.layer).register_forward_hook(
            lambda _m, _i, out: captured.append(out)
        )
        try:
            logits = self.model(x)
        finally:
            hook.remove()
        return logits, captured[-1]


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
