"""The HTTP load generator behind scripts/loadtest.py and scripts/benchmark.py.

aiohttp (a well-kept asyncio HTTP client) drives many requests from one process cheaply.
Closed loop: N clients, each sending its next request when the last one answers.
Open loop: requests leave on a fixed schedule whatever the server does, and latency is counted
from the *intended* send time, so a server that falls behind cannot hide its queueing (the
"coordinated omission" trap of closed-loop tools).
Both stop by themselves, on a request count or a duration, whichever comes first.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from gameart.measure.uploads import Upload
from gameart.ops.client import TorchServeClient, read_tokens


class LoadError(RuntimeError):
    pass


def ensure_loopback(url: str, allow_remote: bool = False) -> None:
    """Load goes to this machine unless the operator explicitly says otherwise."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise LoadError(f"cannot resolve {host!r}: {exc}") from exc
    if not allow_remote and not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        raise LoadError(f"{url} is not on loopback; pass --allow-remote to load another host")


@dataclass
class StepResult:
    mode: str  # "closed" or "open"
    level: float  # concurrency (closed) or target requests/s (open)
    duration_s: float
    latencies_ms: list[float] = field(default_factory=list)  # requests that got an answer
    by_status_ms: dict[str, list[float]] = field(default_factory=dict)  # the same, per status
    statuses: Counter = field(default_factory=Counter)  # "200", "503", "ClientOSError", ...
    late_starts: int = 0  # open loop: sends that left late because the client was saturated

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)

    def record(self, status: str, latency_ms: float | None) -> None:
        self.statuses[status] += 1
        if latency_ms is not None:
            self.latencies_ms.append(latency_ms)
            self.by_status_ms.setdefault(status, []).append(latency_ms)

    def percentile(self, q: float, status: str | None = None) -> float:
        values = self.latencies_ms if status is None else self.by_status_ms.get(status, [])
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "level": self.level,
            "requests": self.requests,
            "ok": self.ok,
            "duration_s": round(self.duration_s, 3),
            "throughput_rps": round(self.ok / self.duration_s, 2) if self.duration_s else 0.0,
            "p50_ms": round(self.percentile(50), 2),
            "p90_ms": round(self.percentile(90), 2),
            "p99_ms": round(self.percentile(99), 2),
            "max_ms": round(max(self.latencies_ms), 2) if self.latencies_ms else float("nan"),
            "statuses": dict(sorted(self.statuses.items())),
            "p50_ms_by_status": {
                k: round(self.percentile(50, k), 2) for k in sorted(self.by_status_ms)
            },
            "late_starts": self.late_starts,
        }


@dataclass(frozen=True)
class Target:
    url: str
    headers: dict[str, str]
    multipart: bool = False  # send the image as a multipart "data" field instead of raw
    # TorchServe's key file: when the server refuses the key (renewed or rotated mid-run), the
    # key is re-read from here and the request sent once more, as TorchServeClient does
    key_file: Path | None = None

    @classmethod
    def for_model(cls, client: TorchServeClient, model: str, multipart: bool = False) -> Target:
        """`model` on the client's server, with its inference key and the key file to re-read
        when the server renews it."""
        url = f"{client.endpoints.inference}/predictions/{model}"
        return cls(url, client.headers("inference"), multipart, client.key_file)

    def renew_key(self, refused: str | None) -> bool:
        """After the server refused the key `refused` (an Authorization header): take the key
        file's inference key; True when the header now differs from the refused one, also
        when another request of this process already took the new key."""
        if self.key_file is None:
            return False
        try:
            token = read_tokens(self.key_file.parent).get("inference")
        except (OSError, ValueError):  # the server is rewriting the file: not renewed yet
            token = None
        if token:
            self.headers["Authorization"] = f"Bearer {token}"  # shared by this process's clients
        return self.headers.get("Authorization") != refused

    def request_kwargs(self, upload: Upload) -> dict[str, Any]:
        if self.multipart:
            form = aiohttp.FormData()
            form.add_field(
                "data", upload.body, filename=upload.name, content_type=upload.content_type
            )
            return {"data": form, "headers": self.headers}
        return {
            "data": upload.body,
            "headers": {**self.headers, "Content-Type": upload.content_type},
        }


async def _send(
    session: aiohttp.ClientSession, target: Target, upload: Upload, timeout: float
) -> tuple[str, bool]:
    """Status (or exception name) and whether the server answered at all."""
    try:
        for attempt in (1, 2):
            sent_key = target.headers.get("Authorization")
            async with session.post(
                target.url,
                timeout=aiohttp.ClientTimeout(total=timeout),
                **target.request_kwargs(upload),
            ) as response:
                body = await response.read()
                refused_key = response.status in (400, 401) and b"Token" in body
                if attempt == 1 and refused_key and target.renew_key(sent_key):
                    continue
                return str(response.status), True
        raise AssertionError("unreachable")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        return type(exc).__name__, False


