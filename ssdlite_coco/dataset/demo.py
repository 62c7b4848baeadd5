"""The embedded demo dataset: generated COCO-format images of coloured shapes on noisy backgrounds.

Small enough for a MobileNetV2-SSDLite to learn in minutes on a CPU, yet with the cases real COCO
has: non-contiguous category ids, grayscale (mode L) JPEGs, crowd annotations (``iscrowd`` 1 with an
RLE mask), images without objects, boxes cut by the image border and small objects. Most objects
are large (40-120 px) and high contrast.

The output depends only on (split, count, seed) and the Pillow/libjpeg build: every image draws from
its own generator seeded with (seed, split, index), so the same arguments give byte-identical files
and a split of N images starts with the images of a split of M < N images.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ssdlite_coco.dataset.coco_json import DatasetError, publish_split, summarize

CATEGORIES = [
    {"id": 3, "name": "circle", "supercategory": "shape"},
    {"id": 17, "name": "square", "supercategory": "shape"},
    {"id": 44, "name": "triangle", "supercategory": "shape"},
]
# One saturated colour per category (luminances differ too, so grayscale images stay learnable).
COLORS = {3: (215, 35, 35), 17: (30, 150, 50), 44: (40, 70, 215)}
IMAGE_SIZES = ((320, 240), (240, 320))  # (width, height): landscape and portrait
SPLIT_INDEX = {"trainval": 0, "test": 1}
IMAGE_ID_OFFSET = {"trainval": 0, "test": 1_000_000}
MAX_IMAGES = 999_999
JPEG_QUALITY = 90

# Which images carry which hard case (by index), so that every split of 16+ images has all of them.
EMPTY_EVERY, EMPTY_AT = 16, 5
GRAY_EVERY, GRAY_AT = 10, 3
CROWD_EVERY, CROWD_AT = 12, 7
BORDER_EVERY, BORDER_AT = 6, 1
SMALL_EVERY, SMALL_AT = 5, 2


def regular_polygon(cx: float, cy: float, radius: float, sides: int, angle: float) -> list[tuple[float, float]]:
    return [
        (
            cx + radius * math.cos(angle + 2 * math.pi * k / sides),
            cy + radius * math.sin(angle + 2 * math.pi * k / sides),
        )
        for k in range(sides)
    ]


def shape_polygon(category_id: int, cx: float, cy: float, size: float, rng: np.random.Generator) -> list:
    """The outline of one object whose bounding box is about ``size`` pixels wide."""
    if category_id == 3:  # circle
        return regular_polygon(cx, cy, size / 2, 48, 0.0)
    if category_id == 17:  # square, slightly rotated
        angle = math.pi / 4 + float(rng.uniform(-0.25, 0.25))
        return regular_polygon(
            cx,
            cy,
            size / 2 * math.sqrt(2) / (abs(math.cos(angle - math.pi / 4)) + abs(math.sin(angle - math.pi / 4))),
            4,
            angle,
        )
    if category_id == 44:  # triangle, roughly pointing up
        angle = -math.pi / 2 + float(rng.uniform(-0.3, 0.3))
        return regular_polygon(cx, cy + size * 0.1, size / 2 * 1.1, 3, angle)
    raise ValueError(f"unknown demo category {category_id}")


def clip_polygon(polygon: list[tuple[float, float]], width: int, height: int) -> list[tuple[float, float]]:
    """Sutherland-Hodgman clipping of a polygon to the image rectangle [0, width] x [0, height]."""

    def clip(points, inside, cross):
        result = []
        for index, current in enumerate(points):
            previous = points[index - 1]
            if inside(current):
                if not inside(previous):
                    result.append(cross(previous, current))
                result.append(current)
            elif inside(previous):
                result.append(cross(previous, current))
        return result

    def at_x(x):
        return lambda p, q: (x, p[1] + (q[1] - p[1]) * (x - p[0]) / (q[0] - p[0]))

    def at_y(y):
        return lambda p, q: (p[0] + (q[0] - p[0]) * (y - p[1]) / (q[1] - p[1]), y)

    points = list(polygon)
    for inside, cross in (
        (lambda p: p[0] >= 0, at_x(0.0)),
        (lambda p: p[0] <= width, at_x(float(width))),
        (lambda p: p[1] >= 0, at_y(0.0)),
        (lambda p: p[1] <= height, at_y(float(height))),
    ):
        if not points:
            break
        points = clip(points, inside, cross)
    return points


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE of a binary mask (column-major runs, starting with a run of zeros)."""
    flat = np.asarray(mask, dtype=bool).flatten(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _mask_of(polygons: list[list[tuple[float, float]]], width: int, height: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        draw.polygon(polygon, fill=255)
    return np.asarray(canvas) > 0


def _box_of(mask: np.ndarray) -> list[float] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not rows.size:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _overlaps(box: list[float], others: list[list[float]], margin: float = 4.0) -> bool:
    x, y, w, h = box
    for ox, oy, ow, oh in others:
        if x < ox + ow + margin and ox < x + w + margin and y < oy + oh + margin and oy < y + h + margin:
            return True
    return False


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A pale, noisy background with a gentle gradient (float, HxWx3)."""
    base = rng.uniform(150, 230, size=3)
    tilt = rng.uniform(-25, 25, size=(2, 3))
    ys = np.linspace(-0.5, 0.5, height)[:, None, None]
    xs = np.linspace(-0.5, 0.5, width)[None, :, None]
    image = base + tilt[0] * xs + tilt[1] * ys
    return image + rng.normal(0.0, 14.0, size=(height, width, 3))


def _colour_of(rng: np.random.Generator, category_id: int) -> tuple[int, int, int]:
    jitter = rng.integers(-20, 21, size=3)
    return tuple(int(v) for v in np.clip(np.array(COLORS[category_id]) + jitter, 0, 255))


def _crowd(rng: np.random.Generator, width: int, height: int) -> tuple[list, dict[str, Any]]:
    """A tight cluster of small shapes of one class, annotated once with iscrowd 1: (painted shapes, annotation)."""
    category_id = int(rng.choice([c["id"] for c in CATEGORIES]))
    region = float(rng.uniform(80, 120))
    x0, y0 = float(rng.uniform(0, width - region)), float(rng.uniform(0, height - region))
    polygons = []
    colour = _colour_of(rng, category_id)
    for _ in range(int(rng.integers(6, 11))):
        size = float(rng.uniform(12, 22))
        cx, cy = (
            x0 + float(rng.uniform(size / 2, region - size / 2)),
            y0 + float(rng.uniform(size / 2, region - size / 2)),
        )
        polygons.append(shape_polygon(category_id, cx, cy, size, rng))
    mask = _mask_of(polygons, width, height)
    annotation = {
        "category_id": category_id,
        "iscrowd": 1,
        "bbox": _box_of(mask),
        "area": float(mask.sum()),
        "segmentation": rle_encode(mask),
    }
    return [(colour, polygon) for polygon in polygons], annotation


def _place(rng, category_id: int, size: float, on_border: bool, width: int, height: int, boxes: list):
    """Up to 40 tries at a spot where the shape overlaps no earlier box: (polygon, mask, box), or None."""
    for _attempt in range(40):
        if on_border:
            # Centre near an edge so that 10-40% of the object lies outside the image.
            cut = float(rng.uniform(0.1, 0.4)) * size
            edge = int(rng.integers(4))
            cx = float(rng.uniform(size / 2, width - size / 2))
            cy = float(rng.uniform(size / 2, height - size / 2))
            cx, cy = (
                (size / 2 - cut, cy),
                (width - size / 2 + cut, cy),
                (cx, size / 2 - cut),
                (cx, height - size / 2 + cut),
            )[edge]
        else:
            cx = float(rng.uniform(size / 2 + 1, width - size / 2 - 1))
            cy = float(rng.uniform(size / 2 + 1, height - size / 2 - 1))
        polygon = shape_polygon(category_id, cx, cy, size, rng)
        mask = _mask_of([polygon], width, height)
        box = _box_of(mask)
        if box is not None and not _overlaps(box, boxes):
            return polygon, mask, box
    return None


def generate_image(split: str, index: int, seed: int):
    """Draw image ``index`` of ``split``: returns (PIL image, list of annotation dicts without ids)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, SPLIT_INDEX[split], index])
    width, height = IMAGE_SIZES[int(rng.random() < 0.4)]
    pixels = _background(rng, width, height)
    annotations: list[dict[str, Any]] = []
    boxes: list[list[float]] = []
    drawn: list[tuple[tuple[int, int, int], list]] = []  # (colour, polygon) to paint after placement
    empty = index % EMPTY_EVERY == EMPTY_AT
    if not empty and index % CROWD_EVERY == CROWD_AT:
        shapes, annotation = _crowd(rng, width, height)
        drawn.extend(shapes)
        boxes.append(annotation["bbox"])
        annotations.append(annotation)
    if not empty:
        count = int(rng.choice([1, 2, 3, 4], p=[0.35, 0.35, 0.2, 0.1]))
        for number in range(count + (index % SMALL_EVERY == SMALL_AT)):
            category_id = int(rng.choice([c["id"] for c in CATEGORIES]))
            small = number == count or rng.random() < 0.06
            size = float(rng.uniform(16, 30) if small else rng.uniform(44, 120))
            on_border = number == 0 and index % BORDER_EVERY == BORDER_AT
            placed = _place(rng, category_id, size, on_border, width, height, boxes)
            if placed is None:
                continue
            polygon, mask, box = placed
            clipped = clip_polygon(polygon, width, height)
            boxes.append(box)
            drawn.append((_colour_of(rng, category_id), polygon))
            annotations.append(
                {
                    "category_id": category_id,
                    "iscrowd": 0,
                    "bbox": box,
                    "area": float(mask.sum()),
                    "segmentation": [[round(v, 2) for point in clipped for v in point]],
                }
            )
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for colour, polygon in drawn:
        draw.polygon(polygon, fill=colour)
    if index % GRAY_EVERY == GRAY_AT:
        image = image.convert("L")
    return image, annotations


