"""Load-test a running TorchServe model: closed-loop concurrency sweep and open-loop rates.

Every step is bounded by a duration and a request cap and stops by itself; traffic goes to
loopback only unless allowed otherwise. Per step it reports requests, throughput,
p50/p90/p99/max, errors by status, the server's own mean queue and inference time (Prometheus
counters), and it first measures the client's own ceiling against a trivial local endpoint, so
a client-bound result cannot pass for a server-bound one. Output: JSON, CSV and a PNG plot.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gameart.measure import loadgen
from gameart.measure.load_checks import apache_bench, client_ceiling
from gameart.measure.uploads import Upload, upload_mix, uploads_from_folder
from gameart.ops.client import TorchServeClient, TorchServeError, prometheus_value
from gameart.paths import REPO_ROOT

DEFAULT_OUT = REPO_ROOT / "results" / "loadtest"


@dataclass(frozen=True)
class LoadTestSpec:
    """One load test: what to send to which model, in which steps, for how long."""

    model: str
    concurrency: tuple[int, ...] = (1, 4, 16, 64)  # closed-loop steps
    rates: tuple[float, ...] = ()  # open-loop steps, requests/s
    duration_s: float = 15.0  # per step
    max_requests: int = 5000  # per step
    warmup_s: float = 2.0  # before each step, not measured
    images: Path | None = None  # a folder; None: the built-in upload mix
    multipart: bool = False
    bad_share: float = 0.0  # share of malformed uploads (0..1)
    timeout_s: float = 60.0  # per request
    measure_ceiling: bool = True
    cross_check_ab: int | None = None  # Apache Bench requests at the first concurrency
    allow_remote: bool = False
    out: Path = DEFAULT_OUT


# ---- what to send --------------------------------------------------------------------------
def bad_uploads(good: Sequence[Upload]) -> list[Upload]:
    """Malformed uploads a real service receives: each must cost its sender a 4xx, nothing more."""
    jpeg = next((u for u in good if u.content_type == "image/jpeg"), good[0])
    return [
        Upload("not_an_image.txt", b"this is a text file, not a picture", "image/jpeg", (0, 0)),
        Upload("truncated.jpg", jpeg.body[: len(jpeg.body) // 3], "image/jpeg", jpeg.size),
        Upload("empty.jpg", b"", "image/jpeg", (0, 0)),
        Upload("tiff.tif", b"II*\x00\x08\x00\x00\x00" + bytes(64), "image/tiff", (0, 0)),
    ]


def mixed(good: Sequence[Upload], bad_share: float, count: int = 200) -> Sequence[Upload]:
    """A fixed sequence with exactly the wanted share of bad uploads, spread evenly through it
    (item i is bad when floor((i + 1) * share) steps up), cycling through the kinds of bad."""
    if bad_share <= 0:
        return good
    bad = bad_uploads(good)
    sequence, bad_seen = [], 0
    for i in range(count):
        if int((i + 1) * bad_share) > int(i * bad_share):
            sequence.append(bad[bad_seen % len(bad)])
            bad_seen += 1
        else:
            sequence.append(good[(i - bad_seen) % len(good)])
    return sequence


# ---- server-side view ----------------------------------------------------------------------
COUNTERS = (
    "ts_inference_requests_total",
    "ts_queue_latency_microseconds",
    "ts_inference_latency_microseconds",
)


def server_counters(client: TorchServeClient, model: str) -> dict[str, float] | None:
    """TorchServe's own per-model counters; None when the metrics API cannot be read."""
    try:
        text = client.metrics_text()
    except (TorchServeError, OSError) as exc:
        print(f"  (metrics unavailable: {exc})")
        return None
    return {name: prometheus_value(text, name, model_name=model) for name in COUNTERS}


def server_view(before: dict | None, after: dict | None) -> dict[str, Any]:
    """Mean queue wait and mean time in the server per request, from counter deltas."""
    if not before or not after:
        return {}
    requests = after["ts_inference_requests_total"] - before["ts_inference_requests_total"]
    if requests <= 0:
        return {"server_requests": 0}
    queue = after["ts_queue_latency_microseconds"] - before["ts_queue_latency_microseconds"]
    total = after["ts_inference_latency_microseconds"] - before["ts_inference_latency_microseconds"]
    return {
        "server_requests": int(requests),
        "server_queue_ms": round(queue / requests / 1e3, 2),
        "server_latency_ms": round(total / requests / 1e3, 2),
    }


# ---- report --------------------------------------------------------------------------------
def print_step(row: dict[str, Any]) -> None:
    level = f"c={int(row['level'])}" if row["mode"] == "closed" else f"{row['level']:g} req/s"
    server = (
        (
            f"  server: queue {row['server_queue_ms']:.1f} ms, in-server "
            f"{row['server_latency_ms']:.1f} ms"
        )
        if "server_queue_ms" in row
        else ""
    )
    print(
        f"{row['mode']:6s} {level:>10s}: {row['requests']:5d} req {row['throughput_rps']:7.1f}/s"
        f"  p50 {row['p50_ms']:7.1f}  p90 {row['p90_ms']:7.1f}  p99 {row['p99_ms']:7.1f}  "
        f"max {row['max_ms']:7.1f} ms  {row['statuses']}{server}",
        flush=True,
    )


