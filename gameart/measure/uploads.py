"""Realistic uploads for benchmarks and load tests, made from real game art.

Users upload cover art (around 600x800 JPEG), screenshots (1080p JPEG) and PNGs. These are cut
and re-encoded from the real Debian game images in export/parity_images, so the JPEG/PNG
decoders see real content rather than flat colours or noise.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from gameart.paths import REPO_ROOT

SOURCES = REPO_ROOT / "export" / "parity_images"


@dataclass(frozen=True)
class Upload:
    name: str
    body: bytes
    content_type: str
    size: tuple[int, int]


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, then centre-crop: real content at the wanted size."""
    image = image.convert("RGB")
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


@functools.cache
def upload_mix() -> tuple[Upload, ...]:
    """Cover art JPEG, 1080p screenshot JPEG, 1080p screenshot PNG, RGBA sprite PNG.

    Built once per process (encoding a 1080p PNG takes a while) and immutable, so every
    benchmark step and experiment measurement reuses the same bytes."""
    world = Image.open(SOURCES / "pingus_worldmap_1920x1200.jpg")
    grass = Image.open(SOURCES / "pingus_grass_palette_640x800.png")
    sprite = Image.open(SOURCES / "frozenbubble_penguin_rgba_250x330.png")
    cover = _fit(grass, 600, 800)
    screenshot = _fit(world, 1920, 1080)
    return (
        Upload("cover_600x800.jpg", _encode(cover, "JPEG", quality=90), "image/jpeg", (600, 800)),
        Upload(
            "screenshot_1080p.jpg",
            _encode(screenshot, "JPEG", quality=90),
            "image/jpeg",
            (1920, 1080),
        ),
        Upload("screenshot_1080p.png", _encode(screenshot, "PNG"), "image/png", (1920, 1080)),
        Upload("sprite_rgba.png", _encode(sprite, "PNG"), "image/png", sprite.size),
    )


def cover_uploads(count: int) -> list[Upload]:
    """`count` different 600x800 JPEG covers (quality 90) cut from the project's real images,
    mirrored and zoomed in as the count grows, so no two requests in a row carry the same bytes
    (the GPU end-to-end benchmark's payload)."""
    sources = sorted(p for p in SOURCES.iterdir() if p.suffix in (".jpg", ".png"))
    uploads = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as image:
            rgb = image.convert("RGB")
        if i // len(sources) % 2:
            rgb = ImageOps.mirror(rgb)
        scale = 1.0 + 0.15 * (i // (2 * len(sources)))
        cover = ImageOps.fit(rgb, (int(600 * scale), int(800 * scale))).resize((600, 800))
        body = _encode(cover, "JPEG", quality=90)
        uploads.append(Upload(f"cover_{i}.jpg", body, "image/jpeg", (600, 800)))
    return uploads


def uploads_from_folder(folder: Path, limit: int = 200) -> list[Upload]:
    """Every JPEG/PNG/WebP/BMP/GIF in a folder (recursively), as users would send them."""
    types = {
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".png": "image/png",
        ".webp": "image/webp",
        ".bmp": "image/bmp",
        ".gif": "image/gif",
    }
    uploads = []
    for path in sorted(Path(folder).rglob("*")):
        if path.suffix.lower() in types:
            with Image.open(path) as image:
                size = image.size
            uploads.append(Upload(path.name, path.read_bytes(), types[path.suffix.lower()], size))
            if len(uploads) >= limit:
                break
    return uploads
