"""Turn a COCO instances file into per-image records with labelled pixel boxes, finding bad records.

The LMDB build and the LMDB check both work from these records, so they agree on what an image
should contain. A *bad record* is an image that cannot go into the LMDB as it is (duplicate id,
unknown category, zero-area box, box outside the image; file problems are found when the image is
read). The instances file itself is read by ``ssdlite_coco.dataset.coco_json.load_instances``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# Boxes may overshoot the image by this many pixels (rounding in the annotation tools); they are
# clipped. Anything further outside is a bad record.
BOX_TOLERANCE_PX = 1.0
CROWD_POLICIES = ("difficult", "drop")


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
        where = f"{source}: image id {image_id} ({image['file_name']})"
        if image["width"] <= 0 or image["height"] <= 0:
            size = f"{image['width']}x{image['height']}"
            bad.append(BadRecord(image_id, "bad_image_size", f"{where} has size {size}; fix 'width' and 'height'"))
            continue
        annotations = sorted(by_image.get(image_id, []), key=lambda a: a["id"])
        boxes = _image_boxes(image, annotations, category_to_label, where, labelmap_source, crowd, min_box_size, counts)
        if isinstance(boxes, BadRecord):
            bad.append(boxes)
            continue
        boxes.sort(key=lambda box: (box.label, box.annotation_id))
        records.append(ImageRecord(image_id, image["file_name"], image["width"], image["height"], boxes))
    return Plan(records, bad, counts)


def _image_boxes(
    image: dict,
    annotations: list[dict],
    category_to_label: dict[int, int],
    where: str,
    labelmap_source: str,
    crowd: str,
    min_box_size: float,
    counts: Counter,
) -> list[Box] | BadRecord:
    """The boxes of one image in pixels (clipped, crowd and small ones handled), or its first bad annotation."""
    width, height = image["width"], image["height"]
    boxes: list[Box] = []
    for annotation in annotations:
        problem = _annotation_problem(annotation, width, height, category_to_label, where, labelmap_source)
        if problem is not None:
            return problem
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
        label = category_to_label[annotation["category_id"]]
        difficult = bool(annotation.get("iscrowd", 0))
        boxes.append(Box(annotation["id"], annotation["category_id"], label, xmin, ymin, xmax, ymax, difficult))
    return boxes


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
        swapped = x >= -tol and y >= -tol and x + w <= height + tol and y + h <= width + tol
        hint = f"; it fits a {height}x{width} image: are 'width' and 'height' of this image swapped?" if swapped else ""
        return BadRecord(
            image_id,
            "box_outside_image",
            f"{what} has bbox {annotation['bbox']} outside the {width}x{height} image; fix the box or the image size"
            + hint,
        )
    return None
