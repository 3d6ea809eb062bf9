"""Our TorchServe image-classification handler: pure functions plus thin TorchServe glue."""
