"""scripts/experiment.py: a short real run (batching and a full queue) and its report."""

from __future__ import annotations

import json

import pytest

from gameart.cli import experiment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def report(tmp_path_factory, exported_small):
    out = tmp_path_factory.mktemp("experiment")
    argv = [
        "--export-dir",
        str(exported_small.out_dir),
        "--out",
        str(out),
        "--quick",
        "--sections",
        "batching,queue",
        "--batch-sizes",
        "4",
        "--delays",
        "5",
        "--seconds",
        "2",
    ]
    assert experiment.main(argv) == 0
    return out, json.loads((out / "experiment.json").read_text())


def test_batching_rows_cover_the_plan_and_all_succeed(report):
    _, data = report
    configs = {(r["batch_size"], r["delay_ms"], r["concurrency"]) for r in data["batching"]}
    assert configs == {(1, 0, 1), (1, 0, 8), (4, 5, 1), (4, 5, 8)}
    for row in data["batching"]:
        assert row["requests"] > 0 and row["statuses"] == {"200": row["requests"]}
        assert 0 < row["p50_ms"] <= row["p99_ms"]


def test_a_full_queue_refuses_fast_and_recovers(report):
    _, data = report
    queue = data["queue"]
    assert queue["overload"]["statuses"].get("503", 0) > 0
    assert queue["overload"]["statuses"].get("200", 0) > 0
    assert queue["p50_ms_503"] < queue["p50_ms_200"]  # refusals do not wait for the model
    assert set(queue["after"]["statuses"]) == {"200"}  # recovered once the load dropped


def test_report_files(report):
    out, data = report
    text = (out / "experiment.md").read_text()
    assert "batchSize x maxBatchDelay" in text and "A full queue" in text
    assert "--backend onnx" in text and data["serving"] == "--backend onnx"
    assert (out / "batching.png").stat().st_size > 10_000


def test_missing_export_is_a_clear_error(tmp_path, capsys):
    assert experiment.main(["--export-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert "no export" in capsys.readouterr().err


def test_options_become_one_archive_spec_and_a_plan(tmp_path):
    from gameart.pipeline.archive import ArchiveSpec

    argv = ["--export-dir", str(tmp_path), "--quick", "--sections", "workers,queue"]
    args = experiment.build_parser().parse_args([*argv, "--workers", "1,3", "--seconds", "4"])
    spec = experiment.spec_from_args(args)
    defaults = ArchiveSpec(export_dir=tmp_path)
    assert spec.sections == ("workers", "queue") and spec.plan.workers == (1, 3)
    assert spec.plan.seconds == 4 and spec.plan.batch_sizes == experiment.QUICK.batch_sizes
    assert (spec.served.backend, spec.served.device) == ("onnx", "cpu")
    assert spec.served.batch_size == defaults.batch_size
    assert spec.served.max_batch_delay_ms == defaults.max_batch_delay_ms
    with pytest.raises(SystemExit):
        experiment.build_parser().parse_args([*argv, "--sections", "workers,nothing"])
