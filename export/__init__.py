"""Step 2 of the pipeline: checkpoint -> TorchScript + ONNX + model_meta.json, parity-checked."""
