"""decode_image: every image mode users upload comes out as correct RGB under the project's
decode policy (alpha over white, EXIF applied, 16-bit rescaled); bad bytes get a 4xx. The
torchvision policy, and both policies against the reference, are in test_decode_policy.py."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from handler.decode import ALLOWED_FORMATS, decode_image, sniff_format
from handler.errors import CorruptImage, NotAnImage, TooManyPixels, UnsupportedFormat
from modelspec.imaging import to_rgb
from modelspec.meta import PROJECT_POLICY, DecodePolicy
from tests.helpers import encode, gradient_rgb, real_images

LIMIT = 40_000_000


def decode(data: bytes, **kwargs) -> Image.Image:
    kwargs.setdefault("policy", PROJECT_POLICY)
    return decode_image(data, max_pixels=kwargs.pop("max_pixels", LIMIT), **kwargs)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.mark.parametrize("path", real_images(), ids=lambda p: p.name)
def test_real_game_images_decode_to_rgb(path):
    image = decode(path.read_bytes())
    with Image.open(path) as original:
        assert image.size == ImageOps.exif_transpose(original).size  # as a viewer shows it
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("PNG", {}),
        ("JPEG", {"quality": 95}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
    ],
)
def test_rgb_round_trip_per_format(fmt, params):
    card = gradient_rgb()
    image = decode(encode(card, fmt, **params))
    tolerance = 6 if fmt == "JPEG" else 0
    assert image.mode == "RGB" and image.size == card.size
    assert np.abs(pixels(image) - pixels(card)).max() <= tolerance


def test_greyscale_becomes_three_equal_channels():
    grey = gradient_rgb().convert("L")
    rgb = pixels(decode(encode(grey, "PNG")))
    assert rgb.shape[-1] == 3
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert (rgb[..., 0] == pixels(grey)).all()


def test_one_bit_image():
    mono = gradient_rgb().convert("1")
    rgb = pixels(decode(encode(mono, "PNG")))
    assert set(np.unique(rgb)) <= {0, 255}
    assert (rgb[..., 0] == pixels(mono.convert("L"))).all()


def test_palette_image_matches_its_colours():
    palette = gradient_rgb().quantize(colors=32)
    rgb = decode(encode(palette, "PNG"))
    assert (pixels(rgb) == pixels(palette.convert("RGB"))).all()


def test_rgba_transparent_pixels_land_on_the_background():
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    rgba[:, :30] = (200, 10, 10, 255)  # opaque red left half
    rgba[:, 30:] = (0, 0, 0, 0)  # fully transparent right half (black underneath)
    data = encode(Image.fromarray(rgba, "RGBA"), "PNG")
    white = pixels(decode(data))
    assert (white[:, :30] == (200, 10, 10)).all()
    assert (white[:, 30:] == 255).all()
    grey_policy = DecodePolicy(color="composite", exif=True, background=(128, 128, 128))
    grey = pixels(decode(data, policy=grey_policy))
    assert (grey[:, 30:] == 128).all()


def test_half_transparent_pixels_are_blended():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[...] = (0, 0, 0, 128)  # black at ~50% over white -> mid grey
    rgb = pixels(decode(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert np.abs(rgb - 127).max() <= 1


def test_greyscale_with_alpha():
    la = Image.new("LA", (10, 10), (50, 0))
    assert (pixels(decode(encode(la, "PNG"))) == 255).all()


def test_palette_with_transparency_uses_it():
    palette = Image.new("P", (10, 10), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    data = encode(palette, "PNG", transparency=1)  # index 1 (red) is transparent
    assert (pixels(decode(data)) == 255).all()


def test_cmyk_jpeg_colours_survive():
    card = gradient_rgb()
    data = encode(card.convert("CMYK"), "JPEG", quality=95)
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode == "CMYK"
    rgb = pixels(decode(data))
    assert np.abs(rgb - pixels(card)).mean() < 4


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16)[None, :].repeat(16, 0)
    data = encode(Image.fromarray(ramp), "PNG")
    with Image.open(io.BytesIO(data)) as opened:
        assert opened.mode.startswith("I")
    rgb = pixels(decode(data))
    expected = np.round(ramp.astype(np.float64) / 257)
    assert np.abs(rgb[..., 0] - expected).max() <= 1
    assert rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255  # full range, no clipping


def test_sixteen_bit_rgb_png():
    ramp = (np.linspace(0, 65535, 64)[None, :, None] * np.ones((8, 1, 3))).astype(">u2")
    png = _png_bytes(ramp.tobytes(), 64, 8, bit_depth=16, colour_type=2)
    rgb = pixels(decode(png))
    assert rgb.shape == (8, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255


@pytest.mark.parametrize(
    ("orientation", "expected_size"), [(1, (60, 40)), (3, (60, 40)), (6, (40, 60)), (8, (40, 60))]
)
def test_exif_orientation_is_applied(orientation, expected_size):
    card = np.zeros((40, 60, 3), dtype=np.uint8)
    card[:, :30] = (255, 0, 0)  # red on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(card), "JPEG", quality=95, exif=exif.tobytes())
    image = decode(data)
    assert image.size == expected_size
    rgb = pixels(image)
    # where the red half lands after the rotation a viewer applies
    red_region = {1: rgb[:, :20], 3: rgb[:, -20:], 6: rgb[:20, :], 8: rgb[-20:, :]}[orientation]
    assert red_region[..., 0].mean() > 200 and red_region[..., 2].mean() < 50


def test_gif_first_frame():
    frames = [Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (20, 20), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    rgb = pixels(decode(data))
    assert (rgb[..., 0] > 200).all() and (rgb[..., 2] < 50).all()


def test_animated_webp_first_frame():
    frames = [Image.new("RGB", (20, 20), (0, 200, 0)), Image.new("RGB", (20, 20), (0, 0, 200))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    rgb = pixels(decode(data))
    assert (rgb[..., 1] == 200).all()


def test_jpeg_draft_decodes_smaller_but_big_enough():
    path = next(p for p in real_images() if "1920x1200" in p.name)
    image = decode(path.read_bytes(), draft_min_size=512)
    assert image.size == (960, 600)  # 1/2 scale: the largest reduction keeping both sides >= 512
    assert decode(path.read_bytes(), draft_min_size=256).size == (480, 300)
    assert decode(path.read_bytes()).size == (1920, 1200)


def test_draft_never_shrinks_below_the_requested_size():
    card = gradient_rgb(300, 1000)
    image = decode(encode(card, "JPEG"), draft_min_size=256)
    assert min(image.size) >= 256


# ---- bad input -----------------------------------------------------------------------------
def test_not_an_image():
    with pytest.raises(NotAnImage) as info:
        decode(b"hello, this is text and not a picture")
    assert info.value.status == 400


def test_empty_bytes_are_not_an_image():
    with pytest.raises(NotAnImage):
        decode(b"")


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PPM", "TGA", "PCX"])
def test_other_formats_are_refused_with_415(fmt):
    data = encode(gradient_rgb(32, 32), fmt)
    assert sniff_format(data) not in ALLOWED_FORMATS
    with pytest.raises((UnsupportedFormat, NotAnImage)) as info:
        decode(data)
    if fmt in ("TIFF", "ICO", "PCX"):  # formats with a signature are named in a 415
        assert info.value.status == 415
        assert sniff_format(data) in info.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_truncated_images_are_corrupt_400(fmt):
    data = encode(gradient_rgb(400, 300), fmt)
    with pytest.raises((CorruptImage, NotAnImage)) as info:
        decode(data[: len(data) // 2])
    assert info.value.status == 400


def test_garbage_after_a_png_signature():
    with pytest.raises(CorruptImage):
        decode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)


def test_pixel_limit_from_the_header_before_decoding():
    # A header claiming 60000 x 60000 with no real pixel data: refused from the header alone.
    bomb = _png_bytes(b"", 60000, 60000, bit_depth=8, colour_type=0, raw=True)
    with pytest.raises(TooManyPixels) as info:
        decode(bomb)
    assert info.value.status == 413
    assert "3600000000 pixels" in info.value.message  # Pillow's own check, at our limit


def test_real_decompression_bomb_is_refused():
    # 8000 x 8000 black pixels: 64 MP from a file of a few tens of KB.
    data = encode(Image.new("L", (8000, 8000)), "PNG", optimize=True)
    assert len(data) < 200_000
    with pytest.raises(TooManyPixels):
        decode(data, max_pixels=40_000_000)
    assert decode(data, max_pixels=70_000_000).size == (8000, 8000)


def test_to_rgb_keeps_rgb_untouched():
    card = gradient_rgb()
    assert to_rgb(card, PROJECT_POLICY) is card


def _png_bytes(
    payload: bytes, width: int, height: int, bit_depth: int, colour_type: int, raw: bool = False
) -> bytes:
    """A PNG written by hand: lets a test claim any size or bit depth."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    if raw:
        idat = zlib.compress(b"\x00" * 64)
    else:
        row = len(payload) // height
        idat = zlib.compress(
            b"".join(b"\x00" + payload[r * row : (r + 1) * row] for r in range(height))
        )
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
