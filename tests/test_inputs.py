"""extract_image: raw body, multipart field, JSON base64, text base64, and their failures."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handler.errors import EmptyInput, InvalidInput, PayloadTooLarge, RequestError
from handler.inputs import MAX_TOP_K, decode_base64, extract_image

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
    big = b"\x01" * (LIMIT + 1)
    with pytest.raises(PayloadTooLarge) as info:
        extract_image({"body": bytearray(big)}, LIMIT)
    assert info.value.status == 413
    with pytest.raises(PayloadTooLarge):
        extract_image({"body": {"image": b64(big * 10)}}, LIMIT)  # refused before decoding
    with pytest.raises(PayloadTooLarge):
        extract_image({"body": {"image": b64(big)}}, LIMIT)  # caught after decoding
    assert extract_image({"body": bytearray(b"\x01" * LIMIT)}, LIMIT)[0] == b"\x01" * LIMIT


def test_the_content_type_decides_what_a_body_is():
    image = b"\x89PNG\r\n\x1a\n" + b"\x00" * 20
    text = base64.b64encode(image)
    assert extract_image({"body": bytearray(text)}, LIMIT, "text/plain")[0] == image
    assert extract_image({"body": bytearray(text)}, LIMIT, "image/png")[0] == text  # as sent
    assert extract_image({"body": bytearray(text)}, LIMIT, "application/octet-stream")[0] == text
    assert extract_image({"body": bytearray(text)}, LIMIT)[0] == image  # undeclared: sniffed
    document = b'{"image": "' + text + b'", "top_k": 2}'
    decoded, options = extract_image({"body": bytearray(document)}, LIMIT, "application/json")
    assert decoded == image and options.top_k == 2
    with pytest.raises(InvalidInput):
        extract_image({"body": bytearray(b"{not json")}, LIMIT, "application/json")


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "JSONTooComplex"),
        (b'{"image":' * 20 + b'"AAAA"' + b"}" * 20, "JSONTooComplex"),
        (b"{" + b",".join(b'"k%d":1' % i for i in range(1000)) + b"}", "JSONTooComplex"),
        (b'{"image": "AAAA", "top_k": 1e400}', "InvalidInput"),
        (b'{"image": "AAAA", "top_k": ' + b"9" * 5000 + b"}", "InvalidInput"),
        (b'{"image": 5}', "InvalidInput"),
        (b"[1, 2]", "InvalidInput"),
    ],
)
def test_json_envelopes_are_bounded_before_parsing(body, kind):
    with pytest.raises(RequestError) as info:
        extract_image({"body": bytearray(body)}, 12 * 2**20, "application/json")
    assert info.value.kind == kind and info.value.status == 400


# ---- fuzzing the envelope ------------------------------------------------------------------
JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["AAAA", "iVBORw0KGgo=", "data:image/png;base64,AAAA", "%%%", ""]),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["image", "data", "b64", "instances", "top_k", "body", "x", "é"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


def _bounded(call) -> None:
    try:
        image, options = call()
    except RequestError as error:
        assert 400 <= error.status < 500 and error.message
    else:
        assert isinstance(image, bytes) and image
        assert options.top_k is None or 1 <= options.top_k <= MAX_TOP_K


@settings(max_examples=300, deadline=None)
@given(document=JSON_VALUES, content_type=st.sampled_from(["application/json", "", "text/plain"]))
def test_fuzzed_json_envelopes_only_raise_request_errors(document, content_type):
    raw = json.dumps(document).encode()
    _bounded(lambda: extract_image({"body": bytearray(raw)}, LIMIT, content_type))
    _bounded(lambda: extract_image({"body": document}, LIMIT))  # as a decoding worker hands it


@settings(max_examples=200, deadline=None)
@given(
    raw=st.binary(max_size=300)
    | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.builds(lambda n, c: c * n, st.integers(0, 5000), st.sampled_from([b"[", b"{", b'{"a":'])),
    content_type=st.sampled_from(
        ["", "application/json", "text/plain", "image/jpeg", "application/octet-stream", "x/y"]
    ),
    top_k=st.none() | st.binary(max_size=12) | st.text(max_size=12),
    fields=st.integers(0, 40),
)
def test_fuzzed_raw_and_multipart_bodies_only_raise_request_errors(
    raw, content_type, top_k, fields
):
    request = {"data": bytearray(raw)} | {f"part{i}": b"x" for i in range(fields)}
    if top_k is not None:
        request["top_k"] = top_k
    _bounded(lambda: extract_image(request, LIMIT, content_type))


# ---- the Open Inference Protocol (KServe v2) ------------------------------------------------
def oip(data: object = None, **changes: object) -> bytes:
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(IMAGE)]}
    if data is not None:
        tensor["data"] = data
    document: dict = {"inputs": [tensor]}
    for key, value in changes.items():
        if key in tensor:
            tensor[key] = value
        else:
            document[key] = value
    return json.dumps(document).encode()


def test_oip_request_carries_the_image_its_id_and_top_k():
    body = oip(id="req-7", parameters={"top_k": 2})
    image, options = extract_image({"body": bytearray(body)}, LIMIT, "application/json")
    assert image == IMAGE
    assert (options.protocol, options.request_id, options.top_k) == ("oip", "req-7", 2)
    # [[...]] for shape [1, 1], and a body TorchServe parsed itself
    image, options = extract_image({"body": json.loads(oip([[b64(IMAGE)]], shape=[1, 1]))}, LIMIT)
    assert image == IMAGE and options.protocol == "oip" and options.request_id is None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (oip(datatype="FP32"), "datatype"),
        (oip([b64(IMAGE), b64(IMAGE)], shape=[2]), "one base64 image"),
        (oip(shape=[2]), "shape"),
        (oip([]), "one base64 image"),
        (oip([3]), "one base64 image"),
        (oip(["***not base64***"]), "base64"),
        (oip(parameters={"top_k": 0}), "top_k"),
        (json.dumps({"inputs": []}).encode(), "exactly one input"),
        (json.dumps({"inputs": {"data": []}}).encode(), "exactly one input"),
    ],
)
def test_bad_oip_requests_get_a_4xx_in_the_protocols_error_format(body, words):
    with pytest.raises(RequestError) as caught:
        extract_image({"body": bytearray(body)}, LIMIT, "application/json")
    error = caught.value
    assert 400 <= error.status < 500 and words in error.message
    assert error.body()["error"] == error.message  # OIP clients read "error"
    assert error.body()["type"] == error.kind  # ... and ours still says which 4xx


def test_errors_of_other_formats_keep_their_shape():
    with pytest.raises(RequestError) as caught:
        extract_image({"body": bytearray(b'{"image": 5}')}, LIMIT, "application/json")
    assert set(caught.value.body()) == {"code", "type", "message"}
