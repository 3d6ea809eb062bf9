#!/usr/bin/env python3
"""The main job, end to end: `make demo`.

  1. dataset   Debian game art -> data/gameart (cached)
  2. train     EfficientNet-Lite0 transfer learning -> artifacts/train/gameart (cached)
  3. export    TorchScript + ONNX, parity-checked -> artifacts/export/gameart (cached)
  4. archive   .mar with our handler -> model_store/gameart.mar
  5. serve     TorchServe with config.properties, waits for READY workers
  6. ask       held-out test images, one per game, through HTTP; prints the top-3

The server keeps running afterwards; the last lines say how to query and stop it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from gameart.ops import server as serve
from gameart.ops.client import DEFAULT_RUN_DIR, REPO_ROOT, TorchServeClient
from gameart.pipeline import archive as build_mar
from gameart.pipeline import dataset as build_dataset
from gameart.pipeline import training as train

DATA = REPO_ROOT / "data" / "gameart"
TRAIN_DIR = REPO_ROOT / "artifacts" / "train" / "gameart"
EXPORT_DIR = REPO_ROOT / "artifacts" / "export" / "gameart"
MODEL_STORE = REPO_ROOT / "model_store"
MODEL_NAME = "gameart"
STAMP = ".dataset-sha256"  # in TRAIN_DIR: which dataset the checkpoint was trained on


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def banner(step: int, text: str) -> None:
    print(f"\n=== [{step}/6] {text}", flush=True)


def ensure_dataset() -> None:
    banner(1, "dataset: game art from Debian packages")
    if build_dataset.main(["--out", str(DATA)]) != 0:
        raise SystemExit("dataset build failed")


def ensure_model(budget: float) -> None:
    banner(2, "train: EfficientNet-Lite0, frozen ImageNet backbone + new head")
    checkpoint, stamp = TRAIN_DIR / "checkpoint.pth", TRAIN_DIR / STAMP
    dataset_hash = sha256(DATA / "report.json")
    if checkpoint.is_file() and stamp.is_file() and stamp.read_text() == dataset_hash:
        print(f"checkpoint up to date: {checkpoint} (delete it to retrain)")
        return
    train.main(["--data", str(DATA), "--out", str(TRAIN_DIR), "--time-budget", str(budget)])
    stamp.write_text(dataset_hash)


def ensure_export() -> None:
    from export.cli import main as export_main
    from modelspec.meta import MetaError, ModelMeta

    banner(3, "export: TorchScript + ONNX with the parity check")
    checkpoint = TRAIN_DIR / "checkpoint.pth"
    try:
        meta = ModelMeta.load(EXPORT_DIR)
        if meta.source.get("sha256") == sha256(checkpoint):
            print(f"export up to date: {EXPORT_DIR}")
            return
    except MetaError:
        pass
    args = ["--checkpoint", str(checkpoint), "--out", str(EXPORT_DIR), "--name", MODEL_NAME]
    if export_main(args) != 0:
        raise SystemExit("export failed")


def ensure_archive() -> Path:
    banner(4, "archive: .mar with the project's handler")
    mar = MODEL_STORE / f"{MODEL_NAME}.mar"
    meta = EXPORT_DIR / "model_meta.json"
    if mar.is_file() and mar.stat().st_mtime > meta.stat().st_mtime:
        print(f"archive up to date: {mar}")
        return mar
    args = [
        "--export-dir",
        str(EXPORT_DIR),
        "--name",
        MODEL_NAME,
        "--backend",
        "onnx",
        "--batch-size",
        "8",
        "--max-batch-delay",
        "5",
        "--model-store",
        str(MODEL_STORE),
    ]
    if build_mar.main(args) != 0:
        raise SystemExit("archive failed")
    return mar


def start_server() -> TorchServeClient:
    banner(5, "serve: TorchServe with config.properties")
    if serve.recorded_pid(DEFAULT_RUN_DIR) is not None:
        print("stopping the server already running, to serve the fresh archive")
        serve.stop_server(DEFAULT_RUN_DIR)
    if serve.main(["start"]) != 0:
        raise SystemExit("TorchServe did not start; see .run/torchserve/logs")
    return TorchServeClient.from_run_dir(DEFAULT_RUN_DIR)


def held_out_examples(per_game: int = 1) -> list[tuple[str, Path]]:
    examples = []
    for game_dir in sorted((DATA / "test").iterdir()):
        for path in sorted(game_dir.iterdir())[:per_game]:
            examples.append((game_dir.name, path))
    return examples


def ask(client: TorchServeClient) -> float:
    banner(6, f"ask: held-out test images through http POST /predictions/{MODEL_NAME}")
    examples = held_out_examples()
    correct = 0
    print(f"{'image':24s} {'true game':18s} {'ms':>5s}  top-3 answer")
    for game, path in examples:
        started = time.perf_counter()
        response = client.predict(MODEL_NAME, path.read_bytes())
        elapsed = (time.perf_counter() - started) * 1e3
        if response.status_code != 200:
            print(f"{path.name:24s} {game:18s} HTTP {response.status_code}: {response.text}")
            continue
        answer = response.json()
        correct += answer["label"] == game
        top3 = ", ".join(f"{p['label']} {p['probability']:.2f}" for p in answer["top_k"])
        mark = "ok" if answer["label"] == game else "--"
        print(f"{path.name:24s} {game:18s} {elapsed:5.0f}  {mark} {top3}")
    print(f"{correct}/{len(examples)} correct on these held-out images")
    return correct / max(1, len(examples))


def served_accuracy(client: TorchServeClient, concurrency: int = 4) -> float:
    """Every held-out image through HTTP: the served model should score what train.py measured."""
    examples = [
        (game, path)
        for game_dir in sorted((DATA / "test").iterdir())
        for game, path in ((game_dir.name, p) for p in sorted(game_dir.iterdir()))
    ]

    def label_of(example: tuple[str, Path]) -> bool:
        game, path = example
        response = client.predict(MODEL_NAME, path.read_bytes())
        return response.status_code == 200 and response.json()["label"] == game

    with ThreadPoolExecutor(concurrency) as pool:
        hits = list(
            tqdm(
                pool.map(label_of, examples),
                total=len(examples),
                desc="all held-out images via HTTP",
                dynamic_ncols=True,
            )
        )
    accuracy = sum(hits) / len(hits)
    offline = json.loads((TRAIN_DIR / "eval.json").read_text())["accuracy"]
    print(
        f"served accuracy {accuracy:.1%} on {len(hits)} held-out images "
        f"(train.py measured {offline:.1%} offline; majority baseline "
        f"{json.loads((TRAIN_DIR / 'eval.json').read_text())['majority_baseline']:.1%})"
    )
    return accuracy


def print_next_steps(client: TorchServeClient) -> None:
    example = held_out_examples()[0][1].relative_to(REPO_ROOT)
    print(f"""
TorchServe is still running. Try it:
  curl -H "Authorization: Bearer $(.venv/bin/python scripts/serve.py token inference)" \\
       -T "{example}" {client.endpoints.inference}/predictions/{MODEL_NAME}
Status:  make status      Stop:  make stop""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--train-budget",
        type=float,
        default=1200.0,
        help="seconds allowed for training (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    ensure_dataset()
    ensure_model(args.train_budget)
    ensure_export()
    ensure_archive()
    client = start_server()
    ask(client)
    served_accuracy(client)
    print_next_steps(client)
    print(f"(demo took {time.monotonic() - started:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
