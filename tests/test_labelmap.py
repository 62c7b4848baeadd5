"""Labelmap and name-size files: the SSD COCO convention, the 91-class numbering, user-supplied labelmaps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ssdlite_coco.common.settings import parse_settings
from ssdlite_coco.dataset.coco_json import DatasetError
from ssdlite_coco.labelmap import (
    LabelmapError,
    LabelmapSettings,
    check_labelmap,
    format_labelmap,
    labelmap_from_categories,
    make_labelmap,
    parse_labelmap,
    read_labelmap,
    read_name_size,
)
from tests.support.lmdb_helpers import MINI_JSON, load_mini

# COCO category ids that no category uses (the gaps of the 91-class numbering).
COCO_UNUSED_IDS = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]


@pytest.fixture(scope="module")
def coco_categories(shared_dir: Path) -> list[dict]:
    return json.loads((shared_dir / "reference" / "coco_categories.json").read_text())


@pytest.fixture(scope="module")
def upstream(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "upstream"


def test_coco81_equals_the_ssd_coco_labelmap(coco_categories, upstream):
    items = labelmap_from_categories(coco_categories, "coco81")
    reference = read_labelmap(upstream / "weiliu89-ssd-coco-labelmap.prototxt")
    assert len(items) == 81
    assert items == reference
    # the text we write parses back (through caffe_pb2) to the same entries
    assert parse_labelmap(format_labelmap(items)) == reference


def test_coco91_numbers_by_category_id(coco_categories, upstream):
    items = labelmap_from_categories(coco_categories, "coco91")
    assert [item.label for item in items] == list(range(91))
    assert items[0].name == "none_of_the_above" and items[0].display_name == "background"
    by_label = {item.label: item for item in items}
    for category in coco_categories:
        assert by_label[category["id"]].name == str(category["id"])
        assert by_label[category["id"]].display_name == category["name"]
    assert [item.label for item in items if item.name.startswith("unused_")] == COCO_UNUSED_IDS
    # same numbering (label -> class) as the upstream 91-class SSDLite labelmap
    chuanqi = read_labelmap(upstream / "chuanqi305-ssdlite-coco-labelmap_coco.prototxt")
    assert {item.label: item.display_name for item in chuanqi if item.display_name != "N/A"} == {
        item.label: item.display_name for item in items if item.display_name != "N/A"
    }
    check_labelmap(items, coco_categories, "coco91")


def test_class_name_labelmap_is_refused_with_an_explanation(coco_categories, upstream):
    path = upstream / "chuanqi305-ssdlite-coco-labelmap_coco.prototxt"
    with pytest.raises(LabelmapError) as error:
        check_labelmap(read_labelmap(path), coco_categories, str(path))
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message and "class names" in message and "coco91" in message


def test_labelmap_problems_are_named(coco_categories, tmp_path):
    items = labelmap_from_categories(coco_categories, "coco81")
    with pytest.raises(LabelmapError, match="no entry with label 0"):
        check_labelmap(items[1:], coco_categories, "x")
    with pytest.raises(LabelmapError, match="appears twice"):
        check_labelmap(items + [items[3]], coco_categories, "x")
    with pytest.raises(LabelmapError, match=r"1 category ids .* 90 \(toothbrush\)"):
        check_labelmap(items[:-1], coco_categories, "x")
    bad = tmp_path / "bad.prototxt"
    bad.write_text("item { nam: 'x' }\n")
    with pytest.raises(LabelmapError, match="not a Caffe LabelMap"):
        read_labelmap(bad)
    with pytest.raises(LabelmapError, match="not known"):
        labelmap_from_categories(coco_categories, "coco80")


def run_make_labelmap(repo_root: Path, tmp_path: Path, trainval: Path, test: Path, *extra: str):
    outputs = {name: tmp_path / "out" / name for name in ("labelmap.prototxt", "trainval.txt", "test.txt")}
    command = [
        sys.executable, str(repo_root / "scripts" / "make_labelmap.py"),
        "--trainval", str(trainval), "--test", str(test),
        "--labelmap-out", str(outputs["labelmap.prototxt"]),
        "--trainval-name-size-out", str(outputs["trainval.txt"]),
        "--test-name-size-out", str(outputs["test.txt"]),
        *extra,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120), outputs


def test_make_labelmap_cli_writes_labelmap_and_name_sizes(repo_root, coco_mini_dir, upstream, tmp_path):
    data = load_mini(coco_mini_dir)
    test_json = tmp_path / "test.json"
    test_images = [image for image in data["images"] if image["id"] in (86, 9, 250)]
    test_json.write_text(json.dumps({**data, "images": test_images[::-1]}))
    done, out = run_make_labelmap(repo_root, tmp_path, coco_mini_dir / MINI_JSON, test_json)
    assert done.returncode == 0, done.stderr
    assert out["labelmap.prototxt"].read_text() == (upstream / "weiliu89-ssd-coco-labelmap.prototxt").read_text()
    rows = read_name_size(out["trainval.txt"])
    assert rows == sorted((image["id"], image["height"], image["width"]) for image in data["images"])
    assert len(rows) == 128
    assert out["test.txt"].read_text() == "9 480 640\n86 640 512\n250 480 640\n"


def test_make_labelmap_cli_coco91_and_user_labelmap(repo_root, coco_mini_dir, upstream, tmp_path):
    mini = coco_mini_dir / MINI_JSON
    done, out = run_make_labelmap(repo_root, tmp_path, mini, mini, "--settings", '{"mode": "coco91"}')
    assert done.returncode == 0, done.stderr
    assert len(read_labelmap(out["labelmap.prototxt"])) == 91
    user = upstream / "weiliu89-ssd-coco-labelmap.prototxt"
    done, out = run_make_labelmap(repo_root, tmp_path, mini, mini, "--settings", json.dumps({"file": str(user)}))
    assert done.returncode == 0, done.stderr
    assert read_labelmap(out["labelmap.prototxt"]) == read_labelmap(user)


def test_make_labelmap_cli_refuses_upstream_91_class_labelmap(repo_root, coco_mini_dir, upstream, tmp_path):
    mini = coco_mini_dir / MINI_JSON
    user = upstream / "chuanqi305-ssdlite-coco-labelmap_coco.prototxt"
    done, out = run_make_labelmap(repo_root, tmp_path, mini, mini, "--settings", json.dumps({"file": str(user)}))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "class names" in lines[0]
    assert not any(path.exists() for path in out.values())


def test_make_labelmap_refuses_a_file_that_is_not_coco(coco_mini_dir, tmp_path):
    not_coco = tmp_path / "list.json"
    not_coco.write_text(json.dumps([{"image": "a.jpg", "boxes": []}]))
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=r"list\.json: top level is a JSON list; expected a COCO instances"):
        make_labelmap({"trainval": coco_mini_dir / MINI_JSON, "test": not_coco}, out / "labelmap.prototxt",
                      {"trainval": out / "a.txt", "test": out / "b.txt"}, parse_settings(LabelmapSettings))  # fmt: skip
    assert not out.exists() or not any(out.iterdir())


def test_test_split_with_a_category_outside_the_labelmap_is_refused(coco_mini_dir, tmp_path):
    data = load_mini(coco_mini_dir)
    trainval = tmp_path / "trainval.json"
    trainval.write_text(json.dumps({**data, "categories": data["categories"][:-1]}))
    out = tmp_path / "out"
    with pytest.raises(LabelmapError, match=r"toothbrush.*categories of .*instances_mini\.json"):
        make_labelmap({"trainval": trainval, "test": coco_mini_dir / MINI_JSON}, out / "labelmap.prototxt",
                      {"trainval": out / "a.txt", "test": out / "b.txt"}, parse_settings(LabelmapSettings))  # fmt: skip
