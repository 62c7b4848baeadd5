"""COCO-format datasets on disk: check them, cut subsets out of them, publish them as a split.

A split of the workflow is ``results/data/{split}/instances.json`` + ``results/data/{split}/images/``.
Any COCO-format dataset qualifies: an instances JSON with ``images``, ``annotations`` and
``categories`` lists (any category ids) and a folder holding every ``images[].file_name``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ssdlite_coco.common.atomic import atomic_path, atomic_write_text
from ssdlite_coco.common.errors import SsdliteError


class DatasetError(SsdliteError):
    """A dataset is missing or malformed; the message names the file, the record and the fix."""


COCO_HINT = "expected a COCO instances file with 'images', 'annotations' and 'categories' lists"


def read_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object of an instances file; DatasetError naming the file if it is missing or not one."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(
            f"{path}: annotation file not found; run the dataset stage or set the path to a COCO instances JSON"
        )
    try:
        with path.open("rb") as stream:
            data = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error}); {COCO_HINT}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level is a JSON {type(data).__name__}; {COCO_HINT}")
    return data


def load_instances(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO instances file and check its structure (the fields every stage relies on).

    Raises DatasetError (one line naming the file and the entry) if it is not one; ``check_instances`` checks
    the rest (unique ids, references, sizes) for the dataset stage.
    """
    data = read_coco_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: no '{key}' list; {COCO_HINT}")
    for index, image in enumerate(data["images"]):
        if (
            not isinstance(image, dict)
            or not all(_is_int(image.get(key)) for key in ("id", "width", "height"))
            or not isinstance(image.get("file_name"), str)
        ):
            raise DatasetError(
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
            raise DatasetError(
                f"{path}: annotations[{index}] needs integer 'id', 'image_id', 'category_id' "
                f"and 'bbox': [x, y, width, height]; got {_short(annotation)}"
            )
    for index, category in enumerate(data["categories"]):
        if (
            not isinstance(category, dict)
            or not _is_int(category.get("id"))
            or not isinstance(category.get("name"), str)
        ):
            raise DatasetError(
                f"{path}: categories[{index}] needs an integer 'id' and a string 'name'; got {_short(category)}"
            )
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_instances(data: dict[str, Any], source: str) -> None:
    """Check the COCO structure that the workflow relies on; raise DatasetError at the first problem.

    ``source`` names the file in messages.
    """
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DatasetError(
                f"{source}: no '{key}' list; a COCO instances file has images, annotations and categories"
            )
        if not isinstance(data[key], list):
            raise DatasetError(f"{source}: '{key}' is a {type(data[key]).__name__}, expected a list")
    if not data["categories"]:
        raise DatasetError(f"{source}: 'categories' is empty; list every object class with an id and a name")
    category_ids: set[int] = set()
    for index, category in enumerate(data["categories"]):
        if (
            not isinstance(category, dict)
            or not isinstance(category.get("id"), int)
            or not isinstance(category.get("name"), str)
        ):
            raise DatasetError(f"{source}: categories[{index}] needs an integer 'id' and a string 'name'")
        if category["id"] in category_ids:
            raise DatasetError(f"{source}: category id {category['id']} appears twice in 'categories'")
        if category["id"] <= 0:
            raise DatasetError(
                f"{source}: category id {category['id']} ({category['name']!r}) must be > 0 (0 is the background label)"
            )
        category_ids.add(category["id"])
    image_ids: set[int] = set()
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict):
            raise DatasetError(f"{source}: images[{index}] is not an object")
        for key, kind in (("id", int), ("file_name", str), ("width", int), ("height", int)):
            if not isinstance(image.get(key), kind) or isinstance(image.get(key), bool):
                raise DatasetError(f"{source}: images[{index}] needs '{key}' ({kind.__name__}); got {image.get(key)!r}")
        if image["id"] in image_ids:
            raise DatasetError(f"{source}: image id {image['id']} appears twice in 'images'")
        if image["width"] <= 0 or image["height"] <= 0:
            raise DatasetError(
                f"{source}: image id {image['id']} ({image['file_name']}) has size {image['width']}x{image['height']}"
            )
        image_ids.add(image["id"])
    annotation_ids: set[int] = set()
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict):
            raise DatasetError(f"{source}: annotations[{index}] is not an object")
        where = f"{source}: annotation id {annotation.get('id')!r} (annotations[{index}])"
        for key in ("id", "image_id", "category_id"):
            if not isinstance(annotation.get(key), int) or isinstance(annotation.get(key), bool):
                raise DatasetError(f"{where} needs an integer '{key}'; got {annotation.get(key)!r}")
        if annotation["id"] in annotation_ids:
            raise DatasetError(f"{where}: the id appears twice in 'annotations'")
        annotation_ids.add(annotation["id"])
        if annotation["image_id"] not in image_ids:
            raise DatasetError(f"{where} refers to image_id {annotation['image_id']}, which is not in 'images'")
        if annotation["category_id"] not in category_ids:
            raise DatasetError(
                f"{where} refers to category_id {annotation['category_id']}, which is not in 'categories'"
            )
        bbox = annotation.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise DatasetError(f"{where} needs 'bbox': [x, y, width, height] in pixels; got {bbox!r}")
        if bbox[2] < 0 or bbox[3] < 0:
            raise DatasetError(f"{where} has a negative bbox size {bbox!r}")
        if annotation.get("iscrowd", 0) not in (0, 1):
            raise DatasetError(f"{where} has iscrowd={annotation.get('iscrowd')!r}; use 0 or 1")


