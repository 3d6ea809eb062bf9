#!/usr/bin/env python3
"""Start, stop and inspect TorchServe with the project's config.properties.

  python scripts/serve.py start            # serve every .mar in model_store/, wait until READY
  python scripts/serve.py status           # models, workers, queue
  python scripts/serve.py token inference  # print a token for curl
  python scripts/serve.py stop

Each instance lives in its own run directory (default .run/torchserve): the effective config,
logs, TorchServe's key file and its temp files (pid file, worker sockets), so tests can run
their own instance beside a demo server without clashing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from gameart.ops.client import (
    DEFAULT_CONFIG,
    DEFAULT_RUN_DIR,
    KEY_FILE,
    REPO_ROOT,
    SERVER_FILE,
    TorchServeClient,
    TorchServeError,
    free_ports,
    read_properties,
    read_tokens,
)
from gameart.ops.environment import EnvironmentProblem, find_java

DEFAULT_MODEL_STORE = REPO_ROOT / "model_store"
DEFAULT_LOG_CONFIG = REPO_ROOT / "log4j2.xml"


class ServeError(RuntimeError):
    """Could not start or stop the server; the message says why and what to do."""


# ---- environment checks --------------------------------------------------------------------
def torchserve_command() -> str:
    candidate = Path(sys.executable).parent / "torchserve"
    found = str(candidate) if candidate.exists() else shutil.which("torchserve")
    if not found:
        raise ServeError("the torchserve command is missing: run `make install`")
    return found


# ---- config --------------------------------------------------------------------------------
def effective_config(base: Path, overrides: dict[str, str]) -> str:
    """The base config.properties text with keys replaced (or appended) by overrides."""
    lines, seen = [], set()
    for line in Path(base).read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in overrides:
            line = f"{key}={overrides[key]}"
            seen.add(key)
        lines.append(line)
    extra = [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    if extra:
        lines += ["", "# overrides from scripts/serve.py", *extra]
    return "\n".join(lines) + "\n"


PATH_KEYS = ("metrics_config",)  # config values that name files next to the config file


def absolute_paths(config: Path) -> dict[str, str]:
    """Relative file paths in the config, made absolute (the server runs in its run dir)."""
    props = read_properties(config)
    base = Path(config).resolve().parent
    return {
        key: str(base / props[key])
        for key in PATH_KEYS
        if props.get(key) and not Path(props[key]).is_absolute()
    }


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ServeError(f"--set takes key=value, got {pair!r}")
        overrides[key.strip()] = value.strip()
    return overrides


# ---- process state -------------------------------------------------------------------------
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


# ---- commands ------------------------------------------------------------------------------
def start(args: argparse.Namespace) -> int:
    find_java()
    run_dir: Path = args.run_dir.resolve()
    if (pid := recorded_pid(run_dir)) is not None:
        raise ServeError(
            f"a server from {run_dir} is already running (pid {pid}); "
            "run `python scripts/serve.py stop` first"
        )
    model_store = args.model_store.resolve()
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

    overrides = {
        "model_store": str(model_store),
        **absolute_paths(args.config),
        **parse_overrides(args.set),
    }
    config_path = run_dir / "config.properties"
    config_path.write_text(effective_config(args.config, overrides))
    load_models = read_properties(config_path).get("load_models", "all")
    expected = len(mars) if load_models.strip() == "all" else len(load_models.split(","))

    command = [
        torchserve_command(),
        "--start",
        "--ncs",
        "--ts-config",
        str(config_path),
        "--model-store",
        str(model_store),
        "--log-config",
        str(args.log_config.resolve()),
    ]
    with open(run_dir / "logs" / "launcher.log", "w") as launcher_log:
        subprocess.run(
            command,
            cwd=run_dir,
            env=_server_env(run_dir),
            stdout=launcher_log,
            stderr=subprocess.STDOUT,
            check=True,
        )
    pid = _wait_for_pid_file(run_dir)
    (run_dir / SERVER_FILE).write_text(
        json.dumps(
            {
                "pid": pid,
                "config": str(config_path),
                "model_store": str(model_store),
                "started": time.time(),
            },
            indent=2,
        )
    )
    print(
        f"TorchServe pid {pid}, run dir {run_dir}; waiting for workers "
        f"(up to {args.timeout:.0f}s) ...",
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
        state = client.wait_until_ready(expected, args.timeout, alive=alive)
    except TorchServeError as exc:
        stop_server(run_dir)
        raise ServeError(
            f"{exc}; stopped the server. Log tail:\n" + _log_tail(run_dir / "logs" / "ts_log.log")
        ) from exc
    print_ready(client, state, run_dir)
    if args.foreground:
        return _stay_in_foreground(run_dir, pid)
    return 0


def _wait_for_pid_file(run_dir: Path, timeout: float = 20.0) -> int:
    pid_file = run_dir / "tmp" / ".model_server.pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pid_file.is_file() and pid_file.read_text().strip():
            return int(pid_file.read_text().strip())
        time.sleep(0.1)
    raise ServeError("TorchServe did not start:\n" + _log_tail(run_dir / "logs" / "launcher.log"))


def _stay_in_foreground(run_dir: Path, pid: int) -> int:
    """Block while the server runs (container entry point); SIGTERM/SIGINT stop it cleanly."""

    def on_signal(signum, frame):
        stop_server(run_dir)
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while psutil.pid_exists(pid):
        time.sleep(1)
    print("TorchServe exited:\n" + _log_tail(run_dir / "logs" / "ts_log.log"), file=sys.stderr)
    return 1


def print_ready(client: TorchServeClient, state: dict[str, int], run_dir: Path) -> None:
    print("ready:")
    for name, ready in state.items():
        print(f"  {name}: {ready} worker(s) READY")
    print(f"inference  {client.endpoints.inference}")
    print(f"management {client.endpoints.management}")
    print(f"metrics    {client.endpoints.metrics}/metrics")
    if read_tokens(run_dir):
        print(f"tokens     {run_dir / KEY_FILE}  (python scripts/serve.py token inference)")


def free_port_argv(
    run_dir: Path, store: Path, extra: tuple[str, ...] = (), timeout: float = 900.0
) -> list[str]:
    """`start` arguments with every listener, gRPC included, on its own free loopback port,
    so the instance never clashes with a running one (benchmarks, experiments, tests)."""
    ports = free_ports(5)
    settings = [
        f"inference_address=http://127.0.0.1:{ports[0]}",
        f"management_address=http://127.0.0.1:{ports[1]}",
        f"metrics_address=http://127.0.0.1:{ports[2]}",
        f"grpc_inference_port={ports[3]}",
        f"grpc_management_port={ports[4]}",
        *extra,
    ]
    argv = ["--run-dir", str(run_dir), "start", "--model-store", str(store)]
    argv += ["--timeout", str(timeout)]
    for setting in settings:
        argv += ["--set", setting]
    return argv


def start_on_free_ports(
    store: Path, run_dir: Path, extra: tuple[str, ...] = (), timeout: float = 900.0
) -> tuple[TorchServeClient, str]:
    """A TorchServe for a measurement on free loopback ports: its client and its gRPC
    inference address."""
    if main(free_port_argv(run_dir, store, extra, timeout)) != 0:
        raise SystemExit(f"TorchServe did not start; see {run_dir / 'logs'}")
    port = read_properties(run_dir / "config.properties")["grpc_inference_port"]
    return TorchServeClient.from_run_dir(run_dir), f"127.0.0.1:{port}"


def stop_server(run_dir: Path, timeout: float = 60.0) -> bool:
    """Stop the instance recorded in run_dir and its workers. True if one was running."""
    pid = recorded_pid(run_dir)
    if pid is None:
        return False
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
    return True


def stop(args: argparse.Namespace) -> int:
    run_dir = args.run_dir.resolve()
    print("stopped" if stop_server(run_dir) else f"no server running from {run_dir}")
    return 0


def status(args: argparse.Namespace) -> int:
    run_dir = args.run_dir.resolve()
    if recorded_pid(run_dir) is None:
        print(f"no server running from {run_dir}")
        return 1
    client = TorchServeClient.from_run_dir(run_dir)
    for name in client.models():
        info = client.describe(name)
        queue = info.get("jobQueueStatus", {})
        print(
            f"{name} v{info.get('modelVersion')}: batch {info.get('batchSize')}, "
            f"delay {info.get('maxBatchDelay')} ms, workers {info.get('minWorkers')}-"
            f"{info.get('maxWorkers')}, queue {queue.get('pendingRequests', '?')} pending"
        )
        for worker in info.get("workers", []):
            print(
                f"  worker {worker['id']} pid {worker.get('pid')} {worker['status']} "
                f"gpu={worker.get('gpu')} mem={worker.get('memoryUsage', 0) / 2**20:.0f} MiB"
            )
    return 0


def health(args: argparse.Namespace) -> int:
    """Exit 0 only when the server answers /ping and every model has a READY worker."""
    run_dir = args.run_dir.resolve()
    if recorded_pid(run_dir) is None:
        print(f"unhealthy: no server running from {run_dir}")
        return 1
    client = TorchServeClient.from_run_dir(run_dir, timeout=5)
    if not client.ping():
        print("unhealthy: /ping did not answer Healthy")
        return 1
    ready = client.ready_models()
    if not ready or min(ready.values()) < 1:
        print(f"unhealthy: READY workers per model {ready}")
        return 1
    print(f"healthy: READY workers per model {ready}")
    return 0


def rotate_token(args: argparse.Namespace) -> int:
    """Replace the inference or management key (TorchServe rewrites key_file.json)."""
    client = TorchServeClient.from_run_dir(args.run_dir.resolve())
    response = client.request(
        "management", "POST", "/token", params={"type": args.kind}, headers=client.headers("API")
    )
    if not response.ok:
        print(f"error: HTTP {response.status_code}: {response.text.strip()}", file=sys.stderr)
        return 1
    print(f"new {args.kind} key written to {args.run_dir / KEY_FILE}")
    return 0


def token(args: argparse.Namespace) -> int:
    tokens = read_tokens(args.run_dir.resolve())
    if args.kind not in tokens:
        print(
            f"no {args.kind} token in {args.run_dir / KEY_FILE} (is the server running, "
            "with token authorisation on?)",
            file=sys.stderr,
        )
        return 1
    print(tokens[args.kind])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=DEFAULT_RUN_DIR,
        help="where this instance keeps config, logs, keys (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start_cmd = commands.add_parser("start", help="start and wait until workers are READY")
    start_cmd.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    start_cmd.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    start_cmd.add_argument(
        "--log-config",
        type=Path,
        default=DEFAULT_LOG_CONFIG,
        help="log4j2 configuration (default: %(default)s)",
    )
    start_cmd.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config.properties key (repeatable)",
    )
    start_cmd.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for READY workers"
    )
    start_cmd.add_argument(
        "--foreground", action="store_true", help="stay attached; stop the server on SIGTERM/SIGINT"
    )
    start_cmd.set_defaults(func=start)
    commands.add_parser("stop", help="stop the server and its workers").set_defaults(func=stop)
    commands.add_parser("status", help="models, workers, queues").set_defaults(func=status)
    commands.add_parser(
        "health", help="exit 0 when /ping answers and every model has a READY worker"
    ).set_defaults(func=health)
    rotate_cmd = commands.add_parser("rotate-token", help="replace a key (uses the API key)")
    rotate_cmd.add_argument("kind", choices=["inference", "management"])
    rotate_cmd.set_defaults(func=rotate_token)
    token_cmd = commands.add_parser("token", help="print an API token from the key file")
    token_cmd.add_argument("kind", choices=["inference", "management", "API"])
    token_cmd.set_defaults(func=token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ServeError, TorchServeError, EnvironmentProblem) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
