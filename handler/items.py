"""One request on its way through a batch, and the guard that keeps its failure its own.

Every per-item stage (extract, inspect, decode + resize, explain, answer) runs under guarded():
whatever it raises becomes that item's error (its own 4xx where the request caused it, 507
when memory ran out, 500 for a fault of the server's), logged with the item's index, never
raised into the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from handler.decode import Inspected
from handler.errors import RequestError, ServerError

log = logging.getLogger(__name__)


@dataclass
class Item:
    """One request on its way through the batch."""

    index: int = 0
    content_type: str = ""  # the HTTP request's, which says how to read its body
    top_k: int = 0
    protocol: str = ""  # inputs.OIP: answered in the Open Inference Protocol's format
    request_id: str | None = None
    explain: bool = False  # an /explanations request: the answer carries a saliency map
    target: str | None = None  # the class to explain, as the request named it
    image: bytes = b""
    cache_key: str = ""
    inspected: Inspected | None = None  # the header, once it passed every check
    to_jpeg_decoder: bool = False  # decoded in the batch JPEG decoder (GPU), not on the CPU
    crop: torch.Tensor | None = None  # (3, size, size) uint8, on the CPU or the model's device
    probabilities: list[float] | None = None
    explanation: dict[str, Any] | None = None
    body: dict[str, Any] | None = None  # the answer, once built
    from_cache: bool = False
    error: RequestError | None = None

    @property
    def needs_model(self) -> bool:
        return self.error is None and self.probabilities is None


def guarded(item: Item, stage: str, work: Callable[[Item], None]) -> None:
    """Run one per-item stage; whatever it raises becomes this item's error, nothing more."""
    try:
        work(item)
    except RequestError as error:
        item.error = error
    except Exception as exc:  # MemoryError and torch's allocation failures included
        item.error = server_error(exc, f"request {item.index}: {stage}")


def server_error(exc: BaseException, where: str, model: bool = False) -> ServerError:
    """The server's own failure for the items it touched: 507 when memory ran out, else 500
    (InferenceFailed from the model call, InternalError from the handler's own code)."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate" in text:
        log.error("%s: out of memory (%s)", where, exc)
        return ServerError("the server ran out of memory", status=507, kind="OutOfResources")
    log.exception("%s failed", where)
    if model:
        return ServerError("inference failed on the server; see the model log")
    return ServerError("the server failed on this request; see the model log", kind="InternalError")
