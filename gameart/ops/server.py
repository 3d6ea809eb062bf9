"""TorchServe's lifecycle: start it from a typed `ServerSpec`, wait for READY, stop it.

Each instance lives in its own run directory (default .run/torchserve): the effective config,
logs, TorchServe's key file and its temp files (pid file, worker sockets), so tests and
benchmarks can run their own instance beside a demo server without clashing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from gameart.ops.client import (
    KEY_FILE,
    SERVER_FILE,
    TorchServeClient,
    TorchServeError,
    read_tokens,
)
from gameart.ops.environment import EnvironmentProblem, find_java
from gameart.ops.keys import token_authorisation_on
from gameart.ops.ports import free_ports
from gameart.ops.properties import (
    absolute_paths,
    checked_overrides,
    effective_config,
    read_properties,
)
from gameart.paths import CONFIG, LOG_CONFIG, MODEL_STORE, RUN_DIR, venv_program

PORT_ATTEMPTS = 3  # a free port can be taken by another process before TorchServe binds it


class ServeError(RuntimeError):
    """Could not start or stop the server; the message says why and what to do."""


@dataclass(frozen=True)
class ServerSpec:
    """Everything that decides how one TorchServe instance starts."""

    run_dir: Path = RUN_DIR
    model_store: Path = MODEL_STORE
    config: Path = CONFIG
    log_config: Path = LOG_CONFIG
    overrides: Mapping[str, str] = field(default_factory=dict)  # config.properties keys
    ready_timeout_s: float = 300.0  # until every model has its minWorkers READY
    free_ports: bool = False  # every listener, gRPC included, on its own free loopback port
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment for the server

    def replace(self, **changes: Any) -> ServerSpec:
        return dataclasses.replace(self, **changes)


@dataclass
class RunningServer:
    """A started TorchServe: its client, its process, its logs. A context manager that stops
    the server on exit."""

    spec: ServerSpec
    run_dir: Path
    pid: int
    client: TorchServeClient
    ready: dict[str, int]  # READY workers per model when the start returned

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def grpc_inference_address(self) -> str:
        port = read_properties(self.run_dir / "config.properties").get("grpc_inference_port")
        return f"127.0.0.1:{port or 7070}"

    def ts_log(self) -> str:
        return (self.log_dir / "ts_log.log").read_text(errors="replace")

    def model_log(self) -> str:
        return (self.log_dir / "model_log.log").read_text(errors="replace")

    def worker_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.pid).children(recursive=True)]

    def stop(self) -> bool:
        return stop_server(self.run_dir)

    def describe(self) -> str:
        """What a person needs once it is up: READY workers, addresses, where the keys are."""
        lines = ["ready:"]
        lines += [f"  {name}: {ready} worker(s) READY" for name, ready in self.ready.items()]
        endpoints = self.client.endpoints
        lines += [
            f"inference  {endpoints.inference}",
            f"management {endpoints.management}",
            f"metrics    {endpoints.metrics}/metrics",
        ]
        if read_tokens(self.run_dir):
            key_file = self.run_dir / KEY_FILE
            lines.append(f"tokens     {key_file}  (python scripts/serve.py token inference)")
        return "\n".join(lines)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def torchserve_command() -> str:
    found = venv_program("torchserve")
    if not found:
        raise ServeError("the torchserve command is missing: run `make install`")
    return found


def free_port_overrides() -> dict[str, str]:
    """Every listener, gRPC included, on its own free loopback port."""
    ports = free_ports(5)
    return {
        "inference_address": f"http://127.0.0.1:{ports[0]}",
        "management_address": f"http://127.0.0.1:{ports[1]}",
        "metrics_address": f"http://127.0.0.1:{ports[2]}",
        "grpc_inference_port": str(ports[3]),
        "grpc_management_port": str(ports[4]),
    }


def start_server(spec: ServerSpec) -> RunningServer:
    """Start TorchServe and wait until every model has its minWorkers READY.

    With `free_ports`, a port lost to another process between the check and TorchServe's
    bind is not a failure: the server is started again on new ports."""
    checked_overrides(spec.overrides)
    attempts = PORT_ATTEMPTS if spec.free_ports else 1
    for attempt in range(1, attempts + 1):
        ports = free_port_overrides() if spec.free_ports else {}
        try:
            return _start_once(spec, {**ports, **spec.overrides})
        except ServeError:
            if attempt == attempts or not _lost_a_port(spec.run_dir.resolve()):
                raise
    raise AssertionError("unreachable")


def _start_once(spec: ServerSpec, overrides: Mapping[str, str]) -> RunningServer:
    try:
        find_java()
    except EnvironmentProblem as exc:
        raise ServeError(str(exc)) from exc
    run_dir = spec.run_dir.resolve()
    if (pid := recorded_pid(run_dir)) is not None:
        raise ServeError(
            f"a server from {run_dir} is already running (pid {pid}); "
            "run `python scripts/serve.py stop` first"
        )
    model_store = spec.model_store.resolve()
    mars = sorted(model_store.glob("*.mar"))
    if not mars:
        raise ServeError(
            f"no .mar files in {model_store}: build one with scripts/build_mar.py "
            "(or run `make demo`)"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o700)  # key_file.json lands here: only the server's user may read it
    for sub in ("tmp", "logs"):
        shutil.rmtree(run_dir / sub, ignore_errors=True)
        (run_dir / sub).mkdir(parents=True)
    (run_dir / KEY_FILE).unlink(missing_ok=True)

    settings = {"model_store": str(model_store), **absolute_paths(spec.config), **overrides}
    config_path = run_dir / "config.properties"
    config_path.write_text(effective_config(spec.config, settings))
    load_models = read_properties(config_path).get("load_models", "all")
    expected = len(mars) if load_models.strip() == "all" else len(load_models.split(","))

    command = [torchserve_command(), "--start", "--ncs", "--ts-config", str(config_path)]
    command += ["--model-store", str(model_store), "--log-config", str(spec.log_config.resolve())]
    env = {**_server_env(run_dir), **spec.env}
    with open(run_dir / "logs" / "launcher.log", "w") as launcher_log:
        launched = subprocess.run(
            command, cwd=run_dir, env=env, stdout=launcher_log, stderr=subprocess.STDOUT
        )
    if launched.returncode != 0:
        raise ServeError(
            f"`torchserve --start` exited with {launched.returncode}:\n"
            + _log_tail(run_dir / "logs" / "launcher.log")
        )
    pid = _wait_for_pid_file(run_dir)
    record = {"pid": pid, "config": str(config_path), "model_store": str(model_store)}
    (run_dir / SERVER_FILE).write_text(json.dumps({**record, "started": time.time()}, indent=2))
    print(
        f"TorchServe pid {pid}, run dir {run_dir}; waiting for workers "
        f"(up to {spec.ready_timeout_s:.0f}s) ...",
        flush=True,
    )

    def alive() -> None:
        if not psutil.pid_exists(pid):
            raise ServeError(
                "TorchServe exited during start-up:\n" + _log_tail(run_dir / "logs" / "ts_log.log")
            )
        if failure := model_load_failure(run_dir):
            stop_server(run_dir)
            cause = failure.strip().splitlines()[-1]
            raise ServeError(
                f"a model failed to load ({cause}); stopped the server. Worker said:\n{failure}"
            )

    client = TorchServeClient.from_run_dir(run_dir)
    try:
        state = client.wait_until_ready(expected, spec.ready_timeout_s, alive=alive)
    except TorchServeError as exc:
        stop_server(run_dir)
        raise ServeError(
            f"{exc}; stopped the server. Log tail:\n" + _log_tail(run_dir / "logs" / "ts_log.log")
        ) from exc
    renewer = start_key_renewer(run_dir, pid)
    if renewer is not None:
        server_file = run_dir / SERVER_FILE
        record = json.loads(server_file.read_text())
        server_file.write_text(json.dumps({**record, "key_renewer_pid": renewer}, indent=2))
    return RunningServer(spec, run_dir, pid, client, state)


def start_key_renewer(run_dir: Path, server_pid: int) -> int | None:
    """TorchServe never renews its keys: a process beside it does, until the server exits
    (gameart/ops/keys.py); its pid, or None when token authorisation is off."""
    if not token_authorisation_on(run_dir / "config.properties"):
        return None
    command = [sys.executable, "-m", "gameart.cli.renew_keys", "--run-dir", str(run_dir)]
    with open(run_dir / "logs" / "key_renewal.log", "a") as log:
        process = subprocess.Popen(
            [*command, "--pid", str(server_pid)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # outlives `serve.py start`; ends with the server
        )
    return process.pid


def _lost_a_port(run_dir: Path) -> bool:
    logs = run_dir / "logs"
    text = (
        " ".join(p.read_text(errors="replace") for p in logs.glob("*.log")) if logs.exists() else ""
    )
    return "Address already in use" in text or "BindException" in text


def _server_env(run_dir: Path) -> dict[str, str]:
    tmp = run_dir / "tmp"
    return {
        **os.environ,
        "TMPDIR": str(tmp),  # TorchServe's pid file goes here
        "TEMP": str(tmp),  # -> java.io.tmpdir: worker sockets and unpacked models
        "LOG_LOCATION": str(run_dir / "logs"),
        "METRICS_LOCATION": str(run_dir / "logs"),
    }


def recorded_pid(run_dir: Path) -> int | None:
    path = run_dir / SERVER_FILE
    if not path.is_file():
        return None
    pid = json.loads(path.read_text()).get("pid")
    return pid if pid and psutil.pid_exists(pid) else None


def _wait_for_pid_file(run_dir: Path, timeout: float = 20.0) -> int:
    pid_file = run_dir / "tmp" / ".model_server.pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_file.is_file() and pid_file.read_text().strip():
            return int(pid_file.read_text().strip())
        time.sleep(0.1)
    raise ServeError("TorchServe did not start:\n" + _log_tail(run_dir / "logs" / "launcher.log"))


def _log_tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return f"(no {path.name})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def model_load_failure(run_dir: Path, deaths: int = 2) -> str | None:
    """The worker traceback when a model keeps failing to load, else None.

    TorchServe retries a failing worker with back-off for up to maxRetryTimeoutInSec (default
    300 s), saying little; two deaths with a Python traceback is enough to know. A death shows
    as "Retry worker" (INFO) or, in TorchServe's own log config, "...process died" (DEBUG).
    """
    ts_log = run_dir / "logs" / "ts_log.log"
    model_log = run_dir / "logs" / "model_log.log"
    if not ts_log.is_file() or not model_log.is_file():
        return None
    text = ts_log.read_text(errors="replace")
    if max(text.count("Retry worker"), text.count("Backend worker process died")) < deaths:
        return None
    lines = [
        line.split("MODEL_LOG - ", 1)[-1]
        for line in model_log.read_text(errors="replace").splitlines()
        if "MODEL_LOG - " in line
    ]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    # The worker re-raises load errors as "RuntimeError: 500 - ...": prefer the original one.
    for start in reversed(starts):
        block = lines[start : start + 60]
        end = next((i for i, line in enumerate(block[1:], 1) if not line.startswith(" ")), 0)
        block = block[: end + 1]
        if not re.match(r"RuntimeError: \d{3} - ", block[-1]):
            return "\n".join(block)
    return "\n".join(lines[starts[-1] : starts[-1] + 40]) if starts else None


def serve_in_foreground(server: RunningServer) -> int:
    """Block while the server runs (container entry point); SIGTERM/SIGINT stop it cleanly."""

    def on_signal(signum: int, frame: Any) -> None:
        server.stop()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while psutil.pid_exists(server.pid):
        time.sleep(1)
    print("TorchServe exited:\n" + _log_tail(server.log_dir / "ts_log.log"), file=sys.stderr)
    return 1


def stop_server(run_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the instance recorded in run_dir and its workers. True if one was running."""
    run_dir = run_dir.resolve()
    pid = recorded_pid(run_dir)
    if pid is None:
        return False
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    renewer = json.loads((run_dir / SERVER_FILE).read_text()).get("key_renewer_pid")
    if renewer and psutil.pid_exists(renewer):
        with contextlib.suppress(psutil.Error):
            psutil.Process(renewer).terminate()  # it would exit with the server anyway
    subprocess.run(
        [torchserve_command(), "--stop"],
        cwd=run_dir,
        env=_server_env(run_dir),
        capture_output=True,
        check=False,
    )
    _gone, alive = psutil.wait_procs(family, timeout=timeout)
    for proc in alive:  # did not stop in time: no lingering workers
        proc.kill()
    psutil.wait_procs(alive, timeout=10)
    (run_dir / SERVER_FILE).unlink(missing_ok=True)
    (run_dir / KEY_FILE).unlink(missing_ok=True)
    return True


@dataclass(frozen=True)
class Health:
    problem: str | None  # None: /ping answers and every model has a READY worker
    ready: Mapping[str, int] = field(default_factory=dict)  # READY workers per model


def check_health(run_dir: Path) -> Health:
    """What the HEALTHCHECK asks: the server answers /ping and every model has a READY worker."""
    run_dir = run_dir.resolve()
    if recorded_pid(run_dir) is None:
        return Health(f"no server running from {run_dir}")
    client = TorchServeClient.from_run_dir(run_dir, timeout=5)
    if not client.ping():
        return Health("/ping did not answer Healthy")
    ready = client.ready_models()
    if not ready or min(ready.values()) < 1:
        return Health(f"READY workers per model {ready}", ready)
    return Health(None, ready)
