"""The scaling signal and the alerts on a real Prometheus: promtool checks and unit-tests the
rules, then Debian's Prometheus scrapes a real TorchServe while the test loads it, and the exact
query of the autoscaler (deploy/k8s/base/scaledobject.yaml) must stay under its threshold idle,
rise past it under load and fall back after. Every dashboard panel's query must evaluate."""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
import requests
import yaml

from gameart.measure import loadgen
from gameart.measure.uploads import upload_mix
from gameart.ops.ports import free_ports
from tests import components, torchserve
from tests.helpers import REPO_ROOT

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "gameart-serve.json"
SCALED_OBJECT = REPO_ROOT / "deploy" / "k8s" / "base" / "scaledobject.yaml"


def test_promtool_checks_and_unit_tests_the_rules():
    promtool = components.require("promtool")["promtool"]
    for command in (["check", "rules", "rules.yml"], ["test", "rules", "rules.test.yml"]):
        result = subprocess.run(
            [promtool, *command], cwd=PROMETHEUS_DIR, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout + result.stderr


def autoscaler_trigger() -> tuple[str, float]:
    scaled = yaml.safe_load(SCALED_OBJECT.read_text())
    (trigger,) = scaled["spec"]["triggers"]
    return trigger["metadata"]["query"], float(trigger["metadata"]["threshold"])


class Prometheus:
    def __init__(self, url: str):
        self.url = url

    def query(self, expr: str) -> list[dict]:
        reply = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = reply.json()
        assert body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None


@pytest.fixture
def prometheus_and_server(tmp_path, exported_cover):
    binary = components.require("prometheus", "java")["prometheus"]
    store = tmp_path / "store"
    # the model name the autoscaler's query names
    torchserve.archive(exported_cover.out_dir, store, "gameart", "torchscript", batch_size=4)
    server = torchserve.start(tmp_path / "run", store)
    port = free_ports(1)[0]
    metrics = server.client.endpoints.metrics.split("://", 1)[1]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
        "scrape_configs": [{"job_name": "gameart", "static_configs": [{"targets": [metrics]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                if requests.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        yield Prometheus(url), server
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
        server.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_the_autoscalers_query_rises_under_load_and_falls_after(prometheus_and_server, tmp_path):
    prometheus, server = prometheus_and_server
    query, threshold = autoscaler_trigger()
    uploads = upload_mix()[:1]
    target = loadgen.Target.for_model(server.client, "gameart")

    def sample(seconds: float) -> list[tuple[float, float | None]]:
        points, end = [], time.monotonic() + seconds
        while time.monotonic() < end:
            points.append((time.monotonic(), prometheus.value(query)))
            time.sleep(2)
        return points

    # idle, with a trickle of single requests: the series exists and stays low
    for _ in range(6):
        assert server.client.predict("gameart", uploads[0].body).status_code == 200
        time.sleep(1)
    idle = sample(35)  # the recording rule runs every 15 s
    assert [v for _, v in idle if v is not None], "the recorded queue wait never appeared"
    assert max(v for _, v in idle if v is not None) < threshold

    result: list[loadgen.StepResult] = []
    load = threading.Thread(
        target=lambda: result.append(
            loadgen.run(loadgen.closed_loop(target, uploads, 24, duration=45, max_requests=3000))
        )
    )
    load.start()
    loaded = sample(45)
    load.join()
    after = sample(100)  # the 1-minute window empties, then the rule runs again
    (step,) = result
    assert set(step.statuses) == {"200"}, step.statuses
    peak = max(v for _, v in loaded if v is not None)
    assert peak > threshold, f"queue wait peaked at {peak:.0f} ms under load"
    assert after[-1][1] is not None and after[-1][1] < threshold, after[-6:]
    series = {"idle": idle, "load": loaded, "after": after}
    (tmp_path / "signal.json").write_text(json.dumps(series))
    idle_max = max(v or 0 for _, v in idle)
    print(f"\nautoscaler signal: idle max {idle_max:.1f} ms, peak {peak:.0f} ms")


@pytest.mark.integration
@pytest.mark.slow
def test_every_dashboard_and_alert_query_evaluates(prometheus_and_server):
    prometheus, server = prometheus_and_server
    assert server.client.predict("gameart", upload_mix()[0].body).status_code == 200
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(expressions) >= 6
    rules = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    expressions += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    for expr in expressions:
        prometheus.query(expr.replace("$model", "gameart"))  # parses and runs
    # the scraped metrics carry the names the rules use
    names = ["ts_inference_requests_total", "ts_queue_latency_microseconds", "Requests2XX"]
    names += ['HandlerStageSeconds_bucket{Stage="model"}', "WorkerLoadTime"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(prometheus.query(n) for n in names):
        time.sleep(1)
    assert [n for n in names if not prometheus.query(n)] == []
