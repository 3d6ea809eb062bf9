"""Where the model looked: a saliency grid for one image and one class, and its heat-map overlay.

Two methods, picked by what the loaded model file offers:
- Grad-CAM (Selvaraju et al., 2017) on the last convolutional stage, for TorchScript files that
  export wrote with an `explain` method returning (logits, that stage's activations): one
  forward and one backward pass.
- Occlusion (Zeiler & Fergus, 2014) through any backend (ONNX, INT8, AOTInductor, TorchScript
  without the method): each cell of a grid is set to the dataset's mean colour in turn and the
  drop of the class's probability is its saliency; grid**2 forward passes, in chunks.
Both return a (rows, cols) grid in [0, 1] (1: where the evidence for the class is strongest).
Pure functions of tensors; the service decides which to call and when (handler/service.py).
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from handler.errors import InvalidInput, ServerError
from modelspec.meta import EXPLAIN_METHOD

if TYPE_CHECKING:
    from handler.backends import Backend
    from handler.config import HandlerConfig
    from modelspec.imaging import Normalizer
    from modelspec.meta import ModelMeta

log = logging.getLogger(__name__)

GRAD_CAM, OCCLUSION = "grad-cam", "occlusion"


class ExplainTimeout(RuntimeError):
    """Occlusion ran past its time limit."""


def explain_crop(
    backend: Backend,
    normalizer: Normalizer,
    crop: torch.Tensor,
    target: int,
    meta: ModelMeta,
    config: HandlerConfig,
    deadline: float,
) -> dict[str, Any]:
    """The "explanation" of one decoded crop for class `target`: Grad-CAM where the TorchScript
    file has an `explain` method, occlusion through the backend otherwise (or if Grad-CAM
    fails, e.g. fp16 backward on a CPU). Past `deadline` (time.monotonic(), the batch's), a
    503: one not started, or an occlusion stopped."""
    started = time.monotonic()
    if started > deadline:
        raise _timeout(config, "the batch's earlier explanations used the time")
    batch = normalizer([crop])
    explain = getattr(getattr(backend, "module", None), EXPLAIN_METHOD, None)
    saliency = None
    if explain is not None and meta.cam_layer:
        try:
            saliency, method, layer = grad_cam(explain, batch, target), GRAD_CAM, meta.cam_layer
        except RuntimeError as exc:
            log.warning("Grad-CAM failed (%s); explaining by occlusion", exc)
    if saliency is None:
        grid = config.explain_grid
        method, layer = OCCLUSION, f"input, {grid}x{grid} cells"
        try:
            saliency = occlusion(backend, batch, target, grid=grid, deadline=deadline)
        except ExplainTimeout as exc:
            raise _timeout(config, str(exc)) from exc
    png = overlay_png(crop, saliency)
    ms = (time.monotonic() - started) * 1000
    return explanation_body(method, layer, meta.class_names[target], saliency, png, ms)


def _timeout(config: HandlerConfig, detail: str) -> ServerError:
    return ServerError(
        f"explanations get {config.explain_timeout_s:g} s per batch ({detail}); try again",
        status=503,
        kind="ExplanationTimeout",
    )


def resolve_target(
    requested: str | None, class_names: list[str], probabilities: list[float]
) -> int:
    """The class to explain: the request's `target` (a label or its index), else the top-1."""
    if requested is None or not requested.strip():
        return max(range(len(probabilities)), key=probabilities.__getitem__)
    text = requested.strip()
    if text in class_names:
        return class_names.index(text)
    if text.isascii() and text.isdigit() and int(text) < len(class_names):
        return int(text)
    raise InvalidInput(f"target must be one of {class_names} or an index below {len(class_names)}")


def grad_cam(
    explain: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    batch: torch.Tensor,
    target: int,
) -> np.ndarray:
    """Grad-CAM for one normalised (1, 3, H, W) batch: the stage's channels weighted by the
    mean gradient of the target's logit, summed, negatives dropped, scaled to [0, 1]."""
    # the profiling executor's optimised graph (from the 2nd call on) may not keep the
    # activations connected to the logits for autograd; the plain interpreter does
    with torch.inference_mode(False), torch.enable_grad(), torch.jit.optimized_execution(False):
        inputs = batch.detach().clone().requires_grad_(True)
        logits, features = explain(inputs)
        (gradients,) = torch.autograd.grad(logits[0, target], features)
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features.detach().float()).sum(dim=1))[0]
    return _unit_scale(cam.cpu().numpy())


