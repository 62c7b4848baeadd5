"""Score COCO-format detections with pycocotools: the 12 standard numbers and the AP of every class.

``score_detections`` takes the ground-truth ``instances.json`` and a list of detections
(``{"image_id", "category_id", "bbox": [x, y, w, h] in pixels, "score"}``) and returns a plain dict
that ``write_metrics`` stores as JSON and CSV, atomically.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.common.errors import SsdliteError
from ssdlite_coco.evaluate.test_net import run_test_net
from ssdlite_coco.evaluate.test_split import TestSplit
from ssdlite_coco.labelmap import label_to_category

# Order of COCOeval.stats for iouType="bbox".
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


class CocoEvalError(SsdliteError):
    """Detections or ground truth cannot be scored; the message names the file or record and the fix."""


def _load_gt(gt_path: str | os.PathLike):
    from pycocotools.coco import COCO

    gt_path = Path(gt_path)
    if not gt_path.is_file():
        raise CocoEvalError(f"{gt_path}: ground-truth annotation file not found")
    try:
        data = json.loads(gt_path.read_text())
    except json.JSONDecodeError as error:
        raise CocoEvalError(f"{gt_path}: not JSON ({error})") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise CocoEvalError(f"{gt_path}: has no {key!r} list; it must be a COCO instances file")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = data
        gt.createIndex()
    return gt


def check_detections(detections: Iterable[Mapping[str, Any]], gt, source: str) -> list[dict[str, Any]]:
    """Return the detections as dicts; raise CocoEvalError on the first one that cannot be scored."""
    checked = []
    for index, det in enumerate(detections):
        where = f"{source}: detection {index}"
        try:
            image_id, category_id = det["image_id"], det["category_id"]
            bbox, score = [float(v) for v in det["bbox"]], float(det["score"])
        except (KeyError, TypeError, ValueError):
            raise CocoEvalError(f"{where} needs image_id, category_id, bbox [x, y, w, h] and score: {det!r}") from None
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or not math.isfinite(score):
            raise CocoEvalError(f"{where} has a bbox or score that is not 4 finite numbers: {det!r}")
        if image_id not in gt.imgs:
            raise CocoEvalError(
                f"{where} names image_id {image_id}, which the ground truth does not have; "
                "map net item indices to COCO image ids through the name-size file"
            )
        if category_id not in gt.cats:
            raise CocoEvalError(
                f"{where} names category_id {category_id}, which the ground truth does not have; "
                "map net labels to category ids through the labelmap (name = category id)"
            )
        checked.append({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})
    return checked


def score_detections(
    gt_path: str | os.PathLike,
    detections: Iterable[Mapping[str, Any]],
    image_ids: Iterable[int] | None = None,
    source: str = "detections",
) -> dict[str, Any]:
    """COCO bbox metrics of ``detections`` against the ground truth in ``gt_path``.

    Returns ``{"stats": {AP..ARl}, "per_class": [{category_id, name, AP, AP50, num_gt}], "summary": text,
    "num_images", "num_detections"}``. Metrics that COCOeval cannot compute (no ground truth) are -1.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = _load_gt(gt_path)
    dets = check_detections(detections, gt, source)
    image_ids = sorted(gt.getImgIds()) if image_ids is None else sorted(image_ids)
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        if dets:
            result = gt.loadRes(dets)
        else:  # loadRes cannot take an empty list; an empty result set scores 0 wherever there is ground truth
            result = COCO()
            result.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            result.createIndex()
        evaluator = COCOeval(gt, result, iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats, strict=True)}
    return {
        "stats": stats,
        "per_class": per_class_ap(evaluator, gt),
        "summary": "".join(
            line for line in summary.getvalue().splitlines(keepends=True) if line.lstrip().startswith("Average")
        ),
        "num_images": len(image_ids),
        "num_detections": len(dets),
    }


def per_class_ap(evaluator, gt) -> list[dict[str, Any]]:
    """AP@[.5:.95] and AP@.5 of each category (area all, 100 detections), -1 where it has no ground truth."""
    precision = evaluator.eval["precision"]  # [iou, recall, category, area, max dets]
    params = evaluator.params
    area_all = params.areaRngLbl.index("all")
    max_dets = len(params.maxDets) - 1
    iou50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    rows = []
    for index, category_id in enumerate(params.catIds):
        values = precision[:, :, index, area_all, max_dets]
        at50 = values[iou50]
        num_gt = len(gt.getAnnIds(imgIds=params.imgIds, catIds=[category_id], iscrowd=False))
        rows.append(
            {
                "category_id": int(category_id),
                "name": gt.cats[category_id].get("name", str(category_id)),
                "AP": float(values[values > -1].mean()) if (values > -1).any() else -1.0,
                "AP50": float(at50[at50 > -1].mean()) if (at50 > -1).any() else -1.0,
                "num_gt": num_gt,
            }
        )
    return rows


def metrics_table(metrics: Mapping[str, Any]):
    """The flat one-row-per-metric pandas table written as CSV: metric, value."""
    import pandas as pd

    rows = [{"metric": f"coco/{name}", "value": value} for name, value in metrics["stats"].items()]
    for key in ("detection_eval", "num_images", "num_detections"):
        if key in metrics:
            rows.append({"metric": key, "value": metrics[key]})
    return pd.DataFrame(rows, columns=["metric", "value"])


def write_metrics(
    metrics: Mapping[str, Any],
    json_path: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
    per_class_csv: str | os.PathLike | None = None,
) -> None:
    """Write the metrics as JSON (everything) and CSV (metric,value; per class), each atomically."""
    import pandas as pd

    atomic_write_text(json_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if csv_path is not None:
        atomic_write_text(csv_path, metrics_table(metrics).to_csv(index=False))
    if per_class_csv is not None:
        columns = ["category_id", "name", "AP", "AP50", "num_gt"]
        columns += [key for key in ("detection_eval",) if metrics["per_class"] and key in metrics["per_class"][0]]
        frame = pd.DataFrame(metrics["per_class"], columns=columns)
        atomic_write_text(per_class_csv, frame.to_csv(index=False))


def add_detection_eval_per_class(per_class: list[dict], per_label_ap: dict[int, float], labelmap_items) -> None:
    """Caffe's per-class AP (VOC 11-point, IoU 0.5) into the per-class rows, keyed like them by category id.

    A class with ground truth but no detection counts 0 (as in Caffe's mean); one without ground truth
    in the test split has None.
    """
    categories = label_to_category(labelmap_items)
    by_category = {categories[label]: ap for label, ap in per_label_ap.items() if label in categories}
    for row in per_class:
        row["detection_eval"] = by_category.get(row["category_id"], 0.0 if row["num_gt"] else None)


def evaluate_test_split(
    split: TestSplit, weights_path: str | os.PathLike, max_batch: int, data_threads: int, strict: bool = True, log=print
):
    """Run the test net over the test LMDB and score it: (metrics dict, COCO detections, TestNetResult)."""
    result = run_test_net(split, weights_path, max_batch, data_threads, strict=strict, log=log)
    metrics = score_detections(
        split.instances, result.detections, image_ids=split.image_ids, source=f"detections of {weights_path}"
    )
    metrics["detection_eval"] = result.detection_eval
    add_detection_eval_per_class(metrics["per_class"], result.per_label_ap, split.labelmap_items)
    metrics["weights"] = str(weights_path)
    metrics["net"] = split.net.name
    metrics["seconds"] = round(result.seconds, 2)
    return metrics, result.detections, result
