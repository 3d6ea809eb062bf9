"""Three TorchServe instances behind one real nginx: the local stand-in for a pod rollout (one
instance drained with SIGTERM) and a node loss (one SIGKILLed with its workers), each under a
bounded closed-loop load through nginx, on loopback.

Configured as the pods are (deploy/k8s): TorchServe's token check off (its keys are per
instance; the front would authenticate clients), each instance under its supervisor, nginx with
least_conn, passive health checks and retries of predictions an instance refused or cut off.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from gameart.measure import loadgen
from gameart.measure.uploads import upload_mix
from gameart.ops.nginx import FrontSpec, reload_front, start_front, stop_front
from gameart.ops.ports import free_ports
from gameart.ops.properties import read_properties
from gameart.ops.server import check_health, stop_server
from tests import components, torchserve
from tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]
INSTANCES = 3
CLIENTS = 12
PHASE_S = 14.0
EVENT_AT_S = 4.0


class Instance:
    def __init__(self, root: Path, name: str, store: Path, config: Path):
        self.run_dir = root / name
        self.run_dir.mkdir()
        settings = torchserve.free_port_settings()
        self.inference = dict(s.split("=", 1) for s in settings)["inference_address"]
        command = [sys.executable, str(REPO_ROOT / "scripts" / "serve.py")]
        command += ["--run-dir", str(self.run_dir), "start", "--foreground", "--grace", "10"]
        command += ["--config", str(config), "--model-store", str(store)]
        for setting in settings:
            command += ["--set", setting]
        self.log = root / f"{name}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    @property
    def address(self) -> str:
        return self.inference.split("://", 1)[1]

    def healthy(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        return (self.run_dir / "config.properties").exists() and not check_health(
            self.run_dir
        ).problem

    def lose(self) -> None:
        """A node loss: the supervisor, TorchServe and its workers SIGKILLed at once."""
        family = [psutil.Process(self.process.pid)]
        family += family[0].children(recursive=True)
        for process in family:
            process.kill()
        psutil.wait_procs(family, timeout=10)

    def end(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        stop_server(self.run_dir, timeout=10)


@pytest.fixture
def fleet(tmp_path, exported_small):
    components.require("java", "nginx", "ss")
    store = tmp_path / "store"
    torchserve.archive(exported_small.out_dir, store, "small", "onnx", batch_size=4)
    # the project's config with the token check off, as in a pod (deploy/k8s/base)
    config = tmp_path / "config.properties"
    text = (REPO_ROOT / "config.properties").read_text()
    text = text.replace("disable_token_authorization=false", "disable_token_authorization=true")
    text = text.replace("metrics_config=metrics.yaml", f"metrics_config={REPO_ROOT}/metrics.yaml")
    config.write_text(text)
    assert read_properties(config)["disable_token_authorization"] == "true"
    instances = [Instance(tmp_path, f"ts{i}", store, config) for i in range(INSTANCES)]
    prefix = tmp_path / "nginx"
    try:
        deadline = time.monotonic() + 240
        while not all(instance.healthy() for instance in instances):
            assert time.monotonic() < deadline, "the instances did not become healthy"
            time.sleep(1)
        listen = f"127.0.0.1:{free_ports(1)[0]}"
        upstreams = tuple(instance.address for instance in instances)
        spec = FrontSpec(upstreams, listen, rate_per_s=10000, burst=10000, prefix=prefix)
        start_front(spec)
        yield instances, spec
    finally:
        stop_front(prefix)
        for instance in instances:
            instance.end()


def _load_with(url: str, event) -> tuple[loadgen.StepResult, float]:
    """A closed loop of CLIENTS through nginx for PHASE_S, with `event` at EVENT_AT_S."""
    # A connection per request: this stand-in removes an endpoint by reloading nginx, whose old
    # workers then close idle keep-alive connections, racing a client about to reuse one. An
    # ingress-nginx changes endpoints without a reload, so that race is the stand-in's, not a
    # request the rollout lost.
    target = loadgen.Target(url, {"Connection": "close"})
    uploads = upload_mix()[:2]
    result: list[loadgen.StepResult] = []
    load = threading.Thread(
        target=lambda: result.append(
            loadgen.run(
                loadgen.closed_loop(target, uploads, CLIENTS, duration=PHASE_S, max_requests=5000)
            )
        )
    )
    load.start()
    time.sleep(EVENT_AT_S)
    began = time.monotonic()
    event()
    took = time.monotonic() - began
    load.join()
    return result[0], took


def test_a_drained_instance_loses_nothing_and_a_lost_one_only_its_in_flight(fleet, capsys):
    instances, spec = fleet
    url = f"http://{spec.listen}/predictions/small"
    drained, lost, survivor = instances

    def drain() -> None:
        # a rollout: the endpoint goes (readiness fails, the ingress reloads), then SIGTERM
        reload_front(dataclasses.replace(spec, upstreams=(lost.address, survivor.address)))
        time.sleep(0.5)  # what preStop's sleep is for
        drained.process.send_signal(signal.SIGTERM)

    rollout, _ = _load_with(url, drain)
    assert drained.process.wait(timeout=20) == 0, drained.log.read_text()
    log = drained.log.read_text()
    assert "drained in" in log and "still in flight" not in log, log

    kill, _ = _load_with(url, lost.lose)
    assert survivor.healthy()

    rollout_statuses, kill_statuses = Counter(rollout.statuses), Counter(kill.statuses)
    with capsys.disabled():
        print(
            f"\nrollout (SIGTERM to 1 of 3 under {CLIENTS} clients): {dict(rollout_statuses)}"
            f"\nnode loss (SIGKILL to 1 of 2): {dict(kill_statuses)}"
        )
    # a rollout costs nothing
    assert set(rollout_statuses) == {"200"}, rollout_statuses
    assert rollout_statuses["200"] > 50
    # a node loss costs at most what was in flight on it (nginx retries what it can)
    failed = sum(count for status, count in kill_statuses.items() if status != "200")
    assert failed <= CLIENTS, kill_statuses
    assert kill_statuses["200"] > 50
    # and the survivor serves on: every request after the loss answered
    after, _ = _load_with(url, lambda: None)
    assert set(after.statuses) == {"200"}, after.statuses