def occlusion(
    predict: Callable[[torch.Tensor], torch.Tensor],
    batch: torch.Tensor,
    target: int,
    grid: int = 7,
    chunk: int = 16,
    deadline: float = math.inf,
) -> np.ndarray:
    """Occlusion saliency for one normalised (1, 3, H, W) batch: how much the target's
    (log-)probability drops when each of grid x grid cells is set to 0 (the mean colour once
    normalised), in log-odds. `predict` maps a batch to logits; raises ExplainTimeout past
    `deadline` (time.monotonic())."""
    _, _, height, width = batch.shape
    rows = _cell_bounds(height, grid)
    cols = _cell_bounds(width, grid)
    cells = [(r, c) for r in range(grid) for c in range(grid)]
    base = _log_odds(predict(batch), target)[0].item()
    drops = np.zeros((grid, grid), dtype=np.float32)
    for start in range(0, len(cells), chunk):
        if time.monotonic() > deadline:
            raise ExplainTimeout(f"occlusion stopped after {start} of {len(cells)} cells")
        part = cells[start : start + chunk]
        masked = batch.repeat(len(part), 1, 1, 1)
        for i, (r, c) in enumerate(part):
            masked[i, :, rows[r][0] : rows[r][1], cols[c][0] : cols[c][1]] = 0
        scores = _log_odds(predict(masked), target).cpu().numpy()
        for (r, c), p in zip(part, scores, strict=True):
            drops[r, c] = base - p
    return _unit_scale(np.clip(drops, 0, None))


def _log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    """log(p / (1 - p)) of the target per row: a confident model's probability stays 1.0 in
    float32 under any one mask, its log-odds still move."""
    logits = logits.float()
    others = torch.cat([logits[:, :target], logits[:, target + 1 :]], dim=1)
    return logits[:, target] - torch.logsumexp(others, dim=1)


def _cell_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    edges = [round(i * size / grid) for i in range(grid + 1)]
    return list(itertools.pairwise(edges))


def _unit_scale(values: np.ndarray) -> np.ndarray:
    top = float(values.max()) if values.size else 0.0
    return (values / top).astype(np.float32) if top > 0 else np.zeros_like(values, np.float32)


def upsample(saliency: np.ndarray, size: int) -> np.ndarray:
    """The grid at the crop's resolution (bilinear), for the overlay and for measuring."""
    grid = torch.from_numpy(saliency)[None, None]
    return F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


def heat_colours(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 on a blue-cyan-yellow-red ramp (the usual 'jet' shape)."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    centres = np.array([0.75, 0.5, 0.25])  # where red, green, blue peak
    rgb = np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def overlay_png(crop: torch.Tensor, saliency: np.ndarray, opacity: float = 0.55) -> bytes:
    """The model's view of the image (its uint8 (3, S, S) crop) under the heat map, as PNG;
    cold areas stay close to the image, hot ones turn red."""
    image = crop.detach().to("cpu", torch.uint8).permute(1, 2, 0).numpy().astype(np.float32)
    heat = upsample(saliency, image.shape[0])
    alpha = (opacity * (0.25 + 0.75 * heat))[..., None]
    blended = image * (1 - alpha) + heat_colours(heat).astype(np.float32) * alpha
    buffer = io.BytesIO()
    Image.fromarray(blended.round().astype(np.uint8)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def explanation_body(
    method: str, layer: str, target_label: str, saliency: np.ndarray, png: bytes, ms: float
) -> dict[str, Any]:
    """The "explanation" object of an /explanations answer."""
    return {
        "method": method,
        "layer": layer,
        "target": target_label,
        "grid": [[round(float(v), 4) for v in row] for row in saliency],
        "overlay_png": base64.b64encode(png).decode("ascii"),
        "ms": round(ms, 1),
    }
