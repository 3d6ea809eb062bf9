"""The container's main process (`serve.py start --foreground`): drains on SIGTERM, stops within
its grace, exits when TorchServe dies, and stops at once when told to during start-up. Run on the
host against a real TorchServe; tests/test_container.py repeats the stop through podman."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from gameart.ops.client import SERVER_FILE, TorchServeClient
from gameart.ops.server import DRAINING_FILE, check_health
from gameart.ops.supervisor import Connection, parse_ss, requests_in_flight
from tests import components, torchserve
from tests.helpers import REPO_ROOT, real_images

SS_OUTPUT = """\
0 0 127.0.0.1:8080 127.0.0.1:40000
\t cubic bytes_sent:19 bytes_received:18 lastsnd:204 lastrcv:512 lastack:204
0 0 127.0.0.1:8080 127.0.0.1:40002
\t cubic bytes_received:950 lastsnd:304 lastrcv:304 lastack:304
0 0 127.0.0.1:8080 127.0.0.1:40004
\t cubic lastsnd:104 lastrcv:104 lastack:104
0 0 127.0.0.1:8080 127.0.0.1:40006
\t cubic bytes_sent:400 bytes_received:1900 lastsnd:900 lastrcv:12 lastack:12
0 5000 127.0.0.1:8080 127.0.0.1:40008
\t cubic bytes_sent:9000 bytes_received:1900 lastsnd:8 lastrcv:20 lastack:8
"""


def test_ss_connections_are_read_and_judged_per_connection():
    connections = parse_ss(SS_OUTPUT)
    assert connections == [
        Connection(18, 19, 512, 204),  # answered, idle keep-alive
        Connection(950, 0, 304, 304),  # asked, no answer yet
        Connection(0, 0, 104, 104),  # connected, nothing asked
        Connection(1900, 400, 12, 900),  # second request on a keep-alive connection
        Connection(1900, 9000, 20, 8, unsent_bytes=5000),  # its answer still leaving
    ]
    assert [c.in_flight for c in connections] == [False, True, False, True, True]
    # answered within the clock tick its request arrived in (a /ping, a refusal): idle
    assert not Connection(10, 10, 5, 5).in_flight


def test_in_flight_requests_are_counted_from_the_kernel():
    components.require("ss")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        idle = socket.create_connection(("127.0.0.1", port))
        idle_server, _ = listener.accept()
        asking = socket.create_connection(("127.0.0.1", port))
        asking_server, _ = listener.accept()
        with idle, idle_server, asking, asking_server:
            assert requests_in_flight(port) == 0
            asking.sendall(b"POST /predictions/m HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            asking_server.recv(1024)
            assert requests_in_flight(port) == 1
            time.sleep(0.01)
            asking_server.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            asking.recv(1024)
            assert requests_in_flight(port) == 0


def _supervisor(run_dir: Path, store: Path, grace: float) -> subprocess.Popen[str]:
    ports = torchserve.free_port_settings()
    command = [sys.executable, str(REPO_ROOT / "scripts" / "serve.py"), "--run-dir", str(run_dir)]
    command += ["start", "--foreground", "--model-store", str(store), "--grace", str(grace)]
    for setting in ports:
        command += ["--set", setting]
    log = open(run_dir.parent / "supervisor.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True)


@contextlib.contextmanager
def _supervised(tmp_path: Path, store: Path, grace: float = 10):
    """(process, run_dir) of `serve.py start --foreground`; afterwards nothing is left running,
    whatever the test did to it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    process = _supervisor(run_dir, store, grace)
    try:
        yield process, run_dir
    finally:
        if process.poll() is None:
            process.kill()
        torchserve.stop_leftovers(run_dir)


