"""Shared model metadata and preprocessing spec (export writes it, the handler reads it)."""

from modelspec.meta import (
    BACKENDS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    META_FILENAME,
    MODEL_FILES,
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    PRECISIONS,
    RESIZE_MODES,
    MetaError,
    ModelMeta,
    PreprocessSpec,
)

__all__ = [
    "BACKENDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "META_FILENAME",
    "MODEL_FILES",
    "ONNX_INPUT_NAME",
    "ONNX_OUTPUT_NAME",
    "PRECISIONS",
    "RESIZE_MODES",
    "MetaError",
    "ModelMeta",
    "PreprocessSpec",
]
