"""Bytes -> validated RGB PIL image, or a RequestError saying what was wrong.

Order matters for safety: identify the format from its signature, walk its structure with hard
caps (handler/prescan.py), open only that decoder, check the pixel count and aspect ratio from
the header, and only then decode the pixels. The RGB conversion itself is the model's decode
policy (modelspec/imaging.py), shared with the export's parity check.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image

from handler.errors import (
    CorruptImage,
    ExtremeAspectRatio,
    NotAnImage,
    TooManyPixels,
    UnsupportedFormat,
)
from handler.prescan import check_structure
from modelspec.imaging import to_rgb
from modelspec.meta import TORCHVISION_POLICY, DecodePolicy

# Formats users upload game art in. Pillow can parse many more (EPS, PSD, TIFF, ...); each extra
# parser is attack surface, so everything else is refused before its decoder runs.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
_FORMAT_ALIASES = {"MPO": "JPEG", "DIB": "BMP"}  # camera multi-picture JPEG, headerless BMP
_SIGNATURE_BYTES = 16  # Pillow's own accept() checks read this many leading bytes

Image.init()  # register all plugins once, so signature checks see every format
DEFAULT_MAX_ASPECT_RATIO = 32.0  # a 16-frame sprite strip passes; 1 x 4000 does not
_ORIENTATION = 0x0112  # the EXIF tag


def sniff_format(data: bytes) -> str | None:
    """The format the leading bytes announce, asked of Pillow's signature checks (no decoding)."""
    prefix = data[:_SIGNATURE_BYTES]
    for format_id in Image.ID:
        accept = Image.OPEN[format_id][1]
        try:
            if accept is not None and accept(prefix):
                return _FORMAT_ALIASES.get(format_id, format_id)
        except Exception:  # a plugin's check choking on odd bytes is a "no", not a crash
            continue
    return None


@dataclass
class Inspected:
    """An upload whose header passed every check: the opened (not yet decoded) image."""

    image: Image.Image
    format: str

    @property
    def plain_jpeg(self) -> bool:
        """A three-component (YCbCr/RGB) JPEG: nvJPEG and Pillow make the same RGB of it.
        Grey and CMYK JPEGs are converted differently by the two, so they are not."""
        return self.format == "JPEG" and self.image.mode == "RGB"

    def orientation(self) -> int:
        try:
            return int(self.image.getexif().get(_ORIENTATION, 1))
        except Exception:  # a broken EXIF block is treated as no rotation, as to_rgb does
            return 1


def inspect_image(
    data: bytes, *, max_pixels: int, max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO
) -> Inspected:
    """Every check that needs only the header: format, structure, pixel count, aspect ratio.
    Cheap (no pixels decoded), so it runs on the CPU before any decoder, the GPU's included."""
    image_format = sniff_format(data)
    if image_format is None:
        raise NotAnImage(
            "the data is not a recognised image; send JPEG, PNG, WebP, BMP or GIF bytes"
        )
    if image_format not in ALLOWED_FORMATS:
        raise UnsupportedFormat(
            f"{image_format} images are not accepted; send JPEG, PNG, WebP, BMP or GIF"
        )
    check_structure(data, image_format)
    # Pillow's own bomb check (it runs inside some decoders, before ours can) uses this limit:
    # every model in a worker process has the same one, so the global is set, not raced.
    Image.MAX_IMAGE_PIXELS = max_pixels
    image = _open(data, image_format)
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImage(f"the {image_format} header gives an empty size {width}x{height}")
    if width * height > max_pixels:
        raise TooManyPixels(
            f"image is {width}x{height} = {width * height / 1e6:.1f} MP, "
            f"over the {max_pixels / 1e6:.1f} MP limit"
        )
    if max(width, height) > max_aspect_ratio * min(width, height):
        raise ExtremeAspectRatio(
            f"image is {width}x{height}; sides may differ by at most {max_aspect_ratio:g}x"
        )
    return Inspected(image, image_format)


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    policy: DecodePolicy = TORCHVISION_POLICY,
    draft_min_size: int | None = None,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> Image.Image:
    """Decode an uploaded image to RGB as the model's decode policy says.

    draft_min_size: for JPEG, let libjpeg decode at 1/2, 1/4 or 1/8 scale as long as both
    sides stay >= this many pixels (the fast path; PreprocessSpec.draft_size gives it).
    """
    inspected = inspect_image(data, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    return decode_inspected(inspected, policy=policy, draft_min_size=draft_min_size)


def decode_inspected(
    inspected: Inspected, *, policy: DecodePolicy, draft_min_size: int | None = None
) -> Image.Image:
    """The pixels of an image inspect_image passed, as RGB under the decode policy."""
    image = inspected.image
    if draft_min_size and inspected.format == "JPEG":
        image.draft("RGB", (draft_min_size, draft_min_size))
    _load_pixels(image, inspected.format)
    return to_rgb(image, policy)


def _open(data: bytes, image_format: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=[image_format])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"image has too many pixels: {exc}") from exc
    except Exception as exc:  # any parser failure on client bytes is the client's bad input
        raise CorruptImage(f"could not read the {image_format} header: {_short(exc)}") from exc


def _load_pixels(image: Image.Image, image_format: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"image has too many pixels: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:
        raise CorruptImage(
            f"the {image_format} data is truncated or corrupt: {_short(exc)}"
        ) from exc


def _short(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 3] + "..."