def write_outputs(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "loadtest.json").write_text(json.dumps(report, indent=2) + "\n")
    fields = [
        "mode",
        "level",
        "requests",
        "ok",
        "throughput_rps",
        "p50_ms",
        "p90_ms",
        "p99_ms",
        "max_ms",
        "server_queue_ms",
        "server_latency_ms",
        "statuses",
        "late_starts",
    ]
    with open(out / "loadtest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in report["steps"]:
            writer.writerow({**row, "statuses": json.dumps(row["statuses"])})
    plot(report, out / "loadtest.png")


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("closed", "open") if any(r["mode"] == m for r in report["steps"])]
    figure, axes = plt.subplots(
        1, len(modes), figsize=(6.5 * len(modes), 4.5), dpi=100, squeeze=False
    )
    for axis, mode in zip(axes[0], modes, strict=True):
        rows = [r for r in report["steps"] if r["mode"] == mode]
        x = [r["level"] for r in rows]
        for key in ("p50_ms", "p90_ms", "p99_ms"):
            axis.plot(x, [r[key] for r in rows], marker="o", label=key.replace("_ms", ""))
        axis.set(
            xscale="log",
            yscale="log",
            ylabel="latency (ms)",
            xlabel="concurrent clients" if mode == "closed" else "offered load (req/s)",
            title=f"{report['model']}: {mode} loop",
        )
        axis.grid(True, which="both", alpha=0.3)
        twin = axis.twinx()
        twin.plot(x, [r["throughput_rps"] for r in rows], "k--", marker="s", label="throughput")
        twin.set_ylabel("answered 200 / s")
        lines = axis.get_legend_handles_labels()
        extra = twin.get_legend_handles_labels()
        axis.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8, loc="upper left")
    ceiling = report.get("client_ceiling", {}).get("throughput_rps")
    if ceiling:
        figure.suptitle(f"client ceiling on this machine: {ceiling:.0f} req/s", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def run(
    spec: LoadTestSpec, client: TorchServeClient, key_file: Path | None = None
) -> dict[str, Any]:
    """Run every step of `spec` against the client's server; the report, also written to
    spec.out (loadtest.json, .csv, .png). With `key_file`, a key the server refuses mid-run
    (renewed, rotated) is re-read from it."""
    url = f"{client.endpoints.inference}/predictions/{spec.model}"
    loadgen.ensure_loopback(url, spec.allow_remote)
    good = uploads_from_folder(spec.images) if spec.images else upload_mix()
    if not good:
        raise loadgen.LoadError(f"no images found in {spec.images}")
    uploads = mixed(good, spec.bad_share)
    target = loadgen.Target(
        url, client.headers("inference"), multipart=spec.multipart, key_file=key_file
    )
    report: dict[str, Any] = {
        "model": spec.model,
        "url": url,
        "multipart": spec.multipart,
        "bad_share": spec.bad_share,
        "uploads": sorted({u.name for u in uploads}),
        "duration_s": spec.duration_s,
        "max_requests": spec.max_requests,
        "steps": [],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if spec.measure_ceiling:
        top = max(spec.concurrency or [16])
        report["client_ceiling"] = client_ceiling(uploads, top, min(spec.duration_s, 5.0))
        print(
            f"client ceiling: {report['client_ceiling']['throughput_rps']:.0f} req/s at "
            f"c={top} against a do-nothing local endpoint (same payloads)",
            flush=True,
        )
    steps = [("closed", c) for c in spec.concurrency] + [("open", r) for r in spec.rates]
    for mode, level in steps:
        if spec.warmup_s > 0:  # let batching and caches settle; not measured
            warm_level = int(level) if mode == "closed" else 4
            loadgen.run(
                loadgen.closed_loop(
                    target, uploads, warm_level, duration=spec.warmup_s, max_requests=10**6
                )
            )
        before = server_counters(client, spec.model)
        if mode == "closed":
            step = loadgen.closed_loop(
                target,
                uploads,
                int(level),
                duration=spec.duration_s,
                max_requests=spec.max_requests,
                timeout=spec.timeout_s,
            )
        else:
            step = loadgen.open_loop(
                target,
                uploads,
                level,
                duration=spec.duration_s,
                max_requests=spec.max_requests,
                timeout=spec.timeout_s,
            )
        result = loadgen.run(step)
        row = {**result.summary(), **server_view(before, server_counters(client, spec.model))}
        report["steps"].append(row)
        print_step(row)
    if spec.cross_check_ab:
        concurrency = spec.concurrency[0] if spec.concurrency else 1
        jpeg = next(u for u in good if u.content_type == "image/jpeg")
        ab = apache_bench(url, client.headers("inference"), jpeg, concurrency, spec.cross_check_ab)
        ours = loadgen.run(
            loadgen.closed_loop(
                loadgen.Target(url, client.headers("inference"), key_file=key_file),
                [jpeg],
                concurrency,
                duration=spec.duration_s,
                max_requests=spec.cross_check_ab,
            )
        )
        report["cross_check"] = {
            "ab": ab,
            "ours": ours.summary(),
            "throughput_ratio": round(ours.summary()["throughput_rps"] / ab["throughput_rps"], 3),
        }
        print(
            f"cross-check at c={concurrency} on {jpeg.name}: ab {ab['throughput_rps']:.1f} "
            f"req/s p50 {ab['p50_ms']} ms; ours {ours.summary()['throughput_rps']:.1f} req/s "
            f"p50 {ours.summary()['p50_ms']:.0f} ms",
            flush=True,
        )
    write_outputs(report, spec.out)
    print(f"wrote {spec.out / 'loadtest.json'}, loadtest.csv, loadtest.png")
    return report
