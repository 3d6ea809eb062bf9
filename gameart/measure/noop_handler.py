"""A TorchServe handler that does no work: same payloads in, one constant answer per request.

Archived with the same batching and workers as ours (scripts/gpu_e2e.py), it measures what the
TorchServe frontend, the worker protocol and the client cost on their own: the host's ceiling,
against which our handler's throughput is reported as a fraction.
"""

import json

ANSWER = json.dumps({"label": "noop", "confidence": 1.0, "top_k": []})


def handle(data, context):
    if data is None:  # the load-time call
        return None
    return [ANSWER] * len(data)
