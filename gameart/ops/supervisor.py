"""TorchServe under a supervisor: the container's main process (`serve.py start --foreground`).

In the image, tini is PID 1 (it reaps orphans and forwards signals) and this supervisor is its
child; TorchServe's launcher (`torchserve --foreground`) is the supervisor's child. So:
- SIGTERM/SIGINT handlers are installed before anything starts: a stop during start-up (model
  loading can take minutes) stops the server at once instead of waiting for SIGKILL;
- the supervisor polls its attached launcher, so TorchServe dying is seen within a second (no
  zombie that a pid check would still count) and the supervisor exits non-zero, which ends the
  container and lets the orchestrator restart it;
- a stop drains: the health check answers "draining" (a readiness probe fails, so a load
  balancer that reads it moves away), accepted inference requests finish, then TorchServe is
  stopped — all within the grace period the runtime gives (Docker's default 10 s, Kubernetes'
  terminationGracePeriodSeconds). TorchServe keeps accepting until it stops: new traffic must
  be moved away first (Kubernetes' preStop pause while the endpoint goes, or taking the instance
  out of a front's upstreams); a request accepted after the last check is still reset.

TorchServe itself does not drain: on SIGTERM it closes its listeners and drops the connections
of requests it had accepted (measured: 100 of 100 in flight reset). Its listener cannot be closed
from outside, so in-flight requests are counted per connection from the kernel's TCP state.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil

from gameart.ops.server import (
    DRAINING_FILE,
    RunningServer,
    ServerSpec,
    StartCancelled,
    server_alive,
    start_server,
    stop_server,
)
from gameart.ops.server_logs import log_tail

# TorchServe needs about 4 s from SIGTERM to exit (its Netty groups close gracefully, then the
# workers are stopped); what the grace leaves beyond that goes to draining.
STOP_RESERVE_S = 4.0
STOP_MARGIN_S = 1.0  # starting `torchserve --stop` (a Python process) before Java hears of it
FALLBACK_WAIT_S = 2.0  # the drain without `ss`
POLL_S = 0.1
PR_SET_CHILD_SUBREAPER = 36  # prctl option, <linux/prctl.h>


@dataclass(frozen=True)
class Connection:
    """One established TCP connection to the inference port, as the kernel's tcp_info sees it."""

    bytes_received: int
    bytes_sent: int
    last_received_ms: int  # milliseconds since data last arrived
    last_sent_ms: int  # milliseconds since data was last sent
    unsent_bytes: int = 0  # Send-Q: an answer still leaving

    @property
    def in_flight(self) -> bool:
        """A request arrived and its answer has not gone out yet. HTTP/1.1 answers in order, so
        data received after the last send is an unanswered request; a keep-alive connection
        idle after its answer is not in flight, nor one whose answer left in the same clock
        tick as its request arrived (the kernel counts these times in jiffies, 4 ms at HZ=250:
        fast answers such as /ping, cache hits and refusals would otherwise look unanswered
        forever and hold every drain to its deadline)."""
        if self.unsent_bytes > 0:
            return True
        if self.bytes_received == 0:
            return False  # connected, nothing asked yet
        if self.bytes_sent == 0:
            return True
        return self.last_received_ms < self.last_sent_ms


def _field(info: str, name: str) -> int:
    for token in info.split():
        if token.startswith(name + ":"):
            return int(token.split(":", 1)[1])
    return 0


def parse_ss(output: str) -> list[Connection]:
    """Connections from `ss -Htni`: an address line, then an indented tcp_info line."""
    connections = []
    lines = output.splitlines()
    for address, info in itertools.pairwise(lines):
        if address[:1].isspace() or not info[:1].isspace():
            continue
        columns = address.split()  # Recv-Q Send-Q local peer
        connections.append(
            Connection(
                bytes_received=_field(info, "bytes_received"),
                bytes_sent=_field(info, "bytes_sent"),
                last_received_ms=_field(info, "lastrcv"),
                last_sent_ms=_field(info, "lastsnd"),
                unsent_bytes=int(columns[1]) if len(columns) > 1 and columns[1].isdigit() else 0,
            )
        )
    return connections


def requests_in_flight(port: int) -> int:
    """Requests accepted on `port` and not yet answered (iproute2's `ss`, tcp_info)."""
    command = ["ss", "-Htni", "state", "established", f"( sport = :{port} )"]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return sum(connection.in_flight for connection in parse_ss(output))


def drain(server: RunningServer, budget_s: float) -> int:
    """Report "draining" to health checks, then wait until no accepted request is unanswered
    or the budget is spent. Returns how many were still in flight. Without `ss` (it failed or
    is missing) it waits a short fixed time instead, so the stop itself still happens."""
    (server.run_dir / DRAINING_FILE).touch()
    deadline = time.monotonic() + budget_s
    while True:
        try:
            busy = requests_in_flight(server.client.endpoints.inference_port)
        except (OSError, subprocess.CalledProcessError, ValueError) as exc:
            print(f"cannot count requests in flight ({exc}); waiting instead", flush=True)
            time.sleep(max(0.0, min(FALLBACK_WAIT_S, deadline - time.monotonic())))
            return 0
        if busy == 0 or time.monotonic() >= deadline:
            return busy
        time.sleep(POLL_S)


def supervise(spec: ServerSpec, grace_s: float = 10.0) -> int:
    """Start TorchServe attached, keep it running until SIGTERM/SIGINT (then drain and stop
    within grace_s; exit 0) or until TorchServe dies (exit 1)."""
    stop_requested = threading.Event()
    signalled: list[tuple[str, float]] = []  # the first signal and when: the grace counts from it

    def on_signal(signum: int, frame: Any) -> None:  # no I/O here: it interrupts anything
        if not signalled:
            signalled.append((signal.Signals(signum).name, time.monotonic()))
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    _become_subreaper()
    try:
        try:
            server = start_server(spec.replace(attached=True), cancelled=stop_requested.is_set)
        except StartCancelled:
            print("stopped during start-up", flush=True)
            return 0
        print(server.describe(), flush=True)
        while not stop_requested.wait(POLL_S * 5):
            if not server_alive(server.pid, server.launcher):
                tail = log_tail(server.log_dir / "ts_log.log")
                print(f"TorchServe exited:\n{tail}", flush=True)
                stop_server(server.run_dir, timeout=5)  # the key renewer, the record
                return 1
        name, at = signalled[0]
        print(f"{name}: draining, then stopping (grace {grace_s:g}s)", flush=True)
        return _stop(server, grace_s - (time.monotonic() - at))
    finally:
        _end(_descendants(os.getpid()))  # workers outlive a killed frontend, holding memory


def _become_subreaper() -> None:
    """Orphans of TorchServe (its workers, when the frontend is killed) become this process's
    children instead of init's, so they can be ended here. Linux only; elsewhere a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _end(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=5)


def _stop(server: RunningServer, remaining_s: float) -> int:
    """Drain with what the grace leaves after TorchServe's own stop (and a margin for starting
    `torchserve --stop`), then stop it with all the time that is left."""
    started = time.monotonic()
    unanswered = drain(server, max(0.0, remaining_s - STOP_RESERVE_S - STOP_MARGIN_S))
    print(
        f"drained in {time.monotonic() - started:.1f}s"
        + (f"; {unanswered} request(s) still in flight" if unanswered else ""),
        flush=True,
    )
    left = remaining_s - (time.monotonic() - started) - 0.5
    stop_server(server.run_dir, timeout=max(STOP_RESERVE_S, left))
    if server.launcher is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.launcher.wait(timeout=5)
    print("stopped", flush=True)
    return 0
