"""The report: results.json in, results.md and its plots out; nothing is measured here.

`render(results)` is a pure function of a results.json dict, as is `plots`, so a saved run
re-renders the same report (scripts/benchmark.py --report-only DIR). The goals table comes
from goals.GOALS, evaluated against the same dict.
"""

from __future__ import annotations

from pathlib import Path

from gameart.measure.benchmark.goals import Results, goals_of
from gameart.measure.benchmark.spec import Serving
from gameart.measure.plotting import Curve, throughput_and_p99

HANDLER_ROWS = ("ours", "ours int8", "ours fp16", "stock")  # end-to-end rows, in this order
BATCHING = ("on", "off")
MODEL_PLOTS = (  # metric, file, axis label, alt text
    ("p50_ms", "model_latency_vs_batch.png", "p50 latency (ms)", "latency vs batch"),
    ("images_per_s", "model_throughput_vs_batch.png", "images / s", "throughput vs batch"),
)
E2E_PLOT = "e2e_vs_concurrency.png"


def render(results: Results) -> str:
    """results.md for a results.json."""
    lines = _header(results) + _goals(results) + _model(results) + _preprocess(results)
    lines += _e2e(results)
    if results.get("stock_note"):
        lines += ["", f"Stock handler not measured: {results['stock_note']}."]
    if _timed(results):
        lines += [""] + [f"![{alt}]({name})" for _, name, _, alt in MODEL_PLOTS]
    if results["e2e"]:
        lines.append(f"![end to end]({E2E_PLOT})")
    return "\n".join(lines) + "\n"


def _timed(results: Results) -> list[dict]:
    return [r for r in results["model"] if "p50_ms" in r]


def _header(results: Results) -> list[str]:
    machine, subject = results["machine"], results["subject"]
    gpu = machine["gpu"]
    gpu_line = f"{gpu['name']}, driver {gpu['driver']}, CUDA {gpu['cuda']}" if gpu else "absent"
    return [
        f"# Benchmark: {subject['name']} ({subject['architecture']}, "
        f"{subject['classes']} classes, {subject['input']})",
        "",
        f"- date: {machine['date']}",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB",
        f"- GPU: {gpu_line}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        f"- plan: {results['plan']}",
    ]


def _goals(results: Results) -> list[str]:
    lines = ["", "## Goals", "", "| goal | measured | target | detail |", "|---|---|---|---|"]
    for name, goal in goals_of(results).items():
        if isinstance(goal, str):
            lines.append(f"| {name} | {goal} | | |")
            continue
        value = goal.get("value", goal.get("throughput_ratio"))
        extra = f"p99 ratio {goal['p99_ratio']}" if "p99_ratio" in goal else goal.get("detail", "")
        if "latency_b1" in goal:
            value, extra = f"latency {goal['latency_b1']}x", f"throughput {goal['throughput']}x"
        lines.append(f"| {name} | {value} | {goal.get('goal', '')} | {extra} |")
    return lines


def _model(results: Results) -> list[str]:
    lines: list[str] = []
    timed = _timed(results)
    for device in sorted({r["device"] for r in results["model"]}):
        rows = [r for r in timed if r["device"] == device]
        batches = sorted({r["batch"] for r in rows})
        lines += [
            "",
            f"## Model only, {device}: p50 latency ms / images per s",
            "",
            "| variant | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---|" + "---|" * len(batches),
        ]
        for variant in dict.fromkeys(r["variant"] for r in rows):
            cells = []
            for b in batches:
                cell = [r for r in rows if r["variant"] == variant and r["batch"] == b]
                cells.append(
                    f"{cell[0]['p50_ms']:.2f} / {cell[0]['images_per_s']:.0f}" if cell else "-"
                )
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        for r in results["model"]:
            if r["device"] == device and "unavailable" in r:
                lines.append(f"| {r['variant']} | unavailable: {r['unavailable']} |")
    if not any(r["device"] == "cuda" for r in results["model"]):
        lines += ["", "GPU rows: absent (no CUDA device on this machine)."]
    return lines


