"""The one client of a running TorchServe: its addresses, its keys, its three APIs.

Every command, benchmark and test talks to TorchServe through `TorchServeClient`, so none of
them re-learns how to find the server, authenticate, or read a key the server has renewed.
Answers come back typed (`ModelStatus`, `WorkerStatus`); failures as `TorchServeError`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from gameart.ops.properties import read_properties
from gameart.paths import RUN_DIR

SERVER_FILE = "server.json"  # what `serve.py start` records about the running instance
KEY_FILE = "key_file.json"  # written by TorchServe itself when token authorisation is on
KEY_FILE_SETTLE_S = 3.0  # how long a reader waits for a key file caught mid-write


class TorchServeError(RuntimeError):
    """TorchServe is unreachable, refused a call, or did not become ready."""


class ModelApiDisabled(TorchServeError):
    """The management API refused to (un)register a model: enable_model_api=false."""


MODEL_API_OFF = (
    "the management API refused (405): model registration is disabled in config.properties "
    "(enable_model_api=false, the shipped and recommended setting). Put the .mar in model_store/ "
    "and restart (make serve), or turn enable_model_api on and keep allowed_urls local."
)


@dataclass(frozen=True)
class WorkerStatus:
    id: str
    pid: int | None
    status: str  # READY, UNLOADING, ...
    gpu: bool
    memory_bytes: int  # as the frontend reports it (the process's RSS on Linux)

    @classmethod
    def from_api(cls, worker: dict[str, Any]) -> WorkerStatus:
        return cls(
            id=str(worker.get("id")),
            pid=worker.get("pid"),
            status=str(worker.get("status")),
            gpu=bool(worker.get("gpu")),
            memory_bytes=int(worker.get("memoryUsage") or 0),
        )


@dataclass(frozen=True)
class ModelStatus:
    """One model as `GET /models/{name}` describes it: version, batching, workers, queue."""

    name: str
    version: str
    batch_size: int
    max_batch_delay_ms: int
    min_workers: int
    max_workers: int
    pending: int | None  # requests waiting in the model's queue
    free_slots: int | None  # room left in the queue before requests get 503
    workers: tuple[WorkerStatus, ...]

    @classmethod
    def from_api(cls, description: dict[str, Any]) -> ModelStatus:
        queue = description.get("jobQueueStatus", {})
        return cls(
            name=description["modelName"],
            version=str(description.get("modelVersion")),
            batch_size=int(description.get("batchSize", 1)),
            max_batch_delay_ms=int(description.get("maxBatchDelay", 0)),
            min_workers=int(description.get("minWorkers", 1)),
            max_workers=int(description.get("maxWorkers", 1)),
            pending=queue.get("pendingRequests"),
            free_slots=queue.get("remainingCapacity"),
            workers=tuple(WorkerStatus.from_api(w) for w in description.get("workers", [])),
        )

    @property
    def ready_workers(self) -> int:
        return sum(1 for w in self.workers if w.status == "READY")

    def summary(self) -> str:
        """One line for `serve.py status` and `scale.py show`."""
        pending = "?" if self.pending is None else self.pending
        free = "?" if self.free_slots is None else self.free_slots
        return (
            f"{self.name} v{self.version}: workers {self.min_workers}..{self.max_workers}, "
            f"batch {self.batch_size} / {self.max_batch_delay_ms} ms, "
            f"queue {pending} pending, {free} free"
        )


@dataclass(frozen=True)
class Endpoints:
    inference: str
    management: str
    metrics: str

    @property
    def inference_port(self) -> int:
        return urlsplit(self.inference).port or 80

    @property
    def inference_host_port(self) -> str:
        """host:port of the inference API, as a proxy's upstream names it."""
        return urlsplit(self.inference).netloc

    @classmethod
    def from_properties(cls, props: dict[str, str]) -> Endpoints:
        return cls(
            inference=props.get("inference_address", "http://127.0.0.1:8080").rstrip("/"),
            management=props.get("management_address", "http://127.0.0.1:8081").rstrip("/"),
            metrics=props.get("metrics_address", "http://127.0.0.1:8082").rstrip("/"),
        )


def key_entries(run_dir: Path) -> dict[str, dict[str, Any]]:
    """TorchServe's key file as it stands: {"inference": {"key", "expiration time"}, ...};
    empty when token auth is off."""
    path = Path(run_dir) / KEY_FILE
    deadline = time.monotonic() + KEY_FILE_SETTLE_S
    while True:
        if not path.is_file():
            return {}
        try:
            entries = json.loads(path.read_text())
            break
        except json.JSONDecodeError as exc:
            # TorchServe rewrites the file in place (at start, on each renewal): a reader can
            # catch it empty or half written; it is whole again within milliseconds
            if time.monotonic() > deadline:
                raise TorchServeError(f"{path} is not valid JSON: {exc}") from exc
            time.sleep(0.05)
    return {kind: entry for kind, entry in entries.items() if isinstance(entry, dict)}


def read_tokens(run_dir: Path) -> dict[str, str]:
    """{"inference": ..., "management": ..., "API": ...}; empty when token auth is off."""
    return {kind: entry["key"] for kind, entry in key_entries(run_dir).items()}


