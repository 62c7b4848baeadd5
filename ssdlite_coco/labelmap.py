"""The Caffe-SSD labelmap of a COCO-format dataset, and the per-split name-size files.

Two numberings are supported:

* ``coco81`` (default) — the convention of the SSD COCO JSON reader (``ReadJSONToAnnotatedDatum``):
  label 0 is the background (``name: "none_of_the_above"``, ``display_name: "background"``), then one
  entry per category, sorted by category id, with the category id as ``name`` (a string: the reader
  looks up ``category_id`` by ``name``), a contiguous ``label`` 1..N and the class name as
  ``display_name``. For COCO this is the labelmap of the original SSD COCO models.
* ``coco91`` — ``label`` = COCO category id (0..90 for COCO), the numbering of SSDLite weights
  converted from the TensorFlow object detection zoo. Ids that no category uses are filled with
  placeholder entries (``name: "unused_12"``, ``display_name: "N/A"``) so every label of the net has
  an entry.

A user-supplied labelmap must follow the same convention (``name`` = category id as a string);
``check_labelmap`` explains what is wrong otherwise, e.g. for the 91-entry labelmap shipped with the
upstream SSDLite COCO models, whose ``name`` fields are class names.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ssdlite_coco.caffe_tools.prototxt import PrototxtError, parse_prototxt
from ssdlite_coco.common.errors import SsdliteError

BACKGROUND_NAME = "none_of_the_above"
BACKGROUND_DISPLAY_NAME = "background"
UNUSED_DISPLAY_NAME = "N/A"
MODES = ("coco81", "coco91")


class LabelmapError(SsdliteError):
    """A labelmap cannot be built or does not fit the dataset; the message names the file and the fix."""


@dataclass(frozen=True)
class LabelmapSettings:
    """Rule make_labelmap (``--settings`` of scripts/make_labelmap.py): the numbering, or the user's own file."""

    SECTION: ClassVar[str] = "labelmap"
    mode: str
    file: str


@dataclass(frozen=True)
class LabelmapItem:
    name: str
    label: int
    display_name: str


def labelmap_from_categories(categories: Iterable[Mapping[str, Any]], mode: str) -> list[LabelmapItem]:
    """The labelmap items for COCO ``categories`` (dicts with ``id`` and ``name``) in ``mode``."""
    if mode not in MODES:
        raise LabelmapError(f"labelmap mode {mode!r} is not known; use one of {', '.join(MODES)}")
    by_id: dict[int, str] = {}
    for category in categories:
        category_id, name = category.get("id"), category.get("name")
        if not isinstance(category_id, int) or isinstance(category_id, bool) or category_id <= 0:
            raise LabelmapError(f"category {category!r} needs an integer id > 0 (0 is the background)")
        if not isinstance(name, str) or not name:
            raise LabelmapError(f"category id {category_id} needs a non-empty string 'name'")
        if category_id in by_id:
            raise LabelmapError(f"category id {category_id} appears twice in 'categories'")
        by_id[category_id] = name
    if not by_id:
        raise LabelmapError("the annotation file lists no categories; a labelmap needs at least one")
    items = [LabelmapItem(BACKGROUND_NAME, 0, BACKGROUND_DISPLAY_NAME)]
    if mode == "coco81":
        for label, category_id in enumerate(sorted(by_id), start=1):
            items.append(LabelmapItem(str(category_id), label, by_id[category_id]))
    else:
        for label in range(1, max(by_id) + 1):
            if label in by_id:
                items.append(LabelmapItem(str(label), label, by_id[label]))
            else:
                items.append(LabelmapItem(f"unused_{label}", label, UNUSED_DISPLAY_NAME))
    return items


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_labelmap(items: Iterable[LabelmapItem]) -> str:
    """The labelmap as Caffe prototxt text (the layout of the upstream SSD labelmaps)."""
    blocks = []
    for item in items:
        blocks.append(
            "item {\n"
            f"  name: {_quote(item.name)}\n"
            f"  label: {item.label}\n"
            f"  display_name: {_quote(item.display_name)}\n"
            "}\n"
        )
    return "".join(blocks)


def parse_labelmap(text: str, source: str = "labelmap") -> list[LabelmapItem]:
    """Parse Caffe ``LabelMap`` prototxt text; raise LabelmapError naming ``source`` if it is not one."""
    from caffe.proto import caffe_pb2

    try:
        message = parse_prototxt(text, caffe_pb2.LabelMap(), source)
    except PrototxtError as error:
        raise LabelmapError(f"{error}; expected 'item {{ name: ... label: ... display_name: ... }}' blocks") from None
    items = []
    for index, item in enumerate(message.item):
        if not item.HasField("name") or not item.HasField("label"):
            raise LabelmapError(f"{source}: item {index + 1} needs both 'name' and 'label'")
        items.append(
            LabelmapItem(item.name, item.label, item.display_name if item.HasField("display_name") else item.name)
        )
    if not items:
        raise LabelmapError(f"{source}: has no 'item' entries")
    return items


def read_labelmap(path: str | os.PathLike) -> list[LabelmapItem]:
    path = Path(path)
    if not path.is_file():
        raise LabelmapError(
            f"{path}: labelmap file not found (set labelmap.file to a Caffe LabelMap prototxt, "
            "or leave it empty to generate one)"
        )
    return parse_labelmap(path.read_text(), str(path))


