"""Helpers for the labelmap/LMDB tests (not fixtures): small COCO splits from coco-mini, expected labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

MINI_JSON = Path("annotations") / "instances_mini.json"


def load_mini(coco_mini_dir: Path) -> dict:
    return json.loads((coco_mini_dir / MINI_JSON).read_text())


def make_split(coco_mini_dir: Path, out_dir: Path, image_ids: list[int] | None = None) -> tuple[Path, Path]:
    """A COCO split under ``out_dir`` (instances.json + images/ with copies of the files) from coco-mini.

    ``image_ids`` picks images (default: all). Returns (instances path, images folder).
    """
    data = load_mini(coco_mini_dir)
    if image_ids is not None:
        wanted = set(image_ids)
        data["images"] = [image for image in data["images"] if image["id"] in wanted]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in wanted]
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    for image in data["images"]:
        shutil.copyfile(coco_mini_dir / "images" / image["file_name"], images / image["file_name"])
    instances = out_dir / "instances.json"
    instances.write_text(json.dumps(data))
    return instances, images


def write_labelmap(data: dict, path: Path, mode: str = "coco81") -> Path:
    from ssdlite_coco.labelmap import format_labelmap, labelmap_from_categories

    path.write_text(format_labelmap(labelmap_from_categories(data["categories"], mode)))
    return path


def build_options(split: str, **keys):
    """BuildOptions of ``split`` (trainval is shuffled) with these `lmdb` keys, the others the schema's; no bar."""
    from ssdlite_coco.common.settings import parse_settings
    from ssdlite_coco.lmdb.settings import BuildSettings
    from ssdlite_coco.lmdb.writer import BuildOptions

    return BuildOptions(parse_settings(BuildSettings, json.dumps(keys)), split, progress=False)


def check_settings():
    """The LMDB check's settings: the schema's `lmdb.readers`."""
    from ssdlite_coco.common.settings import parse_settings
    from ssdlite_coco.lmdb.settings import CheckSettings

    return parse_settings(CheckSettings)


def expected_label_rows(data: dict, image_id: int, crowd: str = "difficult") -> np.ndarray:
    """The rows Caffe's AnnotatedData label blob should hold for one image (batch size 1, no transform),
    computed from the COCO JSON alone: [item, label, instance, xmin, ymin, xmax, ymax, difficult],
    grouped by label (ascending), instances in annotation id order; a row of -1 for an image without boxes."""
    categories = sorted(category["id"] for category in data["categories"])
    label_of = {category_id: label for label, category_id in enumerate(categories, start=1)}
    image = next(image for image in data["images"] if image["id"] == image_id)
    width, height = image["width"], image["height"]
    annotations = sorted(
        (a for a in data["annotations"] if a["image_id"] == image_id and not (crowd == "drop" and a["iscrowd"])),
        key=lambda a: (label_of[a["category_id"]], a["id"]),
    )
    rows = []
    instance = {}
    for annotation in annotations:
        label = label_of[annotation["category_id"]]
        x, y, w, h = annotation["bbox"]
        index = instance.get(label, 0)
        instance[label] = index + 1
        box = [
            min(max(x, 0), width) / width,
            min(max(y, 0), height) / height,
            min(x + w, width) / width,
            min(y + h, height) / height,
        ]
        rows.append([0, label, index, *np.float32(box), float(annotation["iscrowd"])])
    if not rows:
        return np.full((1, 8), -1, dtype=np.float32)
    return np.array(rows, dtype=np.float32)
