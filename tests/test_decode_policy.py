"""Every image mode under each decode policy, served vs the reference pipeline.

The torchvision policy is compared with the user's literal code, `Image.open(f).convert("RGB")`
then torchvision's transforms; the project policy with a numpy restatement of its rules (alpha
over the background, EXIF orientation applied, 16-bit rescaled). Then the whole bytes -> tensor
step: the exact path equals the reference, the fast path stays within one grey level.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from handler.decode import decode_image
from modelspec.imaging import Normalizer, resize_crop
from modelspec.meta import PROJECT_POLICY, TORCHVISION_POLICY, PreprocessSpec
from modelspec.reference import reference_tensor_of
from tests.helpers import encode, gradient_rgb

ONE_LEVEL = 1 / (255 * min(PreprocessSpec().std)) + 1e-6


def _rgba_with_hidden_colours() -> Image.Image:
    """Opaque red left third, a half-transparent middle third, and a fully transparent right
    third whose hidden colours vary (a gradient a convert("RGB") would show)."""
    rgba = np.zeros((40, 60, 4), dtype=np.uint8)
    rgba[:, :20] = (200, 10, 10, 255)
    rgba[:, 20:40] = (0, 90, 200, 128)
    rgba[:, 40:, 0] = np.linspace(0, 255, 20, dtype=np.uint8)[None, :]
    rgba[:, 40:, 1] = np.linspace(0, 255, 40, dtype=np.uint8)[:, None]
    rgba[:, 40:, 2] = 77
    return Image.fromarray(rgba, "RGBA")


def _la() -> Image.Image:
    grey = np.linspace(0, 255, 60, dtype=np.uint8)[None, :].repeat(40, 0)
    alpha = np.linspace(255, 0, 40, dtype=np.uint8)[:, None].repeat(60, 1)
    return Image.fromarray(np.stack([grey, alpha], -1), "LA")


def _palette_with_transparency() -> bytes:
    palette = Image.new("P", (60, 40), 0)
    palette.putpalette([10, 200, 10, 255, 0, 0, 0, 0, 250] + [0] * 759)
    palette.paste(1, (30, 0, 60, 20))  # index 1 (red) is the transparent one
    palette.paste(2, (0, 20, 30, 40))
    return encode(palette, "PNG", transparency=1)


def _sixteen_bit() -> bytes:
    ramp = np.linspace(0, 65535, 60, dtype=np.uint16)[None, :].repeat(40, 0)
    return encode(Image.fromarray(ramp), "PNG")


def _exif_jpeg(orientation: int) -> bytes:
    card = np.asarray(gradient_rgb(60, 40)).copy()
    card[:10, :10] = (250, 0, 250)  # a marker in the stored image's top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(card), "JPEG", quality=95, exif=exif.tobytes())


def _animated_gif() -> bytes:
    frames = [gradient_rgb(60, 40), Image.new("RGB", (60, 40), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


CASES = {
    "rgba_hidden_colours": encode(_rgba_with_hidden_colours(), "PNG"),
    "la": encode(_la(), "PNG"),
    "palette_trns": _palette_with_transparency(),
    "i16": _sixteen_bit(),
    "cmyk_jpeg": encode(gradient_rgb(60, 40).convert("CMYK"), "JPEG", quality=95),
    "progressive_jpeg": encode(gradient_rgb(60, 40), "JPEG", quality=90, progressive=True),
    "animated_gif": _animated_gif(),
    **{f"exif_{o}": _exif_jpeg(o) for o in range(1, 9)},
}

# EXIF orientation -> the numpy operation a viewer applies to the stored pixels (TIFF 6.0)
ORIENT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def project_rule(data: bytes) -> np.ndarray:
    """The project policy restated with numpy: what its RGB must be, pixel by pixel."""
    with Image.open(io.BytesIO(data)) as image:
        orientation = image.getexif().get(0x0112, 1)
        if image.mode.startswith("I;16"):
            values = np.asarray(image, dtype=np.uint32)
            grey = ((values + 128) // 257).astype(np.uint8)
            out = np.stack([grey] * 3, -1)
        elif image.mode in ("RGBA", "LA") or "transparency" in image.info:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
            alpha = rgba[..., 3:] / 255
            out = np.round(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
        else:
            out = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(ORIENT[orientation](out))


def served_rgb(data: bytes, policy) -> np.ndarray:
    return np.asarray(decode_image(data, max_pixels=10**8, policy=policy))


@pytest.mark.parametrize("case", sorted(CASES))
def test_torchvision_policy_is_exactly_convert_rgb(case):
    data = CASES[case]
    with Image.open(io.BytesIO(data)) as image:
        users = np.asarray(image.convert("RGB"))  # torchvision's pil_loader
    assert np.array_equal(served_rgb(data, TORCHVISION_POLICY), users)


@pytest.mark.parametrize("case", sorted(CASES))
def test_project_policy_follows_its_rules(case):
    served = served_rgb(CASES[case], PROJECT_POLICY).astype(int)
    expected = project_rule(CASES[case]).astype(int)
    assert served.shape == expected.shape
    assert np.abs(served - expected).max() <= 1  # Pillow's compositing rounds its own way


def test_the_policies_differ_where_they_should():
    hidden = CASES["rgba_hidden_colours"]
    convert, composite = served_rgb(hidden, TORCHVISION_POLICY), served_rgb(hidden, PROJECT_POLICY)
    assert (convert[:, 45:] != 255).any() and (composite[:, 45:] == 255).all()
    assert served_rgb(CASES["exif_6"], TORCHVISION_POLICY).shape[:2] == (40, 60)  # stored
    assert served_rgb(CASES["exif_6"], PROJECT_POLICY).shape[:2] == (60, 40)  # as displayed
    assert served_rgb(CASES["i16"], TORCHVISION_POLICY).max() == 255  # Pillow clips
    assert served_rgb(CASES["i16"], PROJECT_POLICY)[:, 0].max() == 0  # rescaled: dark stays dark


def test_reference_is_the_users_literal_torchvision_code():
    spec = PreprocessSpec(decode=TORCHVISION_POLICY)
    users_eval = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    for data in CASES.values():
        with Image.open(io.BytesIO(data)) as image:
            expected = users_eval(image.convert("RGB"))
        assert torch.equal(reference_tensor_of(data, spec), expected)


@pytest.mark.parametrize("policy", ["torchvision", "project"])
@pytest.mark.parametrize("resize_mode", ["shorter_side", "square"])
def test_served_tensor_matches_the_reference(policy, resize_mode):
    """bytes -> model input: the exact path equals the reference (float rounding only), the fast
    path stays within one grey level, for every mode."""
    decode = TORCHVISION_POLICY if policy == "torchvision" else PROJECT_POLICY
    for path, bound in (("exact", 1e-5), ("fast", ONE_LEVEL)):
        spec = PreprocessSpec(
            resize_mode=resize_mode, decode=dataclasses.replace(decode, path=path)
        )
        normalizer = Normalizer(spec, torch.device("cpu"), torch.float32)
        for case, data in CASES.items():
            image = decode_image(data, max_pixels=10**8, policy=spec.decode)
            served = normalizer([resize_crop(image, spec)])[0]
            difference = (served - reference_tensor_of(data, spec)).abs().max().item()
            assert difference <= bound, (case, path, difference)
