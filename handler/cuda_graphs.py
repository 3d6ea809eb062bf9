"""CUDA graphs for a GPU worker's TorchScript model: captured at load, replayed per batch.

At small batches a GPU worker waits on kernel launches, not on the GPU: on the H100 a
ResNet-50 fp16 batch of 1 took 3.4 ms as TorchScript and 0.93 ms replayed from a CUDA graph
(docs/benchmarks/h100-2026-11-23). A graph replays one fixed shape, so one is captured per
batch-size bucket (powers of two up to the archive's batch size, and that size) and a batch is
padded up to the smallest bucket that holds it. In eval mode the rows of a batch do not mix,
so the padding changes no answer. A batch larger than every bucket (an explanation's occlusion
batch) runs the plain model. The graphs share one memory pool, captured largest first.

Only TorchScript files: an AOTInductor package runs host code between its kernels and ONNX
Runtime has CUDA graphs of its own. Where graphs cannot be used (a CPU worker, another
backend, a capture that fails) the worker serves the plain model and its log says why.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)
WARMUP_RUNS = 3  # TorchScript's profiling executor settles on its optimised plan by the 3rd


def buckets_for(batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... below batch_size, and batch_size itself: 32 -> 1..32, 6 -> 1, 2, 4, 6."""
    sizes, size = {1}, 1
    while size < batch_size:
        size *= 2
        sizes.add(min(size, batch_size))
    return tuple(sorted(sizes))


def bucket_for(rows: int, buckets: tuple[int, ...]) -> int | None:
    """The smallest bucket holding `rows`, or None when none does."""
    return next((size for size in buckets if size >= rows), None)


class GraphedBackend:
    """Wraps a TorchScriptBackend on a GPU; the same interface (attributes pass through)."""

    def __init__(self, inner: Any, buckets: tuple[int, ...], input_shape: tuple[int, ...]):
        self.inner = inner
        self.buckets = buckets
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        device, pool = inner.device, None
        # the worker's GPU need not be the current device (gpu_id 3 of 4): every stream here is
        # made on it, or the capture would record another device's stream, i.e. nothing
        with torch.cuda.device(device):
            side = torch.cuda.Stream(device)
            for size in sorted(buckets, reverse=True):  # the largest first: the rest fit its pool
                shape = (size, *input_shape)
                static_in = torch.zeros(shape, dtype=inner.input_dtype, device=device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    for _ in range(WARMUP_RUNS):
                        inner.forward_on_device(static_in)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool, stream=torch.cuda.Stream(device)):
                    static_out = inner.forward_on_device(static_in)
                pool = graph.pool()
                self._graphs[size] = (graph, static_in, static_out)
        self.check()

    def check(self) -> None:
        """Each graph replayed on random input must give the plain model's logits: a capture
        that recorded nothing (a warning, not an error, in torch) would answer every image
        with the logits of a blank one."""
        for size, (graph, static_in, static_out) in self._graphs.items():
            probe = torch.randn(static_in.shape, device=static_in.device).to(static_in.dtype)
            with torch.no_grad():
                static_in.copy_(probe)
            graph.replay()
            replayed = static_out.float().cpu()
            plain = self.inner(probe)
            tolerance = 1e-2 if static_in.dtype == torch.float16 else 1e-3
            scale = max(1.0, float(plain.abs().max()))
            if not torch.allclose(replayed, plain, atol=tolerance * scale, rtol=0):
                raise RuntimeError(f"the CUDA graph for batch {size} does not match the model")

    def __getattr__(self, name: str) -> Any:  # name, device, input_dtype, module (Grad-CAM)
        return getattr(self.inner, name)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        size = bucket_for(len(batch), self.buckets)
        if size is None or batch.device != self.inner.device:
            return self.inner(batch)
        graph, static_in, static_out = self._graphs[size]
        with torch.no_grad():
            static_in[: len(batch)].copy_(batch)
        graph.replay()
        # copied out before the next replay overwrites it; one model thread per worker
        return static_out[: len(batch)].float().cpu()


def with_cuda_graphs(backend: Any, batch_size: int, input_size: int) -> Any:
    """The backend replaying CUDA graphs, or the backend itself where they cannot be used."""
    if backend.device.type != "cuda":
        log.info("cuda_graphs is on, but this worker runs on the CPU: plain model")
        return backend
    if not hasattr(backend, "forward_on_device"):
        log.warning("cuda_graphs: only TorchScript files are captured; %s runs plain", backend.name)
        return backend
    buckets = buckets_for(batch_size)
    previous = torch.cuda.current_stream(backend.device)
    try:
        graphed = GraphedBackend(backend, buckets, (3, input_size, input_size))
    except Exception:  # a model with host syncs cannot be captured: serve it as it is
        log.exception("capturing CUDA graphs failed; this worker runs the plain model")
        # a capture that failed at its end can leave this thread on the capture's stream
        torch.cuda.set_stream(previous)
        torch.cuda.synchronize(backend.device)
        return backend
    log.info("CUDA graphs captured for batch sizes %s", ", ".join(map(str, buckets)))
    return graphed
