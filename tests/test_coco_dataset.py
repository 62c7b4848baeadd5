"""Validation of COCO-format datasets (local mode), subsets, and publishing a split."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ssdlite_coco.common.settings import parse_settings
from ssdlite_coco.dataset.coco_json import (
    DatasetError,
    prepare_local_split,
    select_image_ids,
    subset_instances,
    summarize,
    validate_dataset,
)
from ssdlite_coco.dataset.settings import LocalSettings

CHECK_IMAGES = parse_settings(LocalSettings).check_images  # the schema's dataset.local.check_images


@pytest.fixture(scope="module")
def mini(coco_mini_dir: Path) -> dict:
    return json.loads((coco_mini_dir / "annotations" / "instances_mini.json").read_text())


@pytest.fixture
def local_copy(coco_mini_dir: Path, mini: dict, tmp_path: Path) -> tuple[Path, Path]:
    """A writable copy of coco-mini: instances.json + images/ (files copied, so they can be broken)."""
    images = tmp_path / "images"
    shutil.copytree(coco_mini_dir / "images", images)
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps(mini))
    return instances, images


def _edit(instances: Path, change) -> None:
    data = json.loads(instances.read_text())
    change(data)
    instances.write_text(json.dumps(data))


def test_coco_mini_is_valid(coco_mini_dir, mini):
    data = validate_dataset(
        coco_mini_dir / "annotations" / "instances_mini.json",
        coco_mini_dir / "images",
        sample=len(mini["images"]),
    )
    assert summarize(data) == {"images": 128, "annotations": 939, "crowd_annotations": 10, "categories": 80}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.pop("categories"), r"no 'categories' list"),
        (lambda d: d.update(images={}), r"'images' is a dict, expected a list"),
        (lambda d: d.update(categories=[]), r"'categories' is empty"),
        (lambda d: d["categories"].append(dict(d["categories"][0])), r"category id 1 appears twice"),
        (lambda d: d["categories"][0].update(id=0), r"category id 0 \('person'\) must be > 0"),
        (lambda d: d["images"][3].pop("width"), r"images\[3\] needs 'width'"),
        (lambda d: d["images"].append(dict(d["images"][0])), r"image id 9 appears twice"),
        (
            lambda d: d["annotations"][5].update(image_id=123456789),
            r"annotation id \d+ \(annotations\[5\]\) refers to image_id 123456789, which is not in 'images'",
        ),
        (
            lambda d: d["annotations"][6].update(category_id=12),
            r"annotations\[6\]\) refers to category_id 12, which is not in 'categories'",
        ),
        (lambda d: d["annotations"][7].update(bbox=[1, 2, 3]), r"annotations\[7\]\) needs 'bbox'"),
        (lambda d: d["annotations"][8].update(bbox=[1, 2, -3, 4]), r"negative bbox size"),
        (lambda d: d["annotations"][9].update(iscrowd=2), r"iscrowd=2"),
    ],
)
def test_malformed_instances_name_the_file_and_record(local_copy, change, expected):
    instances, images = local_copy
    _edit(instances, change)
    with pytest.raises(DatasetError, match=expected) as error:
        validate_dataset(instances, images, sample=CHECK_IMAGES)
    assert str(error.value).startswith(f"{instances}: ")
    assert "\n" not in str(error.value)


def test_missing_or_unparsable_annotation_file(local_copy, tmp_path):
    instances, images = local_copy
    with pytest.raises(DatasetError, match=r"annotation file not found"):
        validate_dataset(tmp_path / "nope.json", images, sample=CHECK_IMAGES)
    instances.write_text('{"images": [')
    with pytest.raises(DatasetError, match=rf"{instances}: not valid JSON"):
        validate_dataset(instances, images, sample=CHECK_IMAGES)
    instances.write_text("[]")
    with pytest.raises(DatasetError, match=r"top level is a JSON list"):
        validate_dataset(instances, images, sample=CHECK_IMAGES)


def test_missing_images_folder_and_files_are_named(local_copy, tmp_path):
    instances, images = local_copy
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'pictures'}: images folder not found"):
        validate_dataset(instances, tmp_path / "pictures", sample=CHECK_IMAGES)
    (images / "000000000086.jpg").unlink()
    (images / "000000000508.jpg").unlink()
    with pytest.raises(DatasetError) as error:
        validate_dataset(instances, images, sample=CHECK_IMAGES)
    assert str(error.value) == (
        f"{images}: 2 of 128 images listed in {instances} are missing: 000000000086.jpg, 000000000508.jpg"
    )


def test_a_broken_or_mis_sized_image_is_named(local_copy, mini):
    instances, images = local_copy
    broken = images / mini["images"][0]["file_name"]
    broken.write_bytes(broken.read_bytes()[:2000])
    with pytest.raises(DatasetError, match=rf"{broken}: cannot be read as an image .*image id 9 in"):
        validate_dataset(instances, images, sample=10)
    Image.new("RGB", (10, 20)).save(broken, "JPEG")
    with pytest.raises(DatasetError, match=rf"{broken}: is 10x20 but image id 9 in .* says 640x480"):
        validate_dataset(instances, images, sample=10)
    validate_dataset(instances, images, sample=0)  # only presence is checked


def test_sample_is_spread_over_the_dataset(local_copy, mini):
    instances, images = local_copy
    last = images / mini["images"][-1]["file_name"]
    last.write_bytes(b"not a jpeg")
    validate_dataset(instances, images, sample=1)  # the first image only
    with pytest.raises(DatasetError, match=str(last)):
        validate_dataset(instances, images, sample=len(mini["images"]))


def test_local_split_links_the_images_and_copies_the_instances(coco_mini_dir, tmp_path):
    source = coco_mini_dir / "annotations" / "instances_mini.json"
    out = tmp_path / "results" / "data" / "trainval"
    counts = prepare_local_split(
        source, coco_mini_dir / "images", out / "instances.json", out / "images", sample=CHECK_IMAGES
    )
    assert counts["images"] == 128
    assert (out / "images").is_symlink()
    assert os.readlink(out / "images") == str((coco_mini_dir / "images").resolve())
    assert (out / "instances.json").read_bytes() == source.read_bytes()
    # Running again replaces the outputs; a real folder left by another source is replaced too.
    (out / "images").unlink()
    (out / "images").mkdir()
    (out / "images" / "stale.jpg").write_bytes(b"x")
    prepare_local_split(source, coco_mini_dir / "images", out / "instances.json", out / "images", sample=CHECK_IMAGES)
    assert (out / "images").is_symlink() and (out / "images" / "000000000086.jpg").is_file()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_own_dataset_with_any_category_ids_is_accepted_and_completed(tmp_path):
    """A user's dataset: category ids 7 and 1001, no iscrowd/area fields, images in a subfolder."""
    images = tmp_path / "my_photos"
    (images / "day").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 10, 10)).save(images / "day" / "a.jpg")
    Image.new("L", (48, 64), 128).save(images / "b.jpg")
    own = {
        "images": [
            {"id": 1, "file_name": "day/a.jpg", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.jpg", "width": 48, "height": 64},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1001, "bbox": [2, 3, 20, 10]},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [0, 0, 5, 6], "iscrowd": 0, "area": 25.5},
        ],
        "categories": [{"id": 7, "name": "bolt"}, {"id": 1001, "name": "nut"}],
    }
    (tmp_path / "own.json").write_text(json.dumps(own))
    out = tmp_path / "out"
    prepare_local_split(tmp_path / "own.json", images, out / "instances.json", out / "images", sample=CHECK_IMAGES)
    data = json.loads((out / "instances.json").read_text())
    assert data["annotations"][0] == {**own["annotations"][0], "iscrowd": 0, "area": 200.0}
    assert data["annotations"][1] == own["annotations"][1]
    assert data["categories"] == own["categories"]


def test_select_image_ids_is_deterministic_nested_and_order_free():
    ids = list(range(1000, 3000, 7))
    chosen = select_image_ids(ids, 25, seed=3)
    assert len(chosen) == 25 and chosen == sorted(chosen) and set(chosen) <= set(ids)
    assert select_image_ids(reversed(ids), 25, seed=3) == chosen
    assert set(select_image_ids(ids, 10, seed=3)) <= set(chosen)
    assert select_image_ids(ids, 25, seed=4) != chosen
    assert select_image_ids(ids[:5], 25, seed=3) == sorted(ids[:5])


def test_subset_keeps_only_the_chosen_images_and_their_annotations(mini):
    subset = subset_instances(mini, [9, 86, 250])
    assert [image["id"] for image in subset["images"]] == [9, 86, 250]
    assert {a["image_id"] for a in subset["annotations"]} == {9, 86}
    assert len(subset["annotations"]) == sum(a["image_id"] in (9, 86, 250) for a in mini["annotations"])
    assert subset["categories"] == mini["categories"] and subset["info"] == mini["info"]


def test_cli_link_local_dataset_reports_one_error_line(repo_root, local_copy, tmp_path):
    instances, images = local_copy
    (images / "000000000009.jpg").unlink()
    result = subprocess.run(
        [
            sys.executable,
            str(repo_root / "scripts" / "link_local_dataset.py"),
            "--instances",
            str(instances),
            "--images",
            str(images),
            "--out-instances",
            str(tmp_path / "out" / "instances.json"),
            "--out-images",
            str(tmp_path / "out" / "images"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo_root)},
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {images}: 1 of 128 images listed in {instances} are missing: 000000000009.jpg"
    ]
    assert not (tmp_path / "out").exists()
