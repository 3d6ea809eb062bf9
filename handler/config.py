"""Handler settings: the `handler:` section of the model-config YAML inside the .mar."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from handler.decode import DEFAULT_MAX_ASPECT_RATIO
from modelspec.imaging import DEFAULT_DRAFT_OVERSAMPLE

MiB = 1024 * 1024


@dataclass(frozen=True)
class HandlerConfig:
    backend: str = "torchscript"  # torchscript | onnx | aoti (an AOTInductor .pt2 package)
    precision: str = "fp32"  # fp32 | fp16 (GPU workers) | int8 (ONNX only, CPU workers)
    top_k: int = 3  # default k; a request may ask for another, capped at the class count
    max_image_bytes: int = 12 * MiB  # after base64 decoding; the frontend caps the body too
    max_image_pixels: int = 40_000_000  # width * height, checked from the header before decoding
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO  # longer / shorter side, from the header
    # JPEG draft mode, on models whose decode policy takes the fast path: libjpeg decodes at
    # 1/2, 1/4 or 1/8 scale while both sides stay at least this multiple of resize_size (2.0
    # keeps the mean error near 0.2 grey levels); 0 disables. How transparent, 16-bit or
    # EXIF-rotated images become RGB is the model's decode policy (model_meta.json), not a
    # handler setting: it has to match what the model was trained on.
    jpeg_draft_oversample: float = DEFAULT_DRAFT_OVERSAMPLE
    intra_op_threads: int = 0  # 0: cores / workers sharing the host (see resolved_threads)
    decode_threads: int = 0  # 0: same as intra_op_threads; 1 decodes in the worker thread
    # Plain JPEGs decoded a batch at a time on the model's device (nvJPEG; handler/gpu_decode.py)
    # after the CPU checked their headers. auto: on for GPU workers; on: on any device (on a
    # CPU, torchvision's libjpeg-turbo decoder, one call per batch); off: Pillow per item.
    gpu_decode: str = "auto"
    # A batch split into this many micro-batches, the next one decoded while the model runs on
    # this one (handler/overlap.py). 0: auto, 2 on GPU workers (decode and model on two CUDA
    # streams) and 1 on CPU workers, whose cores the model already keeps busy; 1: no overlap.
    overlap_chunks: int = 0
    # GPU workers serving a TorchScript file: one CUDA graph per batch-size bucket, captured at
    # load and replayed per batch (handler/cuda_graphs.py). Off until measured on a GPU.
    cuda_graphs: bool = False
    warmup: bool = True
    keep_freed_memory: bool = True  # glibc malloc tuning, see handler/allocator.py
    # Redis cache of answers (see handler/cache.py): off unless a URL is set here or in the
    # worker's environment as GAMEART_CACHE_URL, e.g. redis://127.0.0.1:6379/0
    cache_url: str = ""
    cache_ttl_s: int = 86_400
    cache_timeout_ms: int = 50
    # /explanations (handler/explain.py): occlusion's grid (grid**2 extra forward passes, for
    # files without Grad-CAM), a time limit and an upload cap of their own
    explain_grid: int = 7
    explain_timeout_s: float = 20.0
    explain_max_bytes: int = 4 * MiB

    @classmethod
    def from_yaml(cls, section: dict[str, Any] | None) -> HandlerConfig:
        """Build from the YAML mapping, rejecting unknown keys so typos are not silently ignored."""
        section = dict(section or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(section) - set(known))
        if unknown:
            raise ValueError(f"unknown handler settings: {unknown}; known: {sorted(known)}")
        if isinstance(section.get("gpu_decode"), bool):  # YAML 1.1 reads a bare on/off so
            section["gpu_decode"] = "on" if section["gpu_decode"] else "off"
        config = cls(**section)
        config.validate()
        return config

    def validate(self) -> None:
        if self.backend not in ("torchscript", "onnx", "aoti"):
            raise ValueError(f"backend must be torchscript, onnx or aoti, got {self.backend!r}")
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ValueError(f"precision must be fp32, fp16 or int8, got {self.precision!r}")
        if self.precision == "int8" and self.backend != "onnx":
            raise ValueError("int8 is an ONNX Runtime model: use backend onnx")
        if self.gpu_decode not in ("auto", "on", "off"):
            raise ValueError(f"gpu_decode must be auto, on or off, got {self.gpu_decode!r}")
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        if not 0 <= self.overlap_chunks <= 64:
            raise ValueError("overlap_chunks must be between 0 (auto) and 64")
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1")
        if self.max_image_bytes < 1 or self.max_image_pixels < 1 or self.max_aspect_ratio < 1:
            raise ValueError("image limits must be positive (max_aspect_ratio at least 1)")
        if self.jpeg_draft_oversample and self.jpeg_draft_oversample < 1:
            raise ValueError("jpeg_draft_oversample must be 0 (off) or at least 1")
        if self.cache_ttl_s < 1 or self.cache_timeout_ms < 1:
            raise ValueError("cache_ttl_s and cache_timeout_ms must be positive")
        if not 2 <= self.explain_grid <= 16:
            raise ValueError("explain_grid must be between 2 and 16 (grid**2 forward passes)")
        if self.explain_timeout_s <= 0 or self.explain_max_bytes < 1:
            raise ValueError("explain_timeout_s and explain_max_bytes must be positive")

    def answer_settings(self) -> bytes:
        """The settings that change what an image is answered (for the cache key)."""
        keys = (
            "max_image_bytes",
            "max_image_pixels",
            "max_aspect_ratio",
            "jpeg_draft_oversample",
            "gpu_decode",
        )
        return repr([(key, getattr(self, key)) for key in keys]).encode()

    def batch_jpeg_decode(self, device: torch.device) -> bool:
        """Whether plain JPEGs go to the batch decoder on `device` (see gpu_decode)."""
        return self.gpu_decode == "on" or (self.gpu_decode == "auto" and device.type == "cuda")

    def resolved_overlap_chunks(self, device: torch.device) -> int:
        """Micro-batches per batch on `device` (see overlap_chunks)."""
        if self.overlap_chunks:
            return self.overlap_chunks
        return 2 if device.type == "cuda" else 1

    def resolved_threads(self, workers_on_host: int) -> int:
        """Threads per worker: explicit, or the cores split between the host's workers.

        A worker sizes its pools once, at load: the caller counts the larger of the archive's
        maxWorkers and this model's workers already running, so workers added by scaling
        past maxWorkers take fewer threads (the ones running keep theirs: archive with the
        --max-workers you will scale to, see docs/configuration.md)."""
        if self.intra_op_threads > 0:
            return self.intra_op_threads
        return max(1, usable_cores() // max(1, workers_on_host))


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container's CPU limit, e.g. Kubernetes `limits.cpu`, rounded up). os.cpu_count() sees the
    node's cores: 64 threads per worker in a 2-CPU pod would mostly wait for the quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores or 1, math.ceil(quota) if quota else cores or 1))


def cgroup_cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 cpu.max, or v1 cfs_quota/period); None: none."""
    try:
        v2 = cgroup_root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        v1 = cgroup_root / "cpu" / "cpu.cfs_quota_us"
        if v1.is_file():
            quota_us = int(v1.read_text())
            period_us = int((cgroup_root / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


def live_workers_on_host(frontend_pid: int | None = None, model_dir: str | None = None) -> int:
    """This model's TorchServe workers running under the frontend (by default this worker's
    parent), this one included; 1 when that cannot be told. TorchServe starts each worker in
    its model's directory, so the working directory tells the models apart."""
    try:
        import psutil  # a TorchServe dependency

        children = psutil.Process(frontend_pid or os.getppid()).children()
    except Exception:  # a count is a sizing hint, never a reason to fail a load
        return 1
    model_dir = model_dir or os.getcwd()
    count = 0
    for child in children:
        try:
            is_worker = any("model_service_worker" in part for part in child.cmdline())
            count += is_worker and child.cwd() == model_dir
        except Exception:  # exited, a zombie, or not ours to read: not counted
            continue
    return max(1, count)
