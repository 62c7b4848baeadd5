"""Build a Caffe LMDB of ``AnnotatedDatum`` records from a COCO-format split.

Each record holds the image file as stored (``datum.encoded``; only files that are not plain JPEGs
are re-encoded, see ``image_bytes``), its size (``channels`` is 3: the net decodes in colour), and one
``AnnotationGroup`` per label with ``NormalizedBBox`` boxes in [0, 1] (crowd boxes become
``difficult`` or are dropped). Keys are ``{index:08d}_{image_id:012d}``: LMDB sorts by key, so the
index is the order Caffe reads. Test records are in image id order (the order of the name-size file);
trainval records are shuffled with a fixed seed.

Readers (threads) read and check the files in parallel; a single writer appends to the LMDB in key
order, in transactions of a fixed number of records, so the same inputs give a byte-identical
``data.mdb``. The map size is computed from the file sizes and doubled on ``MDB_MAP_FULL``. The build stops
before writing when the disk has less free space than the image files take, and a write error (a disk
that fills up anyway, a read-only target) ends with one line naming the path, the bytes needed and
the bytes free. The LMDB is built in a temporary sibling folder (removed on any failure, and by the
next build after a kill) and renamed onto the target only when complete; the build report (JSON) is
written next to it.
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdlite_coco.common.atomic import atomic_path, atomic_write_text
from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.common.progress import progress_bar
from ssdlite_coco.dataset.coco_json import load_instances
from ssdlite_coco.labelmap import category_to_label, read_labelmap
from ssdlite_coco.lmdb.image_bytes import ImageDataError, prepare_image_bytes
from ssdlite_coco.lmdb.records import BadRecord, ImageRecord, plan_records
from ssdlite_coco.lmdb.settings import BuildSettings
from ssdlite_coco.lmdb.store import AppendWriter

MiB = 1 << 20


class LmdbBuildError(SsdliteError):
    """The LMDB cannot be built; the message is one line naming the file or record and the fix."""


@dataclass(frozen=True)
class BuildOptions:
    """How one split is built: its `lmdb` settings, the split (trainval is shuffled) and the progress bar."""

    settings: BuildSettings
    split: str
    progress: bool = True

    @property
    def shuffle_seed(self) -> int | None:
        return self.settings.shuffle_seed_of(self.split)


def record_key(index: int, image_id: int) -> bytes:
    return f"{index:08d}_{image_id:012d}".encode()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def serialize_record(record: ImageRecord, data: bytes) -> bytes:
    """``annotated_datum(record, data).SerializeToString()``, byte for byte, with one copy of ``data``.

    Protobuf writes fields in field-number order: Datum is channels(1) height(2) width(3) data(4)
    encoded(7); AnnotatedDatum is datum(1) type(2) annotation_group(3). The image bytes are spliced in
    instead of being copied into a message and out again.
    """
    from caffe.proto import caffe_pb2

    empty = annotated_datum(record, b"")
    head = caffe_pb2.Datum(channels=3, height=record.height, width=record.width).SerializeToString()
    tail = caffe_pb2.Datum(encoded=True).SerializeToString()
    data_field_length = 1 + len(_varint(len(data))) + len(data)
    datum_length = len(head) + data_field_length + len(tail)
    empty.ClearField("datum")
    return b"".join(
        (b"\x0a", _varint(datum_length), head, b"\x22", _varint(len(data)), data, tail, empty.SerializeToString())
    )


def annotated_datum(record: ImageRecord, data: bytes) -> Any:
    """The ``AnnotatedDatum`` of an image record with its (encoded) image bytes."""
    from caffe.proto import caffe_pb2

    message = caffe_pb2.AnnotatedDatum()
    message.type = caffe_pb2.AnnotatedDatum.BBOX
    datum = message.datum
    datum.channels = 3
    datum.height = record.height
    datum.width = record.width
    datum.data = data
    datum.encoded = True
    group = None
    for box in record.boxes:  # sorted by (label, annotation id)
        if group is None or group.group_label != box.label:
            group = message.annotation_group.add()
            group.group_label = box.label
        annotation = group.annotation.add()
        annotation.instance_id = len(group.annotation) - 1
        bbox = annotation.bbox
        bbox.xmin = box.xmin / record.width
        bbox.ymin = box.ymin / record.height
        bbox.xmax = box.xmax / record.width
        bbox.ymax = box.ymax / record.height
        bbox.difficult = box.difficult
    return message


@dataclass
class _ReadResult:
    record: ImageRecord
    value: bytes | None
    change: str
    gray: bool
    bad: BadRecord | None


def _failed(record: ImageRecord, kind: str, message: str) -> _ReadResult:
    return _ReadResult(record, None, "", False, BadRecord(record.image_id, kind, message))


def _read_record(record: ImageRecord, images_dir: Path, source: str) -> _ReadResult:
    path = images_dir / record.file_name
    where = f"image id {record.image_id} in {source}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _failed(
            record,
            "missing_image",
            f"{path}: image file of {where} is missing; restore the file or remove the image from the annotation file",
        )
    except OSError as error:
        return _failed(record, "unreadable_image", f"{path}: cannot read the image file of {where} ({error})")
    try:
        prepared = prepare_image_bytes(data)
    except ImageDataError as error:
        return _failed(record, "corrupt_image", f"{path}: {error} ({where}); replace the file (e.g. download it again)")
    if (prepared.width, prepared.height) != (record.width, record.height):
        return _failed(
            record,
            "size_mismatch",
            f"{path}: is {prepared.width}x{prepared.height} pixels but {where} "
            f"says {record.width}x{record.height}; fix 'width'/'height' in the annotation file",
        )
    value = serialize_record(record, prepared.data)
    return _ReadResult(record, value, prepared.change, prepared.gray, None)


def _read_in_order(records: list[ImageRecord], images_dir: Path, source: str, readers: int) -> Iterator[_ReadResult]:
    """Read records with ``readers`` threads, yielding results in input order with bounded read-ahead."""
    if readers == 1:
        for record in records:
            yield _read_record(record, images_dir, source)
        return
    window = readers * 16
    with ThreadPoolExecutor(max_workers=readers, thread_name_prefix="lmdb-reader") as pool:
        pending: collections.deque = collections.deque()
        iterator = iter(records)
        for record in iterator:
            pending.append(pool.submit(_read_record, record, images_dir, source))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            record = next(iterator, None)
            if record is not None:
                pending.append(pool.submit(_read_record, record, images_dir, source))
            yield result


def image_bytes_total(records: list[ImageRecord], images_dir: Path) -> int:
    """The bytes of the records' image files: what the LMDB holds at least."""
    total = 0
    for record in records:
        try:
            total += (images_dir / record.file_name).stat().st_size
        except OSError:
            pass
    return total


