"""The serve and build_mar commands and the lifecycle under them: archives, config, failures."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from gameart.cli import build_mar as build_mar_cli
from gameart.cli import serve as serve_cli
from gameart.ops import server as serve
from gameart.ops.environment import EnvironmentProblem, find_java
from gameart.ops.ports import free_ports
from gameart.ops.properties import effective_config
from tests import torchserve
from tests.helpers import REPO_ROOT


def test_archive_contents_and_model_config(tmp_path, exported_small):
    mar = torchserve.archive(
        exported_small.out_dir,
        tmp_path,
        "small",
        "onnx",
        batch_size=16,
        max_batch_delay_ms=7,
        handler_settings={"max_image_pixels": 1000},
    )
    with zipfile.ZipFile(mar) as archive:
        names = set(archive.namelist())
        config = yaml.safe_load(archive.read("model-config.yaml"))
        manifest = archive.read("MAR-INF/MANIFEST.json").decode()
    assert {
        "model.onnx",
        "model_meta.json",
        "game_image_handler.py",
        "handler/service.py",
        "modelspec/meta.py",
    } <= names
    assert "model.torchscript.pt" not in names  # only the chosen backend travels
    assert not any("__pycache__" in n for n in names)
    assert config["batchSize"] == 16 and config["maxBatchDelay"] == 7
    assert config["handler"] == {
        "backend": "onnx",
        "precision": "fp32",
        "top_k": 3,
        "max_image_pixels": 1000,
    }
    assert '"serializedFile": "model.onnx"' in manifest


def test_archive_refuses_a_missing_precision_and_bad_settings(tmp_path, exported_cover, capsys):
    assert (
        build_mar_cli.main(
            [
                "--export-dir",
                str(exported_cover.out_dir),
                "--model-store",
                str(tmp_path),
                "--precision",
                "fp16",
            ]
        )
        == 1
    )
    assert "no torchscript/fp16 model" in capsys.readouterr().err
    assert (
        build_mar_cli.main(
            [
                "--export-dir",
                str(exported_cover.out_dir),
                "--model-store",
                str(tmp_path),
                "--handler-set",
                "topk=3",
            ]
        )
        == 1
    )
    assert "unknown handler settings" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.mar"))


def test_archiver_cannot_delete_a_folder_named_like_the_model(
    tmp_path, monkeypatch, exported_small
):
    """torch-model-archiver stages in $TMPDIR/<model name> and deletes that folder first."""
    victim = tmp_path / "small"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    torchserve.archive(exported_small.out_dir, tmp_path / "store", "small", "torchscript")
    assert (victim / "precious.txt").read_text() == "keep me"


def test_effective_config_overrides_and_appends():
    base = REPO_ROOT / "config.properties"
    text = effective_config(base, {"job_queue_size": "7", "brand_new": "x"})
    assert "job_queue_size=7" in text and "job_queue_size=100" not in text
    assert text.rstrip().endswith("brand_new=x")
    assert "inference_address=http://127.0.0.1:8080" in text


def test_shipped_config_keeps_the_surface_small():
    props = dict(
        line.split("=", 1)
        for line in (REPO_ROOT / "config.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["enable_model_api"] == "false"
    assert props["disable_token_authorization"] == "false"
    assert props["metrics_mode"] == "prometheus"
    assert int(props["max_request_size"]) == 16 * 1024 * 1024


def test_missing_java_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EnvironmentProblem, match="Java 17"):
        find_java()


def test_check_env_script_runs():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "check_env.py")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "Java" in result.stdout


def test_start_with_an_empty_store_says_what_to_do(tmp_path, capsys):
    code = serve_cli.main(
        ["--run-dir", str(tmp_path / "run"), "start", "--model-store", str(tmp_path)]
    )
    assert code == 1
    assert "no .mar files" in capsys.readouterr().err


def test_stop_without_a_server(tmp_path, capsys):
    assert serve_cli.main(["--run-dir", str(tmp_path), "stop"]) == 0
    assert "no server running" in capsys.readouterr().out


@pytest.mark.integration
def test_a_model_that_cannot_load_fails_the_start_fast(tmp_path, exported_small, capsys):
    """Instead of TorchServe's quiet retry back-off, start stops with the worker's traceback."""
    broken = tmp_path / "broken_export"
    shutil.copytree(exported_small.out_dir, broken)
    (broken / "model.torchscript.pt").write_bytes(b"these are not weights")
    store = tmp_path / "store"
    torchserve.archive(broken, store, "broken", "torchscript")
    started = time.monotonic()
    with pytest.raises(AssertionError, match="did not start"):
        torchserve.start(tmp_path / "run", store, timeout=240)
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert "a model failed to load (" in err
    assert "Traceback" in err and "PytorchStreamReader" in err
    assert elapsed < 45, f"took {elapsed:.0f}s to give up"  # measured ~11 s on 2 cores
    assert serve.recorded_pid(tmp_path / "run") is None  # and nothing left running


def test_free_ports_are_distinct_and_outside_the_ephemeral_range():
    ports = free_ports(20) + free_ports(20)
    assert len(set(ports)) == 40  # never handed out twice in one process
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert not any(low <= port <= high for port in ports)  # clients' ports cannot take them


@pytest.mark.integration
def test_start_survives_a_port_taken_before_torchserve_binds_it(
    tmp_path, exported_small, monkeypatch
):
    """The race a free-port helper cannot close: someone binds the port between the check and
    TorchServe's bind. The test starter sees the BindException and starts on fresh ports."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    handed = []

    def first_one_taken(count):
        ports = free_ports(count)
        if not handed:
            ports[0] = taken  # the inference port: already in use
        handed.append(ports)
        return ports

    monkeypatch.setattr(serve, "free_ports", first_one_taken)  # start_server picks them
    store = tmp_path / "store"
    torchserve.archive(exported_small.out_dir, store, "small", "onnx")
    try:
        running = torchserve.start(tmp_path / "run", store)
        try:
            assert len(handed) == 2  # one failed start, one good one
            assert running.client.predict("small", b"not an image").status_code == 400
        finally:
            running.stop()
    finally:
        squatter.close()


@pytest.mark.parametrize(
    ("setting", "why"),
    [
        ("disable_token_authorization=true", "cannot be overridden"),
        ("job_queue_size=5\ndisable_token_authorization=true", "one line each"),
        ("allowed_urls=https://.*", "cannot be overridden"),
        ("management_address=http://0.0.0.0:8081", "must stay on loopback"),
        ("metrics_address=http://10.0.0.1:8082", "must stay on loopback"),
    ],
)
def test_start_refuses_overrides_that_open_the_server(tmp_path, capsys, setting, why):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "x.mar").write_bytes(b"")  # never reached: refused before start
    argv = ["--run-dir", str(tmp_path / "run"), "start", "--model-store", str(tmp_path / "store")]
    assert serve_cli.main([*argv, "--set", setting]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and why in err
    assert not (tmp_path / "run").exists()  # nothing was started or written


def test_the_overrides_the_project_uses_are_allowed():
    from gameart.ops.properties import checked_overrides
    from gameart.ops.server import free_port_overrides

    allowed = {
        **free_port_overrides(),
        "inference_address": "http://0.0.0.0:8080",  # the container opens inference only
        "management_address": "http://[::1]:8081",
        "token_expiration_min": "1",
        "enable_model_api": "true",
        "job_queue_size": "1024",
    }
    assert checked_overrides(allowed) == allowed
