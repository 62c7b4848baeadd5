"""Turn a COCO instances file into per-image records with labelled pixel boxes, finding bad records.

The LMDB build and the LMDB check both work from these records, so they agree on what an image
should contain. A *bad record* is an image that cannot go into the LMDB as it is (duplicate id,
unknown category, zero-area box, box outside the image; file problems are found when the image is
read). File-level problems (not JSON, not a COCO instances file) raise ``CocoFileError``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssdlite_coco.common.errors import SsdliteError

# Boxes may overshoot the image by this many pixels (rounding in the annotation tools); they are
# clipped. Anything further outside is a bad record.
BOX_TOLERANCE_PX = 1.0
CROWD_POLICIES = ("difficult", "drop")
COCO_HINT = "expected a COCO instances file with 'images', 'annotations' and 'categories' lists"


class CocoFileError(SsdliteError):
    """The annotation file is unreadable or not a COCO instances file; the message names it."""


@dataclass(frozen=True)
class Box:
    annotation_id: int
    category_id: int
    label: int
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool


@dataclass
class ImageRecord:
    image_id: int
    file_name: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)


@dataclass(frozen=True)
class BadRecord:
    image_id: Any
    kind: str
    message: str


@dataclass
class Plan:
    records: list[ImageRecord]
    bad: list[BadRecord]
    counts: Counter


def load_coco(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO instances file and check its structure; raise CocoFileError (one line) if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CocoFileError(f"{path}: annotation file not found; run the dataset stage or fix the path")
    try:
        with path.open("rb") as stream:
            data = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoFileError(f"{path}: not valid JSON ({error}); {COCO_HINT}") from None
    if not isinstance(data, dict):
        raise CocoFileError(f"{path}: top level is a JSON {type(data).__name__}; {COCO_HINT}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoFileError(f"{path}: no '{key}' list; {COCO_HINT}")
    for index, image in enumerate(data["images"]):
        if (
            not isinstance(image, dict)
            or not all(_is_int(image.get(key)) for key in ("id", "width", "height"))
            or not isinstance(image.get("file_name"), str)
        ):
            raise CocoFileError(
                f"{path}: images[{index}] needs integer 'id', 'width', 'height' and a string "
                f"'file_name'; got {_short(image)}"
            )
    for index, annotation in enumerate(data["annotations"]):
        bbox = annotation.get("bbox") if isinstance(annotation, dict) else None
        if (
            not isinstance(annotation, dict)
            or not all(_is_int(annotation.get(key)) for key in ("id", "image_id", "category_id"))
            or not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(value) for value in bbox))
        ):
            raise CocoFileError(
                f"{path}: annotations[{index}] needs integer 'id', 'image_id', 'category_id' "
                f"and 'bbox': [x, y, width, height]; got {_short(annotation)}"
            )
    for index, category in enumerate(data["categories"]):
        if (
            not isinstance(category, dict)
            or not _is_int(category.get("id"))
            or not isinstance(category.get("name"), str)
        ):
            raise CocoFileError(
                f"{path}: categories[{index}] needs an integer 'id' and a string 'name'; got {_short(category)}"
            )
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def plan_records(
    coco: dict[str, Any],
    category_to_label: dict[int, int],
    source: str,
    crowd: str = "difficult",
    min_box_size: float = 0.0,
    labelmap_source: str = "the labelmap",
) -> Plan:
    """Per-image records (sorted by image id) with boxes in pixels, and the bad records found.

    Crowd boxes are kept as ``difficult`` or dropped (``crowd``); boxes narrower or lower than
    ``min_box_size`` pixels are dropped. Boxes are sorted by (label, annotation id), the order of
    the annotation groups and instance ids in the LMDB.
    """
    if crowd not in CROWD_POLICIES:
        raise ValueError(f"crowd policy {crowd!r} is not one of {CROWD_POLICIES}")
    counts: Counter = Counter()
    bad: list[BadRecord] = []
    id_count = Counter(image["id"] for image in coco["images"])
    duplicates = {image_id for image_id, count in id_count.items() if count > 1}
    for image_id in sorted(duplicates):
        bad.append(
            BadRecord(
                image_id,
                "duplicate_image_id",
                f"{source}: image id {image_id} appears {id_count[image_id]} times in 'images'; "
                "give every image its own id",
            )
        )
    images = {image["id"]: image for image in coco["images"] if image["id"] not in duplicates}
    by_image: dict[int, list[dict]] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    orphans = sorted(set(by_image) - set(images) - duplicates)
    if orphans:
        bad.append(
            BadRecord(
                orphans[0],
                "annotation_without_image",
                f"{source}: {len(orphans)} image ids have annotations but no entry in 'images' "
                f"(first: {orphans[0]}); add the images or remove their annotations",
            )
        )
    records: list[ImageRecord] = []
    for image_id in sorted(images):
        image = images[image_id]
        width, height = image["width"], image["height"]
        where = f"{source}: image id {image_id} ({image['file_name']})"
        if width <= 0 or height <= 0:
            bad.append(
                BadRecord(image_id, "bad_image_size", f"{where} has size {width}x{height}; fix 'width' and 'height'")
            )
            continue
        boxes: list[Box] = []
        problem: BadRecord | None = None
        for annotation in sorted(by_image.get(image_id, []), key=lambda a: a["id"]):
            problem = _annotation_problem(annotation, width, height, category_to_label, where, labelmap_source)
            if problem is not None:
                break
            x, y, w, h = (float(value) for value in annotation["bbox"])
            if annotation.get("iscrowd", 0):
                counts["crowd_boxes"] += 1
                if crowd == "drop":
                    counts["crowd_boxes_dropped"] += 1
                    continue
            if w < min_box_size or h < min_box_size:
                counts["small_boxes_dropped"] += 1
                continue
            xmin, ymin = max(0.0, x), max(0.0, y)
            xmax, ymax = min(float(width), x + w), min(float(height), y + h)
            if (xmin, ymin, xmax, ymax) != (x, y, x + w, y + h):
                counts["boxes_clipped"] += 1
            boxes.append(
                Box(
                    annotation["id"],
                    annotation["category_id"],
                    category_to_label[annotation["category_id"]],
                    xmin,
                    ymin,
                    xmax,
                    ymax,
                    bool(annotation.get("iscrowd", 0)),
                )
            )
        if problem is not None:
            bad.append(problem)
            continue
        boxes.sort(key=lambda box: (box.label, box.annotation_id))
        records.append(ImageRecord(image_id, image["file_name"], width, height, boxes))
    return Plan(records, bad, counts)


def _annotation_problem(
    annotation: dict,
    width: int,
    height: int,
    category_to_label: dict[int, int],
    where: str,
    labelmap_source: str,
) -> BadRecord | None:
    image_id = annotation["image_id"]
    what = f"{where}: annotation id {annotation['id']}"
    if annotation["category_id"] not in category_to_label:
        return BadRecord(
            image_id,
            "unknown_category",
            f"{what} has category_id {annotation['category_id']}, which {labelmap_source} does "
            "not list; fix the annotation or add the category",
        )
    x, y, w, h = annotation["bbox"]
    if not (w > 0 and h > 0):
        return BadRecord(
            image_id,
            "zero_area_box",
            f"{what} has a zero-area bbox {annotation['bbox']} (width and height must be > 0); "
            "remove or fix the annotation",
        )
    tol = BOX_TOLERANCE_PX
    inside = min(float(width), x + w) > max(0.0, x) and min(float(height), y + h) > max(0.0, y)
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol or not inside:
        return BadRecord(
            image_id,
            "box_outside_image",
            f"{what} has bbox {annotation['bbox']} outside the {width}x{height} image; fix the box or the image size",
        )
    return None
