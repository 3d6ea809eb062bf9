"""AOTInductor packages (.pt2): what export records inside one, and the one way to run one.

A .pt2 holds a shared library compiled for one device type, by one torch build: a CUDA package
cannot run on a CPU, and one built by another torch version may fail to load or misbehave. Export
records device, torch version, precision and batch bound in the package's own metadata (so the
requirements travel with the file, into a .mar too), and `AotiModel` checks them before it loads
the library. Export's parity check and the handler both run packages through `AotiModel`.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

KEY = "gameart_aoti"  # our entry in the package's metadata, beside torch's AOTI_* entries


class AotiError(ValueError):
    """A package that cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class AotiInfo:
    device: str  # "cpu" | "cuda": where the compiled code runs
    precision: str  # "fp32" | "fp16": the input dtype too
    torch: str  # torch.__version__ that compiled it; only that one loads it
    max_batch: int  # the dynamic batch dimension's upper bound
    channels_last: bool  # weights and activations; the input is contiguous NCHW regardless
    cuda_capability: str = ""  # "9.0": CUDA kernels are built for the compiling GPU's arch

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.precision == "fp16" else torch.float32

    def to_metadata(self) -> dict[str, str]:
        """For inductor's aot_inductor.metadata, which takes str -> str only."""
        return {KEY: json.dumps(asdict(self))}


def read_info(path: Path) -> AotiInfo:
    """The recorded info, read from the zip without loading the compiled library."""
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if "/aotinductor/" in name and name.endswith("metadata.json"):
                    raw = json.loads(archive.read(name))
                    if KEY in raw:
                        return AotiInfo(**json.loads(raw[KEY]))
    except (OSError, zipfile.BadZipFile, ValueError, TypeError) as exc:
        raise AotiError(f"{path} is not a readable AOTInductor package: {exc}") from exc
    raise AotiError(f"{path} is not an AOTInductor package written by `python -m export --aot`")


def check_runnable(info: AotiInfo, device: torch.device, path: Path) -> None:
    if info.torch != torch.__version__:
        raise AotiError(
            f"{path.name} was compiled by torch {info.torch} but this is torch "
            f"{torch.__version__}: AOTInductor packages load only in the torch that built them; "
            "re-export with --aot where the model is served"
        )
    if info.device == "cuda" and device.type != "cuda":
        raise AotiError(
            f"{path.name} was compiled for CUDA but this worker runs on the CPU: serve it on a "
            "GPU worker (build_mar.py --device gpu), or re-export with --aot-device cpu"
        )
    if info.device == "cuda":
        here = "{}.{}".format(*torch.cuda.get_device_capability(device))
        if info.cuda_capability and info.cuda_capability != here:
            raise AotiError(
                f"{path.name} holds kernels for CUDA compute capability {info.cuda_capability}, "
                f"this GPU is {here}: re-export with --aot on this kind of GPU"
            )


class AotiModel:
    """A loaded package: contiguous NCHW batch in (any size), float32 CPU logits out."""

    def __init__(self, path: Path, device: torch.device):
        path = Path(path)
        self.info = read_info(path)
        check_runnable(self.info, device, path)
        # A CPU package on a GPU worker still runs, on the CPU.
        self.device = device if self.info.device == "cuda" else torch.device("cpu")
        index = (self.device.index or 0) if self.device.type == "cuda" else -1
        from torch._inductor import aoti_load_package

        self.model = aoti_load_package(str(path), device_index=index)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        # The compiled code trusts the example's strides, dtype and batch bound without checking
        # them: another layout gives wrong logits silently. Hence contiguous, and chunks.
        batch = batch.to(self.device, self.info.dtype).contiguous()
        step = self.info.max_batch
        with torch.inference_mode():
            outs = [self.model(batch[i : i + step]) for i in range(0, len(batch), step)]
        return torch.cat(outs).float().cpu()