def _wait_ready(process: subprocess.Popen[str], run_dir: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, (run_dir.parent / "supervisor.log").read_text()
        if (run_dir / "config.properties").exists() and check_health(run_dir).problem is None:
            return
        time.sleep(0.5)
    raise AssertionError("the supervised server did not become healthy")


def _family(run_dir: Path) -> list[psutil.Process]:
    """Every process started for this run directory (TorchServe, its workers, the renewer)."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        try:
            text = " ".join(process.info["cmdline"] or []) + " " + str(process.info["cwd"])
        except psutil.Error:
            continue
        if str(run_dir) in text and process.pid != psutil.Process().pid:
            found.append(process)
    return [p for p in found if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture
def cover_store(tmp_path, exported_cover) -> Path:
    store = tmp_path / "store"
    torchserve.archive(exported_cover.out_dir, store, "cover", "torchscript")
    return store


@pytest.mark.integration
def test_sigterm_drains_accepted_requests_and_stops_within_the_grace(tmp_path, cover_store):
    components.require("java", "ss")
    with _supervised(tmp_path, cover_store) as (process, run_dir):
        _wait_ready(process, run_dir)
        client = TorchServeClient.from_run_dir(run_dir)
        images = [path.read_bytes() for path in real_images()[:4]]
        expected = [client.predict("cover", body).json() for body in images]
        assert len({answer["label"] for answer in expected}) > 1  # answers that can differ
        url = f"{client.endpoints.inference}/predictions/cover"
        headers = client.headers("inference")

        def ask(index: int) -> tuple[int, object]:
            try:
                reply = requests.post(url, data=images[index % 4], headers=headers, timeout=30)
            except requests.ConnectionError as exc:
                return 0, repr(exc)  # cut off: what the drain exists to prevent
            if reply.status_code != 200:
                return reply.status_code, reply.text
            return reply.status_code, reply.json()

        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            futures = [pool.submit(ask, i) for i in range(24)]
            time.sleep(0.3)  # accepted, mostly still queued behind the one worker
            assert requests_in_flight(client.endpoints.inference_port) >= 8
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            assert check_health(run_dir).problem.startswith("draining")  # readiness fails
            assert check_health(run_dir, live_only=True).problem is None  # liveness holds
            answers = [future.result() for future in futures]
        exit_code = process.wait(timeout=15)
        took = time.monotonic() - signalled
    log = (tmp_path / "supervisor.log").read_text()
    for index, (status, body) in enumerate(answers):
        assert status == 200, (index, body, log)
        want = expected[index % 4]  # the same answer as before the stop
        assert body["label"] == want["label"], index
        assert [e["label"] for e in body["top_k"]] == [e["label"] for e in want["top_k"]]
    assert exit_code == 0, log
    assert took < 10, f"stopped {took:.1f}s after SIGTERM: over the 10 s grace\n{log}"
    assert "drained in" in log and "still in flight" not in log, log
    assert not _family(run_dir), "processes left after the stop"
    assert not (run_dir / DRAINING_FILE).exists()


@pytest.mark.integration
def test_supervisor_exits_when_torchserve_dies(tmp_path, cover_store):
    components.require("java")
    with _supervised(tmp_path, cover_store) as (process, run_dir):
        _wait_ready(process, run_dir)
        log_file = tmp_path / "supervisor.log"
        while "ready:" not in log_file.read_text():  # the supervisor is past its start
            time.sleep(0.1)
        java = psutil.Process(json.loads((run_dir / SERVER_FILE).read_text())["pid"])
        java.kill()
        killed = time.monotonic()
        exit_code = process.wait(timeout=20)
        noticed = time.monotonic() - killed
    log = (tmp_path / "supervisor.log").read_text()
    assert exit_code == 1, log  # non-zero: the container ends and is restarted
    assert noticed < 10, f"took {noticed:.1f}s to notice"
    assert "TorchServe exited" in log
    left = [" ".join(p.cmdline()) for p in _family(run_dir)]
    assert not left, f"processes left after TorchServe died: {left}"


@pytest.mark.integration
def test_sigterm_during_start_up_stops_at_once(tmp_path, cover_store):
    components.require("java")
    with _supervised(tmp_path, cover_store) as (process, run_dir):
        deadline = time.monotonic() + 60
        while not (run_dir / SERVER_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (run_dir / SERVER_FILE).exists(), "TorchServe did not start"
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=30)
        took = time.monotonic() - signalled
    log = (tmp_path / "supervisor.log").read_text()
    assert exit_code == 0, log
    assert took < 10, f"{took:.1f}s from SIGTERM to exit during start-up"
    assert "stopped during start-up" in log
    assert not _family(run_dir)
