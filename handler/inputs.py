"""Pull the image bytes and per-request options out of one TorchServe request.

TorchServe hands the handler one dict per request:
- raw body (`curl -T img.jpg` or `--data-binary` with an image Content-Type): {"body": bytes}
- multipart form (`curl -F data=@img.jpg -F top_k=5`): {"data": bytes, "top_k": b"5"}
- JSON (`{"image": "<base64>", "top_k": 5}`) and text/* (base64, data: URIs): {"body": bytes}
- the Open Inference Protocol (KServe v2, `POST /v2/models/{model}/infer`): JSON with
  `{"inputs": [{"name", "shape": [1], "datatype": "BYTES", "data": ["<base64>"]}]}`
Options: top_k, and for /explanations target (a label or its index), as form fields or JSON keys
(TorchServe does not hand query parameters to the handler).

The worker would parse JSON bodies itself, before the handler could bound them (a body nested
200 000 deep costs its parser a RecursionError; 200 000 keys cost it a second); the handler
turns that off (TS_DECODE_INPUT_REQUEST=false, see service.py) and parses here, after cheap
checks of the raw bytes: size, number of containers and keys. Every limit has its own 4xx.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handler.errors import (
    OIP,
    EmptyInput,
    InvalidInput,
    JSONTooComplex,
    PayloadTooLarge,
    RequestError,
    TooManyParts,
)

# Field names that may carry the image, in order of preference.
IMAGE_FIELDS = ("data", "file", "image", "body", "img", "b64", "image_base64", "instances")
OPTION_FIELDS = ("top_k", "target")  # target: the class /explanations explains
# Envelope limits: far above what an image request needs, far below what costs a parser.
MAX_TOP_K = 1000
MAX_FIELDS = 16  # multipart parts, and keys of one JSON object
MAX_JSON_CONTAINERS = 16  # "{" and "[" in a JSON body (the deepest style has 3)
MAX_JSON_DEPTH = 2  # {"instances": [{"b64": ...}]} needs 1
JSON_TYPE, OCTET_STREAM = "application/json", "application/octet-stream"
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-_ \t\r\n"


OIP_DATATYPE = "BYTES"


@dataclass(frozen=True)
class RequestOptions:
    top_k: int | None = None
    protocol: str = ""  # "" for this project's formats, OIP for KServe v2 requests
    request_id: str | None = None  # an OIP request's "id", echoed in its answer
    target: str | None = None  # /explanations: the class to explain (a label or an index)


def _as_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="strict")
    return str(value)


def _parse_top_k(value: Any) -> int:
    try:
        top_k = int(_as_text(value).strip())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"top_k must be a positive integer, got {value!r:.40}") from exc
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidInput(f"top_k must be between 1 and {MAX_TOP_K}, got {top_k}")
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


def _from_json(document: Any, max_bytes: int, depth: int = 0) -> tuple[bytes, RequestOptions]:
    if depth > MAX_JSON_DEPTH:
        raise JSONTooComplex(f"JSON body is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(document, list):
        if len(document) != 1:
            raise InvalidInput(f"one image per request; this JSON list has {len(document)}")
        document = document[0]
    if isinstance(document, str):
        return decode_base64(document, max_bytes), RequestOptions()
    if not isinstance(document, Mapping):
        raise InvalidInput('JSON body must be an object like {"image": "<base64>"}')
    if depth == 0 and "inputs" in document:
        return _from_oip(document, max_bytes)
    if len(document) > MAX_FIELDS:
        raise JSONTooComplex(f"JSON object has {len(document)} keys; at most {MAX_FIELDS}")
    options = RequestOptions(
        top_k=_parse_top_k(document["top_k"]) if "top_k" in document else None,
        target=str(document["target"])[:200] if "target" in document else None,
    )
    for name in IMAGE_FIELDS:
        value = document.get(name)
        if isinstance(value, str):
            return decode_base64(value, max_bytes), options
        if isinstance(value, (Mapping, list)):
            # {"instances": [{"b64": ...}]} and {"data": {"b64": ...}} styles
            return _from_json(value, max_bytes, depth + 1)[0], options
    raise InvalidInput(f"JSON body has no base64 image; put it in one of {list(IMAGE_FIELDS[:4])}")


def _from_oip(document: Mapping[str, Any], max_bytes: int) -> tuple[bytes, RequestOptions]:
    """An Open Inference Protocol request: one BYTES input holding one base64 image.

    One image per request, as in every other format: TorchServe batches requests, and one
    request's bad image must cost only that request. Errors answer in the protocol's format."""
    try:
        return _parse_oip(document, max_bytes)
    except RequestError as error:
        error.protocol = OIP
        raise


def _parse_oip(document: Mapping[str, Any], max_bytes: int) -> tuple[bytes, RequestOptions]:
    inputs = document["inputs"]
    if not isinstance(inputs, list) or len(inputs) != 1:
        count = len(inputs) if isinstance(inputs, list) else "no list of"
        raise InvalidInput(f"OIP request needs exactly one input tensor, got {count}")
    tensor = inputs[0]
    if not isinstance(tensor, Mapping):
        raise InvalidInput("OIP input must be an object with name, shape, datatype and data")
    if tensor.get("datatype") != OIP_DATATYPE:
        datatype = tensor.get("datatype")
        raise InvalidInput(f'OIP input datatype must be "BYTES", got {datatype!r:.20}')
    data = tensor.get("data")
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], list):
        data = data[0]  # [["<base64>"]]: the row-major form some clients send for shape [1, 1]
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], str):
        raise InvalidInput('OIP input data must hold one base64 image: "data": ["<base64>"]')
    shape = tensor.get("shape", [1])
    if not isinstance(shape, list) or shape not in ([1], [1, 1]):
        raise InvalidInput(f"OIP input shape must be [1] (one image a request), got {shape!r:.20}")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise InvalidInput("OIP parameters must be an object")
    top_k = _parse_top_k(parameters["top_k"]) if "top_k" in parameters else None
    request_id = document.get("id")
    options = RequestOptions(
        top_k=top_k, protocol=OIP, request_id=None if request_id is None else str(request_id)
    )
    return decode_base64(data[0], max_bytes), options


def _parse_json(raw: bytes, max_bytes: int) -> Any:
    """Bounded before the parser runs: size, then containers and keys counted at C speed."""
    if len(raw) > max_bytes * 4 // 3 + 4096:
        raise PayloadTooLarge(
            f"JSON body is {len(raw)} bytes, over what a {max_bytes} byte image needs"
        )
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > MAX_JSON_CONTAINERS:
        raise JSONTooComplex(
            f"JSON body has {containers} objects/arrays; at most {MAX_JSON_CONTAINERS}"
        )
    if raw.count(b":") > MAX_FIELDS * MAX_JSON_CONTAINERS:
        raise JSONTooComplex("JSON body has more keys than an image request needs")
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise JSONTooComplex("JSON body is nested too deeply") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"body looks like JSON but does not parse: {exc}") from exc


def _looks_like_json(raw: bytes) -> bool:
    head = raw[:64].lstrip()
    return head[:1] in (b"{", b"[")


def _looks_like_base64_text(raw: bytes) -> bool:
    """Only base64 characters: binary image formats never are."""
    return not raw.translate(None, _BASE64_ALPHABET)


def extract_image(
    request: Mapping[str, Any], max_bytes: int, content_type: str = ""
) -> tuple[bytes, RequestOptions]:
    """One request dict -> (image bytes, options). Raises a RequestError subclass on bad input.

    content_type is the HTTP request's: image/* and application/octet-stream bodies are the
    image's bytes, text/* is base64 (or a data: URI), application/json is JSON; without one
    (multipart parts) the bytes say which they are."""
    image, options = _extract(request, max_bytes, content_type.split(";")[0].strip().lower())
    if "target" in request:  # a query parameter or a form field
        raw_target = request["target"]
        if isinstance(raw_target, (bytes, bytearray)):
            raw_target = bytes(raw_target[:200]).decode("utf-8", errors="replace")
        options = dataclasses.replace(options, target=str(raw_target)[:200])
    if not image:
        raise EmptyInput("the image is empty")
    if len(image) > max_bytes:
        raise PayloadTooLarge(f"image is {len(image)} bytes, over the {max_bytes} byte limit")
    return image, options


def _extract(
    request: Mapping[str, Any], max_bytes: int, content_type: str
) -> tuple[bytes, RequestOptions]:
    if not request:
        raise EmptyInput("the request carries no data")
    if len(request) > MAX_FIELDS:
        raise TooManyParts(f"the request has {len(request)} parts; send the image and top_k")
    top_k = _parse_top_k(request["top_k"]) if "top_k" in request else None
    candidates = [name for name in IMAGE_FIELDS if name in request]
    candidates += [n for n in request if n not in IMAGE_FIELDS and n not in OPTION_FIELDS]
    if not candidates:
        raise EmptyInput("the request carries no image field")
    value = request[candidates[0]]

    if isinstance(value, (Mapping, list)):  # JSON the worker parsed (if its decoding is on)
        image, options = _from_json(value, max_bytes)
        return image, dataclasses.replace(options, top_k=options.top_k or top_k)
    if isinstance(value, str):
        return decode_base64(value, max_bytes), RequestOptions(top_k=top_k)
    if not isinstance(value, (bytes, bytearray)):
        raise InvalidInput(f"unsupported request payload type {type(value).__name__}")

    raw = bytes(value)
    declared_binary = content_type.startswith("image/") or content_type == OCTET_STREAM
    if not raw or declared_binary:
        return raw, RequestOptions(top_k=top_k)
    if content_type == JSON_TYPE or _looks_like_json(raw):
        image, options = _from_json(_parse_json(raw, max_bytes), max_bytes)
        return image, dataclasses.replace(options, top_k=options.top_k or top_k)
    if content_type.startswith("text/") or raw.startswith(b"data:"):
        text = raw.decode("ascii", errors="replace")
        return decode_base64(text, max_bytes), RequestOptions(top_k=top_k)
    if _looks_like_base64_text(raw):
        try:  # an undeclared part of base64 text; if it does not decode, it is just bytes
            return decode_base64(raw.decode("ascii"), max_bytes), RequestOptions(top_k=top_k)
        except InvalidInput:
            pass
    return raw, RequestOptions(top_k=top_k)
