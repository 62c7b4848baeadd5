"""Read an AnnotatedDatum LMDB back and verify every record against the annotation file and the labelmap.

Checked for every record: the key order and the image ids of the build report, the image decodes (in
full) at the size of ``datum`` and of the annotation file, labels are in the labelmap, boxes lie in
[0, 1] with positive size, instance ids count up per group, and the boxes equal the annotations (the
build's crowd and minimum-size rules applied). Per-class box counts must equal those of the annotation
file. Writes ``stats.csv`` (per class), ``summary.csv`` (records, skipped bad records, re-encoded
images, ...) and ``samples.png`` (sample records with their boxes and class names) into the output
folder, atomically. Any mismatch raises LmdbCheckError and writes nothing.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssdlite_coco.common.atomic import atomic_path
from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.dataset.coco_json import load_instances
from ssdlite_coco.labelmap import category_to_label, label_display_names, read_labelmap
from ssdlite_coco.lmdb.image_bytes import ImageDataError, decode_image
from ssdlite_coco.lmdb.records import ImageRecord, plan_records
from ssdlite_coco.lmdb.settings import CheckSettings
from ssdlite_coco.lmdb.store import count_records, iter_records

COORD_TOLERANCE = 1e-6
SAMPLE_COUNT = 16
SUMMARY_COUNTS = (
    "reencoded_images",
    "exif_orientation_removed",
    "crowd_boxes_dropped",
    "small_boxes_dropped",
    "boxes_clipped",
)
STATS_COLUMNS = ("label", "name", "display_name", "boxes", "difficult_boxes", "images", "boxes_in_annotation_file")
THUMB_SIZE = 320


class LmdbCheckError(SsdliteError):
    """The LMDB does not match its inputs; the message names the record and what is wrong."""


def _decode_size(data: bytes) -> tuple[int, int, str] | str:
    """(width, height, mode) of the fully decoded image, or the error text."""
    try:
        return decode_image(data)
    except ImageDataError as error:
        return str(error)


def _compare_record(key: str, message, expected: ImageRecord, labels: set[int]) -> list[str]:
    problems = []
    where = f"record {key} (image id {expected.image_id})"
    datum = message.datum
    if not message.HasField("type") or message.type != 0:
        problems.append(f"{where}: annotation type is not BBOX")
    if not datum.encoded:
        problems.append(f"{where}: datum is not encoded")
    if (datum.width, datum.height, datum.channels) != (expected.width, expected.height, 3):
        problems.append(
            f"{where}: datum is {datum.width}x{datum.height}x{datum.channels}, the annotation file "
            f"says {expected.width}x{expected.height} (x3 channels)"
        )
    rows = []
    seen_groups = set()
    for group in message.annotation_group:
        if group.group_label not in labels or group.group_label == 0:
            problems.append(f"{where}: group label {group.group_label} is not an object label of the labelmap")
        if group.group_label in seen_groups:
            problems.append(f"{where}: two annotation groups with label {group.group_label}")
        seen_groups.add(group.group_label)
        for index, annotation in enumerate(group.annotation):
            box = annotation.bbox
            if annotation.instance_id != index:
                problems.append(
                    f"{where}: instance id {annotation.instance_id} at position {index} of group {group.group_label}"
                )
            coords = (box.xmin, box.ymin, box.xmax, box.ymax)
            if not all(0.0 <= value <= 1.0 for value in coords) or box.xmin >= box.xmax or box.ymin >= box.ymax:
                problems.append(f"{where}: box {coords} is not inside [0, 1] with positive size")
            rows.append((group.group_label, coords, box.difficult))
    wanted = [
        (
            box.label,
            (
                box.xmin / expected.width,
                box.ymin / expected.height,
                box.xmax / expected.width,
                box.ymax / expected.height,
            ),
            box.difficult,
        )
        for box in expected.boxes
    ]
    if len(rows) != len(wanted):
        problems.append(f"{where}: {len(rows)} boxes, the annotation file gives {len(wanted)}")
    else:
        for (label, coords, difficult), (want_label, want_coords, want_difficult) in zip(rows, wanted, strict=True):
            if (
                label != want_label
                or difficult != want_difficult
                or any(abs(a - b) > COORD_TOLERANCE for a, b in zip(coords, want_coords, strict=True))
            ):
                problems.append(
                    f"{where}: box (label {label}, {coords}, difficult {difficult}) differs from the "
                    f"annotation (label {want_label}, {want_coords}, difficult {want_difficult})"
                )
                break
    return problems


@dataclass
class _Tally:
    """What a pass over the records found: boxes per label, sample records, decoding results, problems."""

    boxes: collections.Counter = field(default_factory=collections.Counter)
    difficult: collections.Counter = field(default_factory=collections.Counter)
    images_with: collections.Counter = field(default_factory=collections.Counter)
    samples: list = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    gray: int = 0
    without_boxes: int = 0

    def count_boxes(self, message) -> None:
        for group in message.annotation_group:
            self.boxes[group.group_label] += len(group.annotation)
            self.difficult[group.group_label] += sum(a.bbox.difficult for a in group.annotation)
            self.images_with[group.group_label] += 1
        self.without_boxes += not message.annotation_group

    def check_decoding(self, pool: ThreadPoolExecutor, batch: list) -> None:
        """Decode the images of ``batch`` ((key, image id, AnnotatedDatum) rows) in ``pool``; compare sizes."""
        decoded = pool.map(lambda entry: _decode_size(entry[2].datum.data), batch)
        for (key_text, image_id, message), result in zip(batch, decoded, strict=True):
            if isinstance(result, str):
                self.problems.append(f"record {key_text} (image id {image_id}): image does not decode ({result})")
            elif (result[0], result[1]) != (message.datum.width, message.datum.height):
                self.problems.append(
                    f"record {key_text} (image id {image_id}): image decodes to "
                    f"{result[0]}x{result[1]}, datum says {message.datum.width}x{message.datum.height}"
                )
            else:
                self.gray += result[2] in ("L", "1")


def _scan_records(
    lmdb_dir: Path, image_ids: list[int], expected: dict[int, ImageRecord], labels: set[int], source: str, readers: int
) -> _Tally:
    """One pass over the LMDB: keys in order, every record against its annotation, every image decoded."""
    from caffe.proto import caffe_pb2

    tally = _Tally()
    sample_positions = set(range(0, len(image_ids), max(1, len(image_ids) // SAMPLE_COUNT))[:SAMPLE_COUNT])
    batch: list = []
    with ThreadPoolExecutor(max_workers=max(1, readers)) as pool:
        for index, ((key, value), image_id) in enumerate(zip(iter_records(lmdb_dir), image_ids, strict=False)):
            key_text = key.decode(errors="replace")
            if key_text != f"{index:08d}_{image_id:012d}":
                tally.problems.append(
                    f"{lmdb_dir}: key {key_text} at position {index}; expected {index:08d}_{image_id:012d}"
                )
            message = caffe_pb2.AnnotatedDatum()
            message.ParseFromString(value)
            if image_id not in expected:
                tally.problems.append(f"record {key_text}: image id {image_id} is not a usable image of {source}")
                continue
            tally.problems.extend(_compare_record(key_text, message, expected[image_id], labels))
            tally.count_boxes(message)
            if index in sample_positions:
                tally.samples.append((key_text, image_id, message))
            batch.append((key_text, image_id, message))
            if len(batch) >= 64:
                tally.check_decoding(pool, batch)
                batch.clear()
        tally.check_decoding(pool, batch)
    return tally


def _summary(report: dict[str, Any], tally: _Tally) -> dict[str, Any]:
    counts, options = report["counts"], report["options"]
    return {
        "records": len(report["image_ids"]),
        "images_in_annotation_file": report["images_in_annotation_file"],
        "bad_records_skipped": sum(report["bad_records"].values()),
        **{f"bad_records_{kind}": count for kind, count in report["bad_records"].items()},
        "boxes": sum(tally.boxes.values()),
        "difficult_boxes": sum(tally.difficult.values()),
        "grayscale_images": tally.gray,
        "images_without_boxes": tally.without_boxes,
        **{key: counts.get(key, 0) for key in SUMMARY_COUNTS},
        "crowd_policy": options["crowd"],
        "min_box_size": options["min_box_size"],
    }


def _write_outputs(
    out_dir: str | os.PathLike, items, tally: _Tally, wanted: collections.Counter, summary: dict[str, Any]
) -> None:
    """``stats.csv`` (per label), ``summary.csv`` and ``samples.png``, all in one folder published atomically."""
    with atomic_path(out_dir, directory=True) as tmp:
        with (tmp / "stats.csv").open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(STATS_COLUMNS)
            for item in sorted(items, key=lambda item: item.label):
                if item.label == 0:
                    continue
                label = item.label
                writer.writerow(
                    [
                        label,
                        item.name,
                        item.display_name,
                        tally.boxes[label],
                        tally.difficult[label],
                        tally.images_with[label],
                        wanted[label],
                    ]
                )
        with (tmp / "summary.csv").open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["metric", "value"])
            for key, value in summary.items():
                writer.writerow([key, value])
        draw_samples(tally.samples, label_display_names(items), tmp / "samples.png")
        os.chmod(tmp, 0o755)  # a temporary folder is private; the results are not


def check_lmdb(
    lmdb_dir: str | os.PathLike,
    build_report: str | os.PathLike,
    instances: str | os.PathLike,
    labelmap: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: CheckSettings,
) -> dict[str, Any]:
    """Verify the LMDB (see module doc), write the stats and the sample picture; return the summary."""
    lmdb_dir = Path(lmdb_dir)
    report_path = Path(build_report)
    if not report_path.is_file():
        raise LmdbCheckError(f"{report_path}: build report not found; build the LMDB first (rule build_lmdb)")
    report = json.loads(report_path.read_text())
    items = read_labelmap(labelmap)
    options = report["options"]
    plan = plan_records(
        load_instances(instances),
        category_to_label(items),
        str(instances),
        crowd=options["crowd"],
        min_box_size=options["min_box_size"],
    )
    expected = {record.image_id: record for record in plan.records}
    image_ids = report["image_ids"]
    total = count_records(lmdb_dir) if (lmdb_dir / "data.mdb").is_file() else 0
    count_problems = []
    if total != len(image_ids):
        count_problems.append(f"{lmdb_dir}: {total} records, the build report {report_path} lists {len(image_ids)}")
    tally = _scan_records(
        lmdb_dir, image_ids, expected, {item.label for item in items}, str(instances), settings.readers
    )
    problems = count_problems + tally.problems
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise LmdbCheckError(problems[0] + more + "; rebuild the LMDB (rule build_lmdb)")
    wanted = collections.Counter(box.label for image_id in image_ids for box in expected[image_id].boxes)
    if tally.boxes != wanted:
        label = next(label for label in sorted(set(tally.boxes) | set(wanted)) if tally.boxes[label] != wanted[label])
        names = label_display_names(items)
        raise LmdbCheckError(
            f"{lmdb_dir}: label {label} ({names.get(label)}) has {tally.boxes[label]} boxes, "
            f"{instances} gives {wanted[label]}; rebuild the LMDB (rule build_lmdb)"
        )
    summary = _summary(report, tally)
    _write_outputs(out_dir, items, tally, wanted, summary)
    return summary


def draw_samples(chosen: list, names: dict[int, str], out_png: Path) -> None:
    """A grid of records (key, image id, AnnotatedDatum) with boxes and class names (difficult: grey)."""
    from PIL import Image, ImageDraw, ImageFont

    if not chosen:
        return
    columns = min(4, len(chosen))
    rows = (len(chosen) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * THUMB_SIZE, rows * (THUMB_SIZE + 16)), "white")
    font = ImageFont.load_default()
    for index, (key_text, _image_id, message) in enumerate(chosen):
        with Image.open(io.BytesIO(message.datum.data)) as image:
            image = image.convert("RGB")
        scale = THUMB_SIZE / max(image.width, image.height)
        thumb = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        draw = ImageDraw.Draw(thumb)
        for group in message.annotation_group:
            color = _label_color(group.group_label)
            for annotation in group.annotation:
                box = annotation.bbox
                xy = (
                    box.xmin * thumb.width,
                    box.ymin * thumb.height,
                    box.xmax * thumb.width,
                    box.ymax * thumb.height,
                )
                draw.rectangle(xy, outline=(160, 160, 160) if box.difficult else color, width=2)
                text = names.get(group.group_label, str(group.group_label))
                corner = (xy[0] + 1, max(0.0, xy[1] - 11))
                draw.rectangle(draw.textbbox(corner, text, font=font), fill=color)
                draw.text(corner, text, fill="black", font=font)
        x, y = (index % columns) * THUMB_SIZE, (index // columns) * (THUMB_SIZE + 16)
        sheet.paste(thumb, (x, y + 16))
        ImageDraw.Draw(sheet).text((x + 2, y + 2), f"{key_text}", fill="black", font=font)
    sheet.save(out_png, format="PNG")


def _label_color(label: int) -> tuple[int, int, int]:
    return ((label * 97) % 200 + 55, (label * 57) % 200 + 55, (label * 31) % 200 + 25)
