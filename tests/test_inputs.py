"""extract_image: raw body, multipart field, JSON base64, text base64, and their failures."""

from __future__ import annotations

import base64
import json

import pytest

from handler.errors import EmptyInput, InvalidInput, PayloadTooLarge
from handler.inputs import decode_base64, extract_image

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(200))
LIMIT = 1000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_raw_body():
    image, options = extract_image({"body": bytearray(IMAGE)}, LIMIT)
    assert image == IMAGE and options.top_k is None


def test_multipart_field_with_top_k():
    image, options = extract_image({"data": bytearray(IMAGE), "top_k": bytearray(b"5")}, LIMIT)
    assert image == IMAGE and options.top_k == 5


@pytest.mark.parametrize("field", ["file", "image", "anything_else"])
def test_multipart_other_field_names(field):
    assert extract_image({field: bytearray(IMAGE)}, LIMIT)[0] == IMAGE


def test_json_body_parsed_by_torchserve():
    image, options = extract_image({"body": {"image": b64(IMAGE), "top_k": 2}}, LIMIT)
    assert image == IMAGE and options.top_k == 2


@pytest.mark.parametrize(
    "document",
    [
        {"data": "B64"},
        {"b64": "B64"},
        {"instances": [{"b64": "B64"}]},
        ["B64"],
        "B64",
    ],
)
def test_json_shapes(document):
    raw = json.loads(json.dumps(document).replace("B64", b64(IMAGE)))
    assert extract_image({"body": raw}, LIMIT)[0] == IMAGE


def test_json_sent_as_bytes_without_content_type():
    raw = json.dumps({"image": b64(IMAGE), "top_k": 1}).encode()
    image, options = extract_image({"body": bytearray(raw)}, LIMIT)
    assert image == IMAGE and options.top_k == 1


def test_text_body_is_base64():
    assert extract_image({"body": b64(IMAGE)}, LIMIT)[0] == IMAGE


def test_data_uri_and_urlsafe_and_missing_padding():
    assert decode_base64("data:image/png;base64," + b64(IMAGE), LIMIT) == IMAGE
    urlsafe = base64.urlsafe_b64encode(IMAGE).decode().rstrip("=")
    assert decode_base64(urlsafe, LIMIT) == IMAGE
    wrapped = "\n".join(b64(IMAGE)[i : i + 60] for i in range(0, len(b64(IMAGE)), 60))
    assert decode_base64(wrapped, LIMIT) == IMAGE


@pytest.mark.parametrize(
    ("request_dict", "error"),
    [
        ({}, EmptyInput),
        ({"body": bytearray()}, EmptyInput),
        ({"top_k": b"3"}, EmptyInput),
        ({"body": {"image": ""}}, EmptyInput),
        ({"body": {"image": "not base64 at all!"}}, InvalidInput),
        ({"body": {"picture": "abcd"}}, InvalidInput),
        ({"body": {"image": b64(IMAGE), "top_k": 0}}, InvalidInput),
        ({"body": bytearray(IMAGE), "top_k": b"three"}, InvalidInput),
        ({"body": 12345}, InvalidInput),
        ({"body": "data:image/png,rawtext"}, InvalidInput),
    ],
)
def test_bad_requests(request_dict, error):
    with pytest.raises(error) as info:
        extract_image(request_dict, LIMIT)
    assert info.value.status == 400


def test_byte_limit_raw_and_base64():
    big = b"x" * (LIMIT + 1)
    with pytest.raises(PayloadTooLarge) as info:
        extract_image({"body": bytearray(big)}, LIMIT)
    assert info.value.status == 413
    with pytest.raises(PayloadTooLarge):
        extract_image({"body": {"image": b64(big * 10)}}, LIMIT)  # refused before decoding
    with pytest.raises(PayloadTooLarge):
        extract_image({"body": {"image": b64(big)}}, LIMIT)  # caught after decoding
    assert extract_image({"body": bytearray(b"x" * LIMIT)}, LIMIT)[0] == b"x" * LIMIT
