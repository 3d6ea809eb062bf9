"""Model runners: TorchScript, ONNX Runtime and AOTInductor, each on CPU or on the worker's GPU.

A backend takes a normalised NCHW batch already on its device (in its dtype) and returns float32
logits on the CPU.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from modelspec.aoti import AotiModel
from modelspec.meta import ONNX_INPUT_NAME, ONNX_OUTPUT_NAME

log = logging.getLogger(__name__)
# TorchScript is deprecated upstream but is what this backend serves; keep the worker log clean.
warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)


class Backend(Protocol):
    name: str
    device: torch.device
    input_dtype: torch.dtype

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


def select_device(gpu_id: int | str | None) -> torch.device:
    """The worker's GPU when TorchServe assigned one and CUDA is usable, else the CPU."""
    if gpu_id is not None and str(gpu_id) != "" and torch.cuda.is_available():
        return torch.device("cuda", int(gpu_id))
    return torch.device("cpu")


def onnx_providers(device: torch.device) -> list:
    """ORT providers for a worker: CUDA pinned to its GPU id (CPU as fallback), or CPU only."""
    if device.type == "cuda":
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TorchScriptBackend:
    name = "torchscript"

    def __init__(self, path: Path, device: torch.device, precision: str, threads: int):
        torch.set_num_threads(threads)
        self.device = device
        self.input_dtype = torch.float16 if precision == "fp16" else torch.float32
        self.module = torch.jit.load(str(path), map_location=device).eval()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.forward_on_device(batch).float().cpu()

    def forward_on_device(self, batch: torch.Tensor) -> torch.Tensor:
        """The logits where the model ran, in its dtype: what a CUDA graph captures."""
        with torch.inference_mode():
            return self.module(batch)


class OnnxBackend:
    name = "onnx"

    def __init__(self, path: Path, device: torch.device, precision: str, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device))
        if device.type == "cuda" and "CUDAExecutionProvider" not in self.session.get_providers():
            log.warning("ONNX Runtime could not use CUDA; this worker runs ONNX on the CPU")
            device = torch.device("cpu")
        self.device = device
        input_type = self.session.get_inputs()[0].type
        self.input_dtype = torch.float16 if "float16" in input_type else torch.float32
        self._numpy_dtype = np.float16 if self.input_dtype == torch.float16 else np.float32
        self._num_classes = int(self.session.get_outputs()[0].shape[-1])

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return self._run_on_gpu(batch)
        (logits,) = self.session.run([ONNX_OUTPUT_NAME], {ONNX_INPUT_NAME: batch.numpy()})
        return torch.from_numpy(logits).float()

    def _run_on_gpu(self, batch: torch.Tensor) -> torch.Tensor:
        """Bind torch's GPU buffers directly, so the batch never round-trips through the host."""
        batch = batch.contiguous()
        out = torch.empty(
            (batch.shape[0], self._num_classes), dtype=self.input_dtype, device=self.device
        )
        binding = self.session.io_binding()
        common = {"device_type": "cuda", "device_id": self.device.index or 0}
        binding.bind_input(
            name=ONNX_INPUT_NAME,
            element_type=self._numpy_dtype,
            shape=tuple(batch.shape),
            buffer_ptr=batch.data_ptr(),
            **common,
        )
        binding.bind_output(
            name=ONNX_OUTPUT_NAME,
            element_type=self._numpy_dtype,
            shape=tuple(out.shape),
            buffer_ptr=out.data_ptr(),
            **common,
        )
        # ORT runs on its own stream: the batch torch wrote must be complete first.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out.float().cpu()


class AotBackend:
    """An AOTInductor package (.pt2): compiled at export, so loading is a dlopen, not a compile.

    The package says what it needs (modelspec/aoti.py): a CUDA one on a CPU worker, or one built
    by another torch version, is refused with a ValueError saying why."""

    name = "aoti"

    def __init__(self, path: Path, device: torch.device, precision: str, threads: int):
        torch.set_num_threads(threads)
        self.model = AotiModel(path, device)
        if self.model.info.precision != precision:
            raise ValueError(
                f"{Path(path).name} is an {self.model.info.precision} package, but the handler "
                f"is configured for {precision}"
            )
        if self.model.device != device:
            log.warning("%s was compiled for the CPU; this worker runs it there", Path(path).name)
        self.device = self.model.device
        self.input_dtype = self.model.info.dtype

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)


def load_backend(
    path: Path, backend: str, device: torch.device, precision: str, threads: int
) -> Backend:
    if backend == "torchscript":
        return TorchScriptBackend(path, device, precision, threads)
    if backend == "onnx":
        return OnnxBackend(path, device, precision, threads)
    if backend == "aoti":
        return AotBackend(path, device, precision, threads)
    raise ValueError(f"unknown backend {backend!r}")
