"""Keys that renew: a real TorchServe whose keys live one minute keeps answering for more than
three lifetimes, under light load from long-lived clients and the commands users run."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections import Counter

import psutil
import pytest

from gameart.cli import scale as scale_cli
from gameart.cli import serve as serve_cli
from gameart.measure import loadgen
from gameart.measure.uploads import upload_mix
from gameart.ops.client import SERVER_FILE, TorchServeClient, TorchServeError, read_tokens
from gameart.ops.keys import due_for_renewal, expiries
from tests import torchserve

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LIFETIME_MIN = 1  # the shortest TorchServe takes
RUN_S = 200  # more than three lifetimes
UPLOADS = upload_mix()[:2]


def test_nothing_good_is_refused_over_three_key_lifetimes(tmp_path, exported_small, capsys):
    store = tmp_path / "store"
    torchserve.archive(exported_small.out_dir, store, "small", "onnx")
    server = torchserve.start(tmp_path / "run", store, f"token_expiration_min={LIFETIME_MIN}")
    run_dir = str(server.run_dir)
    renewer_pid = None
    try:
        first = read_tokens(server.run_dir)
        record = json.loads((server.run_dir / SERVER_FILE).read_text())
        renewer_pid = record.get("key_renewer_pid")
        # long-lived clients, as a user's service would hold them: each read the key once
        client = TorchServeClient.from_run_dir(server.run_dir)
        url = f"{client.endpoints.inference}/predictions/small"
        target = loadgen.Target(url, client.headers("inference"), key_file=client.key_file)
        background: list[loadgen.StepResult] = []
        load = threading.Thread(
            target=lambda: background.append(
                loadgen.run(
                    loadgen.open_loop(target, UPLOADS, 2.0, duration=RUN_S, max_requests=450)
                )
            )
        )
        load.start()
        statuses: Counter[int] = Counter()
        commands: Counter[str] = Counter()
        deadline = time.monotonic() + RUN_S
        while time.monotonic() < deadline:
            statuses[client.predict("small", UPLOADS[0].body).status_code] += 1
            assert client.status("small").ready_workers >= 1
            # the commands users and the HEALTHCHECK run, each reading the key file anew
            for name, code in (
                ("health", serve_cli.main(["--run-dir", run_dir, "health"])),
                ("status", serve_cli.main(["--run-dir", run_dir, "status"])),
                ("scale", scale_cli.main(["--run-dir", run_dir, "set", "small", "--min", "1"])),
            ):
                commands[f"{name}={code}"] += 1
            time.sleep(4)
        load.join(60)
        assert set(statuses) == {200}, statuses
        assert set(commands) == {"health=0", "status=0", "scale=0"}, commands
        (step,) = background
        assert set(step.statuses) == {"200"} and step.ok >= 350, step.statuses
        renewals = (server.log_dir / "key_renewal.log").read_text().count("renewed the")
        assert renewals >= 2 * 5, renewals  # both keys, every half-lifetime (30 s)
        now = read_tokens(server.run_dir)
        assert now["inference"] != first["inference"] and now["API"] == first["API"]
        left = min(expiries(server.run_dir).values()) - dt.datetime.now(dt.timezone.utc)
        assert left > dt.timedelta(seconds=20)  # renewed in time, not at the last second
    finally:
        server.stop()
    assert renewer_pid is not None
    deadline = time.monotonic() + 15
    while psutil.pid_exists(renewer_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    gone = not psutil.pid_exists(renewer_pid)
    gone = gone or psutil.Process(renewer_pid).status() == psutil.STATUS_ZOMBIE
    assert gone  # the renewer ends with the server


def test_renewal_is_due_at_half_the_lifetime():
    now = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.timezone.utc)
    fresh = {"inference": now + dt.timedelta(seconds=59), "API": now}  # the API key never ages
    assert due_for_renewal(fresh, 60.0, now) == []
    half = {"inference": now + dt.timedelta(seconds=30), "management": now + dt.timedelta(days=47)}
    assert due_for_renewal(half, 60.0, now) == ["inference"]
    expired = {"management": now - dt.timedelta(seconds=1)}
    assert due_for_renewal(expired, 60.0, now) == ["management"]


def test_a_key_file_caught_mid_write_is_read_once_whole(tmp_path):
    """TorchServe rewrites key_file.json in place: a reader (the health check, a client, the
    nginx front's watcher) that finds it empty waits for the whole file instead of failing."""
    key_file = tmp_path / "key_file.json"
    key_file.write_text("")
    whole = {"inference": {"key": "abc", "expiration time": "2026-12-03T10:00:00Z"}}
    writer = threading.Timer(0.3, lambda: key_file.write_text(json.dumps(whole)))
    writer.start()
    try:
        assert read_tokens(tmp_path) == {"inference": "abc"}
    finally:
        writer.cancel()
    key_file.write_text('{"inference": ')  # never finished: a clear error, in bounded time
    started = time.monotonic()
    with pytest.raises(TorchServeError, match="not valid JSON"):
        read_tokens(tmp_path)
    assert time.monotonic() - started < 10
