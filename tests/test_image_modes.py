"""Every pixel format Pillow reads is stored with its real pixels (scaled to 8 bits, never clamped)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ssdlite_coco.lmdb.image_bytes import prepare_image_bytes

WIDTH, HEIGHT = 96, 64


def _ramp(high: float) -> np.ndarray:
    """A horizontal ramp from 0 to ``high`` plus a vertical one, smooth enough for JPEG at quality 95."""
    x = np.linspace(0.0, 1.0, WIDTH)[None, :]
    y = np.linspace(0.0, 1.0, HEIGHT)[:, None]
    return high * (0.7 * x + 0.3 * y)


def _rgb_ramp() -> np.ndarray:
    return np.stack([_ramp(255), _ramp(255)[:, ::-1], np.full((HEIGHT, WIDTH), 128.0)], axis=-1)


def _source(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An image in ``mode`` and the 8-bit pixels (gray, or RGB) it stands for, computed here independently."""
    gray = _ramp(255)
    rgb = _rgb_ramp()
    if mode == "1":
        bits = (np.arange(WIDTH)[None, :] // 16 % 2).repeat(HEIGHT, axis=0).astype(bool)
        return Image.fromarray(bits), bits * 255.0
    if mode == "L":
        return Image.fromarray(gray.astype(np.uint8), "L"), np.floor(gray)
    if mode == "LA":
        image = Image.merge("LA", [Image.fromarray(gray.astype(np.uint8)), Image.new("L", (WIDTH, HEIGHT), 90)])
        return image, np.floor(gray)
    if mode == "I;16":
        values = np.rint(_ramp(65535)).astype(np.uint16)
        return Image.fromarray(values), values / 257
    if mode == "I":
        values = np.rint(_ramp(65535)).astype(np.int32)
        return Image.fromarray(values), values / 257
    if mode == "F":
        values = _ramp(1.0).astype(np.float32)
        return Image.fromarray(values), values * 255
    rgb_image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    expected = np.floor(rgb)
    if mode == "RGB":
        return rgb_image, expected
    if mode == "RGBA":
        rgb_image.putalpha(40)
        return rgb_image, expected
    if mode == "P":
        palette = rgb_image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        return palette, np.asarray(palette.convert("RGB"), dtype=np.float64)
    converted = rgb_image.convert(mode)  # CMYK, YCbCr: the reference is Pillow's own way back to RGB
    return converted, np.asarray(converted.convert("RGB"), dtype=np.float64)


FORMATS = {"CMYK": "TIFF", "YCbCr": "TIFF", "F": "TIFF", "I": "TIFF"}


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_every_mode_keeps_its_pixels(mode):
    image, expected = _source(mode)
    assert image.mode == mode
    stream = io.BytesIO()
    image.save(stream, format=FORMATS.get(mode, "PNG"))
    prepared = prepare_image_bytes(stream.getvalue())
    assert "re-encoded" in prepared.change and (prepared.width, prepared.height) == (WIDTH, HEIGHT)
    with Image.open(io.BytesIO(prepared.data)) as stored:
        assert stored.format == "JPEG"
        pixels = np.asarray(stored, dtype=np.float64)
    assert prepared.gray == (pixels.ndim == 2) == (expected.ndim == 2)
    difference = np.abs(pixels - expected)
    assert difference.mean() < 2.5 and np.percentile(difference, 99) < 12, (mode, difference.mean())


def test_the_comparison_catches_clamped_16_bit_pixels():
    """What the check above would see if 16-bit pixels were clamped to 255 (the bug it guards against)."""
    image, expected = _source("I;16")
    clamped = np.minimum(np.asarray(image, dtype=np.float64), 255)
    assert np.abs(clamped - expected).mean() > 50
