"""What each hostile upload costs: a naive server's path against the handler's, per item.

For every kind in gameart/measure/hostile_inputs.py, in a fresh forked process each time (so one
item's memory does not hide another's): CPU seconds and peak resident memory added by
- naive:   what a plain image server does with the body: json.loads for JSON, else Pillow's
           Image.open(...).convert("RGB") and a torchvision-style resize + crop (capped at
           naive_cpu_limit seconds of CPU, the kernel's RLIMIT_CPU);
- handler: the handler's own per-item path (extract_image, decode_image, resize_crop), which
           must answer or refuse within the goal: 100 ms of CPU and 64 MB of memory.
"""

from __future__ import annotations

import io
import json
import os
import platform
import resource
import signal
import time
from pathlib import Path

from gameart.measure.hostile_inputs import Hostile, corpus
from handler.config import HandlerConfig
from handler.decode import decode_image
from handler.errors import RequestError
from handler.inputs import extract_image
from modelspec.imaging import resize_crop
from modelspec.meta import PreprocessSpec

GOAL_CPU_MS = 100
GOAL_MEMORY_MB = 64


def naive(hostile: Hostile) -> str:
    if hostile.content_type == "application/json":
        json.loads(hostile.body)
        return "parsed"
    from PIL import Image

    from modelspec.reference import reference_transform

    Image.MAX_IMAGE_PIXELS = None  # what a server that checks pixels itself sets
    image = Image.open(io.BytesIO(hostile.body)).convert("RGB")
    reference_transform(PreprocessSpec())(image)  # Resize(256), CenterCrop(224), ...
    return f"decoded {image.size[0]}x{image.size[1]}"


def handler(hostile: Hostile) -> str:
    config, spec = HandlerConfig(), PreprocessSpec()
    try:
        data, _ = extract_image(
            {"body": bytearray(hostile.body)}, config.max_image_bytes, hostile.content_type
        )
        image = decode_image(
            data,
            max_pixels=config.max_image_pixels,
            policy=spec.decode,
            draft_min_size=spec.draft_size(config.jpeg_draft_oversample),
            max_aspect_ratio=config.max_aspect_ratio,
        )
        resize_crop(image, spec)
    except RequestError as error:
        return f"{error.status} {error.kind}"
    return "200"


def measure(work, hostile: Hostile, cpu_limit_s: int | None) -> dict:
    """Run work(hostile) in a forked child; its CPU ms, extra peak memory (MB) and outcome."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        if cpu_limit_s:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit_s, cpu_limit_s + 1))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.process_time()
        try:
            outcome = work(hostile)
        except Exception as exc:  # the naive path: whatever Pillow or json raise
            outcome = f"{type(exc).__name__}"
        result = {
            "cpu_ms": (time.process_time() - started) * 1e3,
            "memory_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
            "outcome": outcome,
        }
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if text:
        return json.loads(text)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) in (signal.SIGXCPU, signal.SIGKILL)
    outcome = f"stopped at the {cpu_limit_s} s CPU limit" if killed else "crashed"
    return {"cpu_ms": (cpu_limit_s or 0) * 1e3, "memory_mb": None, "outcome": outcome}


def run(naive_cpu_limit: int) -> dict:
    rows = []
    for hostile in corpus():
        print(f"{hostile.name:24s}", end=" ", flush=True)
        row = {
            "kind": hostile.name,
            "what": hostile.what,
            "bytes": len(hostile.body),
            "expected": f"{hostile.status} {hostile.kind}",
            "naive": measure(naive, hostile, naive_cpu_limit),
            "handler": measure(handler, hostile, None),
        }
        row["within_goal"] = (
            row["handler"]["cpu_ms"] <= GOAL_CPU_MS
            and (row["handler"]["memory_mb"] or 0) <= GOAL_MEMORY_MB
            and row["handler"]["outcome"] == row["expected"]
        )
        print(
            f"naive {row['naive']['cpu_ms']:8.0f} ms  handler {row['handler']['cpu_ms']:6.1f} ms "
            f"{row['handler']['memory_mb']:6.1f} MB  {row['handler']['outcome']}"
            f"{'' if row['within_goal'] else '  OVER THE GOAL'}",
            flush=True,
        )
        rows.append(row)
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "goal": {"cpu_ms": GOAL_CPU_MS, "memory_mb": GOAL_MEMORY_MB},
        "rows": rows,
        "all_within_goal": all(r["within_goal"] for r in rows),
    }


def markdown(report: dict) -> str:
    lines = [
        f"# Hostile uploads: cost per item ({report['date']})",
        "",
        f"Machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs, Python "
        f"{report['machine']['python']}. Each item in a fresh forked process; CPU time and the "
        "growth of peak resident memory. Goal for the handler: every item answered or refused "
        f"within {report['goal']['cpu_ms']} ms of CPU and {report['goal']['memory_mb']} MB.",
        "",
        "| kind | bytes | naive server | handler | handler's answer | goal |",
        "|---|---:|---|---|---|---|",
    ]
    for row in report["rows"]:
        naive_row, ours = row["naive"], row["handler"]
        naive_memory = (
            f"{naive_row['memory_mb']:.0f} MB" if naive_row["memory_mb"] is not None else "?"
        )
        lines.append(
            f"| {row['what']} | {row['bytes']:,} | {naive_row['cpu_ms']:,.0f} ms, {naive_memory} "
            f"({naive_row['outcome']}) | {ours['cpu_ms']:.1f} ms, {ours['memory_mb']:.1f} MB | "
            f"{ours['outcome']} | {'met' if row['within_goal'] else '**missed**'} |"
        )
    verdict = "all within the goal" if report["all_within_goal"] else "NOT all within the goal"
    lines += ["", f"Result: {verdict}.", ""]
    return "\n".join(lines)


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
