"""The main job, end to end: `make demo`.

  1. dataset   Debian game art -> data/gameart (cached)
  2. train     EfficientNet-Lite0 transfer learning -> artifacts/train/gameart (cached)
  3. export    TorchScript + ONNX, parity-checked -> artifacts/export/gameart (cached)
  4. archive   .mar with our handler -> model_store/gameart.mar (rebuilt when any input changed)
  5. serve     TorchServe with config.properties, waits for READY workers
  6. ask       held-out test images, one per game, through HTTP; prints the top-3

The server keeps running afterwards; the last lines say how to query and stop it.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

from gameart.ops.client import TorchServeClient
from gameart.ops.nginx import FrontError, FrontSpec, start_front, start_key_watcher, stop_front
from gameart.ops.server import RunningServer, ServerSpec, recorded_pid, start_server, stop_server
from gameart.paths import ARTIFACTS, DATASET, DEB_CACHE, EXPORT_OUT, REPO_ROOT, RUN_DIR, TRAIN_OUT
from gameart.pipeline.archive import ArchiveSpec, build_archive, describe, fingerprint

MODEL_NAME = "gameart"
# ONNX Runtime on CPU workers, the archive defaults for batching and workers
ARCHIVE = ArchiveSpec(export_dir=EXPORT_OUT, name=MODEL_NAME, backend="onnx")
STAMP = ".dataset-sha256"  # in TRAIN_OUT: which dataset the checkpoint was trained on
ARCHIVE_STAMP = ARTIFACTS / f"{MODEL_NAME}.mar.sha256"  # what the served .mar was built from


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def banner(step: int, text: str) -> None:
    print(f"\n=== [{step}/6] {text}", flush=True)


def ensure_dataset() -> None:
    from gameart.pipeline.dataset import GAMES, Filters, build

    banner(1, "dataset: game art from Debian packages")
    build(DATASET, DEB_CACHE, dict(sorted(GAMES.items())), Filters())


def ensure_model(budget_s: float) -> None:
    from gameart.pipeline.training import Config, train

    banner(2, "train: EfficientNet-Lite0, frozen ImageNet backbone + new head")
    checkpoint, stamp = TRAIN_OUT / "checkpoint.pth", TRAIN_OUT / STAMP
    dataset_hash = sha256(DATASET / "report.json")
    if checkpoint.is_file() and stamp.is_file() and stamp.read_text() == dataset_hash:
        print(f"checkpoint up to date: {checkpoint} (delete it to retrain)")
        return
    train(Config(data=DATASET, out=TRAIN_OUT, time_budget=budget_s))
    stamp.write_text(dataset_hash)


def ensure_export() -> None:
    from export.cli import export_model
    from export.spec import ExportSpec
    from modelspec.meta import MetaError, ModelMeta

    banner(3, "export: TorchScript + ONNX with the parity check")
    checkpoint = TRAIN_OUT / "checkpoint.pth"
    try:
        if ModelMeta.load(EXPORT_OUT).source.get("sha256") == sha256(checkpoint):
            print(f"export up to date: {EXPORT_OUT}")
            return
    except MetaError:
        pass
    result = export_model(ExportSpec(checkpoint=checkpoint, out=EXPORT_OUT, name=MODEL_NAME))
    print(f"exported {result.meta.name}: {', '.join(result.meta.files.values())}")


def ensure_archive() -> Path:
    banner(4, "archive: .mar with the project's handler")
    mar = ARCHIVE.model_store / f"{MODEL_NAME}.mar"
    current = fingerprint(ARCHIVE)
    if mar.is_file() and ARCHIVE_STAMP.is_file() and ARCHIVE_STAMP.read_text() == current:
        print(f"archive up to date: {mar}")
        return mar
    mar = build_archive(ARCHIVE)
    print(describe(mar, ARCHIVE))
    ARCHIVE_STAMP.parent.mkdir(parents=True, exist_ok=True)
    ARCHIVE_STAMP.write_text(current)
    return mar


def start() -> RunningServer:
    banner(5, "serve: TorchServe with config.properties")
    if recorded_pid(RUN_DIR) is not None:
        print("stopping the server already running, to serve the fresh archive")
        stop_server(RUN_DIR)
    server = start_server(ServerSpec(explain_pools=True))  # the playground explains
    print(server.describe())
    return server


def held_out_examples(per_game: int = 1) -> list[tuple[str, Path]]:
    examples = []
    for game_dir in sorted((DATASET / "test").iterdir()):
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
    """Every held-out image through HTTP: the served model should score what training measured."""
    examples = [
        (game_dir.name, path)
        for game_dir in sorted((DATASET / "test").iterdir())
        for path in sorted(game_dir.iterdir())
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
    evaluation = json.loads((TRAIN_OUT / "eval.json").read_text())
    print(
        f"served accuracy {accuracy:.1%} on {len(hits)} held-out images "
        f"(train.py measured {evaluation['accuracy']:.1%} offline; majority baseline "
        f"{evaluation['majority_baseline']:.1%})"
    )
    return accuracy


def open_playground(client: TorchServeClient) -> str | None:
    """The nginx front on loopback, adding the inference key, with the playground page; its
    URL, or None (with the reason printed) when it cannot start, e.g. the port is taken."""
    spec = FrontSpec(
        upstreams=(client.endpoints.inference_host_port,),
        key_run_dir=RUN_DIR,
        models=(MODEL_NAME,),
        explain_pools=True,
    )
    stop_front(spec.prefix)  # a front left by an earlier demo holds an older server's key
    try:
        start_front(spec)
    except (FrontError, OSError) as exc:
        print(f"(no playground: the nginx front did not start: {exc})")
        return None
    start_key_watcher(spec)
    return f"http://{spec.listen}/playground/"


def print_next_steps(client: TorchServeClient, playground: str | None) -> None:
    example = held_out_examples()[0][1].relative_to(REPO_ROOT)
    page = (
        f"\nPlayground (drop an image, see where the model looked):  {playground}"
        if playground
        else ""
    )
    print(f"""
TorchServe is still running. Try it:
  curl -H "Authorization: Bearer $(.venv/bin/python scripts/serve.py token inference)" \\
       -T "{example}" {client.endpoints.inference}/predictions/{MODEL_NAME}{page}
Status:  make status      Stop:  make stop""")


def run_demo(train_budget_s: float = 1200.0) -> float:
    """Every step in order; the served accuracy on the held-out images."""
    started = time.monotonic()
    ensure_dataset()
    ensure_model(train_budget_s)
    ensure_export()
    ensure_archive()
    client = start().client
    ask(client)
    accuracy = served_accuracy(client)
    print_next_steps(client, open_playground(client))
    print(f"(demo took {time.monotonic() - started:.0f}s)")
    return accuracy
