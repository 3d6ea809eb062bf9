"""What nvidia-smi says about the GPUs: one parser for every measurement that asks.

`query("name", "driver_version")` answers one dict per GPU (empty without nvidia-smi);
`GpuSampler` samples utilisation.gpu every 100 ms while a measured step runs.
"""

from __future__ import annotations

import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

MISSING = ("", "[N/A]", "N/A", "[Not Supported]")


def smi_command(fields: Sequence[str], interval_ms: int | None = None) -> list[str]:
    """nvidia-smi's CSV query of `fields` (its --query-gpu names), once or every interval."""
    command = ["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
    return command + (["-lms", str(interval_ms)] if interval_ms else [])


def parse_rows(text: str, fields: Sequence[str]) -> list[dict[str, str]]:
    """nvidia-smi's `csv,noheader` lines as one dict per line; lines of another shape (a
    warning, a truncated last sample) are skipped."""
    rows = []
    for line in text.splitlines():
        values = [value.strip() for value in line.split(",")]
        if line.strip() and len(values) == len(fields):
            rows.append(dict(zip(fields, values, strict=True)))
    return rows


def numbers(rows: Sequence[dict[str, str]], name: str) -> list[float]:
    """One field of every row as numbers; absent and non-numeric values are left out."""
    found = []
    for row in rows:
        value = row.get(name, "")
        if value in MISSING:
            continue
        try:
            found.append(float(value))
        except ValueError:
            continue
    return found


def query(*fields: str, timeout_s: float = 10.0) -> list[dict[str, str]]:
    """One dict per GPU with `fields`; empty when nvidia-smi is absent or fails."""
    try:
        answer = subprocess.run(
            smi_command(fields), capture_output=True, text=True, check=False, timeout=timeout_s
        )
    except (FileNotFoundError, PermissionError, subprocess.TimeoutExpired):
        return []
    return parse_rows(answer.stdout, fields) if answer.returncode == 0 else []


def describe() -> str:
    """'<name> driver <version>' for each GPU, for a report's machine line."""
    gpus = query("name", "driver_version")
    return "; ".join(f"{g['name']} driver {g['driver_version']}" for g in gpus) or "GPU (unnamed)"


@dataclass
class GpuSampler:
    """nvidia-smi's utilization.gpu every 100 ms while a step runs (absent without a GPU)."""

    interval_ms: int = 100
    process: subprocess.Popen | None = None
    samples: list[float] = field(default_factory=list)

    def __enter__(self) -> GpuSampler:
        command = smi_command(["utilization.gpu"], self.interval_ms)
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        except (FileNotFoundError, PermissionError):
            self.process = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is None:
            return
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        self.samples = numbers(parse_rows(out, ["utilization.gpu"]), "utilization.gpu")

    def mean(self) -> float | None:
        return round(statistics.fmean(self.samples), 1) if self.samples else None
