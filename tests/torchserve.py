"""Start a real TorchServe (Java frontend + Python workers) for a test, on free loopback ports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

from gameart.ops import server as serve
from gameart.ops.client import TorchServeClient
from gameart.pipeline import archive as build_mar
from tests import components


@dataclass
class RunningServer:
    run_dir: Path
    model_store: Path
    client: TorchServeClient
    java_pid: int

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    def model_log(self) -> str:
        return (self.log_dir / "model_log.log").read_text(errors="replace")

    def ts_log(self) -> str:
        return (self.log_dir / "ts_log.log").read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.java_pid).children(recursive=True)]

    def stop(self) -> bool:
        return serve.stop_server(self.run_dir)


def archive(export_dir: Path, store: Path, name: str, backend: str, *extra: str) -> Path:
    code = build_mar.main(
        [
            "--export-dir",
            str(export_dir),
            "--model-store",
            str(store),
            "--name",
            name,
            "--backend",
            backend,
            *extra,
        ]
    )
    assert code == 0, f"build_mar failed for {name}"
    return store / f"{name}.mar"


def start(run_dir: Path, store: Path, *settings: str, timeout: float = 300) -> RunningServer:
    """serve.py start with every listener on its own free port; raises if it does not come up.

    Free ports are only free until someone binds them: if TorchServe lost one to another
    process anyway, it is started again on new ones (up to three times)."""
    components.require("java")
    components.record("torchserve")
    for _ in range(3):
        code = serve.main(serve.free_port_argv(run_dir, store, settings, timeout))
        if code == 0 or not _lost_a_port(run_dir):
            break
    assert code == 0, "TorchServe did not start; see " + str(run_dir / "logs")
    pid = serve.recorded_pid(run_dir)
    assert pid is not None
    return RunningServer(run_dir, store, TorchServeClient.from_run_dir(run_dir), pid)


def _lost_a_port(run_dir: Path) -> bool:
    logs = run_dir / "logs"
    text = (
        " ".join(p.read_text(errors="replace") for p in logs.glob("*.log")) if logs.exists() else ""
    )
    return "Address already in use" in text or "BindException" in text
