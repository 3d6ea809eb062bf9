"""Shared model metadata, preprocessing spec and decode policy (export writes it, the handler
reads it); the served image pipeline is modelspec.imaging, its reference modelspec.reference."""

from modelspec.meta import (
    BACKENDS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    META_FILENAME,
    MODEL_FILES,
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    PRECISIONS,
    PROJECT_POLICY,
    RESIZE_MODES,
    TORCHVISION_POLICY,
    DecodePolicy,
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
    "PROJECT_POLICY",
    "RESIZE_MODES",
    "TORCHVISION_POLICY",
    "DecodePolicy",
    "MetaError",
    "ModelMeta",
    "PreprocessSpec",
]
