"""Errors that belong to one request and become its HTTP status and JSON body.

The body mirrors TorchServe's own error shape ({"code", "type", "message"}) so a client parses
frontend errors (auth, queue full) and handler errors the same way.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class RequestError(Exception):
    """Base: an error that fails one request of a batch, never the batch."""

    status: int = 400
    kind: str = "BadRequest"

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
        return {"code": self.status, "type": self.kind, "message": self.message}


class EmptyInput(RequestError):
    status, kind = 400, "EmptyInput"


class InvalidInput(RequestError):
    """The request carries no usable image field, or its JSON/base64 is malformed."""

    status, kind = 400, "InvalidInput"


class NotAnImage(RequestError):
    status, kind = 400, "NotAnImage"


class CorruptImage(RequestError):
    """Recognised format, but the bytes are truncated or broken."""

    status, kind = 400, "CorruptImage"


class UnsupportedFormat(RequestError):
    status, kind = 415, "UnsupportedImageFormat"


class PayloadTooLarge(RequestError):
    status, kind = 413, "PayloadTooLarge"


class TooManyPixels(RequestError):
    """Too many pixels for the limit: also what a decompression bomb looks like."""

    status, kind = 413, "TooManyPixels"


class ServerError(RequestError):
    """The server, not the client, failed this request (a model error, out of memory)."""

    status, kind = 503, "InferenceFailed"
