"""scripts/gpu_e2e.py and the multi-process client behind it, on this CPU machine (the GPU
figures come from a lease: docs/benchmarks/h100-2026-11-25)."""

from __future__ import annotations

import json

import pytest

from gameart.cli import gpu_e2e
from gameart.measure import gpu_probe, loadgen
from gameart.measure.load_checks import client_ceiling
from gameart.measure.uploads import cover_uploads

pytestmark = pytest.mark.integration


def test_processes_merge_into_one_result():
    """Three processes against a do-nothing server: every request counted once, all 200, and
    the merged throughput is the requests over the common measuring window."""
    uploads = cover_uploads(4)
    assert len({u.body for u in uploads}) == 4 and all(u.size == (600, 800) for u in uploads)
    result = client_ceiling(uploads, concurrency=6, duration=1.5, processes=3)
    assert result["processes"] == 3 and result["level"] == 6
    assert set(result["statuses"]) == {"200"}
    assert result["requests"] == result["ok"] > 30
    assert 1.5 <= result["duration_s"] < 4.0
    assert result["throughput_rps"] == pytest.approx(result["ok"] / result["duration_s"], rel=0.01)


def test_quick_run_reports_each_handler_and_its_stages(tmp_path, exported_small):
    out = tmp_path / "e2e"
    export_dir = str(exported_small.out_dir)
    argv = ["--quick", "--export-dir", export_dir, "--out", str(out), "--handlers", "noop,ours"]
    code = gpu_e2e.main([*argv, "--protocols", "http,grpc"])
    assert code == 0
    result = json.loads((out / "e2e.json").read_text())
    rows = {(row["handler"], row["protocol"], row["concurrency"]): row for row in result["rows"]}
    assert set(rows) == {
        (handler, protocol, clients)
        for handler in ("noop", "ours")
        for protocol in ("http", "grpc")
        for clients in (2, 4)
    }
    for row in rows.values():
        assert set(row["statuses"]) == {"200"} and row["ok"] > 0
        assert row["gpu_busy_pct"] is None  # no nvidia-smi here: absent, not zero
    stages = result["stage_seconds"]["ours"]  # ms per batch, from the Prometheus histogram
    assert {"extract", "decode", "model", "answer"} <= set(stages)
    assert "gpu_decode" not in stages  # a CPU worker keeps Pillow (gpu_decode: auto)
    assert stages["model"] > 0 and stages["decode"] > 0
    assert "noop" not in result["stage_seconds"]  # the no-op handler records nothing
    assert (out / "e2e.png").stat().st_size > 10_000
    assert "| ours | grpc | 4 |" in (out / "e2e.md").read_text()


def test_gpu_sampler_without_nvidia_smi_is_absent(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with gpu_probe.GpuSampler() as sampler:
        pass
    assert sampler.mean() is None


def test_a_closed_loop_in_processes_keeps_the_target(tmp_path):
    target = loadgen.Target("http://127.0.0.1:9/none", {"Authorization": "Bearer x"})
    uploads = cover_uploads(1)
    result = loadgen.closed_loop_processes(target, uploads, 2, duration=0.5, processes=2)
    # nothing listens on port 9: every request fails to connect, counted by exception name
    assert result.ok == 0 and result.requests > 0
    assert set(result.statuses) <= {"ClientConnectorError", "ClientOSError"}


def test_nvidia_smi_rows_parse_once_for_everyone():
    fields = ["name", "utilization.gpu"]
    text = "NVIDIA H100 80GB HBM3, 87\nNVIDIA H100 80GB HBM3, [N/A]\nwarning: something\n"
    rows = gpu_probe.parse_rows(text, fields)
    assert rows[0] == {"name": "NVIDIA H100 80GB HBM3", "utilization.gpu": "87"}
    assert len(rows) == 2 and gpu_probe.numbers(rows, "utilization.gpu") == [87.0]


def test_quick_options_shrink_one_archive_spec(tmp_path):
    argv = ["--export-dir", str(tmp_path), "--quick", "--handlers", "noop,ours"]
    setup = gpu_e2e.setup_from_args(gpu_e2e.build_parser().parse_args(argv), gpu=False)
    served = setup.served
    assert (served.min_workers, served.max_workers, served.batch_size) == (1, 1, 4)
    assert (served.device, served.precision) == ("cpu", "fp32")
    assert setup.handlers == ("noop", "ours") and setup.concurrencies == (2, 4)