def check_labelmap(items: list[LabelmapItem], categories: Iterable[Mapping[str, Any]], source: str) -> None:
    """Check that ``items`` can label the dataset through the SSD JSON reader convention.

    Names and labels must be unique, label 0 must be the background, and every category id must be
    the ``name`` of an entry. Raises LabelmapError with one line naming ``source`` and the fix.
    """
    categories = list(categories)
    names = {item.name for item in items}
    class_names = {str(category["name"]) for category in categories}
    missing = [category for category in categories if str(category["id"]) not in names]
    named_by_class = sorted(name for name in names if name in class_names)
    if missing and named_by_class:
        name_counts = collections.Counter(item.name for item in items)
        repeated = [name for name, count in name_counts.items() if count > 1]
        also = f"; its name {repeated[0]!r} also appears {name_counts[repeated[0]]} times" if repeated else ""
        raise LabelmapError(
            f"{source}: uses class names as 'name' (e.g. {named_by_class[0]!r}), but the SSD JSON reader "
            f"looks labels up by COCO category id, so 'name' must be the id as a string (e.g. "
            f"{str(missing[0]['id'])!r}){also}; this is the layout of the upstream 91-class SSDLite "
            "labelmap: "
            "use labelmap.mode: coco91 (same labels, ids as names) and leave labelmap.file empty"
        )
    seen_names: set[str] = set()
    labels: set[int] = set()
    for item in items:
        if item.name in seen_names:
            raise LabelmapError(
                f"{source}: name {item.name!r} appears twice (Caffe's MapNameToLabel refuses duplicate names)"
            )
        if item.label in labels:
            raise LabelmapError(f"{source}: label {item.label} appears twice; give every entry its own label")
        if item.label < 0:
            raise LabelmapError(f"{source}: label {item.label} of {item.name!r} is negative")
        seen_names.add(item.name)
        labels.add(item.label)
    if 0 not in labels:
        raise LabelmapError(
            f"{source}: no entry with label 0; SSD reserves label 0 for the background "
            f'(add item {{ name: "{BACKGROUND_NAME}" label: 0 display_name: '
            f'"{BACKGROUND_DISPLAY_NAME}" }})'
        )
    if missing:
        shown = ", ".join(f"{category['id']} ({category['name']})" for category in missing[:5])
        raise LabelmapError(
            f"{source}: {len(missing)} category ids of the dataset have no entry whose name is "
            f"the id: {shown}; add them or leave labelmap.file empty to generate the labelmap"
        )


def category_to_label(items: Iterable[LabelmapItem]) -> dict[int, int]:
    """Map COCO category id -> label, for the entries whose name is a category id."""
    return {int(item.name): item.label for item in items if item.name.isdigit() and item.label != 0}


def label_display_names(items: Iterable[LabelmapItem]) -> dict[int, str]:
    return {item.label: item.display_name for item in items}


def format_name_size(images: Iterable[Mapping[str, Any]]) -> str:
    """The name-size file: ``image_id height width`` per line, sorted by image id.

    This is the order of the records in the test LMDB, which Caffe's DetectionOutput relies on.
    """
    rows = sorted((int(image["id"]), int(image["height"]), int(image["width"])) for image in images)
    return "".join(f"{image_id} {height} {width}\n" for image_id, height, width in rows)


def read_name_size(path: str | os.PathLike) -> list[tuple[int, int, int]]:
    """``(image_id, height, width)`` per line of a name-size file, in LMDB order."""
    path = Path(path)
    if not path.is_file():
        raise LabelmapError(f"{path}: name-size file not found (made by the labelmap rule)")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            fields = line.split()
            if len(fields) != 3 or not all(field.lstrip("-").isdigit() for field in fields):
                raise LabelmapError(f"{path}: every line must be 'image_id height width' (three integers)")
            rows.append((int(fields[0]), int(fields[1]), int(fields[2])))
    if not rows:
        raise LabelmapError(f"{path}: lists no images")
    return rows


def label_to_category(items: Iterable[LabelmapItem], source: str = "the labelmap") -> dict[int, int]:
    """Net label → COCO category id: the inverse of ``category_to_label``.

    The background and placeholder items (``unused_12``) map to nothing: their detections are dropped.
    """
    mapping = {label: category for category, label in category_to_label(items).items()}
    if not mapping:
        raise LabelmapError(
            f'{source}: no item has a COCO category id as its name (e.g. name: "1"); '
            "generate the labelmap with the labelmap rule"
        )
    return mapping


def num_classes_of(labelmap_path: str | os.PathLike) -> int:
    """Classes a net needs for the labelmap at ``labelmap_path``: the highest label + 1 (0 is the background)."""
    return max(item.label for item in read_labelmap(labelmap_path)) + 1


def make_labelmap(
    instances: Mapping[str, str | os.PathLike],
    out_labelmap: str | os.PathLike,
    out_name_sizes: Mapping[str, str | os.PathLike],
    settings: LabelmapSettings,
) -> list[LabelmapItem]:
    """Write the labelmap (generated in ``settings.mode`` from the first split's categories, or the checked
    ``settings.file``) and one name-size file per split; every split's categories must fit the labelmap."""
    from ssdlite_coco.common.atomic import atomic_write_text
    from ssdlite_coco.dataset.coco_json import load_instances

    if set(out_name_sizes) != set(instances):
        raise ValueError("give one name-size output per split")
    datasets = {split: load_instances(path) for split, path in instances.items()}
    first_split = next(iter(datasets))
    if settings.file:
        items = read_labelmap(settings.file)
    else:
        items = labelmap_from_categories(datasets[first_split]["categories"], settings.mode)
    source = settings.file or f"the {settings.mode} labelmap made from {instances[first_split]}"
    for split, data in datasets.items():
        try:
            check_labelmap(items, data["categories"], source)
        except LabelmapError as error:
            raise LabelmapError(f"{error} (categories of {instances[split]})") from None
    atomic_write_text(out_labelmap, format_labelmap(items))
    for split, data in datasets.items():
        atomic_write_text(out_name_sizes[split], format_name_size(data["images"]))
    return items
