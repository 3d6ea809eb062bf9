"""What TorchServe's logs say when a start goes wrong: a model that keeps failing to load, a port
taken between the check and the bind, the tail to show a person."""

from __future__ import annotations

import re
from pathlib import Path


def lost_a_port(run_dir: Path) -> bool:
    logs = run_dir / "logs"
    text = (
        " ".join(p.read_text(errors="replace") for p in logs.glob("*.log")) if logs.exists() else ""
    )
    return "Address already in use" in text or "BindException" in text


def log_tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return f"(no {path.name})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def model_load_failure(run_dir: Path, deaths: int = 2) -> str | None:
    """The worker traceback when a model keeps failing to load, else None.

    TorchServe retries a failing worker with back-off for up to maxRetryTimeoutInSec (default
    300 s), saying little; two deaths with a Python traceback is enough to know. A death shows
    as "Retry worker" (INFO) or, in TorchServe's own log config, "...process died" (DEBUG).
    """
    ts_log = run_dir / "logs" / "ts_log.log"
    model_log = run_dir / "logs" / "model_log.log"
    if not ts_log.is_file() or not model_log.is_file():
        return None
    text = ts_log.read_text(errors="replace")
    if max(text.count("Retry worker"), text.count("Backend worker process died")) < deaths:
        return None
    lines = [
        line.split("MODEL_LOG - ", 1)[-1]
        for line in model_log.read_text(errors="replace").splitlines()
        if "MODEL_LOG - " in line
    ]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    # The worker re-raises load errors as "RuntimeError: 500 - ...": prefer the original one.
    for start in reversed(starts):
        block = lines[start : start + 60]
        end = next((i for i, line in enumerate(block[1:], 1) if not line.startswith(" ")), 0)
        block = block[: end + 1]
        if not re.match(r"RuntimeError: \d{3} - ", block[-1]):
            return "\n".join(block)
    return "\n".join(lines[starts[-1] : starts[-1] + 40]) if starts else None
