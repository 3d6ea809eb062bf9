"""TorchServe's lifecycle: start it from a typed `ServerSpec`, wait for READY, stop it.

Each instance lives in its own run directory (default .run/torchserve): the effective config,
logs, TorchServe's key file and its temp files (pid file, worker sockets), so tests and
benchmarks can run their own instance beside a demo server without clashing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
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
from gameart.ops.explain_pool import load_models_with_pools, shrink_pools
from gameart.ops.keys import token_authorisation_on
from gameart.ops.ports import free_ports
from gameart.ops.processes import terminate_if_ours
from gameart.ops.properties import (
    absolute_paths,
    checked_overrides,
    effective_config,
    read_properties,
)
from gameart.ops.server_logs import log_tail, lost_a_port, model_load_failure
from gameart.paths import CONFIG, LOG_CONFIG, MODEL_STORE, RUN_DIR, venv_program

PORT_ATTEMPTS = 3  # a free port can be taken by another process before TorchServe binds it
DRAINING_FILE = "draining"  # present while a supervisor drains the server before stopping it


class ServeError(RuntimeError):
    """Could not start or stop the server; the message says why and what to do."""


class StartCancelled(ServeError):
    """The start was called off (a SIGTERM during start-up); the server has been stopped."""


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
    # TorchServe's launcher stays a child of this process (`torchserve --foreground`), so a
    # supervisor sees the server die at once; otherwise it is left running on its own.
    attached: bool = False
    # each model also as <model>-explain, one worker, for /explanations (gameart/ops/explain_pool)
    explain_pools: bool = False

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
    launcher: subprocess.Popen[bytes] | None = None  # when attached: exits when TorchServe does

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


def start_server(spec: ServerSpec, cancelled: Callable[[], bool] | None = None) -> RunningServer:
    """Start TorchServe and wait until every model has its minWorkers READY.

    With `free_ports`, a port lost to another process between the check and TorchServe's
    bind is not a failure: the server is started again on new ports. `cancelled` is asked
    while waiting: when it says True the server is stopped and StartCancelled raised."""
    checked_overrides(spec.overrides)
    attempts = PORT_ATTEMPTS if spec.free_ports else 1
    for attempt in range(1, attempts + 1):
        ports = free_port_overrides() if spec.free_ports else {}
        try:
            return _start_once(spec, {**ports, **spec.overrides}, cancelled or (lambda: False))
        except StartCancelled:
            raise
        except ServeError:
            if attempt == attempts or not lost_a_port(spec.run_dir.resolve()):
                raise
    raise AssertionError("unreachable")


def _start_once(
    spec: ServerSpec, overrides: Mapping[str, str], cancelled: Callable[[], bool]
) -> RunningServer:
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
    (run_dir / DRAINING_FILE).unlink(missing_ok=True)

    settings = {"model_store": str(model_store), **absolute_paths(spec.config), **overrides}
    if spec.explain_pools:
        if (
            settings.get("load_models", read_properties(spec.config).get("load_models", "all"))
            != "all"
        ):
            raise ServeError("explanation pools load every archive: they need load_models=all")
        settings["load_models"] = load_models_with_pools(mars)
    config_path = run_dir / "config.properties"
    config_path.write_text(effective_config(spec.config, settings))
    load_models = read_properties(config_path).get("load_models", "all")
    expected = len(mars) if load_models.strip() == "all" else len(load_models.split(","))

    command = [torchserve_command(), "--start", "--ncs", "--ts-config", str(config_path)]
    command += ["--model-store", str(model_store), "--log-config", str(spec.log_config.resolve())]
    env = {**_server_env(run_dir), **spec.env}
    launcher = None
    with open(run_dir / "logs" / "launcher.log", "w") as launcher_log:
        if spec.attached:
            launcher = subprocess.Popen(
                [*command, "--foreground"],
                cwd=run_dir,
                env=env,
                stdout=launcher_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        else:
            launched = subprocess.run(
                command, cwd=run_dir, env=env, stdout=launcher_log, stderr=subprocess.STDOUT
            )
            if launched.returncode != 0:
                raise ServeError(
                    f"`torchserve --start` exited with {launched.returncode}:\n"
                    + log_tail(run_dir / "logs" / "launcher.log")
                )
    pid = _wait_for_pid_file(run_dir, launcher)
    record = {"pid": pid, "config": str(config_path), "model_store": str(model_store)}
    (run_dir / SERVER_FILE).write_text(json.dumps({**record, "started": time.time()}, indent=2))
    print(
        f"TorchServe pid {pid}, run dir {run_dir}; waiting for workers "
        f"(up to {spec.ready_timeout_s:.0f}s) ...",
        flush=True,
    )

    def alive() -> None:
        if cancelled():
            stop_server(run_dir, timeout=5)
            raise StartCancelled("the start was called off; the server is stopped")
        if not server_alive(pid, launcher):
            raise ServeError(
                "TorchServe exited during start-up:\n" + log_tail(run_dir / "logs" / "ts_log.log")
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
        if spec.explain_pools:
            shrink_pools(client)
    except TorchServeError as exc:
        stop_server(run_dir)
        raise ServeError(
            f"{exc}; stopped the server. Log tail:\n" + log_tail(run_dir / "logs" / "ts_log.log")
        ) from exc
    renewer = start_key_renewer(run_dir, pid)
    if renewer is not None:
        server_file = run_dir / SERVER_FILE
        record = json.loads(server_file.read_text())
        server_file.write_text(json.dumps({**record, "key_renewer_pid": renewer}, indent=2))
    return RunningServer(spec, run_dir, pid, client, state, launcher)


def server_alive(pid: int, launcher: subprocess.Popen[bytes] | None = None) -> bool:
    """Whether TorchServe still runs: an attached launcher is polled (which also reaps it),
    and a zombie does not count as alive."""
    if launcher is not None and launcher.poll() is not None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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
    return pid if pid and server_alive(pid) else None


def _wait_for_pid_file(
    run_dir: Path, launcher: subprocess.Popen[bytes] | None, timeout: float = 20.0
) -> int:
    pid_file = run_dir / "tmp" / ".model_server.pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher is not None and launcher.poll() is not None:
            break  # the launcher gave up (no Java, bad config): no need to wait the full time
        if pid_file.is_file() and pid_file.read_text().strip():
            return int(pid_file.read_text().strip())
        time.sleep(0.1)
    raise ServeError("TorchServe did not start:\n" + log_tail(run_dir / "logs" / "launcher.log"))


def stop_server(run_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the instance recorded in run_dir and its workers. True if one was running.

    A record left by a server that died is cleared too (its key renewer ended, its key file
    removed), so the next start finds a clean run directory."""
    run_dir = run_dir.resolve()
    record_file = run_dir / SERVER_FILE
    if not record_file.is_file():
        return False
    record = json.loads(record_file.read_text())
    # it would exit with the server anyway
    terminate_if_ours(record.get("key_renewer_pid"), "gameart.cli.renew_keys")
    pid = recorded_pid(run_dir)
    if pid is not None:
        try:
            family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
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
    (run_dir / DRAINING_FILE).unlink(missing_ok=True)
    return pid is not None


@dataclass(frozen=True)
class Health:
    problem: str | None  # None: /ping answers and every model has a READY worker
    ready: Mapping[str, int] = field(default_factory=dict)  # READY workers per model


def check_health(run_dir: Path, live_only: bool = False) -> Health:
    """What the HEALTHCHECK (and a readiness probe) asks: the server answers /ping and every
    model has a READY worker, and it is not draining. `live_only` (a liveness probe) asks only
    whether it answers: a busy or draining server is alive and must not be restarted."""
    run_dir = run_dir.resolve()
    if recorded_pid(run_dir) is None:
        return Health(f"no server running from {run_dir}")
    if (run_dir / DRAINING_FILE).exists() and not live_only:
        return Health("draining: finishing accepted requests before stopping")
    client = TorchServeClient.from_run_dir(run_dir, timeout=5)
    if not client.ping():
        return Health("/ping did not answer Healthy")
    if live_only:
        return Health(None)
    ready = client.ready_models()
    if not ready or min(ready.values()) < 1:
        return Health(f"READY workers per model {ready}", ready)
    return Health(None, ready)
