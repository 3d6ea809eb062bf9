"""The TorchServe client's pure parts: Prometheus samples and typed model status."""

from __future__ import annotations

from gameart.ops.client import ModelStatus, prometheus_value

METRICS = """\
# HELP ts_inference_requests_total Total number of inference requests.
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="small",model_version="default",} 7.0
ts_inference_requests_total{model_name="other",model_version="default",} 5.0
ts_inference_requests_total_extra{model_name="small",} 100.0
CacheHits 3.0
CacheHits{ModelName="small",Level="Model",} 2.0 1764676800000
"""


def test_prometheus_value_sums_matching_samples_with_and_without_labels():
    assert prometheus_value(METRICS, "ts_inference_requests_total", model_name="small") == 7.0
    assert prometheus_value(METRICS, "ts_inference_requests_total") == 12.0  # not _extra
    assert prometheus_value(METRICS, "CacheHits") == 5.0  # an unlabelled sample counts too
    assert prometheus_value(METRICS, "CacheHits", ModelName="small") == 2.0  # with a timestamp
    assert prometheus_value(METRICS, "CacheHits", ModelName="nope") == 0.0


def test_model_status_is_typed_from_the_management_api():
    status = ModelStatus.from_api(
        {
            "modelName": "small",
            "modelVersion": "1.0",
            "batchSize": 4,
            "maxBatchDelay": 10,
            "minWorkers": 1,
            "maxWorkers": 2,
            "jobQueueStatus": {"remainingCapacity": 98, "pendingRequests": 2},
            "workers": [
                {"id": "9000", "pid": 11, "status": "READY", "gpu": False, "memoryUsage": 2**20},
                {"id": "9001", "pid": 12, "status": "UNLOADING", "gpu": False},
            ],
        }
    )
    assert status.ready_workers == 1
    assert [w.memory_bytes for w in status.workers] == [2**20, 0]
    assert status.summary() == (
        "small v1.0: workers 1..2, batch 4 / 10 ms, queue 2 pending, 98 free"
    )