async def closed_loop(
    target: Target,
    uploads: Sequence[Upload],
    concurrency: int,
    *,
    duration: float,
    max_requests: int = 10**9,
    timeout: float = 60.0,
) -> StepResult:
    result = StepResult("closed", concurrency, 0.0)
    issued = 0
    started = time.perf_counter()
    deadline = started + duration

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal issued
        while time.perf_counter() < deadline and issued < max_requests:
            upload = uploads[issued % len(uploads)]
            issued += 1
            sent = time.perf_counter()
            status, answered = await _send(session, target, upload, timeout)
            result.record(status, (time.perf_counter() - sent) * 1e3 if answered else None)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    result.duration_s = time.perf_counter() - started
    return result


async def open_loop(
    target: Target,
    uploads: Sequence[Upload],
    rate: float,
    *,
    duration: float,
    max_requests: int,
    max_in_flight: int = 512,
    timeout: float = 60.0,
) -> StepResult:
    """Requests at `rate`/s on a fixed schedule; latency from each one's scheduled time."""
    result = StepResult("open", rate, 0.0)
    total = min(max_requests, max(1, int(rate * duration)))
    slots = asyncio.Semaphore(max_in_flight)
    started = time.perf_counter()

    async def one(session: aiohttp.ClientSession, index: int, scheduled: float) -> None:
        async with slots:
            if time.perf_counter() - scheduled > 0.005:  # the client itself fell behind
                result.late_starts += 1
            status, answered = await _send(session, target, uploads[index % len(uploads)], timeout)
            result.record(status, (time.perf_counter() - scheduled) * 1e3 if answered else None)

    connector = aiohttp.TCPConnector(limit=max_in_flight)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = []
        for index in range(total):
            scheduled = started + index / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, index, scheduled)))
        await asyncio.gather(*tasks)
    result.duration_s = time.perf_counter() - started
    return result


def run(coroutine):
    return asyncio.run(coroutine)


# ---- several client processes ----------------------------------------------------------------
# One asyncio process tops out near 2,000 requests/s of ~100 KB uploads (JSON parsing, TLS-free
# HTTP/1.1 framing and the event loop all on one core); a GPU server answers more than that, so
# the benchmark spreads the clients over processes and merges what they measured.
def _in_process(
    loop: Callable[..., Awaitable[StepResult]],
    start_at: float,
    target: Any,
    uploads: Sequence[Upload],
    concurrency: int,
    duration: float,
    timeout: float,
) -> StepResult:
    """One process's share: wait for the common start, then run its closed loop."""
    time.sleep(max(0.0, start_at - time.time()))  # all processes start together
    return run(loop(target, uploads, concurrency, duration=duration, timeout=timeout))


def closed_loop_processes(
    target: Target,
    uploads: Sequence[Upload],
    concurrency: int,
    *,
    duration: float,
    processes: int,
    timeout: float = 60.0,
    loop: Callable[..., Awaitable[StepResult]] = closed_loop,
) -> StepResult:
    """A closed loop of `concurrency` clients spread over `processes` processes (spawned, so
    nothing of the caller's state is shared), merged into one result. `loop` is each
    process's closed loop (module-level, so it can be pickled): this module's HTTP one, or
    gameart.measure.grpc_load.closed_loop for TorchServe's gRPC API."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 2.0 + 0.3 * processes  # after every process has imported
    with ProcessPoolExecutor(processes, mp_context=context) as pool:
        parts = list(
            pool.map(
                _in_process,
                [loop] * processes,
                [start_at] * processes,
                [target] * processes,
                [list(uploads)] * processes,
                shares,
                [duration] * processes,
                [timeout] * processes,
            )
        )
    merged = StepResult("closed", concurrency, max(part.duration_s for part in parts))
    for part in parts:
        merged.latencies_ms.extend(part.latencies_ms)
        for status, values in part.by_status_ms.items():
            merged.by_status_ms.setdefault(status, []).extend(values)
        merged.statuses.update(part.statuses)
    return merged


# ---- warm up, then measure -------------------------------------------------------------------
def measure_closed_loop(
    target: Any,
    uploads: Sequence[Upload],
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
    timeout: float = 60.0,
    processes: int = 1,
    loop: Callable[..., Awaitable[StepResult]] = closed_loop,
) -> StepResult:
    """One measured closed-loop step: `warmup_s` of the same load first, not counted (batching,
    caches and lazy initialisation settle), then `duration_s` measured. `processes` > 1
    spreads the clients over processes (closed_loop_processes); `loop` is the closed loop to
    run (this module's HTTP one, or grpc_load.closed_loop)."""

    def step(duration: float) -> StepResult:
        if processes > 1:
            return closed_loop_processes(
                target,
                uploads,
                concurrency,
                duration=duration,
                processes=processes,
                timeout=timeout,
                loop=loop,
            )
        return run(loop(target, uploads, concurrency, duration=duration, timeout=timeout))

    if warmup_s > 0:
        step(warmup_s)
    return step(duration_s)
