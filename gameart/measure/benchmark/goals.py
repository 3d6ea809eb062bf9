"""The benchmark's goals as data: GOALS, a table of typed records, each saying what is
measured, from which numbers of a results.json, and the bound it must meet.

Everything here is a pure function of a results.json dict, so a saved one is graded (and
re-rendered, see report.py) exactly as the run that wrote it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gameart.measure.benchmark.spec import Serving, row_name

Results = Mapping[str, Any]  # a results.json, parsed
GPU_ABSENT = "absent: no CUDA device on this machine; GPU rows not measured"


@dataclass(frozen=True)
class Reading:
    """One measurement of a goal: labels filling its key, its numbers, where they came from."""

    labels: Mapping[str, Any]
    numbers: Mapping[str, float]
    detail: str = ""


@dataclass(frozen=True)
class Bound:
    """`number` of a reading must be `direction` `threshold`, e.g. value <= 0.6."""

    number: str
    direction: Literal["<=", ">="]
    threshold: float

    def holds(self, numbers: Mapping[str, float]) -> bool:
        value = numbers[self.number]
        return value <= self.threshold if self.direction == "<=" else value >= self.threshold


@dataclass(frozen=True)
class Goal:
    """A benchmark goal: `measure` reads results.json and returns zero or more readings (none
    when this run did not measure what it needs); each is graded against `bounds`.

    key: the goals entry in results.json, `{label}`s filled from the reading's labels.
    target: how the report writes the bounds; None for numbers reported without a target.
    graded: labels a reading must have to be graded; other readings are "(reported)"."""

    key: str
    what: str
    measure: Callable[[Results], list[Reading]]
    bounds: tuple[Bound, ...] = ()
    target: str | None = None
    graded: Mapping[str, Any] = field(default_factory=dict)

    def evaluate(self, results: Results) -> list[Evaluation]:
        evaluations = []
        for reading in self.measure(results):
            graded = all(reading.labels.get(k) == v for k, v in self.graded.items())
            entry: dict[str, Any] = dict(reading.numbers)
            if self.target is not None:
                entry["goal"] = self.target if graded else "(reported)"
            if reading.detail:
                entry["detail"] = reading.detail
            met = all(b.holds(reading.numbers) for b in self.bounds) if graded else None
            key = self.key.format(**reading.labels)
            evaluations.append(Evaluation(key, self, entry, met if self.bounds else None))
        return evaluations


@dataclass(frozen=True)
class Evaluation:
    key: str
    goal: Goal
    entry: dict[str, Any]  # as results.json's goals hold it
    met: bool | None  # None: reported only


def best(rows: list[dict], **where) -> dict | None:
    """The fastest (lowest p50) timed row matching `where`."""
    matching = [r for r in rows if "p50_ms" in r and all(r.get(k) == v for k, v in where.items())]
    return min(matching, key=lambda r: r["p50_ms"]) if matching else None


def _timed(results: Results, device: str) -> list[dict]:
    return [r for r in results["model"] if r.get("device") == device and "p50_ms" in r]


def cpu_b1_over_eager(**where: str) -> Callable[[Results], list[Reading]]:
    """The fastest CPU batch-1 row (among `where`) over eager fp32: p50 ratio."""

    def measure(results: Results) -> list[Reading]:
        eager = best(results["model"], device="cpu", backend="eager", batch=1)
        top = best(results["model"], device="cpu", batch=1, **where)
        if not (eager and top):
            return []
        ratio = round(top["p50_ms"] / eager["p50_ms"], 3)
        detail = f"{top['variant']} {top['p50_ms']} ms vs eager {eager['p50_ms']} ms"
        return [Reading({}, {"value": ratio}, detail)]

    return measure


def preprocess_over_model(results: Results) -> list[Reading]:
    """Fast-path preprocessing of a 1080p JPEG over the served backend's batch-1 p50 (fp32)."""
    backend = row_name(results["plan"].get("served_backend", ""))
    served = best(results["model"], device="cpu", backend=backend, precision="fp32", batch=1)
    screenshot = [
        r
        for r in results["preprocess"]
        if r["image"] == "screenshot_1080p.jpg"
        # "handler (default: ...)" in reports from before decode policies were recorded
        and r["method"].startswith(("handler, fast path", "handler (default"))
    ]
    if not (served and screenshot):
        return []
    ms = screenshot[0]["ms_per_image"]
    detail = f"{ms} ms preprocessing vs {served['p50_ms']} ms {served['variant']} at batch 1"
    return [Reading({}, {"value": round(ms / served["p50_ms"], 3)}, detail)]


def e2e_over_stock(results: Results) -> list[Reading]:
    """Each of our handlers over the stock one, batching on, per client count: throughput and
    p99 ratios."""
    rows = results["e2e"]

    def row(handler: str, concurrency: int) -> dict | None:
        found = [
            r
            for r in rows
            if r["handler"] == handler and r["batching"] == "on" and r["concurrency"] == concurrency
        ]
        return found[0] if found else None

    readings = []
    for concurrency in sorted({r["concurrency"] for r in rows}):
        stock = row("stock", concurrency)
        for handler in ("ours", "ours int8", "ours fp16"):
            ours = row(handler, concurrency)
            if ours and stock and stock["throughput_rps"]:
                numbers = {
                    "throughput_ratio": round(ours["throughput_rps"] / stock["throughput_rps"], 2),
                    "p99_ratio": round(ours["p99_ms"] / stock["p99_ms"], 2),
                }
                labels = {"concurrency": concurrency, "handler": handler.replace(" ", "_")}
                readings.append(Reading(labels, numbers))
    return readings