class TorchServeClient:
    """Thin requests-based client. Tokens are re-read from the key file on each auth failure,
    so a rotated key (POST /token) is picked up without a restart."""

    def __init__(self, endpoints: Endpoints, run_dir: Path | None = None, timeout: float = 30.0):
        self.endpoints = endpoints
        self.run_dir = Path(run_dir) if run_dir else None
        self.timeout = timeout
        self.session = requests.Session()
        self._tokens = read_tokens(self.run_dir) if self.run_dir else {}
        self._pinned: set[str] = set()  # APIs whose key was given by hand: never re-read

    @classmethod
    def from_run_dir(cls, run_dir: Path = RUN_DIR, timeout: float = 30.0) -> TorchServeClient:
        run_dir = Path(run_dir)
        config = run_dir / "config.properties"
        if not config.is_file():
            raise TorchServeError(
                f"no running server recorded in {run_dir}; start one with `make serve`"
            )
        return cls(Endpoints.from_properties(read_properties(config)), run_dir, timeout)

    # ---- plumbing --------------------------------------------------------------------------
    @property
    def key_file(self) -> Path | None:
        """TorchServe's key file for this server (None when the client has no run dir)."""
        return self.run_dir / KEY_FILE if self.run_dir else None

    def set_token(self, api: str, token: str) -> None:
        """Use this token for `api` (inference, management, API) instead of the key file's."""
        self._tokens[api] = token
        self._pinned.add(api)

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
        if (
            rejected
            and self.run_dir
            and api not in self._pinned
            and "Authorization" not in explicit
        ):
            self._reread_tokens(api, refused=headers.get("Authorization"))  # renewed: retry once
            headers.update(self.headers(api))
            response = self.session.request(method, base + path, headers=headers, **kwargs)
        return response

    def _reread_tokens(self, api: str, refused: str | None, wait_s: float = 2.0) -> None:
        """The key file's keys, waiting (briefly) for a key other than the refused one: the
        server takes a renewed key before it has rewritten the file."""
        assert self.run_dir is not None
        deadline = time.monotonic() + wait_s
        while True:
            try:
                tokens = read_tokens(self.run_dir)
            except (OSError, ValueError, TorchServeError):  # being rewritten
                tokens = {}
            fresh = tokens.get(api) and f"Bearer {tokens[api]}" != refused
            if fresh or time.monotonic() > deadline:
                self._tokens = {**self._tokens, **tokens}
                return
            time.sleep(0.05)

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

    def status(self, model: str) -> ModelStatus:
        return ModelStatus.from_api(self.describe(model))

    def statuses(self) -> list[ModelStatus]:
        return [self.status(name) for name in self.models()]

    def renew_key(self, kind: str) -> None:
        """Ask TorchServe for a new inference or management key (it rewrites the key file;
        the old key stops working); uses the API key, as TorchServe requires."""
        response = self.request(
            "management", "POST", "/token", params={"type": kind}, headers=self.headers("API")
        )
        _raise_for(response, f"renew the {kind} key")
        if self.run_dir:
            self._tokens = read_tokens(self.run_dir)

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

    def register(self, url: str, initial_workers: int = 1) -> str:
        """Register a .mar (a model-store name or an allowed URL); needs enable_model_api."""
        params = {"url": url, "initial_workers": initial_workers, "synchronous": "true"}
        return self._model_api_call("POST", "/models", params)

    def unregister(self, model: str, version: str | None = None) -> str:
        return self._model_api_call(
            "DELETE", f"/models/{model}" + (f"/{version}" if version else "")
        )

    def set_default(self, model: str, version: str) -> str:
        return self._model_api_call("PUT", f"/models/{model}/{version}/set-default")

    def _model_api_call(self, method: str, path: str, params: dict | None = None) -> str:
        response = self.request("management", method, path, params=params, timeout=300)
        if response.status_code == 405:
            raise ModelApiDisabled(MODEL_API_OFF)
        _raise_for(response, f"{method} {path}")
        return response.text.strip()

    # ---- metrics API -----------------------------------------------------------------------
    def metrics_text(self) -> str:
        response = self.request("metrics", "GET", "/metrics")
        _raise_for(response, "read metrics")
        return response.text

    # ---- readiness -------------------------------------------------------------------------
    def ready_models(self, expected: Iterable[str] | None = None) -> dict[str, int]:
        """{model: READY workers}, for every model or just the expected ones."""
        names = list(expected) if expected else self.models()
        return {name: self.status(name).ready_workers for name in names}

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
                    statuses = [self.status(n) for n in names]
                    state = {s.name: s.ready_workers for s in statuses}
                    if all(s.ready_workers >= max(1, s.min_workers) for s in statuses):
                        return state
                    last_state = state
                else:
                    last_state = f"{len(names)}/{expected_count} models registered"
            except (requests.RequestException, TorchServeError, ValueError) as exc:
                last_state = str(exc)
            time.sleep(poll)
        raise TorchServeError(f"not ready after {timeout:.0f}s: {last_state}")


def prometheus_value(text: str, metric: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples whose labels include the given ones (a sample
    without labels matches when none are asked for)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(metric)}(?:\{{(.*)\}})?\s+(\S+)(?:\s+\d+)?$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def _raise_for(response: requests.Response, action: str) -> None:
    if not response.ok:
        raise TorchServeError(
            f"could not {action}: HTTP {response.status_code} {response.text[:300]}"
        )
