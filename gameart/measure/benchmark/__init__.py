"""Benchmark: model latency per device x backend x batch, preprocessing cost per image, and
end-to-end HTTP throughput through TorchServe against the stock image_classifier handler.

One module per concern:
  spec        BenchmarkSpec, Plan (FULL, QUICK), Serving: what a run measures (no torch)
  subject     Subject, prepare_subject: the model under test
  timing      model-only timing of every variant
  preprocess  preprocessing cost per image and method
  e2e         end to end through TorchServe, ours against the stock handler (archive_stock)
  goals       GOALS, the goal table, evaluated against a results.json
  report      render(results) -> results.md, plots(results, out): pure functions of results
  runner      run(spec): the sections, results.json, the report; machine_info

scripts/benchmark.py (gameart/cli/benchmark.py) is the command line.
"""

import importlib
from typing import Any

# The public names, imported on first use (PEP 562): the command line's --help and
# --report-only, and the light spec and report modules, never pay for torch.
_PUBLIC = {
    "BenchmarkSpec": "spec",
    "FULL": "spec",
    "Plan": "spec",
    "QUICK": "spec",
    "Serving": "spec",
    "Subject": "subject",
    "archive_stock": "e2e",
    "machine_info": "runner",
    "render": "report",
    "run": "runner",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
