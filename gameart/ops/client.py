"""What every client of a running TorchServe needs: its addresses, its tokens, its three APIs.

Shared by the serve/demo/load-test/scale scripts and the tests, so none of them re-learns how to
find the server or authenticate.
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from gameart.paths import REPO_ROOT

DEFAULT_RUN_DIR = REPO_ROOT / ".run" / "torchserve"
DEFAULT_CONFIG = REPO_ROOT / "config.properties"
SERVER_FILE = "server.json"  # what `serve.py start` records about the running instance
KEY_FILE = "key_file.json"  # written by TorchServe itself when token authorisation is on


# Servers we start get ports below Linux's default ephemeral range (32768-60999), where the
# kernel never puts the client side of an outgoing connection: a port found free here cannot be
# taken by our own HTTP clients before the server binds it.
_SERVER_PORTS = range(20_000, 32_000)
_handed_out: set[int] = set()


def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports for servers, none handed out twice in this process."""
    rng = random.Random()
    ports: list[int] = []
    for candidate in rng.sample(_SERVER_PORTS, len(_SERVER_PORTS)):
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
    raise OSError(f"no {count} free loopback ports in {_SERVER_PORTS}")


class TorchServeError(RuntimeError):
    """TorchServe is unreachable, refused a call, or did not become ready."""


def read_properties(path: Path) -> dict[str, str]:
    """Java-style key=value lines (no continuation lines; our config has none)."""
    props: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip()
    return props


@dataclass(frozen=True)
class Endpoints:
    inference: str
    management: str
    metrics: str

    @classmethod
    def from_properties(cls, props: dict[str, str]) -> Endpoints:
        return cls(
            inference=props.get("inference_address", "http://127.0.0.1:8080").rstrip("/"),
            management=props.get("management_address", "http://127.0.0.1:8081").rstrip("/"),
            metrics=props.get("metrics_address", "http://127.0.0.1:8082").rstrip("/"),
        )


def read_tokens(run_dir: Path) -> dict[str, str]:
    """{"inference": ..., "management": ..., "API": ...}; empty when token auth is off."""
    path = Path(run_dir) / KEY_FILE
    if not path.is_file():
        return {}
    keys = json.loads(path.read_text())
    return {kind: entry["key"] for kind, entry in keys.items() if isinstance(entry, dict)}


class TorchServeClient:
    """Thin requests-based client. Tokens are re-read from the key file on each auth failure,
    so a rotated key (POST /token) is picked up without a restart."""

    def __init__(self, endpoints: Endpoints, run_dir: Path | None = None, timeout: float = 30.0):
        self.endpoints = endpoints
        self.run_dir = Path(run_dir) if run_dir else None
        self.timeout = timeout
        self.session = requests.Session()
        self._tokens = read_tokens(self.run_dir) if self.run_dir else {}

    @classmethod
    def from_run_dir(
        cls, run_dir: Path = DEFAULT_RUN_DIR, timeout: float = 30.0
    ) -> TorchServeClient:
        run_dir = Path(run_dir)
        config = run_dir / "config.properties"
        if not config.is_file():
            raise TorchServeError(
                f"no running server recorded in {run_dir}; start one with `make serve`"
            )
        return cls(Endpoints.from_properties(read_properties(config)), run_dir, timeout)

    # ---- plumbing --------------------------------------------------------------------------
    def set_token(self, api: str, token: str) -> None:
        """Use this token for `api` (inference, management, API) instead of the key file's."""
        self._tokens[api] = token

    def headers(self, api: str) -> dict[str, str]:
        token = self._tokens.get(api)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, api: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        base = getattr(self.endpoints, api)
        kwargs.setdefault("timeout", self.timeout)
        explicit = kwargs.pop("headers", {})
        headers = {**self.headers(api), **explicit}
        response = self.session.request(method, base + path, headers=headers, **kwargs)
        rejected = response.status_code in (400, 401) and "Token" in response.text
        if rejected and self.run_dir and "Authorization" not in explicit:
            self._tokens = read_tokens(self.run_dir)  # rotated or regenerated: retry once
            headers.update(self.headers(api))
            response = self.session.request(method, base + path, headers=headers, **kwargs)
        return response

    # ---- inference API ---------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            response = self.request("inference", "GET", "/ping", timeout=2)
        except requests.RequestException:
            return False
        return response.ok and response.json().get("status") == "Healthy"

    def predict(
        self,
        model: str,
        image: bytes,
        content_type: str = "application/octet-stream",
        **kwargs: Any,
    ) -> requests.Response:
        return self.request(
            "inference",
            "POST",
            f"/predictions/{model}",
            data=image,
            headers={"Content-Type": content_type},
            **kwargs,
        )

    # ---- management API --------------------------------------------------------------------
    def models(self) -> list[str]:
        response = self.request("management", "GET", "/models")
        _raise_for(response, "list models")
        return [m["modelName"] for m in response.json().get("models", [])]

    def describe(self, model: str) -> dict[str, Any]:
        response = self.request("management", "GET", f"/models/{model}")
        _raise_for(response, f"describe {model}")
        return response.json()[0]

    def scale(
        self,
        model: str,
        min_worker: int,
        max_worker: int | None = None,
        synchronous: bool = True,
        timeout: float = 120.0,
    ) -> requests.Response:
        params = {"min_worker": min_worker, "synchronous": str(synchronous).lower()}
        if max_worker is not None:
            params["max_worker"] = max_worker
        return self.request("management", "PUT", f"/models/{model}", params=params, timeout=timeout)

    # ---- metrics API -----------------------------------------------------------------------
    def metrics_text(self) -> str:
        response = self.request("metrics", "GET", "/metrics")
        _raise_for(response, "read metrics")
        return response.text

    # ---- readiness -------------------------------------------------------------------------
    def ready_models(self, expected: Iterable[str] | None = None) -> dict[str, int]:
        """{model: READY workers}, for every model or just the expected ones."""
        names = list(expected) if expected else self.models()
        ready = {}
        for name in names:
            workers = self.describe(name).get("workers", [])
            ready[name] = sum(1 for w in workers if w.get("status") == "READY")
        return ready

    def wait_until_ready(
        self, expected_count: int, timeout: float, poll: float = 0.5, alive=lambda: None
    ) -> dict[str, int]:
        """Block until `expected_count` models are registered and each has its minWorkers
        READY, as the management API reports them. `alive()` may raise to stop early."""
        deadline = time.monotonic() + timeout
        last_state: Any = "management API not answering"
        while time.monotonic() < deadline:
            alive()
            try:
                names = self.models()
                if len(names) >= expected_count:
                    descriptions = [self.describe(n) for n in names]
                    state = {d["modelName"]: _ready_count(d) for d in descriptions}
                    if all(
                        state[d["modelName"]] >= max(1, d.get("minWorkers", 1))
                        for d in descriptions
                    ):
                        return state
                    last_state = state
                else:
                    last_state = f"{len(names)}/{expected_count} models registered"
            except (requests.RequestException, TorchServeError, ValueError) as exc:
                last_state = str(exc)
            time.sleep(poll)
        raise TorchServeError(f"not ready after {timeout:.0f}s: {last_state}")


def prometheus_value(text: str, metric: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include the given ones."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(metric)}\{{(.*)\}}\s+(\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _ready_count(description: dict[str, Any]) -> int:
    return sum(1 for w in description.get("workers", []) if w.get("status") == "READY")


def _raise_for(response: requests.Response, action: str) -> None:
    if not response.ok:
        raise TorchServeError(
            f"could not {action}: HTTP {response.status_code} {response.text[:300]}"
        )