def _preprocess(results: Results) -> list[str]:
    rows = results["preprocess"]
    images = list(dict.fromkeys(r["image"] for r in rows))
    lines = [
        "",
        "## Preprocessing: decode + resize + crop + normalise, ms per image",
        "",
        "| method | " + " | ".join(images) + " |",
        "|---|" + "---|" * len(images),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for image in images:
            cell = [r for r in rows if r["method"] == method and r["image"] == image]
            cells.append(f"{cell[0]['ms_per_image']:.2f}" if cell else "-")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def _e2e(results: Results) -> list[str]:
    rows = results["e2e"]
    if not rows:
        return []
    plan = results["plan"]
    serving = Serving.from_dict(plan.get("serving"))
    concurrencies = sorted({r["concurrency"] for r in rows})
    lines = [
        "",
        "## End to end through TorchServe: images/s, p50 / p99 ms",
        "",
        f"Closed loop, JPEG mix (600x800 cover + 1080p screenshot), "
        f"{plan['e2e_seconds']} s per step after warm-up, {serving.workers} worker(s) "
        f"per model on the {'GPU' if serving.gpu else 'CPU'}, batching on = batchSize "
        f"{serving.batch_size} + maxBatchDelay {serving.max_batch_delay} ms, "
        "off = batchSize 1.",
        "",
        "| handler | batching | " + " | ".join(f"c={c}" for c in concurrencies) + " |",
        "|---|---|" + "---|" * len(concurrencies),
    ]
    for handler in HANDLER_ROWS:
        for batching in BATCHING:
            cells = []
            for c in concurrencies:
                cell = [
                    r
                    for r in rows
                    if r["handler"] == handler
                    and r["batching"] == batching
                    and r["concurrency"] == c
                ]
                if cell:
                    r = cell[0]
                    bad = r["requests"] - r["ok"]
                    cells.append(
                        f"{r['throughput_rps']:.1f}, {r['p50_ms']:.0f} / "
                        f"{r['p99_ms']:.0f}" + (f" ({bad} failed)" if bad else "")
                    )
            if cells:
                lines.append(f"| {handler} | {batching} | " + " | ".join(cells) + " |")
    return lines


def plots(results: Results, out: Path) -> None:
    """The PNGs results.md links to, into `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _timed(results)
    devices = sorted({r["device"] for r in rows})
    for metric, name, label, _ in MODEL_PLOTS if devices else ():
        figure, axes = plt.subplots(
            1, len(devices), figsize=(6 * len(devices), 4.5), dpi=100, squeeze=False
        )
        for axis, device in zip(axes[0], devices, strict=True):
            for variant in dict.fromkeys(r["variant"] for r in rows if r["device"] == device):
                points = sorted(
                    (r["batch"], r[metric])
                    for r in rows
                    if r["device"] == device and r["variant"] == variant
                )
                axis.plot(*zip(*points, strict=True), marker="o", label=variant)
            axis.set(
                xscale="log",
                yscale="log",
                xlabel="batch size",
                ylabel=label,
                title=f"{results['subject']['name']} on {device}",
            )
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=8)
        figure.tight_layout()
        figure.savefig(out / name)
        plt.close(figure)
    if results["e2e"]:
        curves = []
        for handler in HANDLER_ROWS:
            for batching in BATCHING:
                points = sorted(
                    (r["concurrency"], r["throughput_rps"], r["p99_ms"])
                    for r in results["e2e"]
                    if r["handler"] == handler and r["batching"] == batching
                )
                if points:
                    style = "--" if handler == "stock" else "-"
                    label = f"{handler}, batching {batching}"
                    curves.append(Curve(label, *zip(*points, strict=True), style))
        titles = ("end-to-end throughput", "end-to-end p99 latency")
        throughput_and_p99(curves, out / E2E_PLOT, titles)


def write_report(results: Results, out: Path) -> None:
    """results.md and its plots into `out` (results.json is the run's to write)."""
    (out / "results.md").write_text(render(results))
    plots(results, out)
