"""Check encoded image files and make them plain JPEGs that Caffe decodes as the annotations expect.

``prepare_image_bytes`` walks the JPEG markers to read the size and the number of colour components and
to see that the file is complete (an end-of-image marker after the image data), then decodes the image
data in full (``decode_image``), so that a file damaged inside its entropy-coded data is a bad record
here, not a surprise in the LMDB check or in training. A plain JPEG (8-bit, baseline/extended/progressive
Huffman, 1 or 3 components) is kept byte for byte. Anything else (CMYK, 12-bit, PNG or another format
under a .jpg name, any pixel mode Pillow reads) is decoded with Pillow and re-encoded as a plain JPEG
with its real pixels: 16-bit and 32-bit integer images are scaled from 0..65535 to 0..255 (not clamped),
float images from 0..1 (or 0..255 when their values exceed 1), alpha is dropped. An EXIF orientation
other than 1 is removed by dropping the EXIF segment (no re-encoding): OpenCV would otherwise rotate the
pixels while COCO boxes refer to the stored ones.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from ssdlite_coco.common.errors import SsdliteError

# Frame markers of 8-bit Huffman JPEGs that every libjpeg decodes (baseline, extended, progressive).
PLAIN_SOF = {0xC0, 0xC1, 0xC2}
# All start-of-frame markers (C4 = DHT, C8 = JPG extension, CC = DAC are not frames).
ALL_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
REENCODE_QUALITY = 95


class ImageDataError(SsdliteError):
    """The bytes are not a usable image; the message says why (without the file name)."""


@dataclass
class PreparedImage:
    data: bytes
    width: int
    height: int
    gray: bool
    # Why the bytes differ from the file ("" when they are the original bytes).
    change: str = ""


@dataclass
class _JpegHeader:
    width: int
    height: int
    components: int
    plain: bool
    why_not_plain: str
    exif_orientation: int | None
    exif_spans: list[tuple[int, int]]


def _exif_orientation(payload: bytes) -> int | None:
    """The orientation tag (0x0112) of IFD0 in an APP1 ``Exif\\0\\0`` payload, if any."""
    tiff = payload[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order = "little" if tiff[:2] == b"II" else "big"
    offset = int.from_bytes(tiff[4:8], order)
    if offset + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[offset : offset + 2], order)
    for index in range(count):
        entry = offset + 2 + 12 * index
        if entry + 12 > len(tiff):
            return None
        if int.from_bytes(tiff[entry : entry + 2], order) == 0x0112:
            return int.from_bytes(tiff[entry + 8 : entry + 10], order)
    return None


def _read_jpeg_header(data: bytes) -> _JpegHeader:
    size = len(data)
    pos = 2
    frame = None
    orientation = None
    exif_spans: list[tuple[int, int]] = []
    scan_start = None
    while pos < size:
        if data[pos] != 0xFF:
            raise ImageDataError(f"corrupt JPEG: no marker at byte {pos} of the header")
        marker_pos = pos
        while pos < size and data[pos] == 0xFF:
            pos += 1
        if pos >= size:
            break
        marker = data[pos]
        pos += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            continue
        if marker == 0xD9:
            raise ImageDataError("corrupt JPEG: end-of-image marker before any image data")
        if pos + 2 > size:
            break
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > size:
            break
        payload = data[pos + 2 : pos + length]
        if marker in ALL_SOF:
            if len(payload) < 6:
                raise ImageDataError("corrupt JPEG: short frame header")
            frame = (
                marker,
                payload[0],
                int.from_bytes(payload[1:3], "big"),
                int.from_bytes(payload[3:5], "big"),
                payload[5],
            )
        elif marker == 0xE1 and payload.startswith(b"Exif\0\0"):
            exif_spans.append((marker_pos, pos + length))
            found = _exif_orientation(payload)
            if found is not None:
                orientation = found
        elif marker == 0xDA:
            scan_start = pos + length
            break
        pos += length
    if frame is None or scan_start is None:
        raise ImageDataError("truncated or corrupt JPEG: the header ends before the image data")
    if data.rfind(b"\xff\xd9") < scan_start:
        raise ImageDataError("truncated JPEG: no end-of-image marker after the image data")
    marker, precision, height, width, components = frame
    why = ""
    if marker not in PLAIN_SOF:
        why = f"JPEG process 0x{marker:02X}"
    elif precision != 8:
        why = f"{precision}-bit JPEG"
    elif components not in (1, 3):
        why = f"{components}-component (CMYK) JPEG" if components == 4 else f"{components}-component JPEG"
    elif height == 0 or width == 0:
        why = "JPEG without size in its frame header"
    return _JpegHeader(width, height, components, not why, why, orientation, exif_spans)


def decode_image(data: bytes) -> tuple[int, int, str]:
    """Decode every pixel of ``data``: (width, height, Pillow mode), or ImageDataError saying why not."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.width, image.height, image.mode
    except Exception as error:  # Pillow raises many types for broken data
        raise ImageDataError(f"cannot be decoded as an image ({type(error).__name__}: {error})") from None


def to_8bit(image):
    """The image as Pillow ``L`` (one channel) or ``RGB``, its pixel values scaled rather than clamped."""
    import numpy as np
    from PIL import Image

    mode = image.mode
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I (Pillow opens 16-bit PNGs as I or I;16)
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.rint(np.clip(values, 0, 65535) / 257).astype(np.uint8), "L")
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
        return Image.fromarray(np.rint(np.clip(np.nan_to_num(values) * scale, 0, 255)).astype(np.uint8), "L")
    return image.convert("L" if mode in ("1", "L", "LA") else "RGB")


def _reencode(data: bytes, why: str) -> PreparedImage:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            converted = to_8bit(image)
    except Exception as error:  # Pillow raises many types for broken files
        raise ImageDataError(f"cannot be decoded as an image ({type(error).__name__}: {error})") from None
    gray = converted.mode == "L"
    out = io.BytesIO()
    converted.save(out, format="JPEG", quality=REENCODE_QUALITY)
    return PreparedImage(out.getvalue(), converted.width, converted.height, gray, f"re-encoded ({why})")


def prepare_image_bytes(data: bytes) -> PreparedImage:
    """The bytes to store for an image file: the original plain JPEG, or a fixed copy (see module doc)."""
    if data[:2] != b"\xff\xd8":
        kind = "PNG" if data[:8] == b"\x89PNG\r\n\x1a\n" else "not a JPEG"
        if not data:
            raise ImageDataError("empty file")
        return _reencode(data, kind)
    header = _read_jpeg_header(data)
    if not header.plain:
        return _reencode(data, header.why_not_plain)
    decode_image(data)
    gray = header.components == 1
    if header.exif_orientation not in (None, 1):
        kept = bytearray()
        start = 0
        for span_start, span_end in header.exif_spans:
            kept += data[start:span_start]
            start = span_end
        kept += data[start:]
        return PreparedImage(
            bytes(kept),
            header.width,
            header.height,
            gray,
            f"EXIF orientation {header.exif_orientation} removed",
        )
    return PreparedImage(data, header.width, header.height, gray)
