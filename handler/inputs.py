"""Pull the image bytes and per-request options out of one TorchServe request.

TorchServe hands the handler one dict per request:
- raw body (`curl -T img.jpg` or `--data-binary` with an image Content-Type): {"body": bytes}
- multipart form (`curl -F data=@img.jpg -F top_k=5`): {"data": bytes, "top_k": b"5"}
- JSON (`{"image": "<base64>", "top_k": 5}`): {"body": {...}}, already parsed by the worker
- text/* bodies arrive decoded to str: treated as base64
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handler.errors import EmptyInput, InvalidInput, PayloadTooLarge

# Field names that may carry the image, in order of preference.
IMAGE_FIELDS = ("data", "file", "image", "body", "img", "b64", "image_base64", "instances")
OPTION_FIELDS = ("top_k",)


@dataclass(frozen=True)
class RequestOptions:
    top_k: int | None = None


def _as_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="strict")
    return str(value)


def _parse_top_k(value: Any) -> int:
    try:
        top_k = int(_as_text(value).strip())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"top_k must be a positive integer, got {value!r:.40}") from exc
    if top_k < 1:
        raise InvalidInput(f"top_k must be a positive integer, got {top_k}")
    return top_k


def decode_base64(text: str, max_bytes: int) -> bytes:
    """Base64 (standard or URL-safe, optionally a data: URI) -> bytes, bounded before decoding."""
    text = text.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise InvalidInput("data URI must be base64-encoded (data:image/...;base64,...)")
    if not text:
        raise EmptyInput("the base64 image string is empty")
    # 4 base64 characters carry 3 bytes: refuse oversize input before allocating its decode.
    if len(text) * 3 // 4 > max_bytes + 3:
        raise PayloadTooLarge(f"image is larger than the {max_bytes} byte limit")
    compact = "".join(text.split())
    if "-" in compact or "_" in compact:
        compact = compact.replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"image field is not valid base64: {exc}") from exc


def _from_json(document: Any, max_bytes: int) -> tuple[bytes, RequestOptions]:
    if isinstance(document, list) and len(document) == 1:
        document = document[0]
    if isinstance(document, str):
        return decode_base64(document, max_bytes), RequestOptions()
    if not isinstance(document, Mapping):
        raise InvalidInput('JSON body must be an object like {"image": "<base64>"}')
    options = RequestOptions(top_k=_parse_top_k(document["top_k"]) if "top_k" in document else None)
    for name in IMAGE_FIELDS:
        value = document.get(name)
        if isinstance(value, str):
            return decode_base64(value, max_bytes), options
        if isinstance(value, (Mapping, list)):
            # {"instances": [{"b64": ...}]} and {"data": {"b64": ...}} styles
            return _from_json(value, max_bytes)[0], options
    raise InvalidInput(f"JSON body has no base64 image; put it in one of {list(IMAGE_FIELDS[:4])}")


def _looks_like_json(raw: bytes) -> bool:
    head = raw[:64].lstrip()
    return head[:1] in (b"{", b"[")


def extract_image(request: Mapping[str, Any], max_bytes: int) -> tuple[bytes, RequestOptions]:
    """One request dict -> (image bytes, options). Raises a RequestError subclass on bad input."""
    image, options = _extract(request, max_bytes)
    if not image:
        raise EmptyInput("the image is empty")
    if len(image) > max_bytes:
        raise PayloadTooLarge(f"image is {len(image)} bytes, over the {max_bytes} byte limit")
    return image, options


def _extract(request: Mapping[str, Any], max_bytes: int) -> tuple[bytes, RequestOptions]:
    if not request:
        raise EmptyInput("the request carries no data")
    top_k = _parse_top_k(request["top_k"]) if "top_k" in request else None
    candidates = [name for name in IMAGE_FIELDS if name in request]
    candidates += [n for n in request if n not in IMAGE_FIELDS and n not in OPTION_FIELDS]
    if not candidates:
        raise EmptyInput("the request carries no image field")
    value = request[candidates[0]]

    if isinstance(value, (Mapping, list)):
        image, options = _from_json(value, max_bytes)
        return image, RequestOptions(top_k=options.top_k or top_k)
    if isinstance(value, str):
        return decode_base64(value, max_bytes), RequestOptions(top_k=top_k)
    if not isinstance(value, (bytes, bytearray)):
        raise InvalidInput(f"unsupported request payload type {type(value).__name__}")

    raw = bytes(value)
    if raw and _looks_like_json(raw):
        # JSON sent without a JSON Content-Type reaches us as bytes.
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            pass
        else:
            image, options = _from_json(document, max_bytes)
            return image, RequestOptions(top_k=options.top_k or top_k)
    return raw, RequestOptions(top_k=top_k)
