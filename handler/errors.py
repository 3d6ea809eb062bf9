"""Errors that belong to one request and become its HTTP status and JSON body.

The body mirrors TorchServe's own error shape ({"code", "type", "message"}) so a client parses
frontend errors (auth, queue full) and handler errors the same way.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

OIP = "oip"  # the Open Inference Protocol (KServe v2) envelope, see handler/inputs.py


class RequestError(Exception):
    """Base: an error that fails one request of a batch, never the batch."""

    status: int = 400
    kind: str = "BadRequest"
    # The envelope the request came in ("" or OIP), once known: an Open Inference
    # Protocol client reads the message from an "error" field.
    protocol: str = ""

    def __init__(self, message: str, *, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if kind is not None:
            self.kind = kind

    @property
    def reason_phrase(self) -> str:
        # The phrase goes on the HTTP status line: keep it the standard one, never client text.
        return HTTPStatus(self.status).phrase

    def body(self) -> dict[str, Any]:
        ours = {"code": self.status, "type": self.kind, "message": self.message}
        return {"error": self.message, **ours} if self.protocol == OIP else ours


class EmptyInput(RequestError):
    status, kind = 400, "EmptyInput"


class InvalidInput(RequestError):
    """The request carries no usable image field, or its JSON/base64 is malformed."""

    status, kind = 400, "InvalidInput"


class JSONTooComplex(RequestError):
    """A JSON envelope nested deeper, or with more keys or containers, than an image request
    needs: refused before (or instead of) parsing it."""

    status, kind = 400, "JSONTooComplex"


class TooManyParts(RequestError):
    """More multipart fields than an image and its options."""

    status, kind = 400, "TooManyParts"


class NotAnImage(RequestError):
    status, kind = 400, "NotAnImage"


class CorruptImage(RequestError):
    """Recognised format, but the bytes are truncated or broken."""

    status, kind = 400, "CorruptImage"


class ImageTooComplex(RequestError):
    """A structure no real image needs and decoders pay for: thousands of JPEG scans or
    markers, PNG chunks, GIF sub-blocks, a canvas far larger than its frame."""

    status, kind = 400, "ImageTooComplex"


class ExtremeAspectRatio(RequestError):
    """Sides so unequal that the resize would produce a huge image (1 x 4000)."""

    status, kind = 400, "ExtremeAspectRatio"


class UnsupportedFormat(RequestError):
    status, kind = 415, "UnsupportedImageFormat"


class PayloadTooLarge(RequestError):
    status, kind = 413, "PayloadTooLarge"


class TooManyPixels(RequestError):
    """Too many pixels for the limit: also what a decompression bomb looks like."""

    status, kind = 413, "TooManyPixels"


class ServerError(RequestError):
    """The server, not the client, failed this request: the model call failed for it (after
    the batch was bisected down to this item), or memory ran out (507 OutOfResources), or a
    bug in the handler (500 InternalError)."""

    status, kind = 500, "InferenceFailed"