def check_images(data: dict[str, Any], images_dir: str | os.PathLike, source: str, sample: int) -> None:
    """Check that every image file exists and that an evenly spread sample of ``sample`` images opens.

    Opening checks that the file decodes and that its size matches the record's width and height.
    """
    from PIL import Image

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(
            f"{images_dir}: images folder not found (set it to the folder holding the images listed in {source})"
        )
    present = set(os.listdir(images_dir))
    missing = [
        image["file_name"]
        for image in data["images"]
        if image["file_name"] not in present and not (images_dir / image["file_name"]).is_file()
    ]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{images_dir}: {len(missing)} of {len(data['images'])} images listed in {source} are missing: {shown}"
        )
    images = data["images"]
    if sample <= 0 or not images:
        return
    step = max(1, len(images) // sample)
    for image in images[::step][:sample]:
        path = images_dir / image["file_name"]
        try:
            with Image.open(path) as opened:
                opened.load()
                size = opened.size
        except Exception as error:  # Pillow raises many types for broken files
            raise DatasetError(
                f"{path}: cannot be read as an image ({error}); image id {image['id']} in {source}"
            ) from error
        if size != (image["width"], image["height"]):
            raise DatasetError(
                f"{path}: is {size[0]}x{size[1]} but image id {image['id']} in {source} says "
                f"{image['width']}x{image['height']}"
            )


def validate_dataset(instances_path: str | os.PathLike, images_dir: str | os.PathLike, sample: int) -> dict[str, Any]:
    """Load and check a COCO-format dataset (structure, every file present, a sample decodes)."""
    data = read_coco_json(instances_path)
    check_instances(data, str(instances_path))
    check_images(data, images_dir, str(instances_path), sample=sample)
    return data


def normalize_instances(data: dict[str, Any]) -> bool:
    """Fill the optional fields that COCO evaluation needs (``iscrowd`` 0, ``area`` = box area).

    Changes ``data`` in place; returns whether anything changed.
    """
    changed = False
    for annotation in data["annotations"]:
        if "iscrowd" not in annotation:
            annotation["iscrowd"] = 0
            changed = True
        if not _is_number(annotation.get("area")):
            annotation["area"] = float(annotation["bbox"][2] * annotation["bbox"][3])
            changed = True
    return changed


def select_image_ids(image_ids: Iterable[int], count: int, seed: int) -> list[int]:
    """A deterministic pseudo-random choice of ``count`` ids, sorted.

    Ids are ranked by a hash of (seed, id), so the choice does not depend on the order of the input,
    on the Python version, or on ``count`` (a smaller subset is contained in a larger one).
    """
    import hashlib

    def rank(image_id: int) -> bytes:
        return hashlib.sha1(f"{seed}:{image_id}".encode()).digest()

    return sorted(sorted(set(image_ids), key=rank)[:count])


def subset_instances(data: dict[str, Any], image_ids: Iterable[int]) -> dict[str, Any]:
    """The dataset restricted to ``image_ids`` and their annotations (all categories kept)."""
    wanted = set(image_ids)
    subset = {key: value for key, value in data.items() if key not in ("images", "annotations")}
    subset["images"] = [image for image in data["images"] if image["id"] in wanted]
    subset["annotations"] = [a for a in data["annotations"] if a["image_id"] in wanted]
    return subset


def dump_instances(data: dict[str, Any]) -> str:
    """The canonical JSON text the workflow writes (compact, key order kept, stable across runs)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"


def publish_split(
    instances: dict[str, Any] | str | os.PathLike,
    images_source: str | os.PathLike,
    out_instances: str | os.PathLike,
    out_images: str | os.PathLike,
    link: bool = False,
) -> None:
    """Publish a split: ``out_images`` (a symlink to ``images_source`` if ``link``, else a moved-in
    folder), then ``out_instances`` (a dict is written as JSON, a path is copied byte for byte).

    The instances file is written last, so a split with an instances file is complete.
    """
    out_instances, out_images = Path(out_instances), Path(out_images)
    out_instances.unlink(missing_ok=True)
    if out_images.is_symlink():
        out_images.unlink()
    if link:
        target = Path(images_source).resolve()
        out_images.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_images.with_name(f".{out_images.name}.tmp-link")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        if out_images.is_dir():
            shutil.rmtree(out_images)
        os.replace(tmp, out_images)
    else:
        with atomic_path(out_images, directory=True) as tmp:
            tmp.rmdir()
            shutil.move(images_source, tmp)
    if isinstance(instances, dict):
        atomic_write_text(out_instances, dump_instances(instances))
    else:
        with atomic_path(out_instances) as tmp:
            shutil.copyfile(instances, tmp)


def prepare_local_split(
    instances_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_instances: str | os.PathLike,
    out_images: str | os.PathLike,
    sample: int,
) -> dict[str, int]:
    """Validate a local COCO-format dataset and publish it as a split (images linked, not copied).

    The instances file is copied as is, or rewritten with ``iscrowd``/``area`` filled in where missing.
    Returns counts of images, annotations and categories.
    """
    data = validate_dataset(instances_path, images_dir, sample=sample)
    if normalize_instances(data):
        publish_split(data, images_dir, out_instances, out_images, link=True)
    else:
        publish_split(instances_path, images_dir, out_instances, out_images, link=True)
    return summarize(data)


def summarize(data: dict[str, Any]) -> dict[str, int]:
    return {
        "images": len(data["images"]),
        "annotations": len(data["annotations"]),
        "crowd_annotations": sum(1 for a in data["annotations"] if a.get("iscrowd", 0)),
        "categories": len(data["categories"]),
    }
