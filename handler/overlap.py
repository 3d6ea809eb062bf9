"""Inside one worker: preparing micro-batch k+1 overlaps the model call on micro-batch k.

A batch is split into micro-batches. The first is prepared (checked, decoded, resized) on the
worker's thread; from then on a helper thread prepares the next one while the worker's thread
runs the model on the current one. On a GPU worker the helper works on a CUDA stream of its
own, so nvJPEG decode and resize kernels run beside the model's kernels instead of after them;
the helper waits for its stream before handing a micro-batch over, and the crops it made are
marked as used by the model's stream, so the caching allocator cannot reuse their memory
early. With one micro-batch nothing changes: no helper, no second stream.

Why not TorchServe's ts.handler_utils.micro_batching: a stage thread there dies on the first
exception and the batch then waits forever for its answer, its stages are BaseHandler's
preprocess/inference/postprocess, and its queues are polled every 0.5 s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

from handler.stage_metrics import StageClock

T = TypeVar("T")
WAIT_STAGE = "prepare_wait"  # the model thread waiting for the helper: decode is the bottleneck


def split(items: Sequence[T], chunks: int) -> list[list[T]]:
    """`items` in at most `chunks` consecutive micro-batches of near-equal size, none empty."""
    if not items:
        return []
    size = math.ceil(len(items) / max(1, chunks))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


class Overlap:
    def __init__(self, device: torch.device):
        self.device = device
        self._helper: ThreadPoolExecutor | None = None
        self._stream: torch.cuda.Stream | None = None

    def run(
        self,
        chunks: list[list[T]],
        prepare: Callable[[list[T]], list[torch.Tensor]],
        consume: Callable[[list[T]], None],
        clock: StageClock,
    ) -> None:
        """prepare(chunk) then consume(chunk) for each chunk, in order, with prepare of the
        next chunk running on the helper meanwhile. prepare returns the device tensors it
        made, for the hand-over between streams. An exception from either is raised here."""
        if not chunks:
            return
        prepare(chunks[0])  # nothing to overlap with yet: on this thread, on its stream
        for k, chunk in enumerate(chunks):
            ahead = self._submit(prepare, chunks[k + 1]) if k + 1 < len(chunks) else None
            try:
                consume(chunk)
            finally:
                if ahead is not None:
                    with clock.stage(WAIT_STAGE):
                        made = ahead.result()  # a failed prepare is raised here, after consume
            if ahead is not None:
                self._take_over(made)

    def _submit(
        self, prepare: Callable[[list[T]], list[torch.Tensor]], chunk: list[T]
    ) -> Future[list[torch.Tensor]]:
        if self._helper is None:  # started on first use: CPU workers never split a batch
            self._helper = ThreadPoolExecutor(1, thread_name_prefix="prepare-ahead")
            if self.device.type == "cuda":
                self._stream = torch.cuda.Stream(self.device)
        return self._helper.submit(self._prepare_on_side, prepare, chunk)

    def _prepare_on_side(
        self, prepare: Callable[[list[T]], list[torch.Tensor]], chunk: list[T]
    ) -> list[torch.Tensor]:
        if self._stream is None:
            return prepare(chunk)
        with torch.cuda.stream(self._stream):
            made = prepare(chunk)
        self._stream.synchronize()  # the helper waits, not the model thread
        return made

    def _take_over(self, made: list[torch.Tensor]) -> None:
        """Mark the helper's device tensors as used by the model thread's stream."""
        if self._stream is None:
            return
        model_stream = torch.cuda.current_stream(self.device)
        for tensor in made:
            tensor.record_stream(model_stream)