def gpu_e2e_peak(results: Results) -> list[Reading]:
    """The highest end-to-end throughput of any row, when the run served on the GPU."""
    if not (Serving.from_dict(results["plan"].get("serving")).gpu and results["e2e"]):
        return []
    peak = max(results["e2e"], key=lambda r: r["throughput_rps"])
    detail = (
        f"{peak['handler']} batching {peak['batching']}, "
        f"concurrency {peak['concurrency']}, p99 {peak['p99_ms']} ms"
    )
    return [Reading({}, {"value": peak["throughput_rps"]}, detail)]


def gpu_model_peak(results: Results) -> list[Reading]:
    gpu = _timed(results, "cuda")
    if not gpu:
        return []
    peak = max(gpu, key=lambda r: r["images_per_s"])
    detail = f"{peak['variant']} batch {peak['batch']}"
    return [Reading({}, {"value": peak["images_per_s"]}, detail)]


def gpu_b1_latency(results: Results) -> list[Reading]:
    b1 = best(_timed(results, "cuda"), batch=1)
    return [Reading({}, {"value": b1["p50_ms"]}, b1["variant"])] if b1 else []


def gpu_over_cpu(results: Results) -> list[Reading]:
    gpu, cpu = _timed(results, "cuda"), _timed(results, "cpu")
    gpu_b1, cpu_b1 = best(gpu, batch=1), best(cpu, batch=1)
    if not (gpu and cpu and gpu_b1 and cpu_b1):
        return []
    gpu_peak = max(gpu, key=lambda r: r["images_per_s"])
    cpu_peak = max(cpu, key=lambda r: r["images_per_s"])
    numbers = {
        "latency_b1": round(cpu_b1["p50_ms"] / gpu_b1["p50_ms"], 1),
        "throughput": round(gpu_peak["images_per_s"] / cpu_peak["images_per_s"], 1),
    }
    return [Reading({}, numbers)]


GOALS: tuple[Goal, ...] = (
    Goal(
        "cpu_b1_best_fp32_over_eager",
        "CPU batch 1: fastest fp32 backend's p50 over eager PyTorch's",
        cpu_b1_over_eager(precision="fp32"),
        (Bound("value", "<=", 0.6),),
        "<= 0.6",
    ),
    Goal(
        "cpu_b1_best_any_precision_over_eager",
        "CPU batch 1: fastest backend's p50 (int8 included) over eager PyTorch's",
        cpu_b1_over_eager(),
        (Bound("value", "<=", 0.6),),
        "<= 0.6",
    ),
    Goal(
        "preprocess_1080p_jpeg_over_model_b1",
        "handler's fast-path preprocessing of a 1080p JPEG over the served model's batch-1 p50",
        preprocess_over_model,
        (Bound("value", "<=", 0.25),),
        "<= 0.25",
    ),
    Goal(
        "e2e_c{concurrency}_{handler}_over_stock",
        "end to end, batching on: our handler over the stock image_classifier",
        e2e_over_stock,
        (Bound("throughput_ratio", ">=", 2.0), Bound("p99_ratio", "<=", 1.0)),
        ">= 2x throughput, p99 no worse",
        graded={"concurrency": 8},
    ),
    Goal(
        "gpu_e2e_peak_images_per_s",
        "end to end on the GPU: peak images/s of JPEG uploads over HTTP",
        gpu_e2e_peak,
        (Bound("value", ">=", 2000.0),),
        ">= 2000 (JPEG, HTTP)",
    ),
    Goal(
        "gpu_peak_images_per_s",
        "model only on the GPU: peak images/s of any variant and batch",
        gpu_model_peak,
        (Bound("value", ">=", 15000.0),),
        ">= 15000 (fp16)",
    ),
    Goal(
        "gpu_b1_latency_ms",
        "model only on the GPU: fastest batch-1 p50",
        gpu_b1_latency,
        (Bound("value", "<=", 2.0),),
        "<= 2 ms",
    ),
    Goal(
        "gpu_over_cpu_speedup",
        "GPU over CPU: batch-1 latency and peak throughput ratios",
        gpu_over_cpu,
    ),
)


def evaluate(results: Results, goals: tuple[Goal, ...] = GOALS) -> list[Evaluation]:
    """Every goal's readings in this run, graded, in table order."""
    return [evaluation for goal in goals for evaluation in goal.evaluate(results)]


def goals_of(results: Results) -> dict[str, Any]:
    """results.json's "goals": each evaluation's entry by key, and a note when no GPU rows."""
    out: dict[str, Any] = {e.key: e.entry for e in evaluate(results)}
    if not _timed(results, "cuda"):
        out["gpu"] = GPU_ABSENT
    return out


def goals(
    model_rows: list[dict],
    pre_rows: list[dict],
    e2e_rows: list[dict],
    served_backend: str,
    e2e_on_gpu: bool = False,
) -> dict[str, Any]:
    """goals_of for sections given one by one."""
    plan = {"served_backend": served_backend, "serving": {"gpu": e2e_on_gpu}}
    results = {"model": model_rows, "preprocess": pre_rows, "e2e": e2e_rows, "plan": plan}
    return goals_of(results)


def verdicts(results: Results) -> list[str]:
    """One line per graded goal: met or missed, and by which numbers."""
    lines = []
    for e in evaluate(results):
        if e.met is not None:
            numbers = ", ".join(f"{k} {v}" for k, v in e.entry.items() if k not in ("goal",))
            lines.append(f"{'met   ' if e.met else 'missed'} {e.key}: {numbers}")
    return lines
