"""Structural checks of an upload before any decoder runs: bounded work, no pixel decoded.

Pillow parses several formats' structure in Python: each JPEG marker before the frame, each PNG
chunk, each GIF sub-block costs microseconds, and a 12 MiB upload can hold millions of them
(seconds, hundreds of MB). libjpeg walks the whole image once per progressive scan. Canvases
can be far larger than the frame drawn on them. Real images need none of that, so these
checks walk the structure with hard caps and refuse what exceeds them (ImageTooComplex, 400),
and refuse RLE-compressed BMP (Pillow decodes it in pure Python) with a 415.
"""

from __future__ import annotations

import struct

from handler.errors import CorruptImage, ImageTooComplex, UnsupportedFormat

MAX_JPEG_MARKERS = 256  # segments before the first scan (APPn, DQT, DHT, COM, SOF ...)
MAX_JPEG_SCANS = 64  # libjpeg's progressive script uses about 10
MAX_PNG_CHUNKS = 20_000  # IDAT split into 8 KiB chunks: 1 500 for 12 MiB
MAX_PNG_ANCILLARY = 256  # chunks other than IDAT
MAX_GIF_SUBBLOCKS = 1024  # extension sub-blocks before the first frame
CANVAS_OVER_FRAME = 4  # a canvas may be this many times its first frame's area ...
SMALL_CANVAS = 1_000_000  # ... unless it is this small anyway


def check_structure(data: bytes, image_format: str) -> None:
    """Raise ImageTooComplex / UnsupportedFormat / CorruptImage; return when it looks sane."""
    check = _CHECKS.get(image_format)
    if check is not None:
        try:
            check(data)
        except (struct.error, IndexError) as exc:
            raise CorruptImage(f"the {image_format} structure is truncated") from exc


def _jpeg(data: bytes) -> None:
    position, segments = 2, 0
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise CorruptImage("the JPEG has bytes between its segments")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA:  # start of the first scan: libjpeg takes over
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:
            position += 2  # standalone markers carry no length
            continue
        segments += 1
        if segments > MAX_JPEG_MARKERS:
            raise ImageTooComplex(f"the JPEG has over {MAX_JPEG_MARKERS} segments before its image")
        (length,) = struct.unpack_from(">H", data, position + 2)
        position += 2 + length
    # Entropy-coded data never holds 0xFFDA (0xFF is stuffed with 0x00), so this counts scans.
    scans = data.count(b"\xff\xda")
    if scans > MAX_JPEG_SCANS:
        raise ImageTooComplex(f"the JPEG has {scans} scans; at most {MAX_JPEG_SCANS}")


def _png(data: bytes) -> None:
    position, chunks, ancillary = 8, 0, 0
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks += 1
        ancillary += kind != b"IDAT"
        if chunks > MAX_PNG_CHUNKS or ancillary > MAX_PNG_ANCILLARY:
            raise ImageTooComplex(
                f"the PNG has over {MAX_PNG_CHUNKS} chunks or {MAX_PNG_ANCILLARY} besides IDAT"
            )
        if kind == b"IEND":
            return
        position += 12 + length


def _gif(data: bytes) -> None:
    canvas_w, canvas_h, flags = struct.unpack_from("<HHB", data, 6)
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    subblocks = 0
    while position < len(data):
        block = data[position]
        if block == 0x21:  # extension: label, then sub-blocks until a zero length
            position += 2
            while position < len(data) and data[position]:
                subblocks += 1
                if subblocks > MAX_GIF_SUBBLOCKS:
                    raise ImageTooComplex(
                        f"the GIF has over {MAX_GIF_SUBBLOCKS} extension blocks before its image"
                    )
                position += 1 + data[position]
            position += 1
        elif block == 0x2C:  # the first frame
            frame_w, frame_h = struct.unpack_from("<HH", data, position + 5)
            _canvas_fits_frame("GIF", canvas_w * canvas_h, frame_w * frame_h)
            return
        else:
            return  # trailer or garbage: the decoder says what is wrong


def _webp(data: bytes) -> None:
    if data[12:16] != b"VP8X":
        return  # a simple WebP: canvas and frame are the same
    canvas_w = int.from_bytes(data[24:27], "little") + 1
    canvas_h = int.from_bytes(data[27:30], "little") + 1
    frame = data.find(b"ANMF", 30)
    if frame != -1:
        frame_w = int.from_bytes(data[frame + 14 : frame + 17], "little") + 1
        frame_h = int.from_bytes(data[frame + 17 : frame + 20], "little") + 1
        _canvas_fits_frame("WebP", canvas_w * canvas_h, frame_w * frame_h)


def _bmp(data: bytes) -> None:
    header_size = struct.unpack_from("<I", data, 14)[0]
    if header_size >= 40 and struct.unpack_from("<I", data, 30)[0] in (1, 2):
        raise UnsupportedFormat("RLE-compressed BMP images are not accepted; send PNG")


def _canvas_fits_frame(name: str, canvas: int, frame: int) -> None:
    if canvas > SMALL_CANVAS and canvas > CANVAS_OVER_FRAME * max(1, frame):
        raise ImageTooComplex(
            f"the {name} canvas ({canvas / 1e6:.1f} MP) is far larger than its first frame "
            f"({frame} pixels)"
        )


_CHECKS = {"JPEG": _jpeg, "PNG": _png, "GIF": _gif, "WEBP": _webp, "BMP": _bmp}
