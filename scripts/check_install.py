#!/usr/bin/env python3
"""Smoke-check the installed stack: the imports that break when pins drift.

torchvision is the usual casualty: its PyPI wheels are built against PyPI's CUDA torch, and a
CPU-only torch of another build makes `import torchvision` (or its C++ ops) fail.
"""

from __future__ import annotations

import sys


def main() -> int:
    import onnxruntime
    import torch
    import torchvision
    import yaml  # noqa: F401  TorchServe imports it without declaring it
    from model_archiver import version as archiver_version
    from torchvision.ops import nms
    from ts import version as ts_version

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0]])
    nms(boxes, torch.tensor([0.9, 0.8]), 0.5)  # a compiled torchvision op
    providers = onnxruntime.get_available_providers()
    if "CPUExecutionProvider" not in providers:
        print(f"error: ONNX Runtime has no CPU provider: {providers}", file=sys.stderr)
        return 1
    print(
        f"ok: torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), "
        f"torchvision {torchvision.__version__}, onnxruntime {onnxruntime.__version__} "
        f"{providers}, torchserve {ts_version.__version__}, "
        f"torch-model-archiver {archiver_version.__version__}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
