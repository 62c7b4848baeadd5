"""The LMDB check: reads every record back, verifies it, writes the stats tables and the sample picture."""

from __future__ import annotations

import collections
import csv
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
from caffe.proto import caffe_pb2
from PIL import Image

from ssdlite_coco.lmdb.check import LmdbCheckError, check_lmdb
from ssdlite_coco.lmdb.writer import build_lmdb
from tests.support.lmdb_helpers import MINI_JSON, build_options, check_settings, load_mini, write_labelmap


@pytest.fixture(scope="module")
def built(coco_mini_dir, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("check")
    mini = load_mini(coco_mini_dir)
    paths = {
        "instances": coco_mini_dir / MINI_JSON,
        "labelmap": write_labelmap(mini, out / "labelmap.prototxt"),
        "lmdb": out / "trainval_lmdb",
        "report": out / "trainval_build.json",
    }
    images = coco_mini_dir / "images"
    options = build_options("trainval", shuffle_seed=7)
    build_lmdb(paths["instances"], images, paths["labelmap"], paths["lmdb"], paths["report"], options)
    return paths


def run_check(built: dict[str, Path], out: Path, lmdb_dir: Path | None = None):
    return check_lmdb(
        lmdb_dir or built["lmdb"], built["report"], built["instances"], built["labelmap"], out, check_settings()
    )


def test_stats_equal_the_annotation_file(built, coco_mini_dir, tmp_path):
    summary = run_check(built, tmp_path / "trainval_check")
    mini = load_mini(coco_mini_dir)
    names = {category["id"]: category["name"] for category in mini["categories"]}
    boxes = collections.Counter(names[a["category_id"]] for a in mini["annotations"])
    crowd = collections.Counter(names[a["category_id"]] for a in mini["annotations"] if a["iscrowd"])
    images = collections.Counter(
        names[category_id] for _, category_id in {(a["image_id"], a["category_id"]) for a in mini["annotations"]}
    )
    with (tmp_path / "trainval_check" / "stats.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 80
    for row in rows:
        name = row["display_name"]
        assert int(row["boxes"]) == int(row["boxes_in_annotation_file"]) == boxes[name]
        assert int(row["difficult_boxes"]) == crowd[name]
        assert int(row["images"]) == images[name]
    assert summary["records"] == 128 and summary["boxes"] == 939 and summary["difficult_boxes"] == 10
    assert summary["grayscale_images"] == 1 and summary["images_without_boxes"] == 2
    assert summary["bad_records_skipped"] == 0
    with (tmp_path / "trainval_check" / "summary.csv").open() as stream:
        assert dict(csv.reader(stream))["boxes"] == "939"
    picture = Image.open(tmp_path / "trainval_check" / "samples.png")
    assert picture.format == "PNG" and picture.size == (4 * 320, 4 * 336)


def tampered_copy(built: dict[str, Path], tmp_path: Path, change) -> Path:
    """A copy of the built LMDB with record 5 changed by ``change(message)``."""
    copy = tmp_path / "tampered_lmdb"
    env = lmdb.open(str(built["lmdb"]), readonly=True, lock=False)
    with env.begin() as txn:
        pairs = list(txn.cursor())
    env.close()
    key, value = pairs[5]
    message = caffe_pb2.AnnotatedDatum.FromString(value)
    change(message)
    pairs[5] = (key, message.SerializeToString())
    env = lmdb.open(str(copy), map_size=1 << 27)
    with env.begin(write=True) as txn:
        for key, value in pairs:
            txn.put(key, value)
    env.close()
    return copy


def relabel(message):
    message.annotation_group[0].group_label = 200


def truncate_image(message):
    message.datum.data = message.datum.data[: len(message.datum.data) // 2]


def shift_box(message):
    message.annotation_group[0].annotation[0].bbox.xmax = 1.5


def drop_group(message):
    del message.annotation_group[0]


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (relabel, "group label 200 is not an object label"),
        (truncate_image, "image does not decode"),
        (shift_box, "is not inside [0, 1]"),
        (drop_group, "boxes, the annotation file gives"),
    ],
)
def test_damaged_record_fails_the_check(built, tmp_path, change, words):
    copy = tampered_copy(built, tmp_path, change)
    out = tmp_path / "check"
    with pytest.raises(LmdbCheckError) as error:
        run_check(built, out, copy)
    message = str(error.value)
    assert words in message and "record 00000005_" in message and "\n" not in message
    assert not out.exists()


def test_check_cli(repo_root, built, tmp_path):
    command = [
        sys.executable, str(repo_root / "scripts" / "check_lmdb.py"),
        "--lmdb", str(built["lmdb"]), "--report", str(built["report"]),
        "--instances", str(built["instances"]),
        "--labelmap", str(built["labelmap"]), "--out", str(tmp_path / "check"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "128 records and 939 boxes verified" in done.stdout
    assert sorted(path.name for path in (tmp_path / "check").iterdir()) == [
        "samples.png",
        "stats.csv",
        "summary.csv",
    ]
    command[command.index("--lmdb") + 1] = str(tmp_path / "nowhere")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.startswith("error: ") and "build the LMDB first" in done.stderr
