"""scripts/loadtest.py and scripts/scale.py against a real TorchServe (small model, short runs)."""

from __future__ import annotations

import csv
import json
import threading
import time

import pytest
from PIL import Image

from gameart.cli import loadtest, scale
from gameart.measure import loadgen
from gameart.measure.loadtest import bad_uploads, mixed
from gameart.measure.uploads import upload_mix
from gameart.ops import scaling
from tests import torchserve
from tests.components import require

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory, exported_small):
    root = tmp_path_factory.mktemp("loadserve")
    store = root / "store"
    torchserve.archive(
        exported_small.out_dir,
        store,
        "small",
        "onnx",
        batch_size=4,
        max_batch_delay_ms=10,
        min_workers=1,
        max_workers=2,
    )
    # One worker, no batching and a queue of 2: a model that is easy to overload on purpose.
    torchserve.archive(
        exported_small.out_dir,
        store,
        "tiny_queue",
        "onnx",
        batch_size=1,
        job_queue_size=2,
        handler_settings={"intra_op_threads": 1},
    )
    running = torchserve.start(root / "run", store)
    yield running
    running.stop()


def run_loadtest(server, out, *extra: str) -> dict:
    argv = [
        "--run-dir",
        str(server.run_dir),
        "--out",
        str(out),
        "--warmup",
        "0.5",
        "--max-requests",
        "300",
        *extra,
    ]
    assert loadtest.main(argv) == 0
    return json.loads((out / "loadtest.json").read_text())


def test_closed_and_open_loop_with_bad_inputs(server, tmp_path):
    report = run_loadtest(
        server,
        tmp_path,
        "--model",
        "small",
        "--concurrency",
        "1,4",
        "--rate",
        "6",
        "--duration",
        "3",
        "--bad-share",
        "0.25",
    )
    closed = [s for s in report["steps"] if s["mode"] == "closed"]
    opened = [s for s in report["steps"] if s["mode"] == "open"]
    assert [s["level"] for s in closed] == [1, 4] and [s["level"] for s in opened] == [6]
    for step in report["steps"]:
        statuses = step["statuses"]
        assert set(statuses) <= {"200", "400", "415"}, statuses  # bad input never costs a 5xx
        bad = statuses.get("400", 0) + statuses.get("415", 0)
        assert statuses["200"] > 0 and bad == pytest.approx(0.25 * step["requests"], abs=1.5)
        assert 0 < step["p50_ms"] <= step["p90_ms"] <= step["p99_ms"] <= step["max_ms"]
        assert step["server_requests"] > 0 and step["server_latency_ms"] > 0
        assert step["server_queue_ms"] >= 0
    assert opened[0]["requests"] == 18  # 6 req/s for 3 s, as scheduled
    ceiling = report["client_ceiling"]["throughput_rps"]
    assert ceiling > 5 * max(s["throughput_rps"] for s in report["steps"])
    rows = list(csv.DictReader((tmp_path / "loadtest.csv").read_text().splitlines()))
    assert len(rows) == 3 and rows[0]["mode"] == "closed"
    with Image.open(tmp_path / "loadtest.png") as image:
        assert image.size[0] > 600


def test_bad_share_is_exact_and_spread():
    good = upload_mix()
    sequence = mixed(good, 0.25, count=40)
    bad_names = {u.name for u in bad_uploads(good)}
    flags = [u.name in bad_names for u in sequence]
    assert sum(flags) == 10 and sum(flags[:8]) == 2  # every fourth, from the start
    assert {u.name for u in sequence} >= bad_names  # every kind of bad input is sent


def test_multipart_and_image_folder(server, tmp_path, exported_small):
    images = tmp_path / "images"
    images.mkdir()
    for upload in upload_mix()[:2]:
        (images / upload.name).write_bytes(upload.body)
    report = run_loadtest(
        server,
        tmp_path / "out",
        "--model",
        "small",
        "--concurrency",
        "2",
        "--duration",
        "2",
        "--multipart",
        "--images",
        str(images),
        "--skip-ceiling",
    )
    (step,) = report["steps"]
    assert step["statuses"] == {"200": step["requests"]}
    assert report["multipart"] is True and len(report["uploads"]) == 2


def test_request_and_time_bounds(server, tmp_path):
    started = time.monotonic()
    report = run_loadtest(
        server,
        tmp_path,
        "--model",
        "small",
        "--concurrency",
        "2",
        "--duration",
        "30",
        "--max-requests",
        "10",
        "--skip-ceiling",
    )
    assert report["steps"][0]["requests"] == 10
    assert time.monotonic() - started < 30


def test_load_only_goes_to_loopback_unless_allowed(server, tmp_path, capsys):
    code = loadtest.main(
        ["--url", "http://192.0.2.10:8080", "--model", "x", "--out", str(tmp_path)]
    )
    assert code == 1
    assert "not on loopback" in capsys.readouterr().err


def test_cross_check_with_apache_bench(server, tmp_path):
    require("ab")
    report = run_loadtest(
        server,
        tmp_path,
        "--model",
        "small",
        "--concurrency",
        "2",
        "--duration",
        "5",
        "--max-requests",
        "40",
        "--skip-ceiling",
        "--cross-check-ab",
        "40",
    )
    check = report["cross_check"]
    assert check["ab"]["requests"] == 40 and check["ab"]["failed"] == 0
    assert check["ab"]["non_2xx"] == 0
    assert 0.5 < check["throughput_ratio"] < 2.0  # same server, same load: same ballpark