def generate_split(
    split: str,
    count: int,
    seed: int,
    out_instances: str | os.PathLike,
    out_images: str | os.PathLike,
) -> dict[str, int]:
    """Write ``count`` demo images of ``split`` and their instances JSON; returns summary counts."""
    if split not in SPLIT_INDEX:
        raise DatasetError(f"unknown split {split!r}: use one of {', '.join(SPLIT_INDEX)}")
    if not 1 <= count <= MAX_IMAGES:
        raise DatasetError(f"demo {split} image count {count}: use 1 to {MAX_IMAGES}")
    out_images = Path(out_images)
    out_images.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "info": {
            "description": f"ssdlite-coco demo dataset ({split}): generated shapes, seed {seed}",
            "version": "1.0",
            "contributor": "ssdlite-coco",
        },
        "licenses": [{"id": 1, "name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}],
        "images": [],
        "annotations": [],
        "categories": [dict(category) for category in CATEGORIES],
    }
    with tempfile.TemporaryDirectory(prefix=f".{out_images.name}.demo-", dir=out_images.parent) as work:
        images_dir = Path(work) / "images"
        images_dir.mkdir()
        for index in range(count):
            image_id = IMAGE_ID_OFFSET[split] + index + 1
            file_name = f"{image_id:012d}.jpg"
            image, annotations = generate_image(split, index, seed)
            image.save(images_dir / file_name, "JPEG", quality=JPEG_QUALITY)
            data["images"].append(
                {
                    "id": image_id,
                    "file_name": file_name,
                    "width": image.width,
                    "height": image.height,
                    "license": 1,
                }
            )
            for annotation in annotations:
                data["annotations"].append({"id": len(data["annotations"]) + 1, "image_id": image_id, **annotation})
        publish_split(data, images_dir, out_instances, out_images)
    return summarize(data)
