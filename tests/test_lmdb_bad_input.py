"""Bad input for the LMDB build: one clear line by default (nothing written), or skipped and counted."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import lmdb
import pytest

from ssdlite_coco.dataset.coco_json import DatasetError
from ssdlite_coco.lmdb.check import check_lmdb
from ssdlite_coco.lmdb.writer import LmdbBuildError, build_lmdb
from tests.support.lmdb_helpers import build_options, check_settings, make_split, write_labelmap

IMAGE_IDS = [9, 25, 30, 34]
BAD_ID = 25


def _file(split: Path, data: dict) -> Path:
    return split / "images" / next(i["file_name"] for i in data["images"] if i["id"] == BAD_ID)


def _annotation(data: dict) -> dict:
    return next(a for a in data["annotations"] if a["image_id"] == BAD_ID)


def _image(data: dict) -> dict:
    return next(i for i in data["images"] if i["id"] == BAD_ID)


def missing_image(split: Path, data: dict) -> None:
    _file(split, data).unlink()


def truncated_jpeg(split: Path, data: dict) -> None:
    path = _file(split, data)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_jpeg(split: Path, data: dict) -> None:
    path = _file(split, data)
    raw = bytearray(path.read_bytes())
    raw[2:40] = b"\x00" * 38  # the header no longer parses
    path.write_bytes(bytes(raw))


def damaged_jpeg_data(split: Path, data: dict) -> None:
    """Headers and end marker intact, the entropy-coded data damaged: only a full decode finds it."""
    path = _file(split, data)
    raw = path.read_bytes()
    middle = len(raw) // 2
    path.write_bytes(raw[:middle] + bytes((i * 37 + 11) % 256 for i in range(3000)) + raw[middle + 3000 :])


def unknown_category(split: Path, data: dict) -> None:
    _annotation(data)["category_id"] = 999


def zero_area_box(split: Path, data: dict) -> None:
    _annotation(data)["bbox"][2] = 0


def box_outside_image(split: Path, data: dict) -> None:
    _annotation(data)["bbox"][0] = _image(data)["width"] + 50


def size_mismatch(split: Path, data: dict) -> None:
    _image(data)["width"] += 16


def swapped_size(split: Path, data: dict) -> None:
    image = _image(data)
    image["width"], image["height"] = image["height"], image["width"]
    _annotation(data)["bbox"] = [500.0, 10.0, 40.0, 40.0]  # inside the real 640x426 image only


def duplicate_image_id(split: Path, data: dict) -> None:
    twin = dict(_image(data))
    twin["file_name"] = next(i["file_name"] for i in data["images"] if i["id"] == 9)
    data["images"].append(twin)


# (damage, kind in the report, words the one-line message must hold)
CASES: dict[str, tuple[Callable, str, list[str]]] = {
    "missing image file": (missing_image, "missing_image", ["000000000025.jpg", "is missing", "restore"]),
    "truncated JPEG": (
        truncated_jpeg,
        "corrupt_image",
        ["000000000025.jpg", "truncated", "replace the file"],
    ),
    "corrupt JPEG": (corrupt_jpeg, "corrupt_image", ["000000000025.jpg", "corrupt", "replace the file"]),
    "damaged JPEG data": (
        damaged_jpeg_data,
        "corrupt_image",
        ["000000000025.jpg", "cannot be decoded", "replace the file"],
    ),
    "unknown category": (
        unknown_category,
        "unknown_category",
        ["image id 25", "category_id 999", "labelmap"],
    ),
    "zero-area box": (zero_area_box, "zero_area_box", ["image id 25", "zero-area", "annotation id"]),
    "box outside image": (box_outside_image, "box_outside_image", ["image id 25", "outside", "fix the box"]),
    "image size mismatch": (size_mismatch, "size_mismatch", ["000000000025.jpg", "656x426", "640x426"]),
    "swapped width and height": (
        swapped_size,
        "box_outside_image",
        ["image id 25", "outside the 426x640 image", "'width' and 'height' of this image swapped"],
    ),
    "duplicate image id": (duplicate_image_id, "duplicate_image_id", ["image id 25 appears 2 times"]),
}


@pytest.fixture
def damaged(request, coco_mini_dir, tmp_path) -> tuple[Path, Path, Path, str, list[str]]:
    damage, kind, words = CASES[request.param]
    instances, images = make_split(coco_mini_dir, tmp_path / "split", IMAGE_IDS)
    data = json.loads(instances.read_text())
    labelmap = write_labelmap(data, tmp_path / "labelmap.prototxt")
    damage(tmp_path / "split", data)
    instances.write_text(json.dumps(data))
    return instances, images, labelmap, kind, words


def build_cli(repo_root: Path, instances: Path, images: Path, labelmap: Path, out: Path, *extra: str):
    command = [
        sys.executable, str(repo_root / "scripts" / "build_lmdb.py"),
        "--instances", str(instances), "--images", str(images), "--labelmap", str(labelmap),
        "--out", str(out / "lmdb"), "--report-out", str(out / "report.json"), "--split", "test", "--no-progress",
        *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("damaged", list(CASES), indirect=True)
def test_bad_record_stops_with_one_line_and_writes_nothing(damaged, repo_root, tmp_path):
    instances, images, labelmap, kind, words = damaged
    out = tmp_path / "out"
    done = build_cli(repo_root, instances, images, labelmap, out)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("error: ") and "on_bad_record: skip" in line
    for word in words:
        assert word in line, line
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("damaged", list(CASES), indirect=True)
def test_bad_record_is_skipped_and_counted(damaged, tmp_path):
    instances, images, labelmap, kind, words = damaged
    out = tmp_path / "out"
    report = build_lmdb(
        instances,
        images,
        labelmap,
        out / "lmdb",
        out / "report.json",
        build_options("test", on_bad_record="skip"),
    )
    assert report["bad_records"] == {kind: 1}
    assert BAD_ID not in report["image_ids"] and sorted(report["image_ids"]) == [9, 30, 34]
    env = lmdb.open(str(out / "lmdb"), readonly=True, lock=False)
    assert env.stat()["entries"] == 3
    env.close()
    summary = check_lmdb(out / "lmdb", out / "report.json", instances, labelmap, out / "check", check_settings())
    assert summary["bad_records_skipped"] == 1 and summary[f"bad_records_{kind}"] == 1
    with (out / "check" / "summary.csv").open() as stream:
        table = dict(csv.reader(stream))
    assert table["bad_records_skipped"] == "1" and table["records"] == "3"


def test_annotation_file_that_is_not_coco(repo_root, coco_mini_dir, tmp_path):
    instances, images = make_split(coco_mini_dir, tmp_path / "split", [9])
    labelmap = write_labelmap(json.loads(instances.read_text()), tmp_path / "labelmap.prototxt")
    for text, words in [
        ('{"annotation": [], "image": {"height": 1}}', "no 'images' list"),
        ("[1, 2, 3]", "top level is a JSON list"),
        ("<annotation><object/></annotation>", "not valid JSON"),
        ('{"images": [{"id": "a.jpg"}], "annotations": [], "categories": []}', "images[0] needs integer"),
    ]:
        instances.write_text(text)
        with pytest.raises(DatasetError, match="COCO|integer"):
            build_lmdb(instances, images, labelmap, tmp_path / "lmdb", tmp_path / "r.json",
                       build_options("test", on_bad_record="skip"))  # fmt: skip
        done = build_cli(
            repo_root, instances, images, labelmap, tmp_path / "out", "--settings", '{"on_bad_record": "skip"}'
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and str(instances) in lines[0] and words in lines[0]
        assert not (tmp_path / "lmdb").exists() and not (tmp_path / "out").exists()


def test_no_half_written_lmdb_after_a_failure(coco_mini_dir, tmp_path):
    """A failure late in the build (the last record) leaves neither the LMDB nor a temporary folder."""
    instances, images = make_split(coco_mini_dir, tmp_path / "split", IMAGE_IDS)
    data = json.loads(instances.read_text())
    labelmap = write_labelmap(data, tmp_path / "labelmap.prototxt")
    (images / data["images"][-1]["file_name"]).unlink()
    out = tmp_path / "out"
    with pytest.raises(LmdbBuildError, match="is missing"):
        build_lmdb(instances, images, labelmap, out / "lmdb", out / "report.json", build_options("test"))
    assert list(out.iterdir()) == []
