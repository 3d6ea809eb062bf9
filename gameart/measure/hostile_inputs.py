"""A corpus of hostile uploads: small bodies that cost a naive image server seconds or gigabytes.

Each kind is one way a request can take more than its share: JSON envelopes nested deep enough
to blow the parser's recursion, images whose resize step explodes (1 x 4000), decoder levers in
Pillow's pure-Python parsers (JPEG markers, PNG chunks, GIF sub-blocks, RLE BMP), canvases far
bigger than their frames, and progressive JPEGs with thousands of scans. The tests send them
next to good requests (tests/test_isolation.py) and scripts/hostile_bench.py measures what each
costs the handler.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

MiB = 1024 * 1024
BODY_LIMIT = 12 * MiB  # the handler's default max_image_bytes: hostile bodies stay under it


@dataclass(frozen=True)
class Hostile:
    name: str
    body: bytes
    content_type: str  # what a client would send it as
    status: int  # what the handler must answer
    kind: str  # the error type in the answer
    what: str


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, rows: bytes, extra_chunks: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + extra_chunks
        + _png_chunk(b"IDAT", zlib.compress(rows, 9))
        + _png_chunk(b"IEND", b"")
    )


def thin_png(width: int, height: int) -> bytes:
    return _png(width, height, (b"\x00" + b"\x80" * width) * height)


def png_private_chunks(count: int) -> bytes:
    return _png(8, 8, (b"\x00" + b"\x80" * 8) * 8, _png_chunk(b"prVt", b"") * count)


def jpeg_comment_markers(count: int) -> bytes:
    """Thousands of COM markers before the frame: Pillow parses each one in Python."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 30)).save(buffer, "JPEG")
    data = buffer.getvalue()
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def progressive_scan_bomb(size: int = 4000, scans: int = 5000) -> bytes:
    """A large progressive JPEG with its last refinement scan repeated thousands of times:
    libjpeg walks the whole image once per scan."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(
        buffer, "JPEG", progressive=True, quality=50
    )
    data = buffer.getvalue()
    last_scan = data.rindex(b"\xff\xda")
    scan = data[last_scan:-2]  # up to, not including, EOI
    return data[:-2] + scan * scans + b"\xff\xd9"


def _gif(canvas: tuple[int, int], frame: tuple[int, int], before_frame: bytes = b"") -> bytes:
    header = b"GIF89a" + struct.pack("<HH", *canvas) + b"\x80\x00\x00"
    palette = b"\x00\x00\x00\xff\xff\xff"  # 2-colour global table
    descriptor = b"\x2c" + struct.pack("<HHHH", 0, 0, *frame) + b"\x00"
    pixels = b"\x02\x02\x44\x01\x00"  # LZW min code size 2, one tiny sub-block, terminator
    return header + palette + before_frame + descriptor + pixels + b"\x3b"


def gif_comment_subblocks(count: int) -> bytes:
    return _gif((8, 8), (8, 8), b"\x21\xfe" + b"\x01x" * count + b"\x00")


def gif_huge_canvas() -> bytes:
    return _gif((6300, 6300), (1, 1))


def webp_huge_canvas() -> bytes:
    """An animated WebP whose VP8X canvas claims 6000 x 6000 around 1 x 1 frames."""
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (1, 1), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(buffer.getvalue())
    vp8x = data.index(b"VP8X")
    width = height = 6000
    data[vp8x + 12 : vp8x + 15] = (width - 1).to_bytes(3, "little")
    data[vp8x + 15 : vp8x + 18] = (height - 1).to_bytes(3, "little")
    return bytes(data)


def bmp_rle8(width: int = 6000, height: int = 6000, ops: int = 6_000) -> bytes:
    """An RLE8 BMP: Pillow decodes RLE in pure Python; 25 KB of "delta" jumps make 36 MP."""
    body = b"\x00\x02\xff\xff" * ops + b"\x00\x01"  # "delta" jumps, then end of bitmap
    palette = b"".join(struct.pack("<BBBB", i, i, i, 0) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset)
    return header + info + palette + body


# name -> (builder, content type, status, error type, what it is)
_KINDS: dict[str, tuple] = {
    "json_nested_array": (
        lambda: b"[" * 200_000 + b"]" * 200_000,
        "application/json", 400, "JSONTooComplex", "[[[...]]] nested 200 000 deep",
    ),
    "json_nested_object": (
        lambda: b'{"image":' * 50_000 + b'"x"' + b"}" * 50_000,
        "application/json", 400, "JSONTooComplex", '{"image":{"image":...}} 50 000 deep',
    ),
    "json_many_keys": (
        lambda: b"{" + b",".join(b'"k%d":0' % i for i in range(200_000)) + b',"image":"AAAA"}',
        "application/json", 400, "JSONTooComplex", "a JSON object with 200 000 keys",
    ),
    "thin_png_1x4000": (
        lambda: thin_png(1, 4000),
        "image/png", 400, "ExtremeAspectRatio", "a 1 x 4000 PNG (88 bytes)",
    ),
    "thin_png_40000x1": (
        lambda: thin_png(40_000, 1),
        "image/png", 400, "ExtremeAspectRatio", "a 40 000 x 1 PNG (118 bytes)",
    ),
    "jpeg_scan_bomb": (
        progressive_scan_bomb,
        "image/jpeg", 400, "ImageTooComplex", "a 4000 x 4000 progressive JPEG with 5 000 scans",
    ),
    "jpeg_comment_markers": (
        lambda: jpeg_comment_markers(2_000_000),
        "image/jpeg", 400, "ImageTooComplex", "a JPEG with 2 000 000 comment markers",
    ),
    "png_private_chunks": (
        lambda: png_private_chunks(800_000),
        "image/png", 400, "ImageTooComplex", "a PNG with 800 000 private chunks",
    ),
    "gif_comment_subblocks": (
        lambda: gif_comment_subblocks(4_000_000),
        "image/gif", 400, "ImageTooComplex", "a GIF comment of 4 000 000 one-byte sub-blocks",
    ),
    "gif_huge_canvas": (
        gif_huge_canvas,
        "image/gif", 400, "ImageTooComplex", "a 35-byte GIF: 40 MP canvas, 1 x 1 frame",
    ),
    "webp_huge_canvas": (
        webp_huge_canvas,
        "image/webp", 400, "ImageTooComplex", "an animated WebP: 36 MP canvas, 1 x 1 frames",
    ),
    "bmp_rle8": (
        bmp_rle8,
        "image/bmp", 415, "UnsupportedImageFormat", "a 25 KB RLE8 BMP that decodes to 36 MP",
    ),
}  # fmt: skip


@functools.cache
def corpus() -> tuple[Hostile, ...]:
    """Every hostile kind, each answered with its own 4xx by the handler."""
    return tuple(
        Hostile(name, build(), content_type, status, kind, what)
        for name, (build, content_type, status, kind, what) in _KINDS.items()
    )
