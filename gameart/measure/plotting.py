"""The figure the benchmark and the experiment share: throughput and p99 against clients."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Curve:
    label: str
    clients: Sequence[int]
    throughput: Sequence[float]  # images/s
    p99_ms: Sequence[float]
    style: str = "-"


def throughput_and_p99(curves: Iterable[Curve], path: Path, titles: tuple[str, str]) -> None:
    """Two panels against concurrent clients (log x): images/s, and p99 latency (log y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for curve in curves:
        left.plot(curve.clients, curve.throughput, curve.style, marker="o", label=curve.label)
        right.plot(curve.clients, curve.p99_ms, curve.style, marker="o", label=curve.label)
    left.set(xscale="log", xlabel="concurrent clients", ylabel="images / s", title=titles[0])
    right.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent clients",
        ylabel="p99 latency (ms)",
        title=titles[1],
    )
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