def estimate_map_size(records: list[ImageRecord], images_dir: Path) -> int:
    """An upper bound of the LMDB size: file sizes plus page rounding and annotations, plus headroom."""
    total = 64 * MiB + image_bytes_total(records, images_dir)
    total += sum(4096 + 64 + 40 * len(record.boxes) for record in records)
    total = int(total * 1.1)
    return (total + MiB - 1) // MiB * MiB


def _disk_message(folder: Path, needed: int) -> str:
    free = shutil.disk_usage(folder).free
    return (
        f"the LMDB needs about {needed:,} bytes and {free:,} are free there; "
        "free space or put results/ on a bigger disk"
    )


def check_free_space(out_lmdb: Path, needed: int) -> None:
    """Stop before writing when the disk of ``out_lmdb`` cannot hold ``needed`` bytes."""
    folder = out_lmdb.parent
    folder.mkdir(parents=True, exist_ok=True)
    if shutil.disk_usage(folder).free < needed:
        raise LmdbBuildError(f"{out_lmdb}: not enough disk space: {_disk_message(folder, needed)}")


def order_records(records: list[ImageRecord], shuffle_seed: int | None) -> list[ImageRecord]:
    """Records in LMDB order: image id order, or a fixed-seed shuffle of it."""
    ordered = sorted(records, key=lambda record: record.image_id)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(ordered)
    return ordered


def _stop_message(bad: BadRecord) -> str:
    return f"{bad.message} (or set lmdb.on_bad_record: skip to leave such images out)"


def _count_written(counts: collections.Counter, result: _ReadResult) -> None:
    counts["boxes"] += len(result.record.boxes)
    counts["difficult_boxes"] += sum(box.difficult for box in result.record.boxes)
    counts["images_without_boxes"] += not result.record.boxes
    counts["grayscale_images"] += result.gray
    if result.change:
        counts["reencoded_images" if result.change.startswith("re-encoded") else "exif_orientation_removed"] += 1