def test_full_queue_answers_503_fast(server):
    """Sixteen clients against a one-worker model with a queue of two: the overflow is refused
    at once with a 503, nobody hangs, and the model serves normally once the burst is over."""
    client = server.client
    target = loadgen.Target(
        f"{client.endpoints.inference}/predictions/tiny_queue", client.headers("inference")
    )
    uploads = [u for u in upload_mix() if u.name == "cover_600x800.jpg"]
    burst = loadgen.run(loadgen.closed_loop(target, uploads, 16, duration=4, max_requests=400))
    assert set(burst.statuses) <= {"200", "503"}
    assert burst.statuses["503"] > 0 and burst.statuses["200"] > 0
    # a refusal is immediate: far quicker than a request that was served
    assert burst.percentile(50, "503") < burst.percentile(50, "200") / 2
    assert client.predict("tiny_queue", uploads[0].body).status_code == 200


def test_full_queue_body_is_json(server):
    client = server.client
    uploads = [u for u in upload_mix() if u.name == "screenshot_1080p.png"]
    results = []

    def send():
        results.append(client.predict("tiny_queue", uploads[0].body, timeout=60))

    threads = [threading.Thread(target=send) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    refused = [r for r in results if r.status_code == 503]
    assert refused, [r.status_code for r in results]
    body = refused[0].json()
    assert body["code"] == 503 and body["type"] == "ServiceUnavailableException"


# ---- scale.py ------------------------------------------------------------------------------
def test_scale_set_and_show(server, capsys):
    run_dir = str(server.run_dir)
    assert scale.main(["--run-dir", run_dir, "set", "small", "--min", "2", "--max", "2"]) == 0
    workers = server.client.describe("small")["workers"]
    assert len(workers) == 2 and {w["status"] for w in workers} == {"READY"}
    capsys.readouterr()
    assert scale.main(["--run-dir", run_dir, "show", "small"]) == 0
    shown = capsys.readouterr().out
    assert shown.count("READY") == 2 and "MiB" in shown and "queue 0 pending" in shown
    assert scale.main(["--run-dir", run_dir, "set", "small", "--min", "1", "--max", "1"]) == 0
    deadline = time.monotonic() + 30  # TorchServe stops surplus workers asynchronously
    while len(server.client.describe("small")["workers"]) > 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(server.client.describe("small")["workers"]) == 1
    assert scale.main(["--run-dir", run_dir, "set", "small", "--min", "3", "--max", "2"]) == 2


def test_registration_is_refused_with_a_clear_reason(server, capsys):
    run_dir = str(server.run_dir)
    assert scale.main(["--run-dir", run_dir, "register", "small.mar"]) == 1
    assert "enable_model_api=false" in capsys.readouterr().err
    assert scale.main(["--run-dir", run_dir, "unregister", "small"]) == 1
    assert "model registration is disabled" in capsys.readouterr().err
    assert scale.main(["--run-dir", run_dir, "set-default", "small", "1.0"]) == 0


def test_watch_scales_up_under_load_and_back_down(server, capsys):
    """Two clients-worth of overload raises the queue: the controller adds the second worker,
    and once the load stops it removes it again (after its slower down-streak)."""
    client = server.client
    assert scale.main(["--run-dir", str(server.run_dir), "set", "small", "--min", "1"]) == 0
    target = loadgen.Target(
        f"{client.endpoints.inference}/predictions/small", client.headers("inference")
    )
    uploads = upload_mix()[:2]
    load = threading.Thread(
        target=lambda: loadgen.run(
            loadgen.closed_loop(target, uploads, 24, duration=10, max_requests=2000)
        )
    )
    load.start()
    code = scale.main(
        [
            "--run-dir",
            str(server.run_dir),
            "watch",
            "small",
            "--min",
            "1",
            "--max",
            "2",
            "--queue-high",
            "3",
            "--queue-low",
            "0",
            "--p99-low-ms",
            "100000",
            "--up-after",
            "1",
            "--down-after",
            "2",
            "--cooldown",
            "1",
            "--interval",
            "1",
            "--duration",
            "20",
        ]
    )
    load.join()
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert any("-> 2 workers" in line for line in lines), lines
    assert any("-> 1 workers" in line for line in lines), lines
    assert len(server.client.describe("small")["workers"]) == 1


def test_decide_has_hysteresis_and_bounds():
    policy = scaling.Policy(
        min_workers=1,
        max_workers=3,
        queue_high=8,
        queue_low=1,
        p99_high_ms=1000,
        p99_low_ms=300,
        up_after=2,
        down_after=3,
        cooldown_s=10,
    )
    state = scaling.ControllerState()
    assert scaling.decide(1, 20, 50, 100.0, policy, state) == 1  # one high interval: wait
    assert scaling.decide(1, 20, 50, 101.0, policy, state) == 2  # second in a row: scale up
    state.last_change = 101.0
    assert scaling.decide(2, 20, 50, 105.0, policy, state) == 2  # cool-down holds
    assert scaling.decide(2, 0, 2000, 112.0, policy, state) == 3  # p99 alone is enough
    state.last_change = 112.0
    assert scaling.decide(3, 50, 5000, 130.0, policy, state) == 3  # never above max
    for now in (131.0, 132.0):
        assert scaling.decide(3, 0, 100, now, policy, state) == 3  # low, but not long enough
    assert scaling.decide(3, 0, 100, 133.0, policy, state) == 2  # third low interval
    assert scaling.decide(3, 5, 500, 200.0, scaling.Policy(1, 2), scaling.ControllerState()) == 2
    assert scaling.decide(0, 0, None, 0.0, policy, scaling.ControllerState()) == 1  # below min
