"""Loopback ports for the servers we start (TorchServe, Redis, nginx) in tests and benchmarks."""

from __future__ import annotations

import random
import socket

# Servers we start get ports below Linux's default ephemeral range (32768-60999), where the
# kernel never puts the client side of an outgoing connection: a port found free here cannot be
# taken by our own HTTP clients before the server binds it.
SERVER_PORTS = range(20_000, 32_000)
_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports that were free when checked, none handed out twice in this
    process. Another process can still bind one before our server does: callers that start
    a server on them retry on a bind failure (`gameart.ops.server.start_server` does)."""
    rng = random.Random()
    ports: list[int] = []
    for candidate in rng.sample(SERVER_PORTS, len(SERVER_PORTS)):
        if candidate in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
        _handed_out.add(candidate)
        ports.append(candidate)
        if len(ports) == count:
            return ports
    raise OSError(f"no {count} free loopback ports in {SERVER_PORTS}")
