"""The generated demo dataset: determinism, COCO validity, the hard cases, and learnable objects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from ssdlite_coco.dataset.coco_json import DatasetError, validate_dataset
from ssdlite_coco.dataset.demo import COLORS, generate_split, rle_encode

# pycocotools 2.0 decodes masks through a numpy-1 API; numpy 2 warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _generate(root: Path, split: str, count: int, seed: int = 0) -> Path:
    out = root / split
    generate_split(split, count, seed, out / "instances.json", out / "images")
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_splits(tmp_path_factory) -> dict[str, Path]:
    """The splits of the embedded default config (240 trainval, 60 test images, seed 0)."""
    root = tmp_path_factory.mktemp("demo")
    return {"trainval": _generate(root, "trainval", 240), "test": _generate(root, "test", 60)}


def test_same_seed_gives_byte_identical_output(tmp_path):
    first = _files(_generate(tmp_path / "a", "trainval", 40, seed=5))
    second = _files(_generate(tmp_path / "b", "trainval", 40, seed=5))
    assert len(first) == 41
    assert first == second
    other = _files(_generate(tmp_path / "c", "trainval", 40, seed=6))
    assert other.keys() == first.keys()
    assert sum(other[name] != first[name] for name in first) == 41


def test_a_smaller_split_is_a_prefix_of_a_larger_one(tmp_path):
    small = _generate(tmp_path / "small", "test", 10, seed=1)
    large = _generate(tmp_path / "large", "test", 30, seed=1)
    for name in os.listdir(small / "images"):
        assert (small / "images" / name).read_bytes() == (large / "images" / name).read_bytes()
    small_data = json.loads((small / "instances.json").read_text())
    large_data = json.loads((large / "instances.json").read_text())
    assert large_data["annotations"][: len(small_data["annotations"])] == small_data["annotations"]


def test_splits_are_valid_coco_with_distinct_image_ids(default_splits):
    ids = {}
    for split, out in default_splits.items():
        data = validate_dataset(out / "instances.json", out / "images", sample=1000)
        ids[split] = {image["id"] for image in data["images"]}
        assert len(data["images"]) == {"trainval": 240, "test": 60}[split]
        assert [c["id"] for c in data["categories"]] == [3, 17, 44]  # non-contiguous
        assert {a["category_id"] for a in data["annotations"]} == {3, 17, 44}
        COCO(str(out / "instances.json"))  # pycocotools builds its index
    assert not ids["trainval"] & ids["test"]


def test_the_hard_cases_of_real_coco_are_present(default_splits):
    for out in default_splits.values():
        data = json.loads((out / "instances.json").read_text())
        modes = {image["id"]: Image.open(out / "images" / image["file_name"]).mode for image in data["images"]}
        assert set(modes.values()) == {"RGB", "L"}
        assert 0.05 <= sum(mode == "L" for mode in modes.values()) / len(modes) <= 0.2
        annotated = {a["image_id"] for a in data["annotations"]}
        assert 0 < len(set(modes) - annotated) < 0.15 * len(modes)  # images without objects
        crowd = [a for a in data["annotations"] if a["iscrowd"] == 1]
        assert crowd and all(isinstance(a["segmentation"], dict) for a in crowd)
        sizes = {image["id"]: (image["width"], image["height"]) for image in data["images"]}
        assert set(sizes.values()) == {(320, 240), (240, 320)}
        boxes = [(a["bbox"], sizes[a["image_id"]]) for a in data["annotations"] if a["iscrowd"] == 0]
        for (x, y, w, h), (width, height) in boxes:
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w > 0 and h > 0
        touching = [
            b for b, (width, height) in boxes if b[0] == 0 or b[1] == 0 or b[0] + b[2] == width or b[1] + b[3] == height
        ]
        assert len(touching) >= len(data["images"]) / 8
        sides = np.array([min(b[2], b[3]) for b, _ in boxes])
        assert (sides < 32).sum() >= len(data["images"]) / 8  # small objects
        assert (sides >= 40).mean() >= 0.75  # but most are big


def test_annotations_match_the_drawn_objects(default_splits):
    """Masks decode (polygons and crowd RLEs) with pycocotools, cover pixels of the class colour,
    and the stored areas and boxes agree with them."""
    out = default_splits["trainval"]
    coco = COCO(str(out / "instances.json"))
    checked = 0
    for image_id, image in list(coco.imgs.items())[:80]:
        pixels = np.asarray(Image.open(out / "images" / image["file_name"]).convert("RGB"), dtype=float)
        gray = Image.open(out / "images" / image["file_name"]).mode == "L"
        for annotation in coco.imgToAnns[image_id]:
            mask = coco.annToMask(annotation).astype(bool)
            if annotation["iscrowd"]:
                assert mask.sum() == annotation["area"]
            else:
                assert abs(mask.sum() - annotation["area"]) <= 0.25 * annotation["area"] + 20
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            x, y, w, h = annotation["bbox"]
            assert abs(cols[0] - x) <= 2 and abs(rows[0] - y) <= 2
            assert abs(cols[-1] + 1 - (x + w)) <= 2 and abs(rows[-1] + 1 - (y + h)) <= 2
            if not gray and not annotation["iscrowd"] and min(w, h) >= 40:
                inner = mask & np.roll(mask, 3, 0) & np.roll(mask, -3, 0) & np.roll(mask, 3, 1) & np.roll(mask, -3, 1)
                colour = pixels[inner].mean(axis=0)
                assert np.abs(colour - COLORS[annotation["category_id"]]).max() < 40
                checked += 1
    assert checked > 50


def test_rle_round_trips_through_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    mask = rng.random((7, 5)) < 0.4
    mask[0, 0] = True
    rle = mask_utils.frPyObjects(rle_encode(mask), 7, 5)
    assert (mask_utils.decode(rle).astype(bool) == mask).all()


def test_bad_arguments_raise_a_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="unknown split 'train'"):
        generate_split("train", 10, 0, tmp_path / "i.json", tmp_path / "images")
    with pytest.raises(DatasetError, match="demo test image count 0"):
        generate_split("test", 0, 0, tmp_path / "i.json", tmp_path / "images")
    assert list(tmp_path.iterdir()) == []


def test_cli_generates_a_split(repo_root, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "generate_demo_dataset.py"),
            "--split",
            "test",
            "--settings",
            '{"test_images": 17, "trainval_images": 5, "seed": 2}',
            "--out-instances",
            str(tmp_path / "instances.json"),
            "--out-images",
            str(tmp_path / "images"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo_root)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert len(os.listdir(tmp_path / "images")) == 17
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "instances.json"]
