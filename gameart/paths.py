"""Where things live in a checkout: one place for every default location."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG = REPO_ROOT / "config.properties"  # the shipped TorchServe config
LOG_CONFIG = REPO_ROOT / "log4j2.xml"
MODEL_STORE = REPO_ROOT / "model_store"
RUN_DIR = REPO_ROOT / ".run" / "torchserve"  # the default server instance's config, logs, keys
ARTIFACTS = REPO_ROOT / "artifacts"
DATA = REPO_ROOT / "data"
DOCS = REPO_ROOT / "docs"

# The default model's pipeline (make demo): dataset -> training -> export -> archive
DATASET = DATA / "gameart"
DEB_CACHE = DATA / "debs"
TRAIN_OUT = ARTIFACTS / "train" / "gameart"
EXPORT_OUT = ARTIFACTS / "export" / "gameart"


def venv_program(name: str) -> str | None:
    """A console script of this Python's environment (torchserve, torch-model-archiver), found
    beside the interpreter first so an unactivated venv works, else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)
