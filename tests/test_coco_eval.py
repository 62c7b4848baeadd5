"""COCO scoring with pycocotools: the published cocoapi numbers, per-class AP, bad detections, outputs."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ssdlite_coco.evaluate.coco_scoring import STAT_NAMES, CocoEvalError, score_detections, write_metrics


@pytest.fixture(scope="module")
def evalcheck(shared_dir):
    return shared_dir / "datasets" / "cocoapi-evalcheck"


def test_scoring_reproduces_the_published_cocoapi_bbox_numbers(evalcheck):
    expected = json.loads((evalcheck / "expected_stats.json").read_text())["bbox"]
    detections = json.loads((evalcheck / "instances_val2014_fakebbox100_results.json").read_text())
    metrics = score_detections(evalcheck / "instances_val2014_100.json", detections)
    stats = [metrics["stats"][name] for name in STAT_NAMES]
    assert [round(value, 3) for value in stats] == expected["published_3dp"]
    assert stats == pytest.approx(expected["faster_coco_eval_full_precision"], abs=1e-9)
    assert metrics["stats"]["AP"] == pytest.approx(0.505, abs=5e-4)
    assert metrics["num_images"] == 100 and metrics["num_detections"] == len(detections)
    assert "Average Precision" in metrics["summary"]


def _coco_mini(coco_mini_dir):
    return coco_mini_dir / "annotations" / "instances_mini.json"


def test_ground_truth_as_detections_scores_ap_1_for_every_class(coco_mini_dir):
    gt = json.loads(_coco_mini(coco_mini_dir).read_text())
    detections = [
        {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"], "score": 1.0}
        for ann in gt["annotations"]
        if not ann.get("iscrowd", 0)
    ]
    metrics = score_detections(_coco_mini(coco_mini_dir), detections)
    assert metrics["stats"]["AP"] == pytest.approx(1.0)
    assert metrics["stats"]["AP50"] == pytest.approx(1.0)
    scored = [row for row in metrics["per_class"] if row["AP"] >= 0]
    assert scored and all(row["AP"] == pytest.approx(1.0) for row in scored)
    person = next(row for row in metrics["per_class"] if row["category_id"] == 1)
    assert person["name"] == "person" and person["num_gt"] > 100


def test_halving_the_detections_of_one_class_lowers_only_its_ap(coco_mini_dir):
    gt = json.loads(_coco_mini(coco_mini_dir).read_text())
    detections = []
    for ann in gt["annotations"]:
        if ann.get("iscrowd", 0):
            continue
        x, y, w, h = ann["bbox"]
        bbox = [x, y, w / 2, h] if ann["category_id"] == 1 else [x, y, w, h]  # IoU 0.5 boxes for persons
        detections.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": bbox, "score": 0.9})
    per_class = {
        row["category_id"]: row for row in score_detections(_coco_mini(coco_mini_dir), detections)["per_class"]
    }
    assert per_class[1]["AP"] < 0.2
    assert per_class[3]["AP"] == pytest.approx(1.0)


def test_no_detections_scores_zero(coco_mini_dir):
    metrics = score_detections(_coco_mini(coco_mini_dir), [])
    assert metrics["stats"]["AP"] == 0.0 and metrics["stats"]["AR100"] == 0.0
    assert metrics["num_detections"] == 0


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"image_id": 999999999, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, "image_id 999999999"),
        ({"image_id": 9, "category_id": 12, "bbox": [0, 0, 1, 1], "score": 0.5}, "category_id 12"),
        ({"image_id": 9, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}, "4 finite numbers"),
        ({"image_id": 9, "category_id": 1, "score": 0.5}, "needs image_id"),
    ],
)
def test_a_bad_detection_is_named_in_one_line(coco_mini_dir, bad, message):
    good = {"image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}
    with pytest.raises(CocoEvalError, match="detection 1") as error:
        score_detections(_coco_mini(coco_mini_dir), [good, bad], source="dets.json")
    assert message in str(error.value) and "dets.json" in str(error.value)
    assert "\n" not in str(error.value)


def test_metrics_are_written_as_json_and_csv(coco_mini_dir, tmp_path):
    metrics = score_detections(
        _coco_mini(coco_mini_dir), [{"image_id": 9, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]
    )
    metrics["detection_eval"] = 0.25
    write_metrics(metrics, tmp_path / "m.json", tmp_path / "m.csv", tmp_path / "per_class.csv")
    assert json.loads((tmp_path / "m.json").read_text())["detection_eval"] == 0.25
    table = pd.read_csv(tmp_path / "m.csv")
    assert list(table.metric[:12]) == [f"coco/{name}" for name in STAT_NAMES]
    assert table.set_index("metric").value["detection_eval"] == 0.25
    per_class = pd.read_csv(tmp_path / "per_class.csv")
    assert list(per_class.columns) == ["category_id", "name", "AP", "AP50", "num_gt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv", "m.json", "per_class.csv"]  # no temporaries