def _build_report(instances, images_dir, labelmap, options: BuildOptions, num_images, written_ids, writer, counts, bad):
    """The build report (JSON): inputs, options, what was written and what was skipped."""
    return {
        "instances": str(instances),
        "images_dir": str(images_dir),
        "labelmap": str(labelmap),
        "options": {
            "crowd": options.settings.crowd,
            "min_box_size": float(options.settings.min_box_size),  # 8.0 whether the config says 8 or 8.0
            "on_bad_record": options.settings.on_bad_record,
            "shuffle_seed": options.shuffle_seed,
        },
        "images_in_annotation_file": num_images,
        "records": len(written_ids),
        "map_size": writer.map_size,
        "map_size_grown": writer.grown,
        "counts": {key: counts[key] for key in sorted(counts)},
        "bad_records": {kind: n for kind, n in sorted(collections.Counter(b.kind for b in bad).items())},
        "bad_record_messages": [b.message for b in bad],
        "image_ids": written_ids,
    }


def build_lmdb(
    instances: str | os.PathLike,
    images_dir: str | os.PathLike,
    labelmap: str | os.PathLike,
    out_lmdb: str | os.PathLike,
    out_report: str | os.PathLike,
    options: BuildOptions,
) -> dict[str, Any]:
    """Build ``out_lmdb`` from a COCO split and write ``out_report`` (JSON); return the report.

    With ``on_bad_record: stop`` the first bad record raises LmdbBuildError and nothing is written;
    with ``skip`` bad records are left out and listed in the report.
    """
    instances, images_dir, out_lmdb = Path(instances), Path(images_dir), Path(out_lmdb)
    source = str(instances)
    coco = load_instances(instances)
    items = read_labelmap(labelmap)
    plan = plan_records(
        coco,
        category_to_label(items),
        source,
        crowd=options.settings.crowd,
        min_box_size=options.settings.min_box_size,
        labelmap_source=f"the labelmap {labelmap}",
    )
    if plan.bad and options.settings.on_bad_record == "stop":
        raise LmdbBuildError(_stop_message(plan.bad[0]))
    if not images_dir.is_dir():
        raise LmdbBuildError(f"{images_dir}: images folder not found; run the dataset stage or fix the path")
    bad: list[BadRecord] = list(plan.bad)
    counts = collections.Counter(plan.counts)
    ordered = order_records(plan.records, options.shuffle_seed)
    written_ids: list[int] = []
    needed = image_bytes_total(ordered, images_dir)
    check_free_space(out_lmdb, needed)
    with atomic_path(out_lmdb, directory=True) as tmp:
        writer = AppendWriter(tmp, estimate_map_size(ordered, images_dir))
        progress = progress_bar(
            total=len(ordered), description=f"lmdb {out_lmdb.name}", unit="img", enabled=options.progress
        )
        try:
            for result in _read_in_order(ordered, images_dir, source, options.settings.readers):
                progress.update(1)
                if result.bad is not None:
                    if options.settings.on_bad_record == "stop":
                        raise LmdbBuildError(_stop_message(result.bad))
                    bad.append(result.bad)
                    continue
                writer.put(record_key(len(written_ids), result.record.image_id), result.value)
                written_ids.append(result.record.image_id)
                _count_written(counts, result)
            writer.close()
            os.chmod(tmp, 0o755)  # a temporary folder is private; the LMDB is not
        except (OSError, writer.lmdb_error) as error:
            writer.abort()
            raise LmdbBuildError(f"{tmp}: cannot write the LMDB ({error}); {_disk_message(tmp, needed)}") from None
        except BaseException:
            writer.abort()
            raise
        finally:
            progress.close()  # ends the bar's line, so that a message after it starts on its own line
        if not written_ids:
            raise LmdbBuildError(
                f"{instances}: no image could be written to the LMDB ({len(bad)} bad records); check the split"
            )
        report = _build_report(
            instances, images_dir, labelmap, options, len(coco["images"]), written_ids, writer, counts, bad
        )
        atomic_write_text(out_report, json.dumps(report, indent=1) + "\n")
    return report
