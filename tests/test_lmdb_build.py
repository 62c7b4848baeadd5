"""Building the AnnotatedDatum LMDB: record contents, order, determinism, options, map size, atomicity."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import lmdb
import numpy as np
import pytest
from caffe.proto import caffe_pb2
from PIL import Image

from ssdlite_coco.lmdb.image_bytes import prepare_image_bytes
from ssdlite_coco.lmdb.records import Box, ImageRecord
from ssdlite_coco.lmdb.store import AppendWriter
from ssdlite_coco.lmdb.writer import annotated_datum, build_lmdb, serialize_record
from tests.support.lmdb_helpers import (
    MINI_JSON,
    build_options,
    expected_label_rows,
    load_mini,
    make_split,
    write_labelmap,
)


def read_lmdb(path: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        pairs = list(txn.cursor())
    env.close()
    return pairs


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def label_rows(message) -> np.ndarray:
    """The label rows Caffe makes from a record (no transform), from the stored message."""
    rows = [
        [
            0,
            group.group_label,
            a.instance_id,
            a.bbox.xmin,
            a.bbox.ymin,
            a.bbox.xmax,
            a.bbox.ymax,
            a.bbox.difficult,
        ]
        for group in message.annotation_group
        for a in group.annotation
    ]
    return np.array(rows, dtype=np.float32) if rows else np.full((1, 8), -1, dtype=np.float32)


@pytest.fixture(scope="module")
def mini(coco_mini_dir) -> dict:
    return load_mini(coco_mini_dir)


@pytest.fixture(scope="module")
def labelmap(mini, tmp_path_factory) -> Path:
    return write_labelmap(mini, tmp_path_factory.mktemp("labelmap") / "labelmap.prototxt")


@pytest.fixture(scope="module")
def trainval(coco_mini_dir, labelmap, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("build")
    report = build_lmdb(
        coco_mini_dir / MINI_JSON,
        coco_mini_dir / "images",
        labelmap,
        out / "trainval_lmdb",
        out / "trainval_build.json",
        build_options("trainval", shuffle_seed=1, readers=2),
    )
    return out, report


def test_every_record_holds_the_original_jpeg_and_its_boxes(trainval, mini, coco_mini_dir):
    out, report = trainval
    pairs = read_lmdb(out / "trainval_lmdb")
    images = {image["id"]: image for image in mini["images"]}
    assert len(pairs) == report["records"] == 128
    assert json.loads((out / "trainval_build.json").read_text()) == report
    for index, (key, value) in enumerate(pairs):
        image_id = report["image_ids"][index]
        assert key == f"{index:08d}_{image_id:012d}".encode()
        message = caffe_pb2.AnnotatedDatum()
        message.ParseFromString(value)
        assert message.SerializeToString() == value  # the canonical protobuf encoding
        image = images[image_id]
        assert message.HasField("type") and message.type == caffe_pb2.AnnotatedDatum.BBOX
        datum = message.datum
        assert datum.encoded
        assert datum.data == (coco_mini_dir / "images" / image["file_name"]).read_bytes()
        assert (datum.channels, datum.height, datum.width) == (3, image["height"], image["width"])
        labels = [group.group_label for group in message.annotation_group]
        assert labels == sorted(set(labels))
        np.testing.assert_array_equal(label_rows(message), expected_label_rows(mini, image_id))
    counts = report["counts"]
    assert counts["boxes"] == len(mini["annotations"]) == 939
    assert counts["difficult_boxes"] == sum(a["iscrowd"] for a in mini["annotations"]) == 10
    assert counts["grayscale_images"] == 1 and counts["images_without_boxes"] == 2
    assert counts.get("reencoded_images", 0) == 0
    assert (out / "trainval_lmdb").stat().st_mode & 0o777 == 0o755
    # data.mdb holds the pages in use, not the whole map
    data_size = (out / "trainval_lmdb" / "data.mdb").stat().st_size
    assert sum(len(value) for _, value in pairs) < data_size < report["map_size"] * 0.95


def test_trainval_is_shuffled_with_a_fixed_seed_and_test_is_in_id_order(trainval, coco_mini_dir, labelmap, tmp_path):
    _, report = trainval
    ids = report["image_ids"]
    assert sorted(ids) == sorted(image["id"] for image in load_mini(coco_mini_dir)["images"])
    assert ids != sorted(ids)
    test = build_lmdb(
        coco_mini_dir / MINI_JSON,
        coco_mini_dir / "images",
        labelmap,
        tmp_path / "test_lmdb",
        tmp_path / "test.json",
        build_options("test"),
    )
    assert test["image_ids"] == sorted(ids)
    keys = [key for key, _ in read_lmdb(tmp_path / "test_lmdb")]
    assert keys == sorted(keys) and keys[0] == b"00000000_000000000009"


def test_rebuild_is_byte_identical(trainval, coco_mini_dir, labelmap, tmp_path):
    """Same inputs, another reader count, another folder: the same data.mdb, byte for byte."""
    out, _ = trainval
    build_lmdb(
        coco_mini_dir / MINI_JSON,
        coco_mini_dir / "images",
        labelmap,
        tmp_path / "again_lmdb",
        tmp_path / "again.json",
        build_options("trainval", shuffle_seed=1, readers=1),
    )
    assert sha256(tmp_path / "again_lmdb" / "data.mdb") == sha256(out / "trainval_lmdb" / "data.mdb")
    assert read_lmdb(tmp_path / "again_lmdb") == read_lmdb(out / "trainval_lmdb")
    # and another seed gives another order
    other = build_lmdb(
        coco_mini_dir / MINI_JSON,
        coco_mini_dir / "images",
        labelmap,
        tmp_path / "other_lmdb",
        tmp_path / "other.json",
        build_options("trainval", shuffle_seed=2),
    )
    assert other["image_ids"] != json.loads((out / "trainval_build.json").read_text())["image_ids"]


def test_crowd_drop_and_min_box_size(coco_mini_dir, mini, labelmap, tmp_path):
    report = build_lmdb(
        coco_mini_dir / MINI_JSON,
        coco_mini_dir / "images",
        labelmap,
        tmp_path / "lmdb",
        tmp_path / "report.json",
        build_options("test", crowd="drop", min_box_size=8),
    )
    small = [a for a in mini["annotations"] if not a["iscrowd"] and min(a["bbox"][2:]) < 8]
    assert small, "coco-mini has boxes under 8 pixels"
    assert report["counts"]["crowd_boxes_dropped"] == 10
    assert report["counts"]["small_boxes_dropped"] == len(small)
    assert report["counts"]["boxes"] == 939 - 10 - len(small)
    assert report["counts"]["difficult_boxes"] == 0
    for _, value in read_lmdb(tmp_path / "lmdb"):
        message = caffe_pb2.AnnotatedDatum.FromString(value)
        for group in message.annotation_group:
            for annotation in group.annotation:
                box = annotation.bbox
                assert not box.difficult
                assert (box.xmax - box.xmin) * message.datum.width >= 8 - 1e-3
                assert (box.ymax - box.ymin) * message.datum.height >= 8 - 1e-3


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300_000])
def test_spliced_serialization_equals_protobuf(size):
    boxes = [
        Box(7, 1, 1, 0.0, 1.5, 20.0, 30.25, False),
        Box(9, 1, 1, 3.0, 4.0, 5.0, 6.0, True),
        Box(2, 5, 4, 100.0, 0.0, 640.0, 480.0, False),
    ]
    record = ImageRecord(42, "x.jpg", 640, 480, boxes)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert serialize_record(record, data) == annotated_datum(record, data).SerializeToString()
    assert serialize_record(ImageRecord(1, "y.jpg", 3, 70000), data) == (
        annotated_datum(ImageRecord(1, "y.jpg", 3, 70000), data).SerializeToString()
    )


def test_map_full_grows_the_map(tmp_path):
    writer = AppendWriter(tmp_path / "lmdb", map_size=1 << 20)
    values = [bytes([index]) * 300_000 for index in range(20)]  # 6 MB into a 1 MiB map
    for index, value in enumerate(values):
        writer.put(f"{index:08d}".encode(), value)
    writer.close()
    assert writer.grown >= 3
    assert [value for _, value in read_lmdb(tmp_path / "lmdb")] == values


def make_odd_images(coco_mini_dir: Path, tmp_path: Path) -> tuple[Path, Path, dict]:
    """A split of three images: a PNG named .jpg, a CMYK JPEG, a JPEG with EXIF orientation 6."""
    instances, images = make_split(coco_mini_dir, tmp_path / "odd", [9, 25, 30])
    data = json.loads(instances.read_text())
    names = {image["id"]: image["file_name"] for image in data["images"]}
    rgb = Image.open(images / names[9]).convert("RGB")
    rgb.save(images / names[9], format="PNG")
    Image.open(images / names[25]).convert("CMYK").save(images / names[25], format="JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(images / names[30]).save(images / names[30], format="JPEG", quality=90, exif=exif.tobytes())
    return instances, images, names


def test_files_that_are_not_plain_jpegs_are_fixed_and_counted(coco_mini_dir, mini, labelmap, tmp_path):
    instances, images, names = make_odd_images(coco_mini_dir, tmp_path)
    report = build_lmdb(instances, images, labelmap, tmp_path / "lmdb", tmp_path / "r.json", build_options("test"))
    assert report["counts"]["reencoded_images"] == 2
    assert report["counts"]["exif_orientation_removed"] == 1
    sizes = {image["id"]: (image["width"], image["height"]) for image in mini["images"]}
    for key, value in read_lmdb(tmp_path / "lmdb"):
        message = caffe_pb2.AnnotatedDatum.FromString(value)
        image_id = int(key.decode().split("_")[1])
        data = message.datum.data
        assert data[:2] == b"\xff\xd8"
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == "JPEG" and decoded.mode in ("RGB", "L")
        assert decoded.size == sizes[image_id]
        assert decoded.getexif().get(0x0112) is None
        if image_id == 30:  # only the EXIF segment went; the compressed pixels are the original ones
            original = (images / names[30]).read_bytes()
            assert len(data) < len(original) and data[-1000:] == original[-1000:]
            assert np.array_equal(np.asarray(decoded), np.asarray(Image.open(images / names[30])))
    # a plain JPEG is left alone
    plain = (coco_mini_dir / "images" / names[9]).read_bytes()
    assert prepare_image_bytes(plain).data is plain


def test_cli_builds_with_progress_bar_and_reports(repo_root, coco_mini_dir, labelmap, tmp_path):
    instances, images = make_split(coco_mini_dir, tmp_path / "split", [9, 86, 250])
    command = [
        sys.executable, str(repo_root / "scripts" / "build_lmdb.py"),
        "--instances", str(instances), "--images", str(images), "--labelmap", str(labelmap),
        "--out", str(tmp_path / "lmdb"), "--report-out", str(tmp_path / "report.json"),
        "--split", "trainval", "--settings", '{"shuffle_seed": 3, "readers": 2}',
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "3/3" in done.stderr  # tqdm
    assert done.stdout.startswith("ok: ") and "3 records" in done.stdout
    assert len(read_lmdb(tmp_path / "lmdb")) == 3
    shutil.rmtree(tmp_path / "lmdb")
