"""Start a real TorchServe (Java frontend + Python workers) for a test, on free loopback ports.

Thin over the project's own typed API (ArchiveSpec, ServerSpec), so the tests start servers
exactly as the commands and benchmarks do."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from gameart.ops.server import (
    RunningServer,
    ServeError,
    ServerSpec,
    free_port_overrides,
    start_server,
    stop_server,
)
from gameart.pipeline.archive import ArchiveSpec, build_archive
from tests import components

__all__ = ["RunningServer", "archive", "free_port_settings", "start", "stop_leftovers"]


def archive(export_dir: Path, store: Path, name: str, backend: str, **changes: Any) -> Path:
    """The export archived as `name`; `changes` are ArchiveSpec fields (batch_size=4, ...)."""
    spec = ArchiveSpec(export_dir=export_dir, model_store=store, name=name, backend=backend)
    return build_archive(spec.replace(**changes))


def start(
    run_dir: Path, store: Path, *settings: str, timeout: float = 300, explain_pools: bool = False
) -> RunningServer:
    """A TorchServe with every listener on its own free port (started again on new ports if
    another process took one first); `settings` are config.properties KEY=VALUE overrides.
    Raises AssertionError, with the reason, if it does not come up."""
    components.require("java")
    components.record("torchserve")
    overrides = dict(s.split("=", 1) for s in settings)
    spec = ServerSpec(
        run_dir,
        store,
        overrides=overrides,
        ready_timeout_s=timeout,
        free_ports=True,
        explain_pools=explain_pools,
    )
    try:
        return start_server(spec)
    except ServeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise AssertionError(f"TorchServe did not start; see {run_dir / 'logs'}") from exc


def free_port_settings() -> list[str]:
    """KEY=VALUE settings that put every listener on its own free loopback port."""
    return [f"{key}={value}" for key, value in free_port_overrides().items()]


def stop_leftovers(run_dir: Path) -> None:
    """After a test that stopped (or killed) a server itself: stop whatever is still recorded."""
    stop_server(run_dir, timeout=10)
