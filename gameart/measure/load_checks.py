"""Checks on the load generator itself, so a client-bound result cannot pass for a
server-bound one: its own ceiling against a do-nothing local endpoint with the same payloads,
and a cross-check of its figures with a tool nobody here wrote (Apache Bench)."""

from __future__ import annotations

import multiprocessing
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gameart.measure import loadgen
from gameart.measure.uploads import Upload


# ---- the client's own ceiling --------------------------------------------------------------
def _trivial_server(port: int, ready, reuse_port: bool = False) -> None:
    """Answers every POST with a small fixed JSON, at once: the client's upper bound."""
    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"label": "x", "confidence": 1.0, "top_k": []})

    app = web.Application(client_max_size=64 * 2**20)
    app.router.add_post("/{tail:.*}", answer)
    ready.set()
    web.run_app(
        app, host="127.0.0.1", port=port, print=None, handle_signals=True, reuse_port=reuse_port
    )


def client_ceiling(
    uploads: Sequence[Upload], concurrency: int, duration: float, processes: int = 1
) -> dict[str, Any]:
    """The load generator against a do-nothing endpoint, same payloads: what the client itself
    can send. With several client processes the endpoint gets as many server processes
    (SO_REUSEPORT spreads the connections), so the do-nothing side does not saturate first."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = multiprocessing.get_context("spawn")
    servers = []
    for _ in range(processes):
        ready = context.Event()
        args = (port, ready, processes > 1)
        process = context.Process(target=_trivial_server, args=args, daemon=True)
        process.start()
        servers.append((process, ready))
    try:
        for _, ready in servers:
            ready.wait(20)
        _wait_for_port(port)
        target = loadgen.Target(f"http://127.0.0.1:{port}/predict", {})
        if processes == 1:  # the same in-process client the load test measures with
            loop = loadgen.closed_loop(
                target, uploads, concurrency, duration=duration, max_requests=10**6
            )
            result = loadgen.run(loop)
        else:
            result = loadgen.closed_loop_processes(
                target, uploads, concurrency, duration=duration, processes=processes
            )
    finally:
        for process, _ in servers:
            process.terminate()
            process.join(5)
    return {"concurrency": concurrency, "processes": processes, **result.summary()}


def _wait_for_port(port: int) -> None:
    for _ in range(100):  # wait until it accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)


# ---- cross-check with a tool nobody here wrote ---------------------------------------------
def apache_bench(
    url: str, headers: dict[str, str], upload: Upload, concurrency: int, requests: int
) -> dict[str, Any]:
    """Apache Bench (Debian's apache2-utils) on the same URL, body and concurrency.

    -k (keep-alive) is needed: ab speaks HTTP/1.0 and, without keep-alive, waits for the server
    to close each connection, which TorchServe's Netty frontend does not do; our client keeps
    connections alive too, so the two measure the same thing."""
    if not shutil.which("ab"):
        raise SystemExit("ab is not installed: apt-get install apache2-utils")
    with tempfile.NamedTemporaryFile(suffix=Path(upload.name).suffix) as body:
        body.write(upload.body)
        body.flush()
        command = [
            "ab",
            "-k",
            "-q",
            "-n",
            str(requests),
            "-c",
            str(concurrency),
            "-p",
            body.name,
            "-T",
            upload.content_type,
        ]
        for key, value in headers.items():
            command += ["-H", f"{key}: {value}"]
        output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout

    def number(label: str) -> float:
        for line in output.splitlines():
            if line.startswith(label):
                return float(line.split(":", 1)[1].split()[0])
        raise ValueError(f"ab printed no {label!r}")

    percentiles = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].endswith("%") and parts[1].isdigit():
            percentiles[parts[0]] = float(parts[1])
    return {
        "tool": "ab",
        "concurrency": concurrency,
        "requests": int(number("Complete requests")),
        "failed": int(number("Failed requests")),
        "non_2xx": int(number("Non-2xx responses")) if "Non-2xx" in output else 0,
        "throughput_rps": number("Requests per second"),
        "p50_ms": percentiles.get("50%"),
        "p90_ms": percentiles.get("90%"),
        "p99_ms": percentiles.get("99%"),
    }
